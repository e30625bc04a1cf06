"""Monitoring checks (checklist: Monitoring), one module per subsection, each check an observation and
a pure verdict: mon_metrics (MON-METRICS-*), mon_logging (MON-LOG-*), mon_health (MON-HEALTH-1..3),
mon_alerting (MON-ALERT-*). MON-HEALTH-4, the drain drill, is here.

asap-protocol 2.5.10 (reference §2, §7): `/asap/metrics` claims OpenMetrics but serves classic
text, duration buckets are cumulated twice, counters are per worker, `/ready` is a constant and
`correlation_id` is never logged. Each check looks for the consequence an SRE would meet.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import tempfile
import time
from pathlib import Path

import httpx

from .. import k8s, logs
from ..errors import ProbeError
from ..probe import envelope, redact, rpc
from . import mon_alerting, mon_health, mon_logging, mon_metrics  # noqa: F401  (they register their checks)
from ._registry import CheckContext, Finding, check

SLOW_REQUEST_SECONDS = 3.0


def _k8s_grace(ctx: CheckContext) -> tuple[float, str]:
    if ctx.target.k8s_manifests:
        for w in k8s.workloads(k8s.documents(ctx.target.k8s_manifests)):
            g, explicit = w.grace_seconds()
            return float(g), f"terminationGracePeriodSeconds of {w.where}" + ("" if explicit else " (Kubernetes default)")
    return float(k8s.DEFAULT_GRACE_SECONDS), "Kubernetes default terminationGracePeriodSeconds (no manifest given)"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# exclusive: it times a drain, and other probes' load would skew it; it starts its own agent, so needs no target
@check("MON-HEALTH-4", exclusive=True, needs=("token",))
async def graceful_shutdown(ctx: CheckContext) -> Finding:
    """Drill: start the agent, send a slow request, SIGTERM; the request completes, the process exits in time."""
    skip = ctx.require_active("drills")
    if skip:
        return skip
    cmd = ctx.target.drills.agent_start
    if not cmd:
        return Finding.skipped(f"set targets[{ctx.target.name}].drills.agent_start (a command that starts the agent "
                               "in the foreground on 127.0.0.1:$PORT)")
    budget = ctx.target.active_probes.max_seconds
    grace, grace_from = _k8s_grace(ctx)
    slow = min(SLOW_REQUEST_SECONDS, budget / 4)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    logf = tempfile.NamedTemporaryFile(prefix="asap-drain-drill-", suffix=".log", delete=False)
    timeline: list[dict] = []
    t0 = time.monotonic()
    max_polls, polls = ctx.target.active_probes.max_requests, 0

    def mark(what: str, **kw) -> None:
        timeline.append({"t_s": round(time.monotonic() - t0, 2), "what": what} | kw)

    proc = await asyncio.create_subprocess_shell("exec " + cmd, stdout=logf, stderr=asyncio.subprocess.STDOUT,
                                                 env=os.environ | {"PORT": str(port)}, start_new_session=True)
    mark("agent_start", command=cmd, pid=proc.pid, port=port)
    try:
        started = False
        # start-up (importing asap.transport, ~1-5 s; more on a loaded host) has its own bound
        while time.monotonic() - t0 < min(15.0, budget * 0.75) and polls < max_polls - 2:
            if proc.returncode is not None:
                break
            polls += 1
            try:
                r = await ctx.probe.get(f"{base}/health", deadline=1.0)
                if r.status == 200:
                    started = True
                    break
            except ProbeError:
                pass
            try:
                await asyncio.wait_for(proc.wait(), timeout=0.5)
            except asyncio.TimeoutError:
                pass
        if not started:
            return Finding.errored(f"the agent started by drills.agent_start did not answer {base}/health "
                                   f"(exit code {proc.returncode})", [("timeline", timeline), ("agent output", _tail(logf.name, ctx))])
        mark("agent answers /health")
        env = envelope(ctx.target.sender, payload={"conversation_id": "conv_runbook_drain", "skill_id": "sleep",
                                                   "input": {"seconds": slow}})

        async def slow_request():
            # its own client: the probe's read timeout is shorter than the slow request on purpose
            headers = ctx.probe.auth_headers() | {"Content-Type": "application/json"}
            try:
                async with httpx.AsyncClient(timeout=slow + grace + 5, trust_env=False) as client:
                    return await client.post(f"{base}/asap", content=json.dumps(rpc(env)), headers=headers)
            except httpx.HTTPError as e:
                return e

        req = asyncio.create_task(slow_request())
        mark(f"slow request sent (skill sleep, {slow:g} s)")
        await asyncio.sleep(min(0.8, slow / 3))
        os.kill(proc.pid, signal.SIGTERM)
        t_sig = time.monotonic()
        mark("SIGTERM sent to the agent process", pid=proc.pid)
        await asyncio.sleep(0.3)
        try:
            r = await ctx.probe.get(f"{base}/health", deadline=1.0)
            mark("new connection after SIGTERM", outcome=f"answered HTTP {r.status}")
        except ProbeError as e:
            mark("new connection after SIGTERM", outcome=f"refused ({e.message[:80]})")
        wait = max(slow + 2, min(grace, budget - (time.monotonic() - t0)))  # stays inside the check timeout
        try:
            await asyncio.wait_for(proc.wait(), timeout=wait)
            exited_at = time.monotonic() - t_sig
            mark("agent exited", exit_code=proc.returncode, after_sigterm_s=round(exited_at, 2))
        except asyncio.TimeoutError:
            exited_at = None
            os.killpg(proc.pid, signal.SIGKILL)  # what the kubelet does when the grace period ends
            await proc.wait()
            mark(f"agent still running {wait:g} s after SIGTERM: SIGKILL (as the kubelet would)")
        result = await req
        if isinstance(result, Exception):
            outcome, completed = f"failed: {type(result).__name__}: {str(result)[:160]}", False
        else:
            try:
                res = ((result.json().get("result") or {}).get("envelope") or {}).get("payload") or {}
            except (ValueError, AttributeError):
                res = {}
            completed = result.status_code == 200 and res.get("status") == "completed"
            outcome = f"HTTP {result.status_code}" + (f", task {res.get('status')}" if res
                                                      else f": {redact(result.text[:120], ctx.probe.secrets)}")
        mark("slow request finished", outcome=outcome)
    finally:
        if proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()
        logf.close()
    ev = [("drill timeline (seconds from agent_start)", timeline), ("grace period", f"{grace:g} s ({grace_from})"),
          ("sent", f"{polls} GET /health while the agent started, 1 POST /asap (skill sleep, {slow:g} s), "
                   "SIGTERM, 1 GET /health after it"),
          ("agent output (tail)", _tail(logf.name, ctx))]
    Path(logf.name).unlink(missing_ok=True)
    if not isinstance(result, Exception) and result.status_code == 429:  # refused: nothing was in flight
        return Finding.errored(f"the agent's rate limiter refused the drill's slow request ({outcome}); "
                               "nothing was in flight when SIGTERM came", ev)
    if not completed:
        return Finding.failed(f"the in-flight {slow:g} s request did not complete after SIGTERM ({outcome})", ev)
    if exited_at is None:
        return Finding.failed(f"the in-flight request completed but the process did not exit within {wait:g} s "
                              f"of SIGTERM (grace {grace:g} s)", ev)
    if exited_at > grace:
        return Finding.failed(f"the process exited {exited_at:.1f} s after SIGTERM, beyond the {grace:g} s grace period", ev)
    return Finding.passed(f"in-flight {slow:g} s request completed ({outcome}) and the process exited "
                          f"{exited_at:.1f} s after SIGTERM, within the {grace:g} s grace period", ev)


def _tail(path: str, ctx: CheckContext, lines: int = 8) -> list[str]:
    try:
        text = Path(path).read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []
    return [redact(logs.strip_ansi(t)[:300], ctx.probe.secrets) for t in text]
