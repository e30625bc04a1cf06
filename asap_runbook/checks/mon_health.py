"""Monitoring > Health and Readiness (MON-HEALTH-1..3; MON-HEALTH-4, the drain drill, is in
monitoring.py): observe the endpoints, the dependency drill's timeline and the manifests; judge purely.

The endpoints judged are the ones the orchestrator probes: `targets[].readiness_path`, else the
readinessProbe / livenessProbe of the manifests, else asap-protocol's `/ready` and `/health`. A stock
Deployment often probes `/readyz`, which asap-protocol does not serve. What readiness *reflects* is
judged by the dependency drill (MON-HEALTH-2), never by the text of its body: a constant
`{"status":"ok"}` and a wired check look the same until a dependency goes away.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

from .. import k8s
from .. import _shell
from ..errors import ProbeError
from ._observe import judged
from ._registry import AGENT, CheckContext, Finding, check

ASAP_LIVENESS, ASAP_READINESS = "/health", "/ready"  # what asap-protocol's create_app serves
ASAP_HEALTH = "/.well-known/asap/health"
# endpoints an agent serves that are not health endpoints: a probe on them restarts or parks the pod
NOT_HEALTH = {"/asap": "the JSON-RPC endpoint (POST only: a GET answers 405)",
              "/asap/metrics": "the metrics endpoint (it answers while the agent cannot serve)",
              "/.well-known/asap/manifest.json": "the manifest (static: it answers while the agent cannot serve)"}
DRILL_COMMAND_TIMEOUT = 15.0
READINESS_REACTION_SECONDS = 5.0  # how long readiness may take to notice the outage (one probe period)
_DRILL_LOCK = threading.Lock()  # one dependency drill at a time in this process, whatever the event loop


async def _run(cmd: str) -> tuple[bool, dict]:
    """A drill command through the one runner; (succeeded, what the evidence keeps)."""
    res = await _shell.run(cmd, DRILL_COMMAND_TIMEOUT, merge_stderr=True)
    return res.ok, res.evidence("the drill command")


@dataclass(frozen=True)
class Endpoint:
    role: str  # liveness | readiness
    path: str
    source: str  # where the path comes from, for the summary


def endpoints(target) -> dict[str, Endpoint]:
    """The liveness and readiness paths the orchestrator uses for this target."""
    found: dict[str, Endpoint] = {}
    if target.readiness_path:
        found["readiness"] = Endpoint("readiness", target.readiness_path, f"targets[{target.name}].readiness_path")
    if target.k8s_manifests:
        for w in k8s.workloads(k8s.documents(target.k8s_manifests)):
            for c in w.agent_containers():
                for role, p in k8s.probes(c).items():
                    if role in ("liveness", "readiness") and p is not None and p.path and role not in found:
                        found[role] = Endpoint(role, p.path, f"{role}Probe of {w.where}")
    found.setdefault("liveness", Endpoint("liveness", ASAP_LIVENESS, "asap-protocol's default"))
    found.setdefault("readiness", Endpoint("readiness", ASAP_READINESS, "asap-protocol's default"))
    return found


# ------------------------------------------------------------------------------ MON-HEALTH-1
@dataclass
class EndpointAnswer:
    role: str  # liveness | readiness | asap-health
    path: str
    source: str
    status: int | None  # None: no HTTP answer (see error)
    content_type: str = ""
    body: str = ""
    error: str | None = None
    exchange: dict = field(default_factory=dict)


@dataclass
class HealthObservation:
    answers: list[EndpointAnswer]  # GETs without credentials


async def observe_health(ctx: CheckContext) -> HealthObservation:
    eps = list(endpoints(ctx.target).values()) + [Endpoint("asap-health", ASAP_HEALTH, "asap-protocol")]
    answers = []
    for ep in eps:
        try:
            r = await ctx.probe.get(ep.path)  # unauthenticated, as a kubelet or a load balancer asks
            answers.append(EndpointAnswer(ep.role, ep.path, ep.source, r.status, r.headers.get("content-type", ""),
                                          r.text[:300], exchange=r.evidence))
        except ProbeError as e:
            answers.append(EndpointAnswer(ep.role, ep.path, ep.source, None, error=e.message))
    return HealthObservation(answers)


def _why_not_200(a: EndpointAnswer) -> str:
    if a.status is None:
        return f"did not answer ({a.error})"
    hint = {401: ": it demands credentials, which orchestrator probes never send",
            403: ": it refuses unauthenticated callers, which orchestrator probes are",
            404: ": the agent does not serve it",
            405: ": it does not answer GET"}.get(a.status, "")
    return f"answered HTTP {a.status}{hint}"


def judge_health(obs: HealthObservation) -> Finding:
    """Both endpoints the orchestrator probes answer 200 without credentials. JSON or not, and what the
    body says, are not judged: probes read the status code, and what readiness reflects is the drill's."""
    ev = [(f"GET {a.path} ({a.role}, from {a.source})", a.exchange or {"error": a.error}) for a in obs.answers]
    by_role = {a.role: a for a in obs.answers}
    problems = [f"{a.role} {a.path} ({a.source}) {_why_not_200(a)}"
                for role in ("liveness", "readiness") if (a := by_role.get(role)) and a.status != 200]
    if problems:
        return Finding.failed("; ".join(problems), ev)
    live, ready = by_role["liveness"], by_role["readiness"]
    same = " (the same body as liveness)" if ready.body.strip() == live.body.strip() else ""
    return Finding.passed(f"liveness {live.path} and readiness {ready.path} ({ready.source}) answer 200 without "
                          f"credentials; readiness says {ready.body.strip()[:80]!r}{same}: whether it follows the "
                          "agent's dependencies is MON-HEALTH-2's drill, not its text", ev)


@check("MON-HEALTH-1", needs=AGENT)
async def health_endpoints(ctx: CheckContext) -> Finding:
    """The liveness and readiness endpoints the orchestrator probes answer 200 without credentials."""
    obs = await observe_health(ctx)
    return judged(judge_health(obs), obs)


# ------------------------------------------------------------------------------ MON-HEALTH-2
@dataclass
class ReadinessDrillObservation:
    path: str
    source: str
    before: dict  # {status, body} of readiness before the stop
    stop: dict | None = None  # {command, exit_code, seconds, output}
    start: dict | None = None
    failed_at_s: float | None = None  # after the stop returned, when readiness turned non-200
    recovered_at_s: float | None = None  # after the start returned, when it was 200 again
    reaction_window_s: float = READINESS_REACTION_SECONDS
    recovery_window_s: float = 0.0
    polls: int = 0
    max_polls: int = 0
    timeline: list[dict] = field(default_factory=list)


async def _ready_status(ctx: CheckContext, path: str) -> tuple[int | None, str]:
    try:
        r = await ctx.probe.get(path, deadline=2.0)
        return r.status, r.text[:120]
    except ProbeError as e:
        return None, e.message


async def observe_readiness_drill(ctx: CheckContext) -> ReadinessDrillObservation | Finding:
    if (skip := ctx.require_active("drills")) is not None:
        return skip
    d = ctx.target.drills
    if not (d.dependency_stop and d.dependency_start):
        return Finding.skipped(f"targets[{ctx.target.name}].drills.dependency_stop and dependency_start are not set "
                               "(commands that stop and start a dependency of the agent)")
    ep = endpoints(ctx.target)["readiness"]
    status, body = await _ready_status(ctx, ep.path)
    budget = ctx.target.active_probes.max_seconds
    obs = ReadinessDrillObservation(ep.path, ep.source, {"status": status, "body": body}, polls=1,
                                    max_polls=ctx.target.active_probes.max_requests,
                                    reaction_window_s=min(READINESS_REACTION_SECONDS, budget / 3),
                                    recovery_window_s=budget / 2)
    if status != 200:
        return obs
    t0 = time.monotonic()

    def mark(what: str, **kw) -> None:
        obs.timeline.append({"t_s": round(time.monotonic() - t0, 2), "what": what} | kw)

    await asyncio.to_thread(_DRILL_LOCK.acquire)
    t0 = time.monotonic()  # after the lock: another target's drill may have held it
    try:
        stopped, obs.stop = await _run(d.dependency_stop)
        mark("dependency_stop", **obs.stop)
        if stopped:
            t_stop = time.monotonic()  # the window starts when the stop command has returned
            while True:
                obs.polls += 1
                status, body = await _ready_status(ctx, ep.path)
                if status != 200:
                    obs.failed_at_s = round(time.monotonic() - t_stop, 2)
                    mark(f"{ep.path} not ready", status=status, body=body)
                    break
                if time.monotonic() - t_stop >= obs.reaction_window_s or obs.polls >= obs.max_polls:
                    mark(f"{ep.path} still 200 {time.monotonic() - t_stop:.1f} s after the stop returned",
                         status=status, body=body)
                    break
                await asyncio.sleep(0.2)
    finally:
        started, obs.start = await _run(d.dependency_start)
        mark("dependency_start", **obs.start)
        _DRILL_LOCK.release()
    t_start = time.monotonic()
    if started:
        while time.monotonic() - t_start < obs.recovery_window_s and obs.polls < obs.max_polls:
            obs.polls += 1
            status, body = await _ready_status(ctx, ep.path)
            if status == 200:
                obs.recovered_at_s = round(time.monotonic() - t_start, 2)
                mark(f"{ep.path} ok again", status=status, body=body)
                break
            await asyncio.sleep(0.2)
    return obs


def judge_readiness_drill(obs: ReadinessDrillObservation) -> Finding:
    ev = [("drill timeline (seconds from dependency_stop)", obs.timeline),
          ("sent", f"{obs.polls} GET {obs.path} ({obs.source}; cap active_probes.max_requests = {obs.max_polls}), "
                   "polled every 0.2 s; the two commands above")]
    path = obs.path
    if obs.before.get("status") != 200:
        return Finding.errored(f"{path} is not 200 before the drill (got {obs.before.get('status')}: "
                               f"{obs.before.get('body')}); cannot run the drill", ev)
    if not obs.stop or obs.stop.get("exit_code") != 0:
        out = (obs.stop or {}).get("output", "")
        return Finding.errored(f"dependency_stop failed (exit {(obs.stop or {}).get('exit_code')}): {out[:200]}", ev)
    if not obs.start or obs.start.get("exit_code") != 0:
        return Finding.errored(f"dependency_start failed (exit {(obs.start or {}).get('exit_code')}): "
                               f"{(obs.start or {}).get('output', '')[:200]}; the dependency may still be down", ev)
    if obs.failed_at_s is None:
        return Finding.failed(f"{path} stayed 200 for {obs.reaction_window_s:g} s ({obs.polls} polls) while the "
                              "dependency was stopped: readiness is not wired to it, so traffic keeps flowing to an "
                              "agent that cannot serve", ev)
    if obs.recovered_at_s is None:
        return Finding.failed(f"{path} failed {obs.failed_at_s:.1f} s after the stop but did not recover within "
                              f"{obs.recovery_window_s:g} s of dependency_start", ev)
    turned = next((e.get("status") for e in obs.timeline if "not ready" in e.get("what", "")), "non-200")
    return Finding.passed(f"{path} turned {turned} {obs.failed_at_s:.1f} s after dependency_stop and 200 again "
                          f"{obs.recovered_at_s:.1f} s after dependency_start", ev)


@check("MON-HEALTH-2", exclusive=True, needs=AGENT)
async def readiness_follows_dependency(ctx: CheckContext) -> Finding:
    """Drill: stop a dependency, readiness must fail; start it again, readiness must recover."""
    obs = await observe_readiness_drill(ctx)
    return obs if isinstance(obs, Finding) else judged(judge_readiness_drill(obs), obs)


# ------------------------------------------------------------------------------ MON-HEALTH-3
@dataclass
class ProbeConfigObservation:
    readiness_path: str | None  # targets[].readiness_path, when the parameters name one
    containers: list[dict]  # per agent container: probes, ports, grace, preStop, drain, shell wrapping
    workloads: int = 0


def _probe_row(p: k8s.HttpProbe | None, c: dict) -> dict | None:
    if p is None:
        return None
    kind = "httpGet" if "httpGet" in p.raw else next((k for k in ("tcpSocket", "exec", "grpc") if k in p.raw), "?")
    return {"type": kind, "path": p.path, "port": p.port, "port_declared": k8s.port_known(c, p.port)}


async def observe_probe_config(ctx: CheckContext) -> ProbeConfigObservation | Finding:
    if not ctx.target.k8s_manifests:
        return Finding.skipped(f"targets[{ctx.target.name}].k8s_manifests is not set")
    wls = k8s.workloads(k8s.documents(ctx.target.k8s_manifests))
    rows = []
    for w in wls:
        grace, explicit = w.grace_seconds()
        for c in w.agent_containers():
            pr = k8s.probes(c)
            drain, how = k8s.drain_seconds(c, ctx.target.process_config)
            rows.append({"container": f"{w.where} container {c.get('name')}",
                         "liveness": _probe_row(pr["liveness"], c), "readiness": _probe_row(pr["readiness"], c),
                         "grace_s": grace, "grace_explicit": explicit, "preStop_sleep_s": k8s.prestop_sleep_seconds(c),
                         "drain_s": drain, "drain_from": how, "shell_wrapped": k8s.shell_wrapped(c)})
    return ProbeConfigObservation(ctx.target.readiness_path, rows, len(wls))


def judge_probe_config(obs: ProbeConfigObservation) -> Finding:
    """Probes exist, are HTTP probes on health endpoints (the readiness one the parameters name, when they
    do) on declared ports, and preStop + drain fit in the grace period. Whether the agent answers those
    paths is MON-HEALTH-1's probe (it GETs the manifest's paths)."""
    if not obs.workloads:
        return Finding.failed("the Kubernetes manifests hold no workload (Deployment, StatefulSet, Pod, ...)")
    if not obs.containers:
        return Finding.errored(f"none of the {obs.workloads} workload(s) in the manifests has a container recognised "
                               "as the agent: no probe to judge")
    problems, warnings = [], []
    for row in obs.containers:
        name = row["container"]
        for role in ("liveness", "readiness"):
            p = row[role]
            if p is None:
                problems.append(f"{name}: no {role}Probe")
                continue
            if p["type"] != "httpGet":
                warnings.append(f"{name}: {role}Probe is a {p['type']} probe: it shows the process is there, not "
                                "that the agent answers")
                continue
            if p["path"] in NOT_HEALTH:
                problems.append(f"{name}: {role}Probe path {p['path']} is {NOT_HEALTH[p['path']]}")
            elif role == "readiness" and obs.readiness_path and p["path"] != obs.readiness_path:
                problems.append(f"{name}: readinessProbe path {p['path']!r}, but the agent's readiness endpoint is "
                                f"{obs.readiness_path!r} (targets[].readiness_path)")
            if not p["port_declared"]:
                problems.append(f"{name}: {role}Probe port {p['port']!r} is not a declared containerPort")
        lp, rp = row["liveness"], row["readiness"]
        if lp and rp and lp["type"] == rp["type"] == "httpGet" and lp["path"] == rp["path"]:
            warnings.append(f"{name}: liveness and readiness probe the same path {lp['path']}: a dependency outage "
                            "that should only take the pod out of rotation restarts it")
        if row["shell_wrapped"]:
            problems.append(f"{name}: the agent runs under `sh -c` without exec, so SIGTERM stops at the shell "
                            "(PID 1) and the agent is killed at the end of the grace period without draining")
        grace, pre, drain = row["grace_s"], row["preStop_sleep_s"], row["drain_s"]
        if drain is None:
            warnings.append(f"{name}: {row['drain_from']}")
            if pre >= grace:
                problems.append(f"{name}: preStop sleep {pre:g} s is not shorter than the {grace} s grace period")
        elif pre + drain >= grace:
            problems.append(f"{name}: preStop {pre:g} s + drain {drain:g} s ({row['drain_from']}) is not shorter than "
                            f"terminationGracePeriodSeconds {grace}" + ("" if row["grace_explicit"] else " (default)"))
    ev = [("containers", obs.containers)]
    if problems:
        return Finding.failed("; ".join(problems), ev)
    paths = sorted({f"{r['liveness']['path']} / {r['readiness']['path']}" for r in obs.containers
                    if r["liveness"] and r["readiness"]})
    if warnings:
        return Finding.warned(f"probes (liveness / readiness) on {', '.join(paths) or 'non-HTTP checks'}; "
                              + "; ".join(warnings), ev)
    return Finding.passed(f"{len(obs.containers)} agent container(s): HTTP probes (liveness / readiness) on "
                          f"{', '.join(paths)}, declared ports, preStop + drain shorter than the termination grace "
                          "period", ev)


@check("MON-HEALTH-3")
async def k8s_probes(ctx: CheckContext) -> Finding:
    """Liveness and readiness probes on health endpoints; grace period longer than the drain time."""
    obs = await observe_probe_config(ctx)
    return obs if isinstance(obs, Finding) else judged(judge_probe_config(obs), obs)
