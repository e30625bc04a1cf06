"""Resilience checks (checklist: Resilience)."""

from __future__ import annotations

from ..source import find_calls
from ._registry import CheckContext, Finding, check


def _retry_config(kwargs: dict) -> dict | None:
    rc = kwargs.get("retry_config")
    return rc if isinstance(rc, dict) and rc.get("__call__") == "RetryConfig" else None


@check("RES-2")
async def circuit_breaker(ctx: CheckContext) -> Finding:
    """ASAPClient's circuit breaker is off by default (RetryConfig.circuit_breaker_enabled=False)."""
    root = ctx.target.source_dir
    if root is None:
        return Finding.skipped(f"targets[{ctx.target.name}].source_dir is not set")
    sites, broken = find_calls(root, {"ASAPClient"})
    evidence = [("ASAPClient constructions", [{"at": s.where(), "kwargs": s.kwargs} for s in sites])]
    if broken:
        evidence.append(("files that did not parse", broken))
    if not sites:
        return Finding.skipped("the agent's source builds no ASAPClient, so it calls no downstream agent", evidence)
    off = [s for s in sites if not (_retry_config(s.kwargs) or {}).get("circuit_breaker_enabled") is True]
    if off:
        return Finding.failed(
            f"{len(off)} of {len(sites)} ASAPClient(s) without a circuit breaker "
            f"(library default circuit_breaker_enabled=False): {', '.join(s.where() for s in off)}", evidence)
    return Finding.passed(f"all {len(sites)} ASAPClient(s) enable the circuit breaker "
                          f"(threshold {[(_retry_config(s.kwargs) or {}).get('circuit_breaker_threshold', 5) for s in sites]})",
                          evidence)
