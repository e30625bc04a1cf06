"""Resilience drills proven both ways against the real reference agents, with a real fault proxy
in front of a real downstream agent; plus the fault proxy itself and the drills' guard rails."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from asap_runbook.faultproxy import FaultProxy
from asap_runbook.results import Status
from conftest import expected, one_target

DRILLS = ["RES-1", "RES-2", "RES-3", "RES-4"]


@pytest.mark.parametrize("item_id", DRILLS)
def test_passes_on_hardened(check, item_id):
    r = check(item_id, "hardened")
    assert r.status is expected(item_id, "hardened"), r.summary
    assert any("proxy" in e.label or "timeline" in e.label for e in r.evidence)


@pytest.mark.parametrize("item_id", DRILLS)
def test_fails_on_misconfigured(check, item_id):
    r = check(item_id, "misconfigured")
    assert r.status is expected(item_id, "misconfigured"), r.summary
    assert r.remediation


def test_circuit_breaker_evidence_is_from_the_proxy_side(check):
    r = check("RES-2", "hardened")
    seen = next(e.data for e in r.evidence if e.label.startswith("what the fault proxy saw"))
    calls = next(e.data for e in r.evidence if e.label.startswith("what the agent reported"))
    # fewer distinct calls reached the proxy than the agent made: the open circuit kept them home
    assert len({a["envelope_id"] for a in seen}) < len(calls)


def test_drills_are_opt_in(check, demo_params):
    off = demo_params.target("hardened").active_probes.model_copy(update={"drills": False})
    r = check("RES-1", "hardened", one_target(demo_params, "hardened", active_probes=off))
    assert r.status is Status.SKIP and "active_probes.drills" in r.summary


def test_restart_drill_needs_its_command(check, demo_params):
    no_cmd = demo_params.target("hardened").drills.model_copy(update={"agent_restart": None})
    r = check("RES-4", "hardened", one_target(demo_params, "hardened", drills=no_cmd))
    assert r.status is Status.SKIP and "agent_restart" in r.summary


def test_failing_restart_command_is_an_error(check, demo_params):
    bad = demo_params.target("misconfigured").drills.model_copy(update={"agent_restart": "false"})
    r = check("RES-4", "misconfigured", one_target(demo_params, "misconfigured", drills=bad))
    assert r.status is Status.ERROR and "restart command failed" in r.summary


def test_fault_proxy_actions(deployment):
    upstream = deployment.misconfigured[0].direct_url

    async def go():
        async with FaultProxy(upstream, plan=["503", "429:2", "reset", "ok"], max_requests=5) as proxy:
            async with httpx.AsyncClient(base_url=proxy.url, trust_env=False, timeout=5) as c:
                statuses = [(await c.get("/health")).status_code, (await c.get("/health")).status_code]
                with pytest.raises(httpx.TransportError):
                    await c.get("/health")
                ok = await c.get("/health")
                statuses.append(ok.status_code)
                await c.get("/health")  # the 5th request: still within the bound, default action
                with pytest.raises(httpx.TransportError):
                    await c.get("/health")  # beyond max_requests: reset
            return statuses, proxy.timeline()

    statuses, timeline = asyncio.run(go())
    assert statuses == [503, 429, 200]
    assert [a["action"] for a in timeline] == ["503", "429:2", "reset", "ok", "ok", "reset"]


def _timeline(*groups):
    """Arrivals for synthetic calls: each group is [(t, action), ...] for one envelope."""
    out, n = [], 0
    for gi, g in enumerate(groups):
        for t, action in g:
            n += 1
            out.append({"n": n, "t": t, "path": "/asap", "action": action, "envelope_id": f"env{gi}", "status": None})
    return sorted(out, key=lambda a: a["t"])


@pytest.mark.parametrize("groups, status, words", [
    # a client that ignores Retry-After and one with constant gaps: no real agent here behaves so
    ([[(0, "503"), (0.5, "503"), (1.5, "ok")], [(2, "429:3"), (2.2, "ok")]], Status.FAIL, "Retry-After: 3"),
    ([[(0, "503"), (0.5, "503"), (1.0, "ok")]], Status.FAIL, "did not grow"),
    ([[(0, "503"), (0.5, "ok")]], Status.WARN, "never twice"),
    ([[(0, "503"), (0.5, "503"), (1.5, "ok")], [(2, "429:1"), (3.1, "ok")]], Status.PASS, "honoured Retry-After"),
])
def test_retry_verdicts_for_clients_the_deployment_cannot_produce(groups, status, words):
    from asap_runbook.checks.resilience import judge_retries
    from asap_runbook.drills import LookupRun
    run = LookupRun(plan=[], default="ok", arrivals=_timeline(*groups), agent_status="completed", agent_result={},
                    calls=[{"call": i, "outcome": "ok"} for i in range(len(groups))])
    f = judge_retries(run)
    assert f.status is status and words in f.summary, f.summary


def test_dead_downstream_is_an_error_not_a_finding(check, demo_params):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    dead = demo_params.target("hardened").drills.model_copy(update={"downstream_url": f"http://127.0.0.1:{port}"})
    r = check("RES-3", "hardened", one_target(demo_params, "hardened", drills=dead))
    assert r.status is Status.ERROR and "unreachable" in r.summary


def test_fault_proxy_slow_response(deployment):
    import time

    async def go():
        async with FaultProxy(deployment.misconfigured[0].direct_url, plan=["slow:0.4"]) as proxy:
            async with httpx.AsyncClient(base_url=proxy.url, trust_env=False, timeout=5) as c:
                t0 = time.monotonic()
                r = await c.get("/health")
                return r.status_code, time.monotonic() - t0, proxy.timeline()

    status, took, timeline = asyncio.run(go())
    assert status == 200 and took >= 0.4 and timeline[0]["action"] == "slow:0.4"
