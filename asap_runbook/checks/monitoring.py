"""Monitoring checks (checklist: Monitoring): metrics, logging, health and readiness, alerting.

asap-protocol 2.5.10 (reference §2, §7): `/asap/metrics` claims OpenMetrics but serves classic
text, duration buckets are cumulated twice, counters are per worker, `/ready` is a constant and
`correlation_id` is never logged. Each check below looks for the consequence an SRE would meet.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import threading
import time
import uuid

from .. import alerting, k8s, logs
from .. import metrics_text as mt
from .. import monitoring_live as live
from ..errors import ProbeError
from ..probe import envelope, probe_envelope, redact
from ..prom import prom_for
from ._registry import AGENT, AGENT_TOKEN, CheckContext, Finding, check

REQUIRED_FAMILIES = ("asap_requests_total", "asap_requests_error_total", "asap_request_duration_seconds")
BUILTIN_READY = {"status": "ok"}  # asap-protocol's constant /ready body
LIVENESS_PATHS = ("/health", "/.well-known/asap/health")
READINESS_PATHS = ("/ready",)
DRILL_COMMAND_TIMEOUT = 15.0
READINESS_REACTION_SECONDS = 5.0  # how long /ready may take to notice the outage (one probe period)
_DRILL_LOCK = threading.Lock()  # one dependency drill at a time in this process, whatever the event loop


# ------------------------------------------------------------------------------------- metrics
async def _fetch_metrics(ctx: CheckContext):
    resp = await ctx.probe.get("/asap/metrics")
    exp = mt.parse_exposition(resp.text, resp.headers.get("content-type", "")) if resp.status == 200 else None
    return resp, exp


async def _metrics(ctx: CheckContext):
    """One scrape shared by the metrics checks of a target (they run concurrently)."""
    return await ctx.once("mon.metrics", lambda: _fetch_metrics(ctx))


@check("MON-METRICS-1", needs=AGENT)
async def metrics_exposed(ctx: CheckContext) -> Finding:
    """`/asap/metrics` answers and parses as the format its content type claims."""
    resp, exp = await _metrics(ctx)
    ev = [("GET /asap/metrics", resp.evidence)]
    if resp.status != 200:
        return Finding.failed(f"GET /asap/metrics answered HTTP {resp.status}, not 200", ev)
    ct = resp.headers.get("content-type", "(none)")
    fmt = {"openmetrics": "OpenMetrics", "prometheus-text": "Prometheus text"}.get(exp.claimed_format, exp.claimed_format)
    ev.append(("parse", {"content_type": ct, "claimed_format": exp.claimed_format, "parse_error": exp.error,
                         "other_parser_accepts": exp.other_format_ok, "families": len(exp.families)}))
    if exp.error:
        hint = ""
        if exp.claimed_format == "openmetrics" and exp.other_format_ok:
            hint = ("; the body is classic Prometheus text, so the content type is wrong and stock Prometheus "
                    "refuses the scrape ('data does not end with # EOF')")
        return Finding.failed(f"/asap/metrics is served as {ct} but does not parse as {fmt}: {exp.error}{hint}", ev)
    asap = sorted(n for n in mt.family_names(exp) if n.startswith("asap_"))
    if not asap:
        return Finding.failed(f"/asap/metrics parses as {fmt} but holds no asap_* metric family", ev)
    return Finding.passed(f"/asap/metrics parses as {fmt} ({ct}): {len(exp.families)} families, {len(asap)} asap_*", ev)


def _counter_values(exp: mt.Exposition) -> dict[tuple, float]:
    out = {}
    for fam in exp.families.values():
        if fam.type == "counter":
            for s in fam.samples:
                if s.name.endswith("_total"):
                    out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@check("MON-METRICS-3", needs=AGENT_TOKEN)
async def metrics_tracked(ctx: CheckContext) -> Finding:
    """The families the checklist names exist, histograms are sane, counters never go backwards."""
    resp, exp = await _metrics(ctx)
    ev = [("GET /asap/metrics", resp.evidence)]
    if resp.status != 200 or exp is None or not exp.families:
        return Finding.failed(f"no readable metrics at /asap/metrics (HTTP {resp.status}"
                              + (f", {exp.error}" if exp and exp.error else "") + ")", ev)
    names = mt.family_names(exp)
    missing = [n for n in REQUIRED_FAMILIES if n not in names]
    if missing:
        return Finding.failed(f"missing metric families: {', '.join(missing)}", ev)
    sent = None
    if exp.total("asap_request_duration_seconds_count") == 0:
        # an idle histogram is all zeros and shows nothing: one request gives it an observation. Read-only:
        # refused before any handler (-32012), which asap-protocol still observes (status="error")
        r = await ctx.probe.send(probe_envelope(ctx.target.sender))
        sent = {"why": "the latency histogram had no observation; one read-only request was sent",
                "request": r.evidence.get("request"), "status": r.status}
    await asyncio.sleep(0.5)
    second = await ctx.probe.get("/asap/metrics")
    exp2 = mt.parse_exposition(second.text, second.headers.get("content-type", ""))
    if sent:
        ev.append(("traffic sent", sent))
    problems = {}
    for fam in exp2.families.values():
        if fam.type != "histogram":
            continue
        for labels, buckets in mt.histogram_series(exp2, fam.name).items():
            found = mt.histogram_problems(buckets)
            if found and any(v for _, v in buckets):
                problems[f"{fam.name}{dict(labels)}"] = found
    backwards = []
    before, after = _counter_values(exp), _counter_values(exp2)
    for key, v in before.items():
        if key in after and after[key] < v:
            backwards.append(f"{key[0]}{dict(key[1])}: {v:g} -> {after[key]:g}")
    ev.append(("second scrape (0.5 s later) checks", {"histogram_problems": problems or "none",
                                                      "counters_backwards": backwards or "none"}))
    if problems:
        first = next(iter(problems.items()))
        return Finding.failed(
            f"{len(problems)} histogram series are broken, e.g. {first[0]}: {first[1][0]}; quantiles computed "
            "from them (histogram_quantile) are wrong (asap-protocol double-cumulates the buckets)", ev)
    if backwards:
        return Finding.failed(
            f"counters went backwards between two scrapes 0.5 s apart ({backwards[0]}): several worker processes "
            "answer on this port, each with its own counters; scrape every process or aggregate them", ev)
    return Finding.passed(
        "asap_requests_total, asap_requests_error_total and asap_request_duration_seconds present; "
        "histogram buckets sane (monotonic, none above +Inf); counters steady across two scrapes", ev)


@check("MON-METRICS-4", needs=AGENT)
async def business_metrics(ctx: CheckContext) -> Finding:
    """Metric families beyond asap-protocol's own (and the Python runtime's)."""
    resp, exp = await _metrics(ctx)
    if resp.status != 200 or exp is None or not exp.families:
        return Finding.failed(f"no readable metrics at /asap/metrics (HTTP {resp.status})",
                              [("GET /asap/metrics", resp.evidence)])
    custom = mt.custom_families(exp)
    ev = [("metric families", {"custom": custom, "asap_builtin": sorted(n for n in mt.family_names(exp)
                                                                       if n.startswith("asap_"))})]
    if not custom:
        return Finding.warned("only asap-protocol's built-in asap_* metrics are exported: nothing counts "
                              "tasks per skill or other business events", ev)
    return Finding.passed(f"custom metrics exported next to asap_*: {', '.join(custom)}", ev)


@check("MON-METRICS-2", needs=("prometheus",))
async def prometheus_scrapes(ctx: CheckContext) -> Finding:
    """A scrape target for this agent exists in Prometheus and is up; when down, show why."""
    prom = prom_for(ctx.params)
    if prom is None:
        return Finding.skipped("no prometheus.url in the parameters")
    job = ctx.target.prometheus_job
    if not job:
        return Finding.skipped(f"targets[{ctx.target.name}].prometheus_job is not set")
    # a freshly started Prometheus has not scraped yet ("unknown"): wait a few scrape intervals, bounded
    deadline = asyncio.get_running_loop().time() + ctx.params.prometheus.timeout_seconds * 3
    while True:
        targets = await prom.targets()
        mine = [t for t in targets if t.get("labels", {}).get("job") == job
                or t.get("discoveredLabels", {}).get("job") == job]
        if not any(t.get("health") == "unknown" for t in mine) or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.5)
    evidence = [("Prometheus active targets for job " + job,
                 [{k: t.get(k) for k in ("scrapeUrl", "health", "lastError", "lastScrape")} for t in mine])]
    if not mine:
        jobs = sorted({t.get("labels", {}).get("job", "?") for t in targets})
        return Finding.failed(f"Prometheus has no scrape target for job {job!r} (jobs: {', '.join(jobs) or 'none'})",
                              evidence)
    down = [t for t in mine if t.get("health") != "up"]
    if down:
        t = down[0]
        why = t.get("lastError") or "no error recorded yet"
        if t.get("health") == "unknown":
            return Finding.errored(f"Prometheus has not scraped {t.get('scrapeUrl')} yet; run again shortly", evidence)
        return Finding.failed(f"{len(down)} of {len(mine)} scrape target(s) down: {t.get('scrapeUrl')}: {why}", evidence)
    return Finding.passed(f"{len(mine)} scrape target(s) for job {job!r} up ({mine[0].get('scrapeUrl')})", evidence)


# ------------------------------------------------------------------------------------- logging
def _redacted(ctx: CheckContext, obj):
    return json.loads(redact(json.dumps(obj, default=str), ctx.probe.secrets))


async def _log_sample(ctx: CheckContext) -> tuple[logs.LogSample | None, Finding | None]:
    if not (ctx.target.log_file or ctx.target.log_command):
        return None, Finding.skipped(f"targets[{ctx.target.name}] names no log_file or log_command")
    sample = await logs.read_sample(ctx.target, timeout=ctx.params.probe.timeout_seconds * 3)
    if sample.agent_lines == 0:
        return sample, Finding.errored(f"no agent log lines in {sample.source} to judge "
                                       f"({sample.stats()['uvicorn_plain']} uvicorn lines only)")
    return sample, None


@check("MON-LOG-1")
async def structured_logging(ctx: CheckContext) -> Finding:
    """A sample of the agent's log lines parses as structured events (JSON with event, level, timestamp)."""
    sample, early = await _log_sample(ctx)
    if early:
        return early
    structured = [d for d in sample.json_lines if all(k in d for k in logs.STRUCTURED_KEYS)]
    share = len(structured) / sample.agent_lines
    loggers = sorted({str(d.get("logger")) for d in structured})[:10]
    ev = [("log sample", sample.stats() | {"structured_share": round(share, 3), "loggers": loggers}),
          ("examples", _redacted(ctx, {"structured": structured[-2:],
                                       "unstructured": (sample.console_lines + sample.other_lines)[-3:]}))]
    pct = f"{share:.0%}"
    if share >= 0.95:
        return Finding.passed(f"{pct} of {sample.agent_lines} agent log lines are JSON events with "
                              f"{', '.join(logs.STRUCTURED_KEYS)} (loggers: {', '.join(loggers[:4])})", ev)
    what = f"{len(sample.console_lines)} console-formatted, {len(sample.other_lines)} other"
    if share >= 0.5:
        return Finding.warned(f"only {pct} of {sample.agent_lines} agent log lines are structured JSON ({what})", ev)
    return Finding.failed(f"{pct} of {sample.agent_lines} agent log lines are structured JSON ({what}): "
                          "an aggregator cannot query them by field", ev)


@check("MON-LOG-2")
async def json_log_format(ctx: CheckContext) -> Finding:
    """asap.* events are JSON in the log, and the manifests set ASAP_LOG_FORMAT=json."""
    problems, ok, ev = [], [], []
    sample = None
    if ctx.target.log_file or ctx.target.log_command:
        sample = await logs.read_sample(ctx.target, timeout=ctx.params.probe.timeout_seconds * 3)
        asap_json = sample.asap_events()
        asap_console = [line for line in sample.console_lines if " asap." in line]
        ev.append(("log sample", sample.stats() | {"asap_events_json": len(asap_json),
                                                    "asap_events_console": len(asap_console)}))
        if asap_console:
            problems.append(f"{len(asap_console)} asap.* events in {sample.source} are console-formatted "
                            "(ASAP_LOG_FORMAT is not json in that process)")
            ev.append(("console example", redact(asap_console[-1][:400], ctx.probe.secrets)))
        elif asap_json:
            ok.append(f"{len(asap_json)} asap.* events are JSON")
    if ctx.target.k8s_manifests:
        rows = []
        for w in k8s.workloads(k8s.documents(ctx.target.k8s_manifests)):
            for c in w.agent_containers():
                value = k8s.env(c).get("ASAP_LOG_FORMAT")
                rows.append({"workload": w.where, "container": c.get("name"), "ASAP_LOG_FORMAT": value})
                if (value or "").lower() != "json":
                    problems.append(f"{w.where} container {c.get('name')} sets ASAP_LOG_FORMAT="
                                    f"{value or '(unset: console)'}")
        ev.append(("Kubernetes container env", rows))
        if rows and not problems:
            ok.append(f"{len(rows)} agent container(s) set ASAP_LOG_FORMAT=json")
    if problems:
        return Finding.failed("; ".join(problems), ev)
    if not ok:
        if sample is None and not ctx.target.k8s_manifests:
            return Finding.skipped(f"targets[{ctx.target.name}] names no log_file, log_command or k8s_manifests")
        return Finding.errored("no asap.* event in the log sample and no container env to judge", ev)
    return Finding.passed("; ".join(ok), ev)


@check("MON-LOG-3", needs=AGENT_TOKEN)
async def trace_correlation(ctx: CheckContext) -> Finding:
    """A request sent with a known trace id is found in the logs, and its lines can be joined."""
    if not (ctx.target.log_file or ctx.target.log_command):
        return Finding.skipped(f"targets[{ctx.target.name}] names no log_file or log_command")
    # the join is judged on asap.request.processed, which only a request a handler ran produces
    if (skip := ctx.require_active("handler_probes")) is not None:
        return skip
    trace, span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    env = envelope(ctx.target.sender, trace_id=trace)
    env.setdefault("extensions", {})["span_id"] = span
    resp = await ctx.probe.send(env)
    ev = [("traced request (trace_id and extensions.span_id chosen by the runbook)", resp.evidence)]
    err = resp.rpc_error()
    if resp.status != 200 or err:
        return Finding.errored(f"the traced request was not accepted (HTTP {resp.status}"
                               + (f", JSON-RPC {err.get('code')} {err.get('message')}" if err else "") + ")", ev)
    result_env = ((resp.rpc_result() or {}).get("envelope")) or {}
    response_id, correlation_id = result_env.get("id"), result_env.get("correlation_id")
    echoed = {"trace_id_kept": result_env.get("trace_id") == trace,
              "span_id_kept": (result_env.get("extensions") or {}).get("span_id") == span}
    events, text = [], []
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        sample = await logs.read_sample(ctx.target, timeout=ctx.params.probe.timeout_seconds * 3)
        events, text = logs.lines_with(sample, trace)
        if any(e.get("event") == "asap.request.processed" for e in events) or text:
            break
        await asyncio.sleep(0.3)
    received = [e for e in events if e.get("event") == "asap.request.received"]
    processed = [e for e in events if e.get("event") == "asap.request.processed"]
    request_id = received[0].get("envelope_id") if received else None
    by_request_id = [e.get("event") for e in sample.json_lines if request_id and e.get("envelope_id") == request_id]
    joins = {
        "trace_id": sorted({str(e.get("event")) for e in events if e.get("trace_id") == trace}),
        "request envelope id (envelope_id)": sorted(set(by_request_id)),
        "response id (response_id)": sorted({str(e.get("event")) for e in sample.json_lines
                                             if response_id and e.get("response_id") == response_id}),
        "correlation_id field logged": any("correlation_id" in e for e in sample.json_lines),
        "response correlation_id == request envelope id": bool(request_id) and correlation_id == request_id,
    } | echoed
    ev.append(("what joins the request's log lines", joins))
    ev.append(("log lines carrying the trace id", _redacted(ctx, events[:6]) or [redact(t[:400], ctx.probe.secrets)
                                                                              for t in text[:3]]))
    if not events and text:
        return Finding.failed(f"trace id {trace} appears only in unstructured (console) text, {len(text)} line(s): "
                              "no field an aggregator can join the request's lines on", ev)
    if not events:
        return Finding.failed(f"trace id {trace} not found in {sample.source} within 3 s of the request", ev)
    if received and processed:
        also = [x for x in joins["request envelope id (envelope_id)"] if x != "asap.request.received"]
        by_id = f"; the request id (envelope_id) also joins {', '.join(also)}" if also else ""
        logged = "is logged" if joins["correlation_id field logged"] else "is never logged (asap-protocol 2.5.10)"
        return Finding.passed(f"trace_id joins asap.request.received and asap.request.processed{by_id}; "
                              f"correlation_id {logged}; processed carries the response id, not the request id", ev)
    seen = ", ".join(sorted({str(e.get("event")) for e in events}))
    return Finding.warned(f"trace id found only on {seen}: the request's received and processed lines cannot both "
                          "be joined on it", ev)


# --------------------------------------------------------------------------- health and readiness
@check("MON-HEALTH-1", needs=AGENT)
async def health_endpoints(ctx: CheckContext) -> Finding:
    """/health and /ready answer 200 JSON without credentials; /ready says more than the constant."""
    seen, ev, problems = {}, [], []
    for path in ("/health", "/ready", "/.well-known/asap/health"):
        r = await ctx.probe.get(path)
        seen[path] = (r.status, r.json())
        ev.append((f"GET {path}", r.evidence))
        if path in ("/health", "/ready"):
            if r.status != 200:
                problems.append(f"{path} answered HTTP {r.status}")
            elif not isinstance(r.json(), dict):
                problems.append(f"{path} did not answer JSON")
    if problems:
        return Finding.failed("; ".join(problems), ev)
    ready = seen["/ready"][1]
    if ready == BUILTIN_READY:
        return Finding.warned('/health and /ready answer 200, but /ready is asap-protocol\'s constant {"status":"ok"} '
                              "(same as /health): it reflects no dependency", ev)
    return Finding.passed(f"/health answers {json.dumps(seen['/health'][1])}; /ready answers "
                          f"{json.dumps(ready)[:120]} (200, no credentials needed)", ev)


async def _shell(cmd: str, timeout: float = DRILL_COMMAND_TIMEOUT) -> tuple[int | None, str]:
    proc = await asyncio.create_subprocess_shell(cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                                                 start_new_session=True)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    except asyncio.TimeoutError:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await proc.wait()
        return None, f"timed out after {timeout:g} s"
    return proc.returncode, out.decode("utf-8", "replace").strip()[-300:]


async def _ready_status(ctx: CheckContext) -> tuple[int | None, str]:
    try:
        r = await ctx.probe.get("/ready", deadline=2.0)
        return r.status, r.text[:120]
    except ProbeError as e:
        return None, e.message


@check("MON-HEALTH-2", exclusive=True, needs=AGENT)
async def readiness_follows_dependency(ctx: CheckContext) -> Finding:
    """Drill: stop a dependency, /ready must fail; start it again, /ready must recover."""
    skip = ctx.require_active("drills")
    if skip:
        return skip
    d = ctx.target.drills
    if not (d.dependency_stop and d.dependency_start):
        return Finding.skipped(f"set targets[{ctx.target.name}].drills.dependency_stop and dependency_start "
                               "(commands that stop and start a dependency of the agent)")
    status, body = await _ready_status(ctx)
    if status != 200:
        return Finding.errored(f"/ready is not 200 before the drill (got {status}: {body}); cannot run the drill")
    budget = ctx.target.active_probes.max_seconds
    max_polls = ctx.target.active_probes.max_requests  # GET /ready polls, both phases together
    polls = 1
    react = min(READINESS_REACTION_SECONDS, budget / 3)
    timeline: list[dict] = []
    t0 = time.monotonic()

    def mark(what: str, **kw) -> None:
        timeline.append({"t_s": round(time.monotonic() - t0, 2), "what": what} | kw)

    await asyncio.to_thread(_DRILL_LOCK.acquire)
    t0 = time.monotonic()  # after the lock: another target's drill may have held it
    try:
        rc, out = await _shell(d.dependency_stop)
        mark("dependency_stop", command=d.dependency_stop, exit_code=rc, output=out)
        failed_at = None
        if rc == 0:
            t_stop = time.monotonic()  # the window starts when the stop command has returned
            while True:
                polls += 1
                status, body = await _ready_status(ctx)
                if status != 200:
                    failed_at = time.monotonic() - t0
                    mark("/ready not ready", status=status, body=body)
                    break
                if time.monotonic() - t_stop >= react or polls >= max_polls:
                    mark(f"/ready still 200 {time.monotonic() - t_stop:.1f} s after the stop returned",
                         status=status, body=body)
                    break
                await asyncio.sleep(0.2)
    finally:
        rc2, out2 = await _shell(d.dependency_start)
        mark("dependency_start", command=d.dependency_start, exit_code=rc2, output=out2)
        _DRILL_LOCK.release()
    t_start = time.monotonic()
    recovered_at = None
    if rc2 == 0:
        while time.monotonic() - t_start < budget / 2 and polls < max_polls:
            polls += 1
            status, body = await _ready_status(ctx)
            if status == 200:
                recovered_at = time.monotonic() - t_start
                mark("/ready ok again", status=status, body=body)
                break
            await asyncio.sleep(0.2)
    ev = [("drill timeline (seconds from dependency_stop)", timeline),
          ("sent", f"{polls} GET /ready (cap active_probes.max_requests = {max_polls}), polled every 0.2 s; "
                   f"the two commands above")]
    if rc != 0:
        return Finding.errored(f"dependency_stop failed (exit {rc}): {out[:200]}", ev)
    if rc2 != 0:
        return Finding.errored(f"dependency_start failed (exit {rc2}): {out2[:200]}; the dependency may still be down", ev)
    if failed_at is None:
        return Finding.failed(f"/ready stayed 200 for {react:g} s ({polls} polls) while the dependency was stopped: readiness is "
                              "not wired to it, so traffic keeps flowing to an agent that cannot serve", ev)
    if recovered_at is None:
        return Finding.failed(f"/ready failed {failed_at:.1f} s after the stop but did not recover within "
                              f"{budget / 2:g} s of dependency_start", ev)
    return Finding.passed(f"/ready turned {timeline[1].get('status')} {failed_at:.1f} s after dependency_stop and 200 "
                          f"again {recovered_at:.1f} s after dependency_start", ev)


def _k8s_grace(ctx: CheckContext) -> tuple[float, str]:
    if ctx.target.k8s_manifests:
        for w in k8s.workloads(k8s.documents(ctx.target.k8s_manifests)):
            g, explicit = w.grace_seconds()
            return float(g), f"terminationGracePeriodSeconds of {w.where}" + ("" if explicit else " (Kubernetes default)")
    return float(k8s.DEFAULT_GRACE_SECONDS), "Kubernetes default terminationGracePeriodSeconds (no manifest given)"


@check("MON-HEALTH-3")
async def k8s_probes(ctx: CheckContext) -> Finding:
    """Liveness and readiness probes on the right paths; grace period longer than the drain time."""
    if not ctx.target.k8s_manifests:
        return Finding.skipped(f"targets[{ctx.target.name}].k8s_manifests is not set")
    wls = k8s.workloads(k8s.documents(ctx.target.k8s_manifests))
    if not wls:
        return Finding.failed("the Kubernetes manifests hold no workload (Deployment, StatefulSet, Pod, ...)")
    problems, warnings, rows = [], [], []
    for w in wls:
        grace, explicit = w.grace_seconds()
        for c in w.agent_containers():
            name = f"{w.where} container {c.get('name')}"
            pr = k8s.probes(c)
            live_p, ready_p = pr["liveness"], pr["readiness"]
            drain, how = k8s.drain_seconds(c, ctx.target.process_config)
            pre = k8s.prestop_sleep_seconds(c)
            rows.append({"container": name, "liveness": live_p and f"{live_p.path} port {live_p.port}",
                         "readiness": ready_p and f"{ready_p.path} port {ready_p.port}",
                         "grace_s": grace, "preStop_sleep_s": pre, "drain_s": drain, "drain_from": how})
            if live_p is None:
                problems.append(f"{name}: no livenessProbe")
            elif live_p.path not in LIVENESS_PATHS:
                problems.append(f"{name}: livenessProbe path {live_p.path!r} (expected /health)")
            if ready_p is None:
                problems.append(f"{name}: no readinessProbe")
            elif ready_p.path not in READINESS_PATHS:
                problems.append(f"{name}: readinessProbe path {ready_p.path!r} (expected /ready)")
            for p in (live_p, ready_p):
                if p is not None and p.path and not k8s.port_known(c, p.port):
                    problems.append(f"{name}: {p.kind}Probe port {p.port!r} is not a declared containerPort")
            if k8s.shell_wrapped(c):
                problems.append(f"{name}: the agent runs under `sh -c` without exec, so SIGTERM stops at the shell "
                                "(PID 1) and the agent is killed at the end of the grace period without draining")
            if drain is None:
                warnings.append(f"{name}: {how}")
                if pre >= grace:
                    problems.append(f"{name}: preStop sleep {pre:g} s is not shorter than the {grace} s grace period")
            elif pre + drain >= grace:
                problems.append(f"{name}: preStop {pre:g} s + drain {drain:g} s ({how}) is not shorter than "
                                f"terminationGracePeriodSeconds {grace}" + ("" if explicit else " (default)"))
    ev = [("containers", rows)]
    if problems:
        return Finding.failed("; ".join(problems), ev)
    if warnings:
        return Finding.warned("probes on /health and /ready; " + "; ".join(warnings), ev)
    return Finding.passed(f"{len(rows)} agent container(s): liveness /health, readiness /ready, preStop + drain "
                          "shorter than the termination grace period", ev)


# exclusive: it times a drain, and other probes' load would skew it; it starts its own agent, so needs no target
@check("MON-HEALTH-4", exclusive=True, needs=("token",))
async def graceful_shutdown(ctx: CheckContext) -> Finding:
    """Drill: start the agent, keep a request in flight (its body unfinished), SIGTERM; the request must be
    answered and the process exit within the grace period. No skill is needed: the body is read-only."""
    from ..drills import observe_drain
    grace, grace_from = _k8s_grace(ctx)
    obs = await observe_drain(ctx, grace, grace_from)
    return obs if isinstance(obs, Finding) else judge_drain(obs)


def judge_drain(obs: dict) -> Finding:
    """Completion of the in-flight request and exit time against the grace period (pure)."""
    ev = [("observation", obs)]
    grace, held, status = obs["grace_seconds"], obs["held_seconds"], obs.get("response_status")
    exited = obs.get("exited_after_seconds")
    if status == 429:
        return Finding.errored("the agent's rate limiter refused the drill's request: nothing was in flight when "
                               "SIGTERM came", ev)
    if status is None:
        return Finding.failed(f"the request in flight at SIGTERM was cut without an answer (its body finished "
                              f"{held:g} s after SIGTERM; grace period {grace:g} s, {obs['grace_from']})", ev)
    if exited is None:
        return Finding.failed(f"the in-flight request was answered (HTTP {status}) but the process was still running "
                              f"{obs.get('waited_seconds')} s after SIGTERM (grace {grace:g} s)", ev)
    if exited > grace:
        return Finding.failed(f"the process exited {exited:.1f} s after SIGTERM, beyond the {grace:g} s grace period", ev)
    return Finding.passed(f"the request in flight at SIGTERM (body finished {held:g} s later) was answered "
                          f"(HTTP {status}) and the process exited {exited:.1f} s after SIGTERM, within the "
                          f"{grace:g} s grace period", ev)


# ------------------------------------------------------------------------------------- alerting
def _fmt_s(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g} s"


async def _alert_check(ctx: CheckContext, key: str) -> Finding:
    prom = prom_for(ctx.params)
    if prom is None:
        return Finding.skipped("no prometheus.url in the parameters")
    job = ctx.target.prometheus_job
    if not job:
        return Finding.skipped(f"targets[{ctx.target.name}].prometheus_job is not set")
    concern = alerting.CONCERNS[key]
    groups = await prom.rules()
    cov = alerting.coverage(groups, job, concern)
    active = alerting.active_alerts(groups, job)
    ev = [(f"loaded alerting rules reading {concern.hint}", [c.row() for c in cov] or "none"),
          (f"alerts pending or firing now for job {job}", active or "none")]
    covering = [c for c in cov if c.selects_job]
    if not covering:
        others = f" ({', '.join(c.name for c in cov)} read it but their matchers exclude job {job!r})" if cov else ""
        return Finding.failed(f"no loaded alerting rule on {concern.title} selects job {job!r}: none reads "
                              f"{concern.hint} for it{others}", ev)
    metrics = sorted({m for c in covering for m in c.metrics})
    exist = await live.series_exist(prom, job, metrics)
    ev.append((f"input series present in Prometheus for job {job}", exist))
    effective = [c for c in covering if all(exist.get(m) for m in c.metrics)]
    names = ", ".join(c.name for c in covering)
    if not effective:
        missing = ", ".join(m for m, ok in exist.items() if not ok)
        targets = [t for t in await prom.targets() if t.get("labels", {}).get("job") == job]
        why = next((f"its scrape fails: {t.get('lastError')}" for t in targets if t.get("health") != "up"),
                   "the agent does not export it")
        return Finding.failed(f"{names} select(s) job {job!r} but Prometheus has no {missing} series for it "
                              f"({why}): the rule can never fire for this agent", ev)
    rule = effective[0]
    firing = [a for c in effective for a in c.alerts]
    state = ", ".join(sorted({f"{c.name} {a['state']}" for c in effective for a in c.alerts}))
    covered = f"{', '.join(c.name for c in effective)} cover(s) job {job!r} (reads {rule.selectors[0]}" + \
              (", ..." if len(rule.selectors) > 1 else "") + f", for {rule.for_seconds:g}s)"
    window = ctx.params.prometheus.window
    if key == "down":
        down_now = await prom.query(f"up{live._sel(job)} == 0")
        ev.append((f"targets of job {job} with up == 0 now", [r.get("metric", {}).get("instance") for r in down_now]
                   or "none"))
        if firing or down_now:
            state = state or f"{rule.name} not active yet (for {rule.for_seconds:g}s), but up == 0"
            targets = [t for t in await prom.targets() if t.get("labels", {}).get("job") == job]
            why = next((t.get("lastError") for t in targets if t.get("health") != "up"), "")
            return Finding.failed(f"{state} for job {job!r} now: the agent is down or unscrapeable"
                                  + (f" ({why})" if why else ""), ev)
        return Finding.passed(f"{covered}; not firing", ev)
    extra = ""
    if key == "error_rate":
        er = await live.error_rate(prom, job, window)
        th = ctx.threshold("error_rate_ratio")
        ev.append((f"error rate over {window}", er | {"threshold": th.value, "threshold_source": th.source}))
        if er["ratio"] is None:
            extra = f"; no requests in the last {window}"
        else:
            side = "above" if er["ratio"] > th.value else "below"
            extra = (f"; server-side error rate over {window}: {er['ratio']:.1%} of {er['requests']:.0f} requests, "
                     f"{side} the {th.value:.0%} threshold" + (" (the alert fires if it lasts)" if side == "above" else "")
                     + f"; all errors, client-caused included: {er['all_errors_ratio']:.1%}")
    if key == "latency":
        lat = await live.latency(prom, job, window)
        th = ctx.threshold("p99_latency_seconds")
        ev.append((f"latency over {window}", lat | {"threshold_seconds": th.value, "threshold_source": th.source}))
        naive = [c.name for c in effective if c.quantile_on_raw_buckets]
        if naive and lat["double_cumulated"]:
            return Finding.warned(f"{', '.join(naive)} apply histogram_quantile to double-cumulated "
                                  f"asap_request_duration_seconds buckets for job {job!r}: the p99 it alerts on is wrong "
                                  f"(naive {_fmt_s(lat['naive_histogram_quantile_seconds'])}, corrected "
                                  f"{_fmt_s(lat['value_seconds'])})", ev)
        if lat["value_seconds"] is None:
            extra = f"; no requests in the last {window}"
        else:
            side = "above" if lat["value_seconds"] > th.value else "below"
            extra = (f"; p99 over {window}: {_fmt_s(lat['value_seconds'])} ({side} {th.value:g} s; {lat['method']}), "
                     f"mean {_fmt_s(lat['mean_seconds'])}")
    # firing: the condition has held for the rule's `for`; the agent has a live problem. Pending is
    # only "above the line right now" (the runbook's own drills can do that) and is reported, not judged.
    if any(a.get("state") == "firing" for a in firing):
        return Finding.warned(f"{covered}; {state} now{extra}", ev)
    return Finding.passed(f"{covered}; " + (f"{state} now (not firing)" if firing else "not firing") + extra, ev)


@check("MON-ALERT-1", needs=("prometheus",))
async def alert_error_rate(ctx: CheckContext) -> Finding:
    return await _alert_check(ctx, "error_rate")


@check("MON-ALERT-2", needs=("prometheus",))
async def alert_latency(ctx: CheckContext) -> Finding:
    return await _alert_check(ctx, "latency")


@check("MON-ALERT-3", needs=("prometheus",))
async def alert_agent_down(ctx: CheckContext) -> Finding:
    return await _alert_check(ctx, "down")


@check("MON-ALERT-4", needs=("prometheus",))
async def alert_rate_limit(ctx: CheckContext) -> Finding:
    return await _alert_check(ctx, "rate_limit")
