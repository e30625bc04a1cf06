"""Observe, then judge: an observation is a dataclass of what a check sent and saw; a pure judge turns
it into a Finding. `judged()` keeps the observation (bounded) as `Finding.details["observation"]`, so
results.json holds what the verdict was made from and a table test can replay it."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

from ._registry import Finding

MAX_STR = 600  # per string in the kept observation: bodies and log lines are evidence, not archives
MAX_ITEMS = 20


def bounded(value: Any) -> Any:
    """JSON-ready copy of an observation with long strings and lists cut (and saying so). An object with
    an `as_dict()` is kept as that: its own display form, which leaves out what must not be shown."""
    if callable(getattr(value, "as_dict", None)) and not isinstance(value, type):
        return bounded(value.as_dict())
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


def judged(finding: Finding, observation: Any, omit: tuple[str, ...] = ()) -> Finding:
    """`finding` with the observation it was judged from (less `omit`: what the evidence already holds)."""
    kept = bounded(observation)
    finding.details["observation"] = {k: v for k, v in kept.items() if k not in omit} if omit else kept
    return finding


IN_EVIDENCE = ("evidence", "exchanges", "details")  # judge arguments the Finding carries already


def judged_by(judge: Callable[..., Finding], *args: Any, **kwargs: Any) -> Finding:
    """`judge(*args, **kwargs)` for a judge that takes its observation as several arguments: the arguments
    (what it read, and its thresholds), by name, are the observation kept."""
    named = inspect.signature(judge).bind(*args, **kwargs).arguments
    return judged(judge(*args, **kwargs), {k: v for k, v in named.items() if k not in IN_EVIDENCE})
