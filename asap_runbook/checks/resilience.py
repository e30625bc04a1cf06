"""Resilience checks (checklist: Resilience): drills through the agent's real paths, judged from
what the runbook observed, never from what the agent says about itself.

RES-1..3: the operator's real request that makes the agent call its downstream, with the fault
proxy on that path (``drills.observe_downstream``); the verdicts read the proxy's timeline (attempts
per call, their spacing, calls that stop reaching the downstream and resume) and the agent's answers.
RES-4: the operator's long task, the agent killed and restarted mid-task, the snapshot store read
through the app's configured store (``drills.observe_restart``).

Each check is ``judge_x(await observe(ctx))``; the judges are pure and table-tested on recorded
observations (tests/verdicts/test_resilience.py).
"""

from __future__ import annotations

from typing import Any

from ..drills import DownstreamObservation, observe_client_policy, observe_downstream, observe_restart
from ._registry import AGENT_TOKEN, CheckContext, Finding, check

GAP_TOLERANCE = 0.9  # a retry "honours Retry-After: N" if it came at least 0.9 N seconds later
GROWTH = 1.1         # exponential backoff doubles each gap; 10% margin so timing noise is not "growth"

# The fault schedules (consumed in arrival order at the proxy, then the default). Short: a drill is
# bounded by active_probes.max_requests / max_seconds.
RETRY = (["503", "ok", "503", "503", "ok", "429:1", "ok"], "ok", 3, 0.0)
# call 1 warms the retry path up (one-time costs such as lazy imports would stretch the first gap);
# call 2 meets 503, 503, then success (gaps must grow); call 3 meets 429 Retry-After: 1 (gap >= 1 s)
BREAKER = (["503", "reset", "503", "503", "503", "503"], "ok", 8, 0.5)
# the downstream fails six times (503s and a connection reset), then recovers
FALLBACK = (["ok"], "503", 2, 0.0)
# one good answer, then the downstream fails for good
PHASES = {"RES-1": RETRY, "RES-2": BREAKER, "RES-3": FALLBACK}  # in this order, on one agent and proxy
CLIENT_PHASES = {"RES-1": RETRY, "RES-2": BREAKER}


async def _phase(ctx: CheckContext, item_id: str) -> DownstreamObservation | Finding:
    """The running agent's path when the params name its real request; otherwise, for retries and the
    breaker, the client policy drill (the agent's ASAPClient from its source, in a child process)."""
    d = ctx.target.drills
    if d.downstream_task is None and ctx.target.source_dir and d.downstream_url and ctx.target.active_probes.drills:
        if item_id not in CLIENT_PHASES:
            return Finding.skipped(f"targets[{ctx.target.name}].drills.downstream_task is not set: a fallback is the "
                                   "agent's own code, only the running agent shows it (the client policy drill "
                                   "covers retries and the breaker)")
        out = await ctx.once("client-policy-drill", lambda: observe_client_policy(ctx, CLIENT_PHASES, "RES-2"))
    else:
        out = await ctx.once("downstream-drill", lambda: observe_downstream(ctx, PHASES))
    return out if isinstance(out, Finding) else out[item_id]


def _evidence(obs: DownstreamObservation, extra: list | None = None) -> list:
    return [("observation", obs.as_dict())] + (extra or [])


def _obs(obs: DownstreamObservation | dict) -> DownstreamObservation:
    return obs if isinstance(obs, DownstreamObservation) else DownstreamObservation(**obs)


def _refused(obs: DownstreamObservation) -> Finding | None:
    """The drill proves nothing if the agent never ran the task (auth, limits, unknown skill)."""
    bad = [c for c in obs.calls if c.get("outcome") in ("error", "no answer") and not c.get("result")]
    if obs.calls and len(bad) == len(obs.calls) and not obs.arrivals:
        c = bad[0]
        return Finding.errored(f"the agent did not run drills.downstream_task ({obs.task['skill']}): "
                               f"{c.get('outcome')}, {c.get('detail') or 'HTTP ' + str(c.get('http'))}", _evidence(obs))
    if not obs.calls:
        return Finding.errored("the drill sent no request within its bounds (active_probes.max_seconds)", _evidence(obs))
    if not obs.arrivals:
        return Finding.errored(f"no request reached the fault proxy: drills.downstream_task ({obs.task['skill']}) "
                               "did not make the agent call its downstream through it", _evidence(obs))
    return None


def _judged(obs: DownstreamObservation | Finding, judge) -> Finding:
    if isinstance(obs, Finding):
        return obs
    f = judge(obs)
    if obs.how.startswith("the agent's ASAPClient"):
        f.summary = f"client policy drill ({obs.how.split(' re-created')[0].removeprefix('the ')}): {f.summary}"
    return f


@check("RES-1", needs=AGENT_TOKEN)
async def retries_with_backoff(ctx: CheckContext) -> Finding:
    return _judged(await _phase(ctx, "RES-1"), judge_retries)


def judge_retries(obs: DownstreamObservation | dict) -> Finding:
    """Retries: a call that met a fault reached the proxy again; gaps grow; Retry-After is honoured."""
    obs = _obs(obs)
    if (bad := _refused(obs)) is not None:
        return bad
    groups = [g for g in obs.attempts_by_call() if g]
    failed_first = [g for g in groups if g[0]["action"] != "ok"]
    if not failed_first:
        return Finding.errored("no call met a fault (the proxy saw nothing failing)", _evidence(obs))
    no_retry = [g for g in failed_first if len(g) == 1]
    if no_retry:
        return Finding.failed(f"the agent did not retry: {len(no_retry)} call(s) got {no_retry[0][0]['action']} from "
                              f"the downstream and were never sent again ({len(obs.arrivals)} requests reached the "
                              f"proxy for {len(obs.calls)} calls)", _evidence(obs))
    problems, seen, growth_seen = [], [], False
    for g in groups:
        gaps = [round(b["t"] - a["t"], 3) for a, b in zip(g, g[1:])]
        seen.append({"attempts": [a["action"] for a in g], "gaps_s": gaps})
        for a, gap in zip(g, gaps):
            if a["action"].startswith("429:"):
                want = float(a["action"].split(":")[1])
                if gap < want * GAP_TOLERANCE:
                    problems.append(f"retried {gap:.2f} s after a 429 with Retry-After: {want:g}")
        plain = [gap for a, gap in zip(g, gaps) if not a["action"].startswith("429")]
        if len(plain) >= 2 and any(b < a * GROWTH for a, b in zip(plain, plain[1:])):
            problems.append(f"gaps between retries did not grow: {plain}")
        growth_seen |= len(plain) >= 2
    ev = _evidence(obs, [("retries per call (gaps in seconds)", seen)])
    if problems:
        return Finding.failed("; ".join(problems), ev)
    if not growth_seen:
        return Finding.warned("the agent retried, but never twice in a row, so growing backoff was not shown", ev)
    ok = [c for c in obs.calls if c.get("outcome") == "completed"]
    return Finding.passed(f"retried with growing gaps ({'; '.join(str(s['gaps_s']) for s in seen if s['gaps_s'])} s) "
                          f"and honoured Retry-After; {len(ok)} of {len(obs.calls)} request(s) then completed", ev)


@check("RES-2", needs=AGENT_TOKEN)
async def circuit_breaker(ctx: CheckContext) -> Finding:
    return _judged(await _phase(ctx, "RES-2"), judge_breaker)


def judge_breaker(obs: DownstreamObservation | dict) -> Finding:
    """Open: after failing calls, a call of the agent's that no longer reaches the downstream.
    Half-open: a later call reaches it again (and, the downstream recovered, succeeds)."""
    obs = _obs(obs)
    if (bad := _refused(obs)) is not None:
        return bad
    groups = obs.attempts_by_call()
    per_call = [{"call": c["n"], "attempts": len(g), "actions": [a["action"] for a in g], "answer": c.get("outcome")}
                for c, g in zip(obs.calls, groups)]
    ev = _evidence(obs, [("attempts at the proxy per call", per_call)])
    failing = [i for i, g in enumerate(groups) if g and all(a["action"] != "ok" for a in g)]
    if not failing:
        return Finding.errored("no call met only faults: the breaker was never tested", ev)
    kept_home = [i for i, g in enumerate(groups) if not g and i > failing[0]]
    if not kept_home:
        return Finding.failed(f"every one of the {len(obs.calls)} calls reached the failing downstream "
                              f"({len(obs.arrivals)} requests at the proxy, {len(failing)} calls met only faults): "
                              "no circuit breaker stopped them", ev)
    resumed = [i for i, g in enumerate(groups) if g and i > kept_home[0]]
    summary = (f"after {len([i for i in failing if i < kept_home[0]])} failed call(s) the circuit opened: "
               f"{len(kept_home)} call(s) never reached the downstream")
    if not resumed:
        return Finding.warned(summary + "; no call reached it again within the drill (no half-open probe seen)", ev)
    recovered = [i for i in resumed if any(a["action"] == "ok" for a in groups[i])]
    return Finding.passed(summary + f"; then call {resumed[0] + 1} reached it again (half-open)"
                          + (f" and {len(recovered)} call(s) succeeded once it recovered" if recovered else ""), ev)


@check("RES-3", needs=AGENT_TOKEN)
async def fallback(ctx: CheckContext) -> Finding:
    return _judged(await _phase(ctx, "RES-3"), judge_fallback)


def judge_fallback(obs: DownstreamObservation | dict) -> Finding:
    """With the downstream failing, the agent still answers the request (completed), not an error."""
    obs = _obs(obs)
    if (bad := _refused(obs)) is not None:
        return bad
    groups = obs.attempts_by_call()
    ev = _evidence(obs)
    if not obs.calls or obs.calls[0].get("outcome") != "completed":
        first = obs.calls[0] if obs.calls else {}
        return Finding.errored(f"the request did not complete even with the downstream healthy "
                               f"({first.get('outcome')}: {first.get('detail') or first.get('result')})", ev)
    during = [(c, g) for c, g in zip(obs.calls[1:], groups[1:])]
    if not during or any(a["action"] == "ok" for _, g in during for a in g):
        return Finding.errored("the downstream failure was never exercised", ev)
    c, g = during[0]
    seen = f"{len(g)} attempt(s) at the proxy, all failing" if g else "no attempt reached the downstream"
    if c.get("outcome") == "completed":
        return Finding.passed(f"with the downstream failing ({seen}), the agent still answered: the task completed "
                              f"(result {_short(c.get('result'))})", ev)
    return Finding.failed(f"with the downstream failing ({seen}), the agent answered {c.get('outcome')}: "
                          f"{_short(c.get('result') or c.get('detail'))}, no fallback answer", ev)


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


@check("RES-4", exclusive=True, needs=AGENT_TOKEN)
async def resumable_tasks(ctx: CheckContext) -> Finding:
    obs = await observe_restart(ctx)
    return obs if isinstance(obs, Finding) else judge_resume(obs)


def judge_resume(obs: dict) -> Finding:
    """Resumed = the snapshots saved before the kill are still in the store after the restart, and the
    task sent again added the later versions without rewriting the early ones (same snapshot ids)."""
    ev = [("observation", obs)]
    store, before = obs.get("store") or {}, obs.get("before_kill") or {}
    if store.get("error") or "restart" not in obs:
        return Finding.errored(f"the snapshot store could not be read: {store['error']}", ev)
    if obs.get("restart") is None:
        return Finding.errored("the task finished before the restart, so the drill proved nothing "
                               "(give drills.long_task more work)", ev)
    if obs["restart"]["exit_code"] != 0:
        out = (obs["restart"].get("output") or "").splitlines()
        code = obs["restart"]["exit_code"]
        return Finding.errored(f"the restart command failed{'' if code is None else f' (exit {code})'}: "
                               f"{out[-1] if out else ''}", ev)
    second = obs.get("second_run") or {}
    if store.get("kind") == "memory":
        return Finding.failed(f"the snapshot store is {store['store']['class']}, inside the agent process: the "
                              f"restart took the task's snapshots with it, nothing can resume (the task sent again "
                              f"ended {second.get('outcome')})", ev)
    if not before.get("versions"):
        return Finding.errored(f"no snapshot of task {obs['snapshot_task_id']!r} was in the store before the kill "
                               "(is drills.snapshot_task_id the id the task saves under?)", ev)
    after, final = obs.get("after_restart") or {}, obs.get("final") or {}
    kept = [v for v in before["versions"] if v in (after.get("versions") or [])]
    if len(kept) < len(before["versions"]):
        return Finding.failed(f"the restart lost snapshots: versions {before['versions']} were in the store before "
                              f"the kill, {after.get('versions')} after it", ev)
    if second.get("outcome") != "completed":
        return Finding.failed(f"the task sent again after the restart ended {second.get('outcome')}: "
                              f"{_short(second.get('result') or second.get('detail'))}", ev)
    survived = after["versions"]
    rewritten = [v for v in survived if (final.get("ids") or {}).get(str(v)) != after["ids"][str(v)]]
    if rewritten:
        return Finding.failed(f"the task started over after the restart: snapshot versions {rewritten}, saved before "
                              "the kill, were written again", ev)
    last = max(survived)
    added = [v for v in final.get("versions") or [] if v > last]
    if not added:
        return Finding.errored(f"the kill came after the task's last snapshot ({last}): nothing was left to resume "
                               "(give drills.long_task more work)", ev)
    return Finding.passed(f"killed mid-task and restarted: the {len(survived)} snapshots saved before the kill "
                          f"survived and the task sent again continued from there (versions {added[0]}..{added[-1]} "
                          "added, earlier ones untouched)", ev)
