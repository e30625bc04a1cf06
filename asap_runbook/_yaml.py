"""YAML through libyaml when PyYAML was built with it: the pure-Python parser costs ~10x the CPU, and
a run parses every target's manifests and the monitoring configurations in every kernel."""

from __future__ import annotations

from typing import Any, Iterator

import yaml

SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(text: str) -> Any:
    return yaml.load(text, Loader=SafeLoader)  # noqa: S506 - a safe loader


def safe_load_all(text: str) -> Iterator[Any]:
    return yaml.load_all(text, Loader=SafeLoader)  # noqa: S506 - a safe loader
