"""Which items a parameters file lets the runbook verify, decided offline from the catalog's `inputs`.

Each catalog item declares the parameters its check needs (``targets[].http_url``,
``prometheus.url + targets[].prometheus_job``, ``targets[].app | targets[].log_file`` ...).
`coverage_offline` reads a validated :class:`~asap_runbook.params.Params` and returns, per target,
the items whose inputs are missing: what `asap-runbook validate` prints, before anything is contacted.
"""

from __future__ import annotations

from typing import Any

from .catalog import input_alternatives, load_catalog
from .params import Params, Target


def _is_set(params: Params, target: Target, name: str) -> bool:
    if name == "prometheus.url":
        return params.prometheus is not None and bool(params.prometheus.url)
    value: Any = target
    for part in name.removeprefix("targets[].").split("."):
        value = getattr(value, part, None)
    return value is not None and value is not False and value != [] and value != ""


def missing_input(params: Params, target: Target, entry: str) -> bool:
    """True when no alternative of the inputs entry is fully set for this target."""
    return not any(all(_is_set(params, target, n) for n in alt) for alt in input_alternatives(entry))


def coverage_offline(params: Params) -> list[tuple[str, str, str]]:
    """``(target, item_id, missing input)`` for every automated item these params cannot verify,
    in target then checklist order; an item missing several inputs is listed once per input."""
    out: list[tuple[str, str, str]] = []
    for target in params.targets:
        for item in load_catalog():
            for entry in item.inputs:
                if missing_input(params, target, entry):
                    out.append((target.name, item.id, entry))
    return out
