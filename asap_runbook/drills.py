"""Drills: act on a staging/reference agent and watch what it does (RES-1..4). Opt-in, bounded.

* ``lookup_drill``: start a :class:`FaultProxy` on a free loopback port in front of a real
  downstream agent (``targets[].drills.downstream_url``), ask the agent under test to call it
  (its ``lookup`` drill skill, which takes the downstream URL in its input), and return what the
  proxy saw plus what the agent answered.
* ``restart_drill``: start a checkpointing task (``checkpoint`` skill), kill and restart the
  agent mid-task with the operator's ``drills.agent_restart`` command, run the task again and
  report where it resumed.

Both need the agent to expose the drill skills (the reference agents do; a staging build of a
real agent can ship the same two skills). Without them the drill is skipped, never passed.
"""

from __future__ import annotations

import asyncio
import shlex
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from .checks._registry import CheckContext, Finding
from .errors import ProbeError
from .faultproxy import FaultProxy
from .probe import envelope


@dataclass
class LookupRun:
    plan: list[str]
    default: str
    arrivals: list[dict]
    agent_status: str | None
    agent_result: Any
    calls: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    evidence: list = field(default_factory=list)

    def attempts_by_call(self) -> list[list[dict]]:
        """Arrivals grouped by envelope id (retries resend the same envelope), in order."""
        groups: dict[str, list[dict]] = {}
        for a in self.arrivals:
            groups.setdefault(a["envelope_id"] or f"?{a['n']}", []).append(a)
        return list(groups.values())


async def _prerequisites(ctx: CheckContext, skill: str, need: str) -> Finding | None:
    if (skip := ctx.require_active("drills")) is not None:
        return skip
    if getattr(ctx.target.drills, need) is None:
        return Finding.skipped(f"targets[{ctx.target.name}].drills.{need} is not set")
    try:
        manifest = await ctx.probe.manifest()
    except ProbeError as e:
        return Finding.errored(e.message)
    skills = [s.get("id") for s in (manifest.get("capabilities") or {}).get("skills") or []]
    if skill not in skills:
        return Finding.skipped(f"the agent exposes no `{skill}` drill skill (skills: {', '.join(map(str, skills))}); "
                               "run this drill on a staging build that has it, or confirm by hand")
    return None


async def _call_skill(ctx: CheckContext, skill: str, data: dict, wait: float) -> tuple[Any, Any, dict]:
    """POST one task.request; return (task status, task result, exchange evidence)."""
    env = envelope(ctx.target.sender, payload={"conversation_id": "conv_runbook_drill", "skill_id": skill, "input": data})
    r = await ctx.probe.send(env, deadline=wait, timeout=wait)  # paced under the agent's rate limit
    res = r.rpc_result() or {}
    payload = ((res.get("envelope") or {}).get("payload")) or {}
    if not payload:
        err = r.rpc_error()
        raise ProbeError(f"the agent did not run the `{skill}` skill: HTTP {r.status}"
                         + (f", {err.get('code')} {err.get('message')}" if err else ""))
    return payload.get("status"), payload.get("result"), r.evidence


async def lookup_drill(ctx: CheckContext, plan: list[str], default: str, calls: int,
                       pause: float = 0.0) -> LookupRun | Finding:
    if (pre := await _prerequisites(ctx, "lookup", "downstream_url")) is not None:
        return pre
    bound = ctx.target.active_probes
    wait = min(bound.max_seconds, 25.0)
    down = ctx.target.drills.downstream_url
    try:  # a dead downstream would make every drill look like a fault the proxy did not inject
        async with httpx.AsyncClient(timeout=ctx.params.probe.timeout_seconds, trust_env=False) as c:
            await c.get(down + "/.well-known/asap/manifest.json")
    except httpx.HTTPError as e:
        return Finding.errored(f"drills.downstream_url {down} is unreachable ({type(e).__name__}); "
                               "the drill needs a live downstream agent behind its fault proxy")
    return await _lookup_through_proxy(ctx, plan, default, calls, pause, wait, time.monotonic())


async def _lookup_through_proxy(ctx, plan, default, calls, pause, wait, t0) -> LookupRun | Finding:
    bound = ctx.target.active_probes
    async with FaultProxy(ctx.target.drills.downstream_url, plan=plan, default=default,
                          max_requests=bound.max_requests) as proxy:
        sent = {"skill": "lookup", "downstream_url": proxy.url + " (fault proxy -> " + ctx.target.drills.downstream_url + ")",
                "calls": calls, "pause_seconds": pause, "fault plan": plan + [f"then {default}"],
                "bounds": f"at most {bound.max_requests} requests reach the proxy, {wait:g} s"}
        try:
            status, result, exchange = await _call_skill(
                ctx, "lookup", {"downstream_url": proxy.url, "calls": calls, "pause_seconds": pause}, wait)
        except ProbeError as e:
            return Finding.errored(e.message, [("drill", sent), ("proxy saw", proxy.timeline())])
    run = LookupRun(plan=plan, default=default, arrivals=proxy.timeline(), agent_status=status, agent_result=result,
                    calls=(result or {}).get("calls", []) if isinstance(result, dict) else [],
                    seconds=round(time.monotonic() - t0, 2))
    run.evidence = [("drill (what was sent)", sent),
                    ("what the fault proxy saw (t = seconds since start)", run.arrivals),
                    ("what the agent reported per downstream call", run.calls or result),
                    ("agent's answer", exchange)]
    return run


async def _run_command(command: str, timeout: float) -> tuple[int, str]:
    argv = [sys.executable if a == "{python}" else a for a in shlex.split(command)]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                                                stdin=asyncio.subprocess.DEVNULL)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, f"did not finish within {timeout:g} s"
    return proc.returncode, out.decode(errors="replace").strip()[-500:]


async def restart_drill(ctx: CheckContext, steps: int = 8, step_seconds: float = 1.5,
                        kill_after: float = 3.2) -> dict | Finding:
    """The first run is slow (steps x step_seconds = 12 s) so the restart command, whatever its own
    start-up costs, lands mid-task; the kill is requested after ~2 checkpoints. The second run of the
    same task id goes fast (0.05 s a step): where it resumes is the finding, not how long it takes."""
    if (pre := await _prerequisites(ctx, "checkpoint", "agent_restart")) is not None:
        return pre
    bound = ctx.target.active_probes
    if bound.max_seconds < steps * step_seconds + 3:
        return Finding.skipped(f"the restart drill needs about {steps * step_seconds + 3:g} s; "
                               f"targets[{ctx.target.name}].active_probes.max_seconds is {bound.max_seconds:g}")
    task_id = f"drill-{uuid.uuid4().hex[:12]}"
    data = {"task_id": task_id, "steps": steps, "step_seconds": step_seconds}
    wait = steps * step_seconds + 5
    log: list[dict] = []
    t0 = time.monotonic()

    def note(what: str, **kw) -> None:
        log.append({"t": round(time.monotonic() - t0, 2), "event": what, **kw})

    first = asyncio.ensure_future(_call_skill(ctx, "checkpoint", data, wait))
    note("started task", task_id=task_id, steps=steps, step_seconds=step_seconds)
    await asyncio.sleep(kill_after)
    note("restart command", command=ctx.target.drills.agent_restart)
    code, out = await _run_command(ctx.target.drills.agent_restart, timeout=min(bound.max_seconds, 30))
    note("restart command finished", exit_code=code, output=out)
    try:
        status, result, _ = await first
        note("first run answered", status=status, result=result)
        finished_first = True
    except ProbeError as e:
        note("first run interrupted", error=e.message)
        finished_first = False
    if code != 0:
        return Finding.errored(f"the restart command failed (exit {code}): {out.splitlines()[-1] if out else ''}",
                               [("drill timeline", log)])
    if finished_first:
        return Finding.errored("the task finished before the restart, so the drill proved nothing "
                               "(the restart came too late)", [("drill timeline", log)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the agent is back when its health endpoint answers
        try:
            if (await ctx.probe.get("/health")).status == 200:
                break
        except ProbeError:
            pass
        await asyncio.sleep(0.2)
    note("agent back")
    try:
        status, result, exchange = await _call_skill(ctx, "checkpoint", data | {"step_seconds": 0.05}, wait)
    except ProbeError as e:
        return Finding.errored(f"after the restart: {e.message}", [("drill timeline", log)])
    note("second run answered", status=status, result=result)
    return {"task_id": task_id, "status": status, "result": result or {}, "timeline": log, "exchange": exchange}
