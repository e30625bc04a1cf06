"""Observe, then judge: an observation is a dataclass of what a check sent and saw; a pure judge turns
it into a Finding. `judged()` keeps the observation (bounded) as `Finding.details["observation"]`, so
results.json holds what the verdict was made from and a table test can replay it."""

from __future__ import annotations

import dataclasses
from typing import Any

from ._registry import Finding

MAX_STR = 600  # per string in the kept observation: bodies and log lines are evidence, not archives
MAX_ITEMS = 20


def bounded(value: Any) -> Any:
    """JSON-ready copy of an observation with long strings and lists cut (and saying so)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: bounded(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): bounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        out = [bounded(v) for v in value[:MAX_ITEMS]]
        return out + [f"... {len(value) - MAX_ITEMS} more"] if len(value) > MAX_ITEMS else out
    if isinstance(value, str) and len(value) > MAX_STR:
        return value[:MAX_STR] + f"... ({len(value)} chars)"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def judged(finding: Finding, observation: Any) -> Finding:
    finding.details["observation"] = bounded(observation)
    return finding
