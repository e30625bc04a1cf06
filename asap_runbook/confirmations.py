"""Confirmations (a person confirmed a manual item) and waivers (a reviewed exception).

Skeleton: no records yet; every manual item stays `manual`. Issue 5 fills this in.
"""

from __future__ import annotations

from .params import Params
from .results import Result


def apply_records(results: list[Result], params: Params) -> list[Result]:
    return results
