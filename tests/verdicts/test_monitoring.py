"""Monitoring verdicts from recorded observations: no server, milliseconds.

The JSON in data/ was recorded from the reference deployment by the checks' own observe_* functions
(hardened: asap-protocol behind a wrapper and nginx; misconfigured: asap-protocol as shipped); the
inline cases are the odd answers real agents and deployments give (a stock Deployment probing
/readyz, a proxy that counts the 429s, a readiness endpoint behind auth, two workers on one port).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asap_runbook.checks import mon_alerting as ma
from asap_runbook.checks import mon_health as mh
from asap_runbook.checks import mon_logging as ml
from asap_runbook.checks import mon_metrics as mm
from asap_runbook.checks._observe import bounded
from asap_runbook.results import Status

DATA = Path(__file__).parent / "data"
PASS, FAIL, WARN, SKIP, ERROR, MANUAL = (Status.PASS, Status.FAIL, Status.WARN, Status.SKIP, Status.ERROR,
                                         Status.MANUAL)


def recorded(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


def scrape(name_or_text: str, content_type: str = "text/plain; version=0.0.4", status: int = 200) -> mm.Scrape:
    if name_or_text.startswith("metrics_scrape_"):
        return mm.Scrape(**recorded(name_or_text))
    return mm.Scrape(status, content_type, name_or_text)


ASAP_TEXT = (  # the three families the checklist names, sane (one worker, classic text)
    "# TYPE asap_requests_total counter\n"
    'asap_requests_total{{payload_type="task.request",status="success"}} {n}\n'
    "# TYPE asap_requests_error_total counter\nasap_requests_error_total 0.0\n"
    "# TYPE asap_request_duration_seconds histogram\n"
    'asap_request_duration_seconds_bucket{{le="0.1"}} {n}\nasap_request_duration_seconds_bucket{{le="+Inf"}} {n}\n'
    "asap_request_duration_seconds_count {n}\nasap_request_duration_seconds_sum 0.1\n"
)


def check(finding, status: Status, *words: str):
    assert finding.status is status, finding.summary
    for w in words:
        assert w in finding.summary, finding.summary


# ------------------------------------------------------------------------------ MON-METRICS-1
@pytest.mark.parametrize("obs, status, words", [
    (scrape("metrics_scrape_misconfigured"), FAIL, ("application/openmetrics-text", "Clashing name",
                                                     "content type is wrong")),
    (scrape("metrics_scrape_hardened"), PASS, ("parses as Prometheus text",)),
    (scrape("", status=404), FAIL, ("HTTP 404",)),
    (scrape("# TYPE up gauge\nup 1\n"), FAIL, ("holds no asap_* metric family",)),
    # a correct OpenMetrics exposition (a team that fixed the content type and the body): fine
    (scrape("# TYPE asap_requests counter\nasap_requests_total 3.0\n# EOF\n",
            "application/openmetrics-text; version=1.0.0"), PASS, ("parses as OpenMetrics",)),
    (scrape("# TYPE asap_requests counter\nasap_requests_total 3.0\n",
            "application/openmetrics-text; version=1.0.0"), FAIL, ("# EOF",)),
], ids=["asap-as-shipped", "hardened", "404", "no-asap", "openmetrics-ok", "openmetrics-no-eof"])
def test_exposition(obs, status, words):
    check(mm.judge_exposition(mm.ExpositionObservation(obs)), status, *words)


# ------------------------------------------------------------------------------ MON-METRICS-3
@pytest.mark.parametrize("first, second, status, words", [
    (scrape("metrics_scrape_misconfigured"), scrape("metrics_scrape_misconfigured"), FAIL,
     ("histogram series are broken", "above the +Inf bucket")),
    (scrape("metrics_scrape_hardened"), scrape("metrics_scrape_hardened"), PASS, ("counters steady",)),
    # two uvicorn workers behind one port: consecutive scrapes alternate between their counters
    (scrape(ASAP_TEXT.format(n=12.0)), scrape(ASAP_TEXT.format(n=8.0)), FAIL, ("went backwards", "12 -> 8")),
    (scrape("# TYPE asap_requests_total counter\nasap_requests_total 1.0\n"), None, FAIL,
     ("missing metric families", "asap_request_duration_seconds")),
    (scrape("", status=503), None, FAIL, ("no readable metrics", "HTTP 503")),
    (scrape(ASAP_TEXT.format(n=3.0)), scrape("", status=502), ERROR, ("second scrape",)),
], ids=["double-cumulated", "hardened", "two-workers", "missing-family", "503", "second-scrape-502"])
def test_tracked(first, second, status, words):
    check(mm.judge_tracked(mm.TrackedObservation(first, second)), status, *words)


# ------------------------------------------------------------------------------ MON-METRICS-4
@pytest.mark.parametrize("obs, status, words", [
    (scrape("metrics_scrape_hardened"), PASS, ("refagent_tasks_total by skill",)),
    (scrape("metrics_scrape_misconfigured"), WARN, ("only asap-protocol's built-in",
                                                     "another endpoint were not looked at")),
    (scrape(ASAP_TEXT.format(n=1.0) + "# TYPE orders_placed_total counter\norders_placed_total 4.0\n"), MANUAL,
     ("orders_placed_total", "confirm they count business events")),
    # a labelled counter before its first event: declared, no sample; its HELP says how it is split
    (scrape(ASAP_TEXT.format(n=1.0) + "# HELP tasks_total tasks handled, by skill\n# TYPE tasks_total counter\n"),
     PASS, ("tasks_total by skill (its HELP",)),
    (scrape(ASAP_TEXT.format(n=1.0) + "# HELP orders_total orders placed\n# TYPE orders_total counter\n"), MANUAL,
     ("orders_total",)),
    (scrape(ASAP_TEXT.format(n=1.0) + '# TYPE tasks_total counter\ntasks_total{skill_id="quote"} 1.0\n'), PASS,
     ("tasks_total by skill_id",)),
    (scrape("", status=500), FAIL, ("HTTP 500",)),
], ids=["hardened", "asap-only", "custom-unlabelled", "declared-help-skill", "declared-no-sample", "per-skill",
        "500"])
def test_business(obs, status, words):
    check(mm.judge_business(mm.BusinessObservation(obs)), status, *words)


# ------------------------------------------------------------------------------ MON-METRICS-2
def _targets(name: str, **changes) -> mm.ScrapeTargetsObservation:
    d = recorded(name) | changes
    return mm.ScrapeTargetsObservation(**d)


@pytest.mark.parametrize("obs, status, words", [
    (_targets("scrape_targets_misconfigured"), FAIL, ("1 of 1 scrape target(s) down", "data does not end with # EOF")),
    (_targets("scrape_targets_hardened"), PASS, ("1 scrape target(s) for job 'asap-hardened' up",)),
    (_targets("scrape_targets_hardened", job="orders-agent"), FAIL, ("no scrape target for job 'orders-agent'",
                                                                     "asap-hardened")),
    (mm.ScrapeTargetsObservation("orders", [{"scrapeUrl": "http://a/metrics", "health": "unknown",
                                             "labels": {"job": "orders"}}]), ERROR, ("has not scraped",)),
    # relabelled: the job label was rewritten, the discovered one still names the job
    (mm.ScrapeTargetsObservation("orders", [{"scrapeUrl": "http://a/metrics", "health": "up",
                                             "labels": {"job": "kubernetes-pods"},
                                             "discoveredLabels": {"job": "orders"}}]), PASS, ("up",)),
], ids=["down-eof", "hardened", "no-target", "unknown", "relabelled"])
def test_scrape_targets(obs, status, words):
    check(mm.judge_scrape_targets(obs), status, *words)


# ------------------------------------------------------------------------------ MON-LOG-1 / MON-LOG-2
def log(name_or_lines) -> ml.LogLines:
    if isinstance(name_or_lines, str):
        return ml.LogLines(**recorded(name_or_lines))
    return ml.LogLines("test", list(name_or_lines))


JSON_LINE = json.dumps({"event": "asap.request.received", "level": "info", "timestamp": "2026-11-30T00:00:00Z"})
UVICORN = 'INFO:     127.0.0.1:5 - "POST /asap HTTP/1.1" 200 OK'
CONSOLE = "2026-11-30T00:00:00Z [info     ] asap.request.received  [asap.transport.server] sender=x"


@pytest.mark.parametrize("obs, status, words", [
    (log("log_hardened"), PASS, ("agent log lines are JSON events",)),
    (log("log_misconfigured"), FAIL, ("console-formatted", "cannot query them by field")),
    (log([UVICORN] * 5), ERROR, ("no agent log lines", "5 uvicorn lines only")),
    (log([JSON_LINE] * 7 + ["print() debugging output"] * 3), WARN, ("only 70%",)),
    # Python warnings on stderr and uvicorn's plain lines are counted apart, not against the agent
    (log([JSON_LINE] * 4 + [UVICORN] * 3 + ["/x/y.py:3: DeprecationWarning: old", "  import z"]), PASS, ("100%",)),
    (log([json.dumps({"msg": "no event key"})] * 3), FAIL, ("0% of 3",)),
], ids=["hardened", "console", "uvicorn-only", "mixed", "warnings-apart", "json-without-keys"])
def test_structured(obs, status, words):
    check(ml.judge_structured(obs), status, *words)


JSON_ROW = {"workload": "d.yaml: Deployment/a", "container": "agent", "ASAP_LOG_FORMAT": "json"}


@pytest.mark.parametrize("obs, status, words", [
    (ml.LogFormatObservation(log("log_hardened"), [JSON_ROW]), PASS, ("asap.* events are JSON",
                                                                      "set ASAP_LOG_FORMAT=json")),
    (ml.LogFormatObservation(log("log_misconfigured"), None), FAIL, ("console-formatted",)),
    (ml.LogFormatObservation(None, [JSON_ROW | {"ASAP_LOG_FORMAT": None}]), FAIL, ("(unset: console)",)),
    (ml.LogFormatObservation(None, [JSON_ROW | {"ASAP_LOG_FORMAT": "JSON"}]), PASS, ("1 agent container",)),
    (ml.LogFormatObservation(log([UVICORN]), None), ERROR, ("no asap.* event",)),
    (ml.LogFormatObservation(log([JSON_LINE]), [JSON_ROW | {"ASAP_LOG_FORMAT": "console"}]), FAIL,
     ("ASAP_LOG_FORMAT=console",)),
], ids=["hardened", "console-log", "env-unset", "env-uppercase", "nothing-to-judge", "log-ok-env-wrong"])
def test_log_format(obs, status, words):
    check(ml.judge_log_format(obs), status, *words)


# ------------------------------------------------------------------------------ MON-LOG-3
TRACE, REQ, RESP = "ab" * 16, "01REQUEST", "01RESPONSE"


def trace_obs(*events, text=(), status=200, rpc_error=None) -> ml.TraceObservation:
    return ml.TraceObservation(TRACE, "cd" * 8, status, rpc_error,
                               {"id": RESP, "correlation_id": REQ, "trace_id": TRACE, "extensions": None},
                               "test", list(events), list(text))


RECEIVED = {"event": "asap.request.received", "envelope_id": REQ, "trace_id": TRACE}
PROCESSED = {"event": "asap.request.processed", "envelope_id": RESP, "response_id": RESP, "trace_id": TRACE}


@pytest.mark.parametrize("obs, status, words", [
    (ml.TraceObservation(**recorded("trace_hardened")), PASS,
     ("trace_id joins", "correlation_id (the request id) is logged on refagent.task.completed")),
    (ml.TraceObservation(**recorded("trace_misconfigured")), FAIL, ("only in unstructured (console) text",)),
    # asap-protocol as shipped with JSON logs: the trace joins, correlation_id is nowhere (half the item)
    (trace_obs(RECEIVED, PROCESSED), WARN, ("no line of the request logs correlation_id",)),
    (trace_obs(RECEIVED, PROCESSED, {"event": "orders.placed", "correlation_id": REQ}), PASS, ("orders.placed",)),
    # a correlation_id that is not this request's id joins nothing
    (trace_obs(RECEIVED, PROCESSED, {"event": "orders.placed", "correlation_id": "other"}), WARN, ("correlation_id",)),
    (trace_obs(RECEIVED), WARN, ("found only on asap.request.received",)),
    (trace_obs(), FAIL, ("not found in test",)),
    (trace_obs(status=429), ERROR, ("not accepted (HTTP 429",)),
    (trace_obs(rpc_error={"code": -32001, "message": "auth"}), ERROR, ("JSON-RPC -32001",)),
], ids=["hardened", "console", "trace-only", "both", "wrong-correlation", "received-only", "absent", "429",
        "rpc-error"])
def test_trace(obs, status, words):
    check(ml.judge_trace(obs), status, *words)


# ------------------------------------------------------------------------------ MON-HEALTH-1
def answer(role, path, status, body='{"status":"ok"}', source="asap-protocol's default", error=None):
    return mh.EndpointAnswer(role, path, source, status, "application/json", body, error)


def health(name: str) -> mh.HealthObservation:
    return mh.HealthObservation([mh.EndpointAnswer(**a) for a in recorded(name)["answers"]])


@pytest.mark.parametrize("obs, status, words", [
    (health("health_hardened"), PASS, ("liveness /health and readiness /ready", "MON-HEALTH-2's drill")),
    (health("health_misconfigured"), FAIL, ("liveness /asap", "HTTP 405", "does not answer GET")),
    # asap-protocol's constant /ready: judged by what the orchestrator reads (200), not by its text
    (mh.HealthObservation([answer("liveness", "/health", 200), answer("readiness", "/ready", 200)]), PASS,
     ("the same body as liveness",)),
    # a stock Deployment probing /readyz, which asap-protocol does not serve: pods never become ready
    (mh.HealthObservation([answer("liveness", "/health", 200),
                           answer("readiness", "/readyz", 404, '{"detail":"Not Found"}', "readinessProbe of d.yaml")]),
     FAIL, ("readiness /readyz (readinessProbe of d.yaml)", "does not serve it")),
    (mh.HealthObservation([answer("liveness", "/health", 200), answer("readiness", "/ready", 401)]), FAIL,
     ("demands credentials",)),
    (mh.HealthObservation([answer("liveness", "/health", None, error="connection reset"),
                           answer("readiness", "/ready", 200)]), FAIL, ("did not answer (connection reset)",)),
    (mh.HealthObservation([answer("liveness", "/health", 200), answer("readiness", "/ready", 200, "ok")]), PASS,
     ("'ok'",)),
], ids=["hardened", "liveness-on-asap", "constant-ready", "stock-readyz", "auth", "reset", "plain-text"])
def test_health(obs, status, words):
    check(mh.judge_health(obs), status, *words)


def test_endpoints_come_from_params_then_manifest_then_asap_defaults(tmp_path):
    from asap_runbook.params import Target

    manifest = tmp_path / "d.yaml"
    manifest.write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: a}\nspec:\n template:\n  spec:\n"
                        "   containers:\n   - name: agent\n     image: x\n     command: [uvicorn, app:app]\n"
                        "     readinessProbe: {httpGet: {path: /readyz, port: 8000}}\n")
    bare = Target(name="t", base_url="https://x.example")
    assert {r: e.path for r, e in mh.endpoints(bare).items()} == {"liveness": "/health", "readiness": "/ready"}
    from_manifest = mh.endpoints(bare.model_copy(update={"k8s_manifests": [manifest]}))
    assert from_manifest["readiness"].path == "/readyz" and "readinessProbe" in from_manifest["readiness"].source
    named = mh.endpoints(bare.model_copy(update={"k8s_manifests": [manifest], "readiness_path": "/healthz/ready"}))
    assert named["readiness"].path == "/healthz/ready" and named["readiness"].source == "targets[t].readiness_path"


# ------------------------------------------------------------------------------ MON-HEALTH-2
OK_CMD = {"command": "stop", "exit_code": 0, "seconds": 0.1, "output": ""}


def drill(**kw) -> mh.ReadinessDrillObservation:
    base = dict(path="/ready", source="asap-protocol's default", before={"status": 200, "body": "ok"}, stop=OK_CMD,
                start=OK_CMD, failed_at_s=0.4, recovered_at_s=1.2, polls=9, max_polls=50, recovery_window_s=30,
                timeline=[{"t_s": 0.1, "what": "dependency_stop"}, {"t_s": 0.5, "what": "/ready not ready",
                                                                    "status": 503}])
    return mh.ReadinessDrillObservation(**(base | kw))


@pytest.mark.parametrize("obs, status, words", [
    (drill(), PASS, ("/ready turned 503 0.4 s after dependency_stop", "200 again 1.2 s")),
    (drill(failed_at_s=None, recovered_at_s=None), FAIL, ("stayed 200", "not wired")),
    (drill(recovered_at_s=None), FAIL, ("did not recover within 30 s",)),
    (drill(path="/readyz", before={"status": 404, "body": "Not Found"}), ERROR, ("/readyz is not 200 before",)),
    (drill(stop=OK_CMD | {"exit_code": 1, "output": "redis-cli: not found"}), ERROR, ("dependency_stop failed",
                                                                                      "redis-cli")),
    (drill(start=OK_CMD | {"exit_code": None}), ERROR, ("dependency_start failed", "may still be down")),
], ids=["wired", "constant", "no-recovery", "readyz-missing", "stop-fails", "start-times-out"])
def test_readiness_drill(obs, status, words):
    check(mh.judge_readiness_drill(obs), status, *words)


# ------------------------------------------------------------------------------ MON-HEALTH-3
def probe(path, type_="httpGet", declared=True):
    return {"type": type_, "path": path, "port": 8000, "port_declared": declared}


def container(**kw) -> dict:
    return {"container": "d.yaml: Deployment/a container agent", "liveness": probe("/health"),
            "readiness": probe("/ready"), "grace_s": 30, "grace_explicit": False, "preStop_sleep_s": 5.0,
            "drain_s": 10.0, "drain_from": "uvicorn --timeout-graceful-shutdown 10", "shell_wrapped": False} | kw


def probes_obs(*containers, readiness_path=None, workloads=1) -> mh.ProbeConfigObservation:
    return mh.ProbeConfigObservation(readiness_path, list(containers), workloads)


@pytest.mark.parametrize("obs, status, words", [
    (mh.ProbeConfigObservation(**recorded("probe_config_hardened")), PASS, ("/health / /ready",)),
    (mh.ProbeConfigObservation(**recorded("probe_config_misconfigured")), FAIL,
     ("livenessProbe path /asap is the JSON-RPC endpoint", "no readinessProbe", "sh -c", "preStop sleep 10 s")),
    # the stock Deployment: /readyz is accepted statically (MON-HEALTH-1 GETs it) ...
    (probes_obs(container(readiness=probe("/readyz"))), PASS, ("/health / /readyz",)),
    # ... unless the parameters say the agent's readiness endpoint is elsewhere
    (probes_obs(container(readiness=probe("/readyz")), readiness_path="/ready"), FAIL,
     ("readinessProbe path '/readyz', but the agent's readiness endpoint is '/ready'",)),
    (probes_obs(container(readiness=probe(None, "tcpSocket"))), WARN, ("tcpSocket probe",)),
    (probes_obs(container(readiness=probe("/health"))), WARN, ("the same path /health",)),
    (probes_obs(container(liveness=probe("/health", declared=False))), FAIL, ("not a declared containerPort",)),
    (probes_obs(container(drain_s=30.0)), FAIL, ("preStop 5 s + drain 30 s", "(default)")),
    (probes_obs(workloads=0), FAIL, ("no workload",)),
    (probes_obs(workloads=2), ERROR, ("recognised as the agent",)),
], ids=["hardened", "misconfigured", "stock-readyz", "readyz-vs-params", "tcp", "same-path", "port", "grace",
        "no-workload", "no-container"])
def test_probe_config(obs, status, words):
    check(mh.judge_probe_config(obs), status, *words)


# ------------------------------------------------------------------------------ MON-ALERT-*
def alert(name: str, **changes) -> ma.AlertObservation:
    return ma.AlertObservation(**(recorded(name) | changes))


def rule(name, expr, alerts=(), duration=60):
    return {"type": "alerting", "name": name, "query": expr, "duration": duration, "alerts": list(alerts)}


PROXY_RULE = rule("Ingress429", 'sum by (ingress) (rate(nginx_ingress_controller_requests{status="429"}[5m])) > 1')


INGRESS = 'nginx_ingress_controller_requests{ingress="stock"}'


def proxy(has_series: bool, selector=INGRESS, status_label=None) -> dict:
    from asap_runbook.alerting import proxy_counter
    return {"selector": selector, "status_label": status_label,
            "of_status": proxy_counter(selector, status_label).of_status("429"), "has_series": has_series}


def stock_alert(groups, *, proxy_series: bool | None, agent_series: bool = False, selector=INGRESS, label=None):
    """The stock agent (asap-protocol as documented, no wrapper) behind an ingress; proxy_series None:
    targets[].proxy_requests is not set."""
    return ma.AlertObservation("rate_limit", "asap-stock", "5m", [{"name": "g", "rules": groups}],
                               {"asap_rate_limit_exceeded_total": agent_series},
                               [{"scrapeUrl": "http://a", "health": "up", "lastError": ""}],
                               None if proxy_series is None else proxy(proxy_series, selector, label), target="stock")


@pytest.mark.parametrize("obs, status, words", [
    (alert("alert_rate_limit_hardened"), PASS, ("ASAPRateLimitExceeded cover(s) job 'asap-hardened'",)),
    (alert("alert_rate_limit_misconfigured"), FAIL, ("no asap_rate_limit_exceeded_total series",
                                                     "data does not end with # EOF", "can never fire")),
    # stock: the agent counts no 429 and nobody said where the proxy does: no verdict, the parameter to set
    (stock_alert([], proxy_series=None), SKIP, ("targets[stock].proxy_requests is not set",)),
    # ... even with an ingress rule loaded: without the selector it cannot be tied to this agent
    (stock_alert([PROXY_RULE], proxy_series=None), SKIP, ("Ingress429 read(s) a proxy's 429s",)),
    (stock_alert([], proxy_series=False), SKIP, ("selects no series in Prometheus",)),
    (stock_alert([PROXY_RULE], proxy_series=True), PASS, ("Ingress429 cover(s)",)),
    (stock_alert([], proxy_series=True), FAIL, ("429s are counted (nginx_ingress_controller_requests{ingress=",
                                                "no loaded alerting rule reads them")),
    (stock_alert([PROXY_RULE], proxy_series=False), FAIL, ("Ingress429 read(s)", "can never fire")),
    (stock_alert([PROXY_RULE | {"alerts": [{"state": "firing", "labels": {"ingress": "stock"}}]}], proxy_series=True),
     WARN, ("Ingress429 firing now",)),
    # the selector pins this agent's ingress: a rule for another ingress does not cover it
    (stock_alert([rule("Pay429", 'rate(nginx_ingress_controller_requests{ingress="pay",status="429"}[5m]) > 1')],
                 proxy_series=True), FAIL, ("no loaded alerting rule reads them",)),
    # Traefik counts by `code`: a rule on `status` reads nothing there; proxy_status_label overrides
    (stock_alert([rule("T429", 'rate(traefik_service_requests_total{code="429"}[5m]) > 1')], proxy_series=True,
                 selector='traefik_service_requests_total{service="stock@kubernetes"}'), PASS, ("T429 cover(s)",)),
    (stock_alert([rule("T429", 'rate(my_proxy_requests{http_code="429"}[5m]) > 1')], proxy_series=True,
                 selector="my_proxy_requests", label="http_code"), PASS, ("T429 cover(s)",)),
    # a 4xx-class rule covers 429 too
    (stock_alert([rule("Ingress4xx", 'rate(nginx_ingress_controller_requests{status=~"4.."}[5m]) > 5')],
                 proxy_series=True), PASS, ("Ingress4xx cover(s)",)),
], ids=["hardened", "misconfigured", "stock-no-selector", "stock-rule-no-selector", "stock-selector-no-series",
        "stock-proxy-rule", "stock-counted-no-rule", "proxy-rule-no-series", "proxy-firing", "other-ingress",
        "traefik-code", "own-label", "4xx-regex"])
def test_rate_limit_alert(obs, status, words):
    check(ma.judge_alert(obs), status, *words)


@pytest.mark.parametrize("obs, threshold, status, words", [
    (alert("alert_error_rate_hardened"), 0.1, PASS, ("ASAPHighErrorRate cover(s) job 'asap-hardened'",)),
    (alert("alert_error_rate_misconfigured"), 0.1, FAIL, ("can never fire",)),
    (alert("alert_down_hardened"), None, PASS, ("ASAPAgentDown, ASAPAgentsAbsent cover(s)", "not firing")),
    (alert("alert_down_misconfigured"), None, FAIL, ("the agent is down or unscrapeable", "# EOF")),
    (alert("alert_down_hardened", groups=[]), None, FAIL, ("no loaded alerting rule on agent down",)),
    (alert("alert_error_rate_hardened", error_rate={"ratio": 0.2, "requests": 50, "all_errors_ratio": 0.3}), 0.1, PASS,
     ("20.0% of 50 requests, above the 10% threshold",)),
], ids=["errors-hardened", "errors-misconfigured", "down-hardened", "down-misconfigured", "no-rules", "above"])
def test_other_alerts(obs, threshold, status, words):
    check(ma.judge_alert(obs, threshold, "default"), status, *words)


# ------------------------------------------------------------------------------ MON-ALERT-*: routing
def routing(name: str, **changes) -> dict:
    """The recorded routing of `name` (the reference Alertmanager: pages to oncall, warnings to tickets,
    the misconfigured agent's down alert to "null"), changed."""
    return recorded(name)["routing"] | changes


def routes_to(name: str, rule: str, receivers: list[str], route: str = "default-route") -> list[dict]:
    """The recorded routes of `name`, with `rule` resolved to `receivers` instead."""
    return [r | {"receivers": receivers, "routes": [{"route": route, "receiver": n} for n in receivers]}
            if r["rule"] == rule else r for r in recorded(name)["routing"]["routes"]]


WITH_CHAT = {"oncall": ["webhook_configs"], "tickets": ["webhook_configs"], "null": [], "chat": ["slack_configs"]}
UNATTACHED = {"source": "Prometheus /api/v1/alertmanagers", "alertmanager": None, "discovered": [], "error": None,
              "receivers": {}, "routes": []}
UNREACHABLE = {"source": "alertmanager.url", "alertmanager": "http://127.0.0.1:1", "discovered": [],
               "error": "Alertmanager at http://127.0.0.1:1 could not be reached (All connection attempts failed)",
               "receivers": {}, "routes": []}
FIRING_ERRORS = {"ratio": 0.5, "requests": 80, "all_errors_ratio": 0.5}


def firing(name: str, rule_name: str, labels: dict) -> list[dict]:
    """The recorded rule groups of `name`, with `rule_name` firing for `labels`."""
    groups = recorded(name)["groups"]
    for g in groups:
        for r in g["rules"]:
            if r["name"] == rule_name:
                r["alerts"] = [{"state": "firing", "labels": labels, "activeAt": "2026-11-30T08:00:00Z", "value": "0.5"}]
    return groups


ERRORS_FIRING = firing("alert_error_rate_hardened", "ASAPHighErrorRate",
                       {"alertname": "ASAPHighErrorRate", "job": "asap-hardened", "severity": "critical"})


@pytest.mark.parametrize("obs, status, words", [
    # as recorded from the reference deployment and its Alertmanager
    (alert("alert_down_hardened"), PASS, ("not firing", "Alertmanager routes ASAPAgentDown to oncall (webhook)",
                                          "ASAPAgentsAbsent to oncall (webhook)")),
    (alert("alert_down_misconfigured"), FAIL, ("ASAPAgentDown firing for job 'asap-misconfigured'",
                                               "routes ASAPAgentDown to receiver 'null' by route "
                                               '{alertname="ASAPAgentDown",job="asap-misconfigured"}',
                                               "which has no integrations: it notifies no one",
                                               "only ASAPAgentsAbsent reach(es) a receiver")),
    (alert("alert_down_stock"), FAIL, ("OrdersServiceDown", "the agent is down or unscrapeable",
                                       "Alertmanager routes OrdersServiceDown to oncall (webhook)")),
    (alert("alert_error_rate_hardened"), PASS, ("Alertmanager routes ASAPHighErrorRate to oncall (webhook)",)),
    (alert("alert_rate_limit_hardened"), PASS, ("Alertmanager routes ASAPRateLimitExceeded to tickets (webhook)",)),
    # a rule that passes on its own but is routed nowhere: nobody is told
    (alert("alert_down_hardened", routing=routing("alert_down_hardened", routes=routes_to(
        "alert_down_hardened", "ASAPAgentDown", ["null"], '{job="asap-hardened"}'))), FAIL,
     ("routes ASAPAgentDown to receiver 'null' by route {job=\"asap-hardened\"}", "it notifies no one",
      "though ASAPAgentDown, ASAPAgentsAbsent cover(s) job 'asap-hardened'")),
    # continue: true -- one receiver with an integration among several is enough
    (alert("alert_down_hardened", routing=routing("alert_down_hardened", receivers=WITH_CHAT, routes=routes_to(
        "alert_down_hardened", "ASAPAgentDown", ["chat", "null"]))), PASS,
     ("routes ASAPAgentDown to chat (slack)",)),
    (alert("alert_down_hardened", routing=routing("alert_down_hardened", routes=routes_to(
        "alert_down_hardened", "ASAPAgentDown", ["null", "null"]))), FAIL,
     ("receivers 'null', 'null', none of which has an integration",)),
    # a receiver the routing names that the configuration read does not list counts as no integration
    (alert("alert_down_hardened", routing=routing("alert_down_hardened", receivers={"null": []})), FAIL,
     ("routes ASAPAgentDown to receiver 'oncall' by the default route, which has no integrations",)),
    # Prometheus sends to no Alertmanager and the parameters name none: not verified, said
    (alert("alert_down_hardened", routing=UNATTACHED), WARN,
     ("not firing; but Prometheus sends its alerts to no Alertmanager", "whether anyone is told is not verified")),
    # could not look: error, never a pass; the rule's own failure stands
    (alert("alert_down_hardened", routing=UNREACHABLE), ERROR,
     ("where Alertmanager routes ASAPAgentDown, ASAPAgentsAbsent could not be looked at",
      "could not be reached")),
    (alert("alert_down_misconfigured", routing=UNREACHABLE), FAIL,
     ("the agent is down or unscrapeable", "could not be looked at")),
    (alert("alert_down_hardened", routing=routing("alert_down_hardened", routes=[
        r | {"error": "amtool config routes test did not finish within 10 s"}
        for r in recorded("alert_down_hardened")["routing"]["routes"]])), ERROR, ("did not finish within 10 s",)),
    # a firing warn routed nowhere is a fail: it fires and no one hears it
    (alert("alert_error_rate_hardened", groups=ERRORS_FIRING, error_rate=FIRING_ERRORS,
           routing=routing("alert_error_rate_hardened", routes=routes_to(
               "alert_error_rate_hardened", "ASAPHighErrorRate", ["null"]))), FAIL,
     ("routes ASAPHighErrorRate to receiver 'null'", "ASAPHighErrorRate firing now")),
    (alert("alert_error_rate_hardened", groups=ERRORS_FIRING, error_rate=FIRING_ERRORS), WARN,
     ("ASAPHighErrorRate firing now", "routes ASAPHighErrorRate to oncall (webhook)")),
    # a Prometheus-compatible API that does not serve its configuration: routed without external labels, said
    (alert("alert_error_rate_hardened", routing=routing("alert_error_rate_hardened", external_labels_unread="404")),
     PASS, ("routes ASAPHighErrorRate to oncall (webhook) (routed without Prometheus's external labels",)),
], ids=["down-hardened", "down-misconfigured", "down-stock", "errors-hardened", "429-hardened", "pass-but-null",
        "continue-one-reaches", "several-none-reach", "receiver-not-listed", "no-alertmanager", "unreachable",
        "unreachable-rule-fails", "amtool-timeout", "firing-to-null", "firing-routed", "no-external-labels"])
def test_alert_routing(obs, status, words):
    check(ma.judge_alert(obs, 0.1, "default"), status, *words)


def test_routing_of_a_rule_that_can_never_fire_is_not_judged():
    """The misconfigured agent's error-rate rule has no input series: the verdict is the rule's alone, even
    with a routing of it to "null" in the observation."""
    obs = alert("alert_error_rate_misconfigured", routing=routing("alert_error_rate_hardened", routes=routes_to(
        "alert_error_rate_hardened", "ASAPHighErrorRate", ["null"])))
    f = ma.judge_alert(obs, 0.1, "default")
    assert f.status is FAIL and "can never fire" in f.summary and "Alertmanager" not in f.summary, f.summary


def test_an_observation_without_routing_keeps_the_rule_verdict():
    f = ma.judge_alert(alert("alert_down_hardened", routing=None))
    assert f.status is PASS and "Alertmanager" not in f.summary, f.summary


def test_routing_evidence_names_labels_receivers_and_routes():
    f = ma.judge_alert(alert("alert_down_misconfigured"))
    ev = next(e for e in f.evidence if e.label.startswith("Alertmanager routing"))
    assert "Prometheus /api/v1/alertmanagers" in ev.label
    down = next(row for row in ev.data if row["rule"] == "ASAPAgentDown")
    assert down["receivers"] == "null (no integrations)" and "job=asap-misconfigured" in down["labels"]
    assert down["labels from"] == "a pending or firing alert"


# ------------------------------------------------------------------------------ MON-ALERT-*: what one target keeps
def _trimmed(obs: ma.AlertObservation) -> ma.AlertObservation:
    from asap_runbook import alerting
    p = ma._proxy(obs)
    return ma.AlertObservation(**(vars(obs) | {"groups": alerting.relevant_groups(
        obs.groups, obs.job, alerting.CONCERNS[obs.concern], p)}))


def _finding(f) -> tuple:
    return f.status, f.summary, [(e.label, e.data) for e in f.evidence]


TWO_JOBS = {"state": "firing", "activeAt": "2026-11-30T08:00:00Z", "value": "1"}


@pytest.mark.parametrize("obs", [
    *(alert(n) for n in ("alert_down_hardened", "alert_down_misconfigured", "alert_down_stock",
                         "alert_error_rate_hardened", "alert_error_rate_misconfigured",
                         "alert_rate_limit_hardened", "alert_rate_limit_misconfigured")),
    alert("alert_error_rate_hardened", groups=ERRORS_FIRING, error_rate=FIRING_ERRORS),
    alert("alert_down_hardened", groups=[]),
    stock_alert([PROXY_RULE], proxy_series=None),
    stock_alert([PROXY_RULE], proxy_series=True),
    stock_alert([PROXY_RULE | {"alerts": [{"state": "firing", "labels": {"ingress": "stock"}},
                                          {"state": "firing", "labels": {"ingress": "pay"}}]}], proxy_series=True),
    stock_alert([rule("T429", 'rate(my_proxy_requests{http_code="429"}[5m]) > 1')], proxy_series=True,
                selector="my_proxy_requests", label="http_code"),
    # a rule on another job only, firing there, beside one firing here through a recording rule
    ma.AlertObservation("error_rate", "asap-a", "5m", [{"name": "g", "rules": [
        {"type": "recording", "name": "job:errors:rate5m", "query": "sum by (job) (rate(asap_requests_error_total[5m]))"},
        {"type": "recording", "name": "unused:rate5m", "query": "sum(rate(http_requests_total[5m]))"},
        rule("ErrorsA", 'job:errors:rate5m{job="asap-a"} > 1', [TWO_JOBS | {"labels": {"job": "asap-a"}}]),
        rule("ErrorsB", 'job:errors:rate5m{job="asap-b"} > 1', [TWO_JOBS | {"labels": {"job": "asap-b"}}]),
        rule("DiskFull", "node_filesystem_avail_bytes < 1e9", [TWO_JOBS | {"labels": {"job": "asap-a"}}]),
        rule("Other", "node_load1 > 10", [TWO_JOBS | {"labels": {"job": "asap-b"}}])]}],
        {"asap_requests_error_total": True}, [{"scrapeUrl": "http://a", "health": "up", "lastError": ""}],
        target="a", error_rate=FIRING_ERRORS),
], ids=["down-hardened", "down-misconfigured", "down-stock", "errors-hardened", "errors-misconfigured",
        "429-hardened", "429-misconfigured", "errors-firing", "no-rules", "proxy-no-selector", "proxy-rule",
        "proxy-firing-two-ingresses", "own-label", "recorded-two-jobs"])
def test_a_target_keeps_only_the_rules_its_verdict_reads(obs):
    """The observation keeps the rules that can matter for this target (alerting.relevant_groups), and the
    verdict, summary and evidence judged from them are those judged from every group Prometheus loaded."""
    trimmed = _trimmed(obs)
    assert _finding(ma.judge_alert(trimmed, 0.1, "default")) == _finding(ma.judge_alert(obs, 0.1, "default"))
    assert len(json.dumps(trimmed.groups)) <= len(json.dumps(obs.groups))


def test_relevant_rules_of_a_target():
    """Of the recorded-two-jobs case: the rules reading the error rate (whatever job they select, so the
    verdict can name the ones that exclude this job), only this job's alerts, the rule with an alert for
    this job, and the recording rule read; not the other job's unrelated rule nor the unused recording."""
    from asap_runbook import alerting
    groups = [{"name": "g", "rules": [
        {"type": "recording", "name": "job:errors:rate5m", "query": "sum by (job) (rate(asap_requests_error_total[5m]))"},
        {"type": "recording", "name": "unused:rate5m", "query": "sum(rate(http_requests_total[5m]))"},
        rule("ErrorsB", 'job:errors:rate5m{job="asap-b"} > 1', [TWO_JOBS | {"labels": {"job": "asap-b"}}]),
        rule("DiskFull", "node_filesystem_avail_bytes < 1e9", [TWO_JOBS | {"labels": {"job": "asap-a"}}]),
        rule("Other", "node_load1 > 10", [TWO_JOBS | {"labels": {"job": "asap-b"}}])]},
        {"name": "empty", "rules": [rule("Other2", "node_load5 > 10")]}]
    kept = alerting.relevant_groups(groups, "asap-a", alerting.CONCERNS["error_rate"])
    assert [g["name"] for g in kept] == ["g"]
    assert [(r["name"], len(r.get("alerts", []))) for r in kept[0]["rules"]] == [
        ("job:errors:rate5m", 0), ("ErrorsB", 0), ("DiskFull", 1)]
    assert alerting.rule_counts(groups) == {"groups": 2, "alerting_rules": 4, "recording_rules": 2}


def test_kept_observation_is_bounded_json():
    """What lands in details["observation"] is JSON and small, whatever was scraped."""
    obs = mm.TrackedObservation(scrape("metrics_scrape_misconfigured"), scrape("x" * 100_000))
    kept = bounded(obs)
    text = json.dumps(kept)
    assert len(text) < 4000 and kept["second"]["text"].endswith("(100000 chars)")


def test_a_relabelled_target_is_the_jobs_for_scrape_and_alert_checks_alike():
    """MON-METRICS-2 and MON-ALERT-* read the job's scrape targets by one rule: the job label, or the scrape
    config's job name when relabelling rewrote the label."""
    from asap_runbook import monitoring_live as live
    active = [
        {"scrapeUrl": "https://a/metrics", "health": "up", "labels": {"job": "orders-prod", "instance": "a:443"},
         "discoveredLabels": {"job": "orders"}},
        {"scrapeUrl": "https://b/metrics", "health": "up", "labels": {"job": "billing", "instance": "b:443"},
         "discoveredLabels": {"job": "billing"}},
    ]
    assert live.of_job(active, "orders") == [
        {"scrapeUrl": "https://a/metrics", "health": "up", "lastError": None, "instance": "a:443"}]
    assert mm.judge_scrape_targets(mm.ScrapeTargetsObservation("orders", active)).status is Status.PASS
