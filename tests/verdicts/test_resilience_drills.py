"""RES-1..4 verdicts from recorded observations: what the reference agents produced (recorded from a
live drill) and the odd cases real agents and deployments produce. No servers: milliseconds."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from asap_runbook.checks.resilience import judge_breaker, judge_fallback, judge_resume, judge_retries
from asap_runbook.results import Status

RECORDED = json.loads((Path(__file__).parent / "data" / "resilience_reference_observations.json").read_text())
JUDGES = {"RES-1": judge_retries, "RES-2": judge_breaker, "RES-3": judge_fallback, "RES-4": judge_resume}


@pytest.mark.parametrize("key, status, words", [
    ("RES-1 hardened", Status.PASS, "growing gaps"),
    ("RES-1 misconfigured", Status.FAIL, "did not retry"),
    ("RES-2 hardened", Status.PASS, "circuit opened"),
    ("RES-2 misconfigured", Status.FAIL, "no circuit breaker"),
    ("RES-3 hardened", Status.PASS, "still answered"),
    ("RES-3 misconfigured", Status.FAIL, "no fallback"),
    ("RES-4 hardened", Status.PASS, "continued from there"),
    ("RES-4 misconfigured", Status.FAIL, "InMemorySnapshotStore"),
])
def test_recorded_reference_drills(key, status, words):
    f = JUDGES[key.split()[0]](copy.deepcopy(RECORDED[key]))
    assert f.status is status and words in f.summary, f.summary
    assert f.evidence[0].label == "observation"


def _obs(calls, arrivals, plan=("503",), default="ok"):
    """calls: [(t0, t1, outcome, result)], arrivals: [(t, action)]."""
    return {"how": "test", "task": {"skill": "quote", "input": {}}, "plan": list(plan), "default": default,
            "calls": [{"n": i + 1, "t0": a, "t1": b, "outcome": o, "http": 200, "result": r}
                      for i, (a, b, o, r) in enumerate(calls)],
            "arrivals": [{"n": i + 1, "t": t, "path": "/asap", "action": act, "envelope_id": None, "status": None}
                         for i, (t, act) in enumerate(arrivals)]}


OK = {"price_cents": 100}


@pytest.mark.parametrize("obs, status, words", [
    # a client that ignores Retry-After
    (_obs([(0, 2, "completed", OK), (2, 3, "completed", OK)],
          [(0, "503"), (0.5, "503"), (1.5, "ok"), (2.0, "429:3"), (2.2, "ok")]), Status.FAIL, "Retry-After: 3"),
    # constant gaps: retries, but no backoff
    (_obs([(0, 2, "completed", OK)], [(0, "503"), (0.5, "503"), (1.0, "ok")]), Status.FAIL, "did not grow"),
    # one retry only: growth never shown
    (_obs([(0, 1, "completed", OK)], [(0, "503"), (0.5, "ok")]), Status.WARN, "never twice"),
    # the agent refused the request itself (an unknown skill, bad auth): no verdict on retries
    (_obs([(0, 1, "error", None)] * 3, []), Status.ERROR, "did not run drills.downstream_task"),
    # the agent answered but never called through the proxy (a cache, or the wrong variable)
    (_obs([(0, 1, "completed", OK), (1, 2, "completed", OK)], []), Status.ERROR, "no request reached the fault proxy"),
    # the downstream never failed while a call was open
    (_obs([(0, 1, "completed", OK)], [(0.5, "ok")]), Status.ERROR, "no call met a fault"),
])
def test_retry_verdicts(obs, status, words):
    f = judge_retries(obs)
    assert f.status is status and words in f.summary, f.summary


@pytest.mark.parametrize("obs, status, words", [
    # opens after two failing calls and stays open to the end: no half-open seen
    (_obs([(0, 1, "failed", None), (1, 2, "failed", None), (2, 2.1, "completed", OK), (2.1, 2.2, "completed", OK)],
          [(0.2, "503"), (1.2, "503")]), Status.WARN, "no half-open"),
    # opens, then probes once while the downstream is still down: half-open without recovery is still a breaker
    (_obs([(0, 1, "failed", None), (1, 2, "failed", None), (2, 2.1, "failed", None), (4, 5, "failed", None)],
          [(0.2, "503"), (1.2, "503"), (4.5, "503")]), Status.PASS, "half-open"),
    # the downstream answered every call: the breaker was never tested
    (_obs([(0, 1, "completed", OK), (1, 2, "completed", OK)], [(0.5, "ok"), (1.5, "ok")]), Status.ERROR,
     "never tested"),
])
def test_breaker_verdicts(obs, status, words):
    f = judge_breaker(obs)
    assert f.status is status and words in f.summary, f.summary


@pytest.mark.parametrize("obs, status, words", [
    # the task fails even with a healthy downstream: a broken template, not a missing fallback
    (_obs([(0, 1, "failed", {"error": "input.sku must match"}), (1, 2, "failed", None)], [(0.5, "ok")]),
     Status.ERROR, "did not complete even with the downstream healthy"),
    # the agent's answer while the downstream fails is a JSON-RPC error, not a task result
    (_obs([(0, 1, "completed", OK), (1, 2, "error", None)], [(0.5, "ok"), (1.5, "503")]), Status.FAIL,
     "no fallback"),
    # the breaker was already open: no attempt reached the downstream, the agent still answered
    (_obs([(0, 1, "completed", OK), (1, 2, "completed", OK)], [(0.5, "ok")]), Status.PASS, "no attempt reached"),
])
def test_fallback_verdicts(obs, status, words):
    f = judge_fallback(obs)
    assert f.status is status and words in f.summary, f.summary


def _state(versions, ids=None):
    return {"readable": True, "versions": versions, "ids": ids or {str(v): f"s{v}" for v in versions}, "latest": None}


def _resume(**over):
    obs = {"task": {}, "snapshot_task_id": "report-x", "timeline": [],
           "store": {"store": {"class": "RedisSnapshotStore"}, "kind": "external", "error": None},
           "before_kill": _state([1, 2]), "restart": {"exit_code": 0, "output": ""},
           "first_run": {"outcome": "error"}, "after_restart": _state([1, 2, 3]),
           "second_run": {"outcome": "completed"}, "final": _state([1, 2, 3, 4, 5])}
    return obs | over


@pytest.mark.parametrize("obs, status, words", [
    (_resume(), Status.PASS, "versions 4..5 added"),
    # a shared store that is emptied by the restart (a Redis without persistence restarted with the pod)
    (_resume(after_restart=_state([])), Status.FAIL, "lost snapshots"),
    # snapshots kept, but the task ignores them and starts over: early versions rewritten
    (_resume(final=_state([1, 2, 3, 4, 5], {"1": "new1", "2": "new2", "3": "new3", "4": "s4", "5": "s5"})),
     Status.FAIL, "started over"),
    (_resume(restart={"exit_code": 1, "output": "error: no such pod"}), Status.ERROR, "no such pod"),
    (_resume(restart=None), Status.ERROR, "finished before the restart"),
    (_resume(restart={"exit_code": None, "output": "drills.agent_restart did not finish within 30 s"}), Status.ERROR,
     "the restart command failed: drills.agent_restart did not finish within 30 s"),
    (_resume(before_kill=_state([])), Status.ERROR, "snapshot_task_id"),
    (_resume(final=_state([1, 2, 3])), Status.ERROR, "nothing was left to resume"),
    (_resume(second_run={"outcome": "failed", "result": {"error": "boom"}}), Status.FAIL, "ended failed"),
    (_resume(store={"store": None, "kind": None, "error": "cannot import app: ModuleNotFoundError"}), Status.ERROR,
     "could not be read"),
])
def test_resume_verdicts(obs, status, words):
    f = judge_resume(obs)
    assert f.status is status and words in f.summary, f.summary


def test_one_timeline_picture_per_drill(monkeypatch):
    """The notebook's drill_timelines draws each drill's recorded observation; other checks are left out."""
    from types import SimpleNamespace as NS

    import asap_runbook.notebook as rb

    def result(key, label="observation"):
        item, target = key.split()
        return NS(item_id=item, target=target, evidence=[NS(label=label, data=copy.deepcopy(RECORDED[key]))])

    shown = []
    monkeypatch.setattr(rb, "_display", shown.append)
    run = NS(results=[result("RES-2 hardened"), result("RES-4 misconfigured"),
                      NS(item_id="SEC-TLS-1", target="hardened", evidence=[NS(label="observation", data={"t": 1})])])
    assert rb.drill_timelines(run) == 2
    assert all(img.data.startswith(b"\x89PNG") for img in shown)
