"""Package attributes imported on first use (PEP 562), for the packages' public names."""

from __future__ import annotations

from importlib import import_module
from typing import Callable


def exports(package: str, namespace: dict, public: dict[str, tuple[str, ...]]) -> tuple[Callable, Callable, list[str]]:
    """`__getattr__`, `__dir__` and `__all__` for `package`: `public` maps a submodule (".engine") to
    the names it provides; each is imported when first asked for, then kept in `namespace`."""
    module_of = {name: module for module, names in public.items() for name in names}

    def __getattr__(name: str):
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(module_of[name], package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *module_of})

    return __getattr__, __dir__, list(module_of)
