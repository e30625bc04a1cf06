"""Drills: act on a staging/reference agent through its real paths and record what happened. Opt-in,
bounded in requests (``active_probes.max_requests``) and seconds (``active_probes.max_seconds``).

Each ``observe_*`` returns a JSON-serialisable observation; the verdicts are pure functions in
``checks/resilience.py`` and ``checks/monitoring.py`` (table-tested on recorded observations).

* ``observe_downstream``: the operator's ``drills.downstream_task`` (a real request that makes the
  agent call its downstream) sent while the runbook's :class:`FaultProxy` sits on that path:
  either the drill starts the agent (``agent_start``) with ``downstream_env`` set to the proxy, or
  the proxy binds to ``fault_proxy_listen``, the address a staging agent already calls. What the
  proxy saw (attempts and their times) and what the agent answered, call by call (RES-1..3).
* ``observe_restart``: the operator's ``long_task``, the agent killed and restarted mid-task
  (``agent_restart``), the task sent again; the snapshot store read through the app's configured
  store (``targets[].app``, in a child process) before the kill, after the restart and at the end
  (RES-4).
* ``observe_drain``: an agent started by ``agent_start``, a request kept in flight by holding back
  the last bytes of its body (a read-only envelope: no handler runs), SIGTERM, the rest of the body
  ``drain_seconds`` later; whether it was answered and when the process exited (MON-HEALTH-4).
* ``timeline_png``: one picture per drill (attempts over time, outage, breaker, SIGTERM, restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from . import _shell
from .checks._registry import CheckContext, Finding
from .errors import ProbeError
from .faultproxy import FaultProxy
from .introspect import child_env
from .probe import envelope, probe_envelope, redact, rpc

DRILL_ITEMS = ("RES-1", "RES-2", "RES-3", "RES-4", "MON-HEALTH-4")  # the checks timeline_png draws
AGENT_START_SECONDS = 40.0   # importing asap.transport takes 1-5 s; 20 s and more on a loaded host


def _fill(value: Any, drill_id: str) -> Any:
    """The operator's template with {drill_id} replaced, recursively."""
    if isinstance(value, str):
        return value.replace("{drill_id}", drill_id)
    if isinstance(value, dict):
        return {k: _fill(v, drill_id) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, drill_id) for v in value]
    return value


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------ an agent the drill starts
class AgentStartFailed(ProbeError):
    evidence: list = []


class AgentProcess:
    """``drills.agent_start`` in the foreground on 127.0.0.1:$PORT (plus `env`), until it answers /health.
    Killed (its whole process group) when the block ends, whatever happened."""

    def __init__(self, ctx: CheckContext, env: dict[str, str] | None = None, clock=None):
        self.ctx, self.env = ctx, env or {}
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: asyncio.subprocess.Process | None = None
        self.timeline: list[dict] = []
        self.polls = 0
        self._t0 = time.monotonic()
        self._clock = clock or (lambda: round(time.monotonic() - self._t0, 3))
        self._log = tempfile.NamedTemporaryFile(prefix="asap-drill-agent-", suffix=".log", delete=False)

    def mark(self, what: str, **kw) -> None:
        self.timeline.append({"t": self._clock(), "event": what} | kw)

    async def __aenter__(self) -> "AgentProcess":
        cmd = self.ctx.target.drills.agent_start
        self.proc = await asyncio.create_subprocess_shell(
            "exec " + cmd, stdout=self._log, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
            env=os.environ | self.env | {"PORT": str(self.port)}, start_new_session=True)
        self.mark("agent started", command=cmd, port=self.port, env=sorted(self.env))
        bound = self.ctx.target.active_probes
        start_bound = min(AGENT_START_SECONDS, bound.max_seconds)
        deadline = time.monotonic() + start_bound
        interval = max(0.4, start_bound / max(1, bound.max_requests - 2))  # polls count against max_requests
        while time.monotonic() < deadline and self.polls < bound.max_requests - 2 and self.proc.returncode is None:
            self.polls += 1
            with contextlib.suppress(ProbeError):
                if (await self.ctx.probe.get(f"{self.base}/health", deadline=1.0)).status == 200:
                    self.mark("agent answers /health")
                    return self
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.proc.wait(), timeout=interval)
        await self.__aexit__()
        err = AgentStartFailed(f"the agent started by drills.agent_start did not answer {self.base}/health "
                               f"(exit code {self.proc.returncode})")
        err.evidence = [("timeline", self.timeline), ("agent output", self.output_tail())]
        self.cleanup()
        raise err

    async def __aexit__(self, *exc) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        self._log.close()

    def output_tail(self, lines: int = 8) -> list[str]:
        from .logs import strip_ansi
        try:
            text = Path(self._log.name).read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return []
        return [redact(strip_ansi(t)[:300], self.ctx.probe.secrets) for t in text]

    def cleanup(self) -> None:
        Path(self._log.name).unlink(missing_ok=True)


async def _task(ctx: CheckContext, url: str | None, skill: str, data: dict, wait: float) -> dict:
    """POST one task.request (to the target, or to `url`'s /asap), paced under the agent's limit (a 429
    is waited out by the probe); what came back, in a small dict."""
    env = envelope(ctx.target.sender, payload={"conversation_id": f"conv_runbook_drill_{uuid.uuid4().hex[:8]}",
                                               "skill_id": skill, "input": data})
    try:
        r = await ctx.probe.request("POST", f"{url or ''}/asap", json_body=rpc(env), authenticated=True,
                                    deadline=wait, timeout=wait)
    except ProbeError as e:
        return {"outcome": "no answer", "detail": e.message}
    payload = ((r.rpc_result() or {}).get("envelope") or {}).get("payload") or {}
    if payload:
        return {"outcome": str(payload.get("status")), "http": r.status, "result": payload.get("result")}
    err = r.rpc_error()
    return {"outcome": "error", "http": r.status,
            "detail": f"{err.get('code')} {err.get('message')}" if err else redact(r.text[:160], ctx.probe.secrets)}


# ------------------------------------------------------------------------------------ RES-1..3
@dataclass
class DownstreamObservation:
    """One RES-1..3 drill: the calls the runbook made to the agent and what reached the fault proxy.
    Times are seconds on the proxy's clock."""
    how: str
    task: dict
    plan: list[str]
    default: str
    calls: list[dict] = field(default_factory=list)      # {n, t0, t1, outcome, http?, detail?, result?}
    arrivals: list[dict] = field(default_factory=list)   # the proxy's timeline
    agent: list[dict] = field(default_factory=list)      # the started agent's own timeline, if any
    seconds: float = 0.0

    def attempts_by_call(self) -> list[list[dict]]:
        """Arrivals at the proxy while each call was open (calls are sequential), in call order."""
        return [[a for a in self.arrivals if c["t0"] <= a["t"] <= c["t1"]] for c in self.calls]

    def as_dict(self) -> dict:
        return asdict(self)


def downstream_prerequisites(ctx: CheckContext) -> Finding | None:
    if (skip := ctx.require_active("drills")) is not None:
        return skip
    d, name = ctx.target.drills, ctx.target.name
    if d.downstream_task is None:
        return Finding.skipped(f"targets[{name}].drills.downstream_task is not set (a real request of the agent that "
                               "makes it call its downstream agent: skill and input)")
    if d.downstream_url is None:
        return Finding.skipped(f"targets[{name}].drills.downstream_url is not set (the downstream agent the fault "
                               "proxy forwards to)")
    if not d.fault_proxy_listen and not (d.downstream_env and d.agent_start):
        missing = "downstream_env" if not d.downstream_env else "agent_start"
        return Finding.skipped(f"targets[{name}].drills.{missing} is not set (the drill starts the agent with the "
                               "downstream variable pointing at its fault proxy), nor drills.fault_proxy_listen "
                               "(the address the staging agent already calls)")
    return None


async def observe_downstream(ctx: CheckContext, phases: dict[str, tuple[list[str], str, int, float]]
                             ) -> dict[str, DownstreamObservation] | Finding:
    """One fault proxy and (without fault_proxy_listen) one agent started for all phases, run in order:
    phase -> (fault plan, default action, calls, pause between calls). RES-1..3 share it per target
    (``ctx.once``): one agent start instead of three, and no two drills on one client at once."""
    if (pre := downstream_prerequisites(ctx)) is not None:
        return pre
    d, bound = ctx.target.drills, ctx.target.active_probes
    down = str(d.downstream_url).rstrip("/")
    try:  # a dead downstream would make every drill look like a fault the proxy did not inject
        async with httpx.AsyncClient(timeout=ctx.params.probe.timeout_seconds, trust_env=False) as c:
            await c.get(down + "/.well-known/asap/manifest.json")
    except httpx.HTTPError as e:
        return Finding.errored(f"drills.downstream_url {down} is unreachable ({type(e).__name__}); "
                               "the drill needs a live downstream agent behind its fault proxy")
    listen = ("127.0.0.1", 0)
    if d.fault_proxy_listen:
        host, _, port = d.fault_proxy_listen.rpartition(":")
        listen = (host, int(port))
    drill_id = uuid.uuid4().hex[:12]
    task = {"skill": d.downstream_task.skill, "input": _fill(d.downstream_task.input, drill_id)}
    out: dict[str, DownstreamObservation] = {}
    try:
        async with FaultProxy(down, max_requests=bound.max_requests, listen=listen) as proxy:
            if d.fault_proxy_listen:
                how = f"the target's own path: its downstream calls reach {d.fault_proxy_listen} (fault proxy -> {down})"
            else:
                how = f"agent started by drills.agent_start with {d.downstream_env}={proxy.url} (fault proxy -> {down})"
            async with contextlib.AsyncExitStack() as stack:
                agent = None
                if not d.fault_proxy_listen:
                    agent = await stack.enter_async_context(AgentProcess(ctx, {d.downstream_env: proxy.url}, proxy.now))
                    stack.callback(agent.cleanup)
                started = time.monotonic()  # the bound counts from here: start-up has its own
                for name, (plan, default, calls, pause) in phases.items():
                    proxy.set_plan(plan, default)
                    obs = out[name] = DownstreamObservation(how=how, task=task, plan=plan, default=default)
                    for n in range(calls):
                        if n and pause:
                            await asyncio.sleep(pause)
                        left = bound.max_seconds - (time.monotonic() - started)
                        if left < 1 or proxy.served >= bound.max_requests:
                            break
                        t0 = proxy.now()
                        answer = await _task(ctx, agent.base if agent else None, task["skill"], task["input"],
                                             min(left, 25.0))
                        obs.calls.append({"n": n + 1, "t0": t0, "t1": proxy.now()} | answer)
                    obs.arrivals = proxy.timeline()
                    obs.seconds = round(obs.calls[-1]["t1"] - obs.calls[0]["t0"], 2) if obs.calls else 0.0
                    if agent:
                        obs.agent = list(agent.timeline)
    except ProbeError as e:
        return Finding.errored(e.message, getattr(e, "evidence", None))
    except OSError as e:  # the listen address is taken or not ours
        return Finding.errored(f"the fault proxy cannot listen on {listen[0]}:{listen[1]}: {e.strerror or e}")
    return out


# --------------------------------------------------------------------------- client policy drill
_POLICY_KEYS = ("timeout", "max_retries", "base_delay", "max_delay", "jitter", "circuit_breaker_enabled",
                "circuit_breaker_threshold", "circuit_breaker_timeout")


def client_policy(ctx: CheckContext) -> tuple[dict | None, str]:
    """The agent's own ASAPClient retry/breaker settings from the source scan: (settings, where) or
    (None, why they cannot be resolved statically). Settings the code leaves out are the library's."""
    from .source import client_usage
    usage = client_usage(ctx.target.source_dir)
    if not usage.clients:
        return None, f"no ASAPClient(...) construction in {ctx.target.source_dir}"
    site = next((c for c in usage.clients if c.long_lived), usage.clients[0])
    where = site.where() + (f" (1 of {len(usage.clients)} constructions)" if len(usage.clients) > 1 else "")
    opaque = [k for k in site.kwargs if k.startswith("**")]
    rc = site.kwargs.get("retry_config")
    if opaque or (rc is not None and not (isinstance(rc, dict) and rc.get("__call__") == "RetryConfig")):
        return None, (f"the ASAPClient at {where} takes {'**' + opaque[0].lstrip('*') if opaque else 'retry_config=' + str(rc)}"
                      ", which cannot be resolved statically")
    settings = {}
    for key in _POLICY_KEYS:
        value, _ = site.setting(key)
        kind = bool if key in ("jitter", "circuit_breaker_enabled") else (int, float)
        if not isinstance(value, kind):
            return None, f"{key} of the ASAPClient at {where} is {value!r}, which cannot be resolved statically"
        settings[key] = value
    return settings, where


async def observe_client_policy(ctx: CheckContext, phases: dict[str, tuple[list[str], str, int, float]],
                                breaker_phase: str | None = None) -> dict[str, DownstreamObservation] | Finding:
    """The agent's ASAPClient re-created in a child process (no agent runs) and driven against the
    fault proxy, phase by phase as observe_downstream does; calls are the client's send()s. The
    settings are known here, so `breaker_phase` gets enough failures to trip the configured threshold."""
    settings, where = client_policy(ctx)
    if settings is None:
        return Finding.skipped(f"client policy drill: {where}; set targets[{ctx.target.name}].drills.downstream_task "
                               "to drill the running agent instead")
    bound = ctx.target.active_probes
    if breaker_phase in phases:
        _, default, calls, pause = phases[breaker_phase]
        trip = settings["circuit_breaker_threshold"] * (settings["max_retries"] + 1)
        phases = phases | {breaker_phase: (["503"] * min(trip, bound.max_requests // 2), default,
                                           max(calls, settings["circuit_breaker_threshold"] + 3), pause)}
    down = str(ctx.target.drills.downstream_url).rstrip("/")
    out: dict[str, DownstreamObservation] = {}
    how = f"the agent's ASAPClient from {where} re-created in a child process ({settings}), not the running agent"
    async with FaultProxy(down, max_requests=bound.max_requests) as proxy:
        spec = {"url": proxy.url, "settings": settings, "t0": proxy._t0, "sender": ctx.target.sender,
                "phases": {k: [calls, pause] for k, (_, _, calls, pause) in phases.items()}}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "asap_runbook.drills", "--client-policy", json.dumps(spec),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            env=child_env(None, {}, (ctx.target.token_env,) if ctx.target.token_env else ()))
        try:
            ready = await asyncio.wait_for(proc.stdout.readline(), AGENT_START_SECONDS)
            if not ready.startswith(b"ready"):
                return Finding.errored(f"the client policy drill's child did not start: {ready.decode()[:200]}")
            started = time.monotonic()
            for name, (plan, default, calls, pause) in phases.items():
                proxy.set_plan(plan, default)
                obs = out[name] = DownstreamObservation(how=how, task={"skill": "client.send", "input": {}},
                                                        plan=plan, default=default)
                left = bound.max_seconds - (time.monotonic() - started)
                proc.stdin.write((name + "\n").encode())
                await proc.stdin.drain()
                line = await asyncio.wait_for(proc.stdout.readline(), max(1.0, left))
                obs.calls = json.loads(line)
                obs.arrivals = proxy.timeline()
        except (asyncio.TimeoutError, ValueError):
            return Finding.errored(f"the client policy drill did not finish within active_probes.max_seconds "
                                   f"({bound.max_seconds:g} s)")
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    return out


def _client_policy_child(spec: dict) -> int:
    """Child: build the client as the agent does, then per phase name on stdin run its calls and print
    them as one JSON line (times on the parent's proxy clock: CLOCK_MONOTONIC is system-wide)."""
    out = os.fdopen(os.dup(1), "w")  # our protocol; whatever the library logs (at import too) goes to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    from asap.errors import ASAPError
    from asap.models.envelope import Envelope
    from asap.transport import ASAPClient, RetryConfig

    s = spec["settings"]
    rc = RetryConfig(**{k: v for k, v in s.items() if k != "timeout"})

    async def run() -> None:
        async with ASAPClient(spec["url"], timeout=s["timeout"], require_https=False, retry_config=rc) as client:
            print("ready", file=out, flush=True)
            for line in sys.stdin:
                calls, pause = spec["phases"][line.strip()]
                done = []
                for n in range(calls):
                    if n and pause:
                        await asyncio.sleep(pause)
                    t0 = time.monotonic() - spec["t0"]
                    env = Envelope(asap_version="0.1", sender=spec["sender"], recipient="urn:asap:agent:downstream",
                                   payload_type="task.request",
                                   payload={"conversation_id": "conv_client_policy_drill", "skill_id": "echo",
                                            "input": {"call": n}})
                    try:
                        await client.send(env)
                        outcome = {"outcome": "completed"}
                    except ASAPError as e:
                        outcome = {"outcome": "failed", "detail": type(e).__name__}
                    done.append({"n": n + 1, "t0": round(t0, 3), "t1": round(time.monotonic() - spec["t0"], 3)} | outcome)
                print(json.dumps(done), file=out, flush=True)

    asyncio.run(run())
    return 0


# ------------------------------------------------------------------------------------------ RES-4
class SnapshotReader:
    """The app's configured snapshot store, read in a child process that imports the app
    (``targets[].app`` with its ``app_env``): what a restart cannot fake."""

    def __init__(self, ctx: CheckContext):
        self.ctx = ctx
        self.proc: asyncio.subprocess.Process | None = None
        self.info: dict = {}

    async def __aenter__(self) -> "SnapshotReader":
        t = self.ctx.target
        env = child_env(t.app_path, t.app_env, (t.token_env,) if t.token_env else ())
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "asap_runbook.introspect", "--snapshots", t.app, env=env,
            cwd=str(t.app_path) if t.app_path else None,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        try:
            self.info = json.loads(await asyncio.wait_for(self.proc.stdout.readline(), AGENT_START_SECONDS) or b"{}")
        except (asyncio.TimeoutError, ValueError):
            self.info = {"ok": False, "error": f"importing {t.app} to read its snapshot store did not answer within "
                                               f"{AGENT_START_SECONDS:g} s"}
        return self

    async def read(self, task_id: str) -> dict:
        if not self.info.get("ok") or self.info.get("kind") == "memory":
            return {"readable": False}
        self.proc.stdin.write((task_id + "\n").encode())
        await self.proc.stdin.drain()
        try:
            doc = json.loads(await asyncio.wait_for(self.proc.stdout.readline(), 10))
        except (asyncio.TimeoutError, ValueError):
            return {"readable": False, "error": "the store did not answer within 10 s"}
        if not doc.get("ok"):
            return {"readable": False, "error": doc.get("error")}
        return {"readable": True, "versions": doc["versions"]}

    async def __aexit__(self, *exc) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def _store_state(read: dict) -> dict:
    """Small: the versions present and the snapshot id of each (a rewritten version gets a new id)."""
    if not read.get("readable"):
        return read
    vs = read["versions"]
    return {"readable": True, "versions": [v["version"] for v in vs], "ids": {str(v["version"]): v["id"] for v in vs},
            "latest": vs[-1]["data"] if vs else None}


def restart_prerequisites(ctx: CheckContext) -> Finding | None:
    if (skip := ctx.require_active("drills")) is not None:
        return skip
    t = ctx.target
    if t.drills.long_task is None:
        return Finding.skipped(f"targets[{t.name}].drills.long_task is not set (a real long-running task of the "
                               "agent that saves snapshots: skill and input, with {drill_id} in it)")
    if t.drills.agent_restart is None:
        return Finding.skipped(f"targets[{t.name}].drills.agent_restart is not set (a command that kills the agent "
                               "and has it come back)")
    if t.app is None:
        return Finding.skipped(f"targets[{t.name}].app is not set (module:attribute of the agent's app: the drill "
                               "reads the snapshot store the app is configured with)")
    return None


async def observe_restart(ctx: CheckContext, kill_after_versions: int = 2) -> dict | Finding:
    """Start the long task; once `kill_after_versions` snapshots are in the store (or 3 s for a store
    that cannot be read from outside), run the restart command; send the same task again."""
    if (pre := restart_prerequisites(ctx)) is not None:
        return pre
    d, bound = ctx.target.drills, ctx.target.active_probes
    drill_id = f"drill{uuid.uuid4().hex[:10]}"
    data = _fill(d.long_task.input, drill_id)
    task_id = _fill(d.snapshot_task_id, drill_id)
    t0 = time.monotonic()
    log: list[dict] = []

    def note(what: str, **kw) -> None:
        log.append({"t": round(time.monotonic() - t0, 2), "event": what} | kw)

    wait = max(5.0, bound.max_seconds)
    obs: dict[str, Any] = {"task": {"skill": d.long_task.skill, "input": data}, "snapshot_task_id": task_id,
                           "timeline": log}
    async with SnapshotReader(ctx) as store:
        obs["store"] = {k: store.info.get(k) for k in ("store", "kind", "error")}
        if not store.info.get("ok"):  # nothing to judge from: do not kill the agent for nothing
            obs["store"]["error"] = obs["store"]["error"] or "no answer from the store reader"
            return obs
        first = asyncio.ensure_future(_task(ctx, None, d.long_task.skill, data, wait))
        note("task sent", drill_id=drill_id)
        before: dict = {"readable": False}
        sent = time.monotonic()
        while time.monotonic() - sent < min(bound.max_seconds / 2, 15) and not first.done():
            before = _store_state(await store.read(task_id))
            if not before.get("readable"):
                await asyncio.sleep(3.0)
                break
            if len(before["versions"]) >= kill_after_versions:
                break
            await asyncio.sleep(0.3)
        obs["before_kill"] = before
        note("store before the kill", versions=before.get("versions"))
        if first.done():
            obs["first_run"] = first.result()
            note("task answered before the restart", outcome=obs["first_run"]["outcome"])
            obs["restart"] = None
            return obs
        note("restart command", command=d.agent_restart)
        res = await _shell.run(d.agent_restart, bound.max_seconds, merge_stderr=True)
        obs["restart"] = res.evidence("drills.agent_restart")
        obs["restart"]["output"] = redact(obs["restart"]["output"], ctx.probe.secrets)
        code = res.returncode  # None: killed at the timeout
        note("restart command finished", exit_code=code)
        if code != 0:  # nothing was restarted: the task left running is not the drill's any more
            first.cancel()
            return obs
        obs["first_run"] = await first
        note("first run ended", outcome=obs["first_run"]["outcome"])
        deadline = time.monotonic() + AGENT_START_SECONDS
        while time.monotonic() < deadline:  # the agent is back when its health endpoint answers
            with contextlib.suppress(ProbeError):
                if (await ctx.probe.get("/health")).status == 200:
                    break
            await asyncio.sleep(0.3)
        note("agent back")
        obs["after_restart"] = _store_state(await store.read(task_id))
        note("store after the restart", versions=obs["after_restart"].get("versions"))
        obs["second_run"] = await _task(ctx, None, d.long_task.skill, data, wait)
        note("task sent again answered", outcome=obs["second_run"]["outcome"])
        obs["final"] = _store_state(await store.read(task_id))
        note("store at the end", versions=obs["final"].get("versions"))
    obs["seconds"] = round(time.monotonic() - t0, 2)
    return obs


# ---------------------------------------------------------------------------------- MON-HEALTH-4
async def observe_drain(ctx: CheckContext, grace: float, grace_from: str) -> dict | Finding:
    """The request stays in flight because its body is not finished: the server has read the headers
    and the app is waiting for the rest. The body is a read-only envelope (answered -32012, no handler)."""
    if (skip := ctx.require_active("drills")) is not None:
        return skip
    d = ctx.target.drills
    if not d.agent_start:
        return Finding.skipped(f"targets[{ctx.target.name}].drills.agent_start is not set (a command that starts "
                               "the agent in the foreground on 127.0.0.1:$PORT)")
    hold = min(d.drain_seconds, ctx.target.active_probes.max_seconds / 4)
    body = json.dumps(rpc(probe_envelope(ctx.target.sender))).encode()
    obs: dict[str, Any] = {"grace_seconds": grace, "grace_from": grace_from, "held_seconds": hold}
    try:
        agent = await AgentProcess(ctx).__aenter__()
    except ProbeError as e:
        return Finding.errored(e.message, getattr(e, "evidence", None))
    try:
        headers = ctx.probe.auth_headers() | {"Content-Type": "application/json", "Content-Length": str(len(body)),
                                              "Host": f"127.0.0.1:{agent.port}"}
        head = "POST /asap HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        reader, writer = await asyncio.open_connection("127.0.0.1", agent.port)
        writer.write(head.encode() + body[:-8])
        await writer.drain()
        agent.mark("request in flight: headers and all but the last 8 bytes of the body sent")
        await asyncio.sleep(0.5)
        os.kill(agent.proc.pid, signal.SIGTERM)
        t_sig = time.monotonic()
        agent.mark("SIGTERM")
        await asyncio.sleep(0.3)
        try:
            r = await ctx.probe.get(f"{agent.base}/health", deadline=1.0)
            agent.mark("new connection after SIGTERM", outcome=f"answered HTTP {r.status}")
        except ProbeError as e:
            agent.mark("new connection after SIGTERM", outcome=f"refused ({e.message[:80]})")
        await asyncio.sleep(max(0.0, hold - (time.monotonic() - t_sig)))
        try:
            writer.write(body[-8:])
            await writer.drain()
            agent.mark("rest of the body sent")
            raw = await asyncio.wait_for(reader.read(65536), timeout=grace + 5)
        except (ConnectionError, asyncio.TimeoutError) as e:
            raw = b""
            agent.mark("request ended without an answer", error=type(e).__name__)
        writer.close()
        status_line = raw.split(b"\r\n", 1)[0].decode("latin-1") if raw else ""
        status = int(status_line.split()[1]) if status_line.startswith("HTTP/") and len(status_line.split()) > 1 else None
        obs["response_status"] = status
        agent.mark("in-flight request " + (f"answered: {status_line}" if status else "cut: no answer"))
        budget = ctx.target.active_probes.max_seconds
        wait = max(0.5, min(grace + 1, budget - (time.monotonic() - t_sig)))
        try:
            await asyncio.wait_for(agent.proc.wait(), timeout=wait)
            obs["exited_after_seconds"] = round(time.monotonic() - t_sig, 2)
            agent.mark("agent exited", exit_code=agent.proc.returncode)
        except asyncio.TimeoutError:
            obs["exited_after_seconds"] = None
            obs["waited_seconds"] = round(wait, 1)
            agent.mark(f"agent still running {wait:g} s after SIGTERM: SIGKILL (as the kubelet would)")
    finally:
        await agent.__aexit__()
    obs["timeline"] = agent.timeline
    obs["agent_output"] = agent.output_tail()
    agent.cleanup()
    return obs


# ------------------------------------------------------------------------------------- timelines
_COLOURS = {"ok": "#2e7d32", "503": "#c62828", "reset": "#6a1b9a", "429": "#ef6c00", "slow": "#1565c0"}


def _colour(action: str) -> str:
    return _COLOURS.get(action.split(":")[0], "#555555")


def timeline_png(item_id: str, target: str, observation: dict) -> bytes | None:
    """One drill's timeline as a PNG: the agent's answers (green completed, red anything else), the
    attempts the fault proxy saw (coloured by the fault it injected; the outage shaded), and the
    events (SIGTERM to exit, the restart, snapshot counts read from the store). None when there is
    nothing to draw."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arrivals, calls = observation.get("arrivals") or [], observation.get("calls") or []
    events = observation.get("timeline") or []
    times = [a["t"] for a in arrivals] + [c["t0"] for c in calls] + [e["t"] for e in events]
    if not times:
        return None
    origin = min(times)  # the agent's start-up is in the evidence, not on the picture
    fig, ax = plt.subplots(figsize=(8, 2.8), dpi=100)
    rows = []
    if calls:
        for c in calls:
            good = c.get("outcome") == "completed"
            ax.plot([c["t0"] - origin, c["t1"] - origin], [2, 2], lw=7, solid_capstyle="butt",
                    color="#2e7d32" if good else "#c62828")
        rows.append((2, "agent's answers"))
    if arrivals:
        for a in arrivals:
            ax.scatter([a["t"] - origin], [1.2], color=_colour(a["action"]), s=30, zorder=3)
        for action in sorted({a["action"].split(":")[0] for a in arrivals}):
            ax.scatter([], [], color=_colour(action), label=f"proxy: {action}", s=30)
        fails = [a["t"] - origin for a in arrivals if a["action"] != "ok"]
        if fails:
            ax.axvspan(min(fails), max(fails), color="#c62828", alpha=0.08, label="outage (faults injected)")
        rows.append((1.2, "attempts at the proxy"))
    marks = {e["event"]: e["t"] - origin for e in events}
    for start, end, label in (("SIGTERM", "agent exited", "SIGTERM to exit"),
                              ("restart command", "agent back", "killed and restarting")):
        if start in marks:
            ax.axvspan(marks[start], marks.get(end, marks[start]) + 0.05, color="#ef6c00", alpha=0.15, label=label)
    for i, e in enumerate(events):
        if "versions" in e:
            text = f"{len(e['versions'] or [])} snapshots" if e["versions"] is not None else "store not readable"
        elif any(w in e["event"] for w in ("SIGTERM", "exited", "in flight", "in-flight", "answered", "task sent",
                                            "restart command", "first run")):
            text = e["event"][:34]
        else:
            continue
        ax.scatter([e["t"] - origin], [0.5], marker="|", color="#333333", s=120)
        ax.annotate(text, (e["t"] - origin, 0.5 + (0.28 if i % 2 else -0.38)), fontsize=6, ha="center")
    if events:
        rows.append((0.5, "events"))
    ax.set_yticks([r[0] for r in rows], [r[1] for r in rows])
    ax.set_ylim(-0.1, 2.5)
    ax.set_xlabel("seconds (drill clock)")
    ax.set_title(f"{item_id} on {target}", fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, loc="upper right", ncol=4)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--client-policy":
        raise SystemExit(_client_policy_child(json.loads(sys.argv[2])))
    print("usage: python -m asap_runbook.drills --client-policy SPEC", file=sys.stderr)
    raise SystemExit(2)
