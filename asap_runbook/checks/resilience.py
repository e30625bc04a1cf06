"""Resilience checks (checklist: Resilience): drills, observed from a fault proxy's side.

Each drill asks the agent under test to call a downstream agent through a fault-injecting
proxy (``asap_runbook.faultproxy``) and judges what reached the proxy, not what the agent
claims. Opt-in per target (``active_probes.drills``), bounded in requests and seconds.
"""

from __future__ import annotations

from ..drills import LookupRun, lookup_drill, restart_drill
from ._registry import AGENT_TOKEN, CheckContext, Finding, check

GAP_TOLERANCE = 0.9  # a retry "honours Retry-After: N" if it came at least 0.9 N seconds later


@check("RES-1", needs=AGENT_TOKEN)
async def retries_with_backoff(ctx: CheckContext) -> Finding:
    """Call 1 warms the retry path up (503, then success: one-time costs such as lazy imports on the
    agent's first retry would otherwise stretch the first gap on a busy host); call 2 meets 503, 503,
    then success (gaps must grow); call 3 meets 429 Retry-After: 1, then success (gap >= 1 s)."""
    run = await lookup_drill(ctx, plan=["503", "ok", "503", "503", "ok", "429:1", "ok"], default="ok", calls=3)
    if isinstance(run, Finding):
        return run
    return judge_retries(run)


def judge_retries(run: LookupRun) -> Finding:
    """RES-1's verdict from the proxy's timeline (a pure function, so odd clients can be tested)."""
    ev = run.evidence
    groups = run.attempts_by_call()
    failed_first = [g for g in groups if g[0]["action"] != "ok"]
    if not failed_first:
        return Finding.errored("no call met a fault (the proxy saw nothing failing)", ev)
    no_retry = [g for g in failed_first if len(g) == 1]
    if no_retry:
        return Finding.failed(f"the agent did not retry: {len(no_retry)} call(s) got {no_retry[0][0]['action']} and "
                              f"were never sent again ({len(run.arrivals)} requests reached the proxy for "
                              f"{len(run.calls) or '?'} calls)", ev)
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
        # exponential backoff doubles each gap; 10% margin so timing noise on a busy host is not "growth"
        if len(plain) >= 2 and any(b < a * 1.1 for a, b in zip(plain, plain[1:])):
            problems.append(f"gaps between retries did not grow: {plain}")
        growth_seen |= len(plain) >= 2
    ev.append(("retries per call (gaps in seconds)", seen))
    if problems:
        return Finding.failed("; ".join(problems), ev)
    if not growth_seen:
        return Finding.warned("the agent retried, but never twice in a row, so growing backoff was not shown", ev)
    ok = [c for c in run.calls if c.get("outcome") == "ok"]
    return Finding.passed(f"retried with growing gaps ({'; '.join(str(s['gaps_s']) for s in seen)} s) and honoured "
                          f"Retry-After; {len(ok)} of {len(run.calls)} call(s) then succeeded", ev)


@check("RES-2", needs=AGENT_TOKEN)
async def circuit_breaker(ctx: CheckContext) -> Finding:
    """The downstream fails five times (503, a connection reset, a response slower than any sane client
    timeout, 503, 503), then recovers. A breaker stops the calls after its threshold, then lets a
    half-open probe through."""
    run = await lookup_drill(ctx, plan=["503", "reset", "slow:5", "503", "503"], default="ok", calls=8, pause=0.5)
    if isinstance(run, Finding):
        return run
    ev = run.evidence
    groups = run.attempts_by_call()
    blocked = [c for c in run.calls if c.get("error") == "CircuitOpenError"]
    reached = len(groups)
    ev.append(("calls that reached the proxy", f"{reached} of {len(run.calls)}"))
    if not blocked and reached >= len(run.calls):
        return Finding.failed(f"all {len(run.calls)} calls reached the failing downstream "
                              f"({len(run.arrivals)} requests): no circuit breaker stopped them", ev)
    if not blocked:
        return Finding.errored(f"{len(run.calls) - reached} call(s) never reached the proxy, but the agent did not "
                               "report CircuitOpenError", ev)
    last_blocked = max(c["call"] for c in blocked)
    resumed = [c for c in run.calls if c["call"] > last_blocked and c.get("outcome") == "ok"]
    first_fail_groups = [g for g in groups if all(a["action"] != "ok" for a in g)]
    summary = (f"after {len(first_fail_groups)} failed call(s) the circuit opened: {len(blocked)} call(s) failed fast "
               f"with CircuitOpenError without reaching the proxy")
    if not resumed:
        return Finding.warned(summary + "; no half-open probe got through within the drill", ev)
    return Finding.passed(summary + f"; then a half-open probe reached the recovered downstream and "
                          f"{len(resumed)} later call(s) succeeded", ev)


@check("RES-3", needs=AGENT_TOKEN)
async def fallback(ctx: CheckContext) -> Finding:
    """One good answer, then the downstream fails for good: the critical call must still answer."""
    run = await lookup_drill(ctx, plan=["ok"], default="503", calls=2)
    if isinstance(run, Finding):
        return run
    ev = run.evidence
    failing = [c for c in run.calls if c.get("call", 0) >= 1]
    if not failing or not any(a["action"] != "ok" for a in run.arrivals):
        return Finding.errored("the downstream failure was never exercised", ev)
    used = [c for c in failing if c.get("outcome") == "fallback"]
    if used and run.agent_status == "completed":
        return Finding.passed(f"with the downstream failing ({failing[0].get('error')}), the agent answered from its "
                              f"fallback ({used[0].get('value')!r}) and the task completed", ev)
    return Finding.failed(f"with the downstream failing the task ended '{run.agent_status}': "
                          f"{failing[0].get('outcome')} ({failing[0].get('error')}), no fallback", ev)


@check("RES-4", exclusive=True, needs=AGENT_TOKEN)
async def resumable_tasks(ctx: CheckContext) -> Finding:
    """Kill the agent mid-task, restart it, run the task again: it must resume from its last snapshot."""
    out = await restart_drill(ctx)
    if isinstance(out, Finding):
        return out
    res = out["result"]
    ev = [("drill timeline (t = seconds)", out["timeline"]), ("answer after the restart", out["exchange"])]
    start = res.get("resumed_from_step")
    store = res.get("snapshot_store", "?")
    if out["status"] != "completed" or start is None:
        return Finding.errored(f"the task did not complete after the restart (status {out['status']})", ev)
    if start >= 1:
        return Finding.passed(f"killed mid-task and restarted: the task resumed from step {start} of "
                              f"{res.get('completed_steps')} (snapshots in {store} survived the restart)", ev)
    return Finding.failed(f"killed mid-task and restarted: the task started over from step 0 — the snapshots saved "
                          f"before the kill were lost with the process ({store})", ev)

