"""Monitoring > Logging (MON-LOG-1..3): observe the agent's log (file or command) and its manifests'
container env, one traced request; judge purely.

asap-protocol 2.5.10 logs through structlog (JSON with ASAP_LOG_FORMAT=json, console otherwise);
`asap.request.processed` carries the response id, and `correlation_id` is never logged unless the
handler binds it (reference §2.2).
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
import uuid
from dataclasses import dataclass, field

from .. import k8s, logs
from ..probe import envelope, redact
from ._observe import judged
from ._registry import AGENT_TOKEN, CheckContext, Finding, check

STRUCTURED_SHARE_PASS = 0.95
STRUCTURED_SHARE_WARN = 0.5
TRACE_WAIT_SECONDS = 3.0


@dataclass
class LogLines:
    """A sample of the agent's log as read (redacted): classified by the judges, not here."""
    source: str
    lines: list[str]

    def sample(self) -> logs.LogSample:
        return self._classified

    @functools.cached_property
    def _classified(self) -> logs.LogSample:  # MON-LOG-1 and -2 judge the same read: classified once (not a field: not kept)
        return logs.classify(self.source, self.lines)


async def _read_lines(ctx: CheckContext) -> LogLines:
    """The target's log as it is now, read once for the checks that judge a sample of it (MON-LOG-1, -2):
    one moment, one observation, as for a route that several checks read (Probe.get_once)."""
    async def read() -> LogLines:
        source, lines = await logs.read_lines(ctx.target, timeout=ctx.params.probe.timeout_seconds * 3)
        secrets = ctx.probe.secrets
        return LogLines(source, [redact(line, secrets) for line in lines] if secrets else lines)
    return await ctx.once("log.lines", read)


def _no_log(ctx: CheckContext) -> Finding | None:
    if not (ctx.target.log_file or ctx.target.log_command):
        return Finding.skipped(f"targets[{ctx.target.name}].log_file (or log_command) is not set")
    return None


# ------------------------------------------------------------------------------ MON-LOG-1
async def observe_structured(ctx: CheckContext) -> LogLines | Finding:
    return _no_log(ctx) or await _read_lines(ctx)


def judge_structured(obs: LogLines) -> Finding:
    sample = obs.sample()
    if sample.agent_lines == 0:
        return Finding.errored(f"no agent log lines in {sample.source} to judge "
                               f"({sample.stats()['uvicorn_plain']} uvicorn lines only)", [("log sample", sample.stats())])
    structured = [d for d in sample.json_lines if all(k in d for k in logs.STRUCTURED_KEYS)]
    share = len(structured) / sample.agent_lines
    loggers = sorted({str(d.get("logger")) for d in structured})[:10]
    ev = [("log sample", sample.stats() | {"structured_share": round(share, 3), "loggers": loggers}),
          ("examples", {"structured": structured[-2:], "unstructured": (sample.console_lines + sample.other_lines)[-3:]})]
    pct = f"{share:.0%}"
    if share >= STRUCTURED_SHARE_PASS:
        return Finding.passed(f"{pct} of {sample.agent_lines} agent log lines are JSON events with "
                              f"{', '.join(logs.STRUCTURED_KEYS)} (loggers: {', '.join(loggers[:4])})", ev)
    what = f"{len(sample.console_lines)} console-formatted, {len(sample.other_lines)} other"
    if share >= STRUCTURED_SHARE_WARN:
        return Finding.warned(f"only {pct} of {sample.agent_lines} agent log lines are structured JSON ({what})", ev)
    return Finding.failed(f"{pct} of {sample.agent_lines} agent log lines are structured JSON ({what}): "
                          "an aggregator cannot query them by field", ev)


@check("MON-LOG-1")
async def structured_logging(ctx: CheckContext) -> Finding:
    """A sample of the agent's log lines parses as structured events (JSON with event, level, timestamp)."""
    obs = await observe_structured(ctx)
    return obs if isinstance(obs, Finding) else judged(judge_structured(obs), obs)


# ------------------------------------------------------------------------------ MON-LOG-2
@dataclass
class LogFormatObservation:
    log: LogLines | None  # None: the parameters name no log
    containers: list[dict] | None  # {workload, container, ASAP_LOG_FORMAT}; None: no manifests given


async def observe_log_format(ctx: CheckContext) -> LogFormatObservation | Finding:
    t = ctx.target
    if not (t.log_file or t.log_command or t.k8s_manifests):
        return Finding.skipped(f"targets[{t.name}].log_file (or log_command, or k8s_manifests) is not set")
    log = await _read_lines(ctx) if (t.log_file or t.log_command) else None
    rows = None
    if t.k8s_manifests:
        rows = [{"workload": w.where, "container": c.get("name"), "ASAP_LOG_FORMAT": k8s.env(c).get("ASAP_LOG_FORMAT")}
                for w in k8s.workloads(k8s.documents(t.k8s_manifests)) for c in w.agent_containers()]
    return LogFormatObservation(log, rows)


def judge_log_format(obs: LogFormatObservation) -> Finding:
    problems, ok, ev = [], [], []
    if obs.log is not None:
        sample = obs.log.sample()
        asap_json = sample.asap_events()
        asap_console = [line for line in sample.console_lines if " asap." in line]
        ev.append(("log sample", sample.stats() | {"asap_events_json": len(asap_json),
                                                    "asap_events_console": len(asap_console)}))
        if asap_console:
            problems.append(f"{len(asap_console)} asap.* events in {sample.source} are console-formatted "
                            "(ASAP_LOG_FORMAT is not json in that process)")
            ev.append(("console example", asap_console[-1][:400]))
        elif asap_json:
            ok.append(f"{len(asap_json)} asap.* events are JSON")
    if obs.containers is not None:
        ev.append(("Kubernetes container env", obs.containers))
        bad = [r for r in obs.containers if (r.get("ASAP_LOG_FORMAT") or "").lower() != "json"]
        problems += [f"{r['workload']} container {r['container']} sets ASAP_LOG_FORMAT="
                     f"{r.get('ASAP_LOG_FORMAT') or '(unset: console)'}" for r in bad]
        if obs.containers and not bad:
            ok.append(f"{len(obs.containers)} agent container(s) set ASAP_LOG_FORMAT=json")
    if problems:
        return Finding.failed("; ".join(problems), ev)
    if not ok:
        return Finding.errored("no asap.* event in the log sample and no agent container env to judge", ev)
    return Finding.passed("; ".join(ok), ev)


@check("MON-LOG-2")
async def json_log_format(ctx: CheckContext) -> Finding:
    """asap.* events are JSON in the log, and the manifests set ASAP_LOG_FORMAT=json."""
    obs = await observe_log_format(ctx)
    return obs if isinstance(obs, Finding) else judged(judge_log_format(obs), obs)


# ------------------------------------------------------------------------------ MON-LOG-3
@dataclass
class TraceObservation:
    trace_id: str  # sent: 32 hex, chosen by the runbook
    span_id: str  # sent as extensions.span_id: 16 hex
    http_status: int
    rpc_error: dict | None
    response_envelope: dict  # id, correlation_id, trace_id, extensions of the answer
    source: str = ""
    events: list[dict] = field(default_factory=list)  # JSON log events of this request (trace id, request or response id)
    text_lines: list[str] = field(default_factory=list)  # unstructured lines carrying the trace id
    exchange: dict = field(default_factory=dict)


def _request_events(json_lines: list[dict], trace: str, response_id: str | None) -> list[dict]:
    """The JSON events of one request: those carrying the trace id, then those carrying an id one of
    them carries (the request id as envelope_id, the response id) -- closing over the ids once."""
    mine = [e for e in json_lines if trace in json.dumps(e, default=str)]
    ids = {str(v) for e in mine for k, v in e.items() if k in ("envelope_id", "response_id", "correlation_id") and v}
    ids |= {response_id} if response_id else set()
    more = [e for e in json_lines if e not in mine
            and any(str(e.get(k)) in ids for k in ("envelope_id", "response_id", "correlation_id") if e.get(k))]
    return mine + more


async def observe_trace(ctx: CheckContext) -> TraceObservation | Finding:
    if (early := _no_log(ctx)) is not None:
        return early
    # the join is judged on asap.request.processed, which only a request a handler ran produces
    if (skip := ctx.require_active("handler_probes")) is not None:
        return skip
    trace, span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    env = envelope(ctx.target.sender, trace_id=trace)
    env.setdefault("extensions", {})["span_id"] = span
    resp = await ctx.probe.send(env)
    result_env = ((resp.rpc_result() or {}).get("envelope")) or {}
    obs = TraceObservation(trace, span, resp.status, resp.rpc_error(),
                           {k: result_env.get(k) for k in ("id", "correlation_id", "trace_id", "extensions")},
                           exchange=resp.evidence)
    if resp.status != 200 or obs.rpc_error:
        return obs
    deadline = time.monotonic() + TRACE_WAIT_SECONDS
    while True:
        sample = await logs.read_sample(ctx.target, timeout=ctx.params.probe.timeout_seconds * 3)
        events = _request_events(sample.json_lines, trace, result_env.get("id"))
        text = [line for line in sample.console_lines + sample.other_lines if trace in line]
        if any(e.get("event") == "asap.request.processed" for e in events) or text or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.3)
    obs.source = sample.source
    obs.events = json.loads(redact(json.dumps(events[:12], default=str), ctx.probe.secrets))
    obs.text_lines = [redact(t[:400], ctx.probe.secrets) for t in text[:3]]
    return obs


def judge_trace(obs: TraceObservation) -> Finding:
    """The item asks for both keys: `trace_id` joining the request's lines (received and processed),
    and `correlation_id` (the request id, which the response and the caller's lines carry) logged with
    them, so a caller's log and this agent's can be joined."""
    ev = [("traced request (trace_id and extensions.span_id chosen by the runbook)", obs.exchange)]
    if obs.http_status != 200 or obs.rpc_error:
        err = obs.rpc_error or {}
        return Finding.errored(f"the traced request was not accepted (HTTP {obs.http_status}"
                               + (f", JSON-RPC {err.get('code')} {err.get('message')}" if err else "") + ")", ev)
    trace, resp_env = obs.trace_id, obs.response_envelope
    with_trace = [e for e in obs.events if e.get("trace_id") == trace]
    # the request's id as the agent logged it on receipt (the envelope sent carried none: the agent assigns it)
    request_id = next((e.get("envelope_id") for e in with_trace if e.get("event") == "asap.request.received"), None)
    events_of = lambda pred: sorted({str(e.get("event")) for e in obs.events if pred(e)})  # noqa: E731
    correlated = events_of(lambda e: request_id and e.get("correlation_id") == request_id)
    joins = {
        "trace_id": events_of(lambda e: e.get("trace_id") == trace),
        "request id (envelope_id)": events_of(lambda e: request_id and e.get("envelope_id") == request_id),
        "response id (response_id)": events_of(lambda e: resp_env.get("id") and e.get("response_id") == resp_env["id"]),
        "correlation_id == request id": correlated,
        "response correlation_id == request id": bool(request_id) and resp_env.get("correlation_id") == request_id,
        "trace_id_kept": resp_env.get("trace_id") == trace,
        "span_id_kept": (resp_env.get("extensions") or {}).get("span_id") == obs.span_id,
    }
    ev += [("what joins the request's log lines", joins),
           ("log lines of the request", obs.events[:6] or obs.text_lines)]
    if not with_trace and obs.text_lines:
        return Finding.failed(f"trace id {trace} appears only in unstructured (console) text, {len(obs.text_lines)} "
                              "line(s): no field an aggregator can join the request's lines on", ev)
    if not with_trace:
        return Finding.failed(f"trace id {trace} not found in {obs.source} within {TRACE_WAIT_SECONDS:g} s of the "
                              "request", ev)
    names = {str(e.get("event")) for e in with_trace}
    if not {"asap.request.received", "asap.request.processed"} <= names:
        return Finding.warned(f"trace id found only on {', '.join(sorted(names))}: the request's received and "
                              "processed lines cannot both be joined on it", ev)
    if not correlated:
        return Finding.warned("trace_id joins asap.request.received and asap.request.processed, but no line of the "
                              "request logs correlation_id (the request id): a caller's lines cannot be joined to "
                              "this agent's by it (asap-protocol 2.5.10 never logs it; bind it in the handler)", ev)
    return Finding.passed(f"trace_id joins asap.request.received and asap.request.processed; correlation_id (the "
                          f"request id) is logged on {', '.join(correlated)}", ev)


@check("MON-LOG-3", needs=AGENT_TOKEN)
async def trace_correlation(ctx: CheckContext) -> Finding:
    """A request sent with a known trace id is found in the logs, and its lines can be joined."""
    obs = await observe_trace(ctx)
    return obs if isinstance(obs, Finding) else judged(judge_trace(obs), obs)
