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


@pytest.fixture(scope="module")
def section(demo_params):
    """The resilience section once on both reference agents, as a run does it (RES-1..3 share one
    started agent and fault proxy per target)."""
    from asap_runbook.engine import run_section
    run = run_section("resilience", demo_params, targets=["hardened", "misconfigured"])
    return {(r.item_id, r.target): r for r in run.results}


@pytest.mark.parametrize("item_id", DRILLS)
def test_passes_on_hardened(section, item_id):
    r = section[(item_id, "hardened")]
    assert r.status is expected(item_id, "hardened"), r.summary
    assert r.evidence[0].label == "observation"


@pytest.mark.parametrize("item_id", DRILLS)
def test_fails_on_misconfigured(section, item_id):
    r = section[(item_id, "misconfigured")]
    assert r.status is expected(item_id, "misconfigured"), r.summary
    assert r.remediation


def test_downstream_drills_observe_the_agents_real_path(section):
    """What the verdicts read was seen at the proxy: the agent's own quote requests, sent to the
    inventory variable the drill set, not a drill skill; retries resend the same envelope."""
    obs = section[("RES-1", "hardened")].evidence[0].data
    assert obs["task"]["skill"] == "quote" and "INVENTORY_AGENT_URL=" in obs["how"]
    retried = [a for a in obs["arrivals"] if a["action"] != "ok"]
    assert retried and all(a["path"] == "/asap" and a["envelope_id"] for a in obs["arrivals"])
    breaker = section[("RES-2", "hardened")].evidence[0].data
    # fewer calls reached the proxy than the agent was asked to make: the open circuit kept them home
    reached = [c for c in breaker["calls"] if any(c["t0"] <= a["t"] <= c["t1"] for a in breaker["arrivals"])]
    assert len(reached) < len(breaker["calls"])


def test_resume_is_read_from_the_store(section):
    obs = section[("RES-4", "hardened")].evidence[0].data
    assert obs["store"]["store"]["class"] == "RedisSnapshotStore"
    assert obs["before_kill"]["versions"] and set(obs["before_kill"]["versions"]) <= set(obs["final"]["versions"])



# ------------------------------------------------------------- the stock agent, drilled through params only
@pytest.fixture(scope="module")
def stock(demo_params):
    """The resilience section on the stock agent alone (after the others: agent starts and store-reader
    imports of three targets at once do not fit their 40 s bounds on a loaded 2-core host)."""
    from asap_runbook.engine import run_section
    run = run_section("resilience", demo_params, targets=["stock"])
    return {r.item_id: r for r in run.results}


@pytest.mark.parametrize("item_id", DRILLS)
def test_stock_agent_gets_a_verdict(stock, item_id):
    """The stock agent's unchanged code, drilled with only a drills: block in its params: a verdict,
    the one the catalog expects (RES-1 pass, RES-2..4 fail), never a skip."""
    r = stock[item_id]
    assert r.status is expected(item_id, "stock"), r.summary
    assert r.evidence[0].label == "observation"


def test_stock_agent_retries_with_the_librarys_defaults(stock):
    """check_stock's ASAPClient has no retry_config: the library's default retries resent the same
    envelope after each 503 and after the 429, and the call then completed."""
    obs = stock["RES-1"].evidence[0].data
    assert obs["task"]["skill"] == "check_stock" and "INVENTORY_AGENT_URL=" in obs["how"]
    by_envelope: dict[str, list[str]] = {}
    for a in obs["arrivals"]:
        by_envelope.setdefault(a["envelope_id"], []).append(a["action"])
    assert sorted(by_envelope.values()) == sorted([["503", "ok"], ["503", "503", "ok"], ["429:1", "ok"]])
    assert [c["outcome"] for c in obs["calls"]] == ["completed"] * 3


def test_stock_agent_has_no_breaker_and_no_fallback(stock):
    breaker = stock["RES-2"].evidence[0].data
    # no breaker: every call the agent was asked to make reached the failing downstream
    reached = [c for c in breaker["calls"] if any(c["t0"] <= a["t"] <= c["t1"] for a in breaker["arrivals"])]
    assert len(reached) == len(breaker["calls"]) == 8
    fallback = stock["RES-3"].evidence[0].data
    assert [c["outcome"] for c in fallback["calls"]] == ["completed", "failed"]
    assert fallback["calls"][1]["result"] == {"error": "inventory unavailable"}


def test_stock_agent_loses_its_snapshots_on_restart(stock):
    """reconcile_orders saves to the default in-memory store: the restart took it away, and the task
    sent again walked every order from the first one."""
    obs = stock["RES-4"].evidence[0].data
    assert obs["store"]["store"]["class"] == "InMemorySnapshotStore"
    assert obs["restart"]["exit_code"] == 0
    assert obs["second_run"]["outcome"] == "completed" and obs["second_run"]["result"]["resumed_at"] == 0


def test_stock_agent_drains_on_sigterm(check):
    """uvicorn's defaults bound no drain: the request held in flight across SIGTERM is answered and the
    process exits, within Kubernetes' default 30 s grace (the stock manifest sets none)."""
    r = check("MON-HEALTH-4", "stock")
    assert r.status is expected("MON-HEALTH-4", "stock"), r.summary
    obs = r.evidence[0].data
    assert obs["response_status"] == 200 and obs["grace_seconds"] == 30
    assert "run-agent stock" in obs["timeline"][0]["command"]

def test_drills_need_the_real_request(check, demo_params):
    no_task = demo_params.target("hardened").drills.model_copy(update={"downstream_task": None})
    r = check("RES-1", "hardened", one_target(demo_params, "hardened", drills=no_task, source_dir=None))
    assert r.status is Status.SKIP and "targets[hardened].drills.downstream_task is not set" in r.summary
    no_path = demo_params.target("hardened").drills.model_copy(update={"downstream_env": None})
    r = check("RES-3", "hardened", one_target(demo_params, "hardened", drills=no_path))
    assert r.status is Status.SKIP and "drills.downstream_env" in r.summary and "fault_proxy_listen" in r.summary
    no_long = demo_params.target("hardened").drills.model_copy(update={"long_task": None})
    r = check("RES-4", "hardened", one_target(demo_params, "hardened", drills=no_long))
    assert r.status is Status.SKIP and "targets[hardened].drills.long_task is not set" in r.summary


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


def test_client_policy_drill_recreates_the_agents_client(check, demo_params):
    """No running agent: the ASAPClient construction of examples/hardened/src (max_retries=4,
    base_delay=0.5) re-created in a child process, retried against the fault proxy."""
    no_task = demo_params.target("hardened").drills.model_copy(update={"downstream_task": None})
    r = check("RES-1", "hardened", one_target(demo_params, "hardened", drills=no_task))
    assert r.status is Status.PASS and r.summary.startswith("client policy drill (agent's ASAPClient from "
                                                            "orders_agent/downstream.py:"), r.summary
    obs = r.evidence[0].data
    assert "'max_retries': 4" in obs["how"] and any(a["action"] == "429:1" for a in obs["arrivals"])
    r = check("RES-3", "hardened", one_target(demo_params, "hardened", drills=no_task))
    assert r.status is Status.SKIP and "drills.downstream_task is not set" in r.summary


def test_unresolvable_client_construction_is_said(tmp_path, check, demo_params):
    (tmp_path / "client.py").write_text("from asap.transport import ASAPClient\n"
                                        "SETTINGS = load_settings()\n"
                                        "client = ASAPClient(URL, timeout=SETTINGS.timeout)\n")
    no_task = demo_params.target("hardened").drills.model_copy(update={"downstream_task": None})
    r = check("RES-2", "hardened", one_target(demo_params, "hardened", drills=no_task, source_dir=tmp_path))
    assert r.status is Status.SKIP and "timeout of the ASAPClient at client.py:3 is 'SETTINGS.timeout', which " \
        "cannot be resolved statically" in r.summary, r.summary


def test_fault_proxy_binds_the_address_the_operator_gives(deployment):
    """fault_proxy_listen: a staging agent already calls a fixed address; the proxy takes it."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def go():
        async with FaultProxy(deployment.misconfigured[0].direct_url, plan=["503"], listen=("127.0.0.1", port)) as proxy:
            async with httpx.AsyncClient(trust_env=False, timeout=5) as c:
                first = (await c.get(f"http://127.0.0.1:{port}/health")).status_code
                second = (await c.get(f"http://127.0.0.1:{port}/health")).status_code
            return proxy.url, first, second

    url, first, second = asyncio.run(go())
    assert url == f"http://127.0.0.1:{port}" and (first, second) == (503, 200)
