"""Where the runbook's own files are: one answer for a checkout and for an installed wheel.

The repository keeps notebooks/, params/ and examples/ at the top; a wheel carries the same
three directories as ``asap_runbook/_bundled/`` (pyproject.toml maps them there), with the same
relative layout, so params/demo.yaml's ``../examples/...`` paths hold in both places.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = PACKAGE.parent
SHIPPED = ("notebooks", "params", "examples")


def checkout() -> Path | None:
    """The source checkout this package runs from (editable install, PYTHONPATH), or None when installed."""
    if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "notebooks").is_dir():
        return _CHECKOUT
    return None


def shipped(name: str) -> Path:
    """notebooks/, params/ or examples/: the checkout's top-level directory, else the wheel's bundled copy."""
    if name not in SHIPPED:
        raise ValueError(f"{name!r} is not one of {', '.join(SHIPPED)}")
    return (checkout() or PACKAGE / "_bundled") / name


def default_outputs() -> Path:
    """Where the demo writes runs: the checkout's outputs/, or ./outputs when installed (never site-packages)."""
    root = checkout()
    return root / "outputs" if root else Path("outputs")
