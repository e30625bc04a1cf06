"""Monitoring checks proven both ways against the real reference deployment (agents, nginx,
Redis, Prometheus with the shipped rules), plus Prometheus down."""

from __future__ import annotations

import os

import pytest

from asap_runbook.catalog import Verification, load_catalog
from asap_runbook.params import load_params
from asap_runbook.results import Status

from conftest import DEMO_PARAMS, expected, one_target, write_test_params

# what each reference target must get is the catalog's `expected` (asap_runbook/catalog/monitoring.yaml)
AUTOMATED = [i.id for i in load_catalog().section("monitoring") if i.verification is not Verification.MANUAL]


@pytest.mark.parametrize("item_id", AUTOMATED)
def test_passes_on_hardened(check, item_id):
    r = check(item_id, "hardened")
    assert r.status is expected(item_id, "hardened"), r.summary
    if item_id != "MON-HEALTH-4":  # observe, then judge: what the verdict was made from is kept
        assert r.details["observation"], r.details


@pytest.mark.parametrize("item_id", AUTOMATED)
def test_fails_or_warns_on_misconfigured(check, item_id):
    r = check(item_id, "misconfigured")
    assert r.status is expected(item_id, "misconfigured"), r.summary
    assert r.remediation


def test_catalog_counts_fifteen_automated():
    from asap_runbook.checks._registry import registered

    assert len(AUTOMATED) == 15
    assert set(AUTOMATED) <= set(registered())


# -------------------------------------------------------------------------- what the findings say
def test_metrics_exposition_failure_names_the_format(check):
    r = check("MON-METRICS-1", "misconfigured")
    assert "openmetrics" in r.summary.lower() and "Clashing name" in r.summary


def test_broken_histogram_is_named(check):
    r = check("MON-METRICS-3", "misconfigured")
    assert "above the +Inf bucket" in r.summary


def test_trace_join_reports_what_joins(check):
    r = check("MON-LOG-3", "hardened")
    joins = next(e.data for e in r.evidence if e.label.startswith("what joins"))
    assert "asap.request.received" in joins["trace_id"] and "asap.request.processed" in joins["trace_id"]
    # asap-protocol 2.5.10 never logs correlation_id; the hardened handler binds it on its own event
    assert joins["correlation_id == request id"] == ["refagent.task.completed"]
    assert joins["response correlation_id == request id"] is True
    assert joins["trace_id_kept"]  # span_id is reported; this handler does not copy extensions back
    assert r.details["observation"]["events"], "the observation keeps the request's log events"


def test_readiness_drill_timeline(check):
    r = check("MON-HEALTH-2", "hardened")
    timeline = next(e.data for e in r.evidence if e.label.startswith("drill timeline"))
    statuses = [t.get("status") for t in timeline if "status" in t]
    assert statuses == [503, 200]
    assert all(t["exit_code"] == 0 for t in timeline if t["what"].startswith("dependency_"))


def test_alert_coverage_is_by_selector_and_shows_firing(check):
    r = check("MON-ALERT-3", "misconfigured")
    assert "ASAPAgentDown" in r.summary and "EOF" in r.summary
    r = check("MON-ALERT-1", "misconfigured")
    assert "can never fire" in r.summary


def test_alert_rule_on_another_job_does_not_cover(demo_params, check):
    # the same deployment, the hardened target named with a job the rules' job=~"asap-.*" excludes
    r = check("MON-ALERT-1", "hardened", one_target(demo_params, "hardened", prometheus_job="orders"))
    assert r.status is Status.FAIL and "selects job 'orders'" in r.summary


def test_drills_off_is_skip(demo_params, check):
    t = demo_params.target("hardened")
    t = t.model_copy(update={"active_probes": t.active_probes.model_copy(update={"drills": False})})
    params = demo_params.model_copy(update={"targets": [t]})
    for item in ("MON-HEALTH-2", "MON-HEALTH-4"):
        r = check(item, "hardened", params)
        assert r.status is Status.SKIP and "active_probes.drills" in r.summary


# -------------------------------------------------------------------------- Prometheus down
@pytest.fixture
def prometheus_down_path(deployment, tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return write_test_params(tmp_path, prometheus={"url": f"http://127.0.0.1:{port}", "timeout_seconds": 3,
                                                   "window": "1m"})


@pytest.fixture
def prometheus_down_params(prometheus_down_path):
    return load_params(prometheus_down_path)


@pytest.mark.parametrize("item_id", ["MON-METRICS-2", "MON-ALERT-1", "MON-ALERT-2", "MON-ALERT-3", "MON-ALERT-4"])
def test_prometheus_down_is_error_not_fail(check, prometheus_down_params, item_id):
    r = check(item_id, "hardened", prometheus_down_params)
    assert r.status is Status.ERROR, r.summary
    assert "could not answer" in r.summary and "connection refused" in r.summary
    assert "Traceback" not in r.summary


def test_prometheus_plots_render(deployment, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import time

    import httpx

    import asap_runbook.notebook as rb

    # a rate needs two samples in its range: let a freshly started Prometheus scrape a few times
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        r = httpx.get(f"{deployment.prometheus.url}/api/v1/query",
                      params={"query": 'count_over_time(up{job="asap-hardened"}[30s])'}, timeout=5).json()
        if r["data"]["result"] and float(r["data"]["result"][0]["value"][1]) >= 4:
            break
        time.sleep(1)
    frames = rb.monitoring_plots(None, str(DEMO_PARAMS))
    assert set(frames) == {"hardened", "misconfigured", "stock"}
    assert "requests_per_s" in frames["hardened"] and len(frames["hardened"]) > 0
    assert frames["hardened"].attrs["double_cumulated"] is False  # the wrapper fixes the buckets
    assert frames["misconfigured"].empty  # never scraped
    assert frames["stock"].empty  # asap-protocol's metrics as shipped: Prometheus marks the scrape down


def test_token_never_in_monitoring_evidence(check):
    token = os.environ["ASAP_DEMO_TOKEN"]
    for item in ("MON-LOG-1", "MON-LOG-3", "MON-HEALTH-4"):
        r = check(item, "hardened")
        assert token not in r.model_dump_json()



def test_plots_with_prometheus_down_say_so(prometheus_down_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import asap_runbook.notebook as rb

    shown = []
    monkeypatch.setattr(rb, "_display", lambda obj: shown.append(getattr(obj, "data", str(obj))))
    assert rb.monitoring_plots(None, str(prometheus_down_path)) == {}
    assert len(shown) == 1 and "could not answer" in shown[0] and "Traceback" not in shown[0]


def test_drill_commands_that_fail_are_errors(demo_params, check):
    t = demo_params.target("hardened")
    t = t.model_copy(update={"drills": t.drills.model_copy(update={
        "dependency_stop": "exit 3", "dependency_start": "true", "agent_start": "echo no such agent; exit 1"})})
    params = demo_params.model_copy(update={"targets": [t]})
    r = check("MON-HEALTH-2", "hardened", params)
    assert r.status is Status.ERROR and "dependency_stop failed (exit 3)" in r.summary
    r = check("MON-HEALTH-4", "hardened", params)
    assert r.status is Status.ERROR and "did not answer" in r.summary
    assert any("no such agent" in line for e in r.evidence if e.label == "agent output" for line in e.data)


def test_stock_readiness_probe_path_is_the_one_probed(demo_params, check, tmp_path):
    """A Deployment written the stock way probes /readyz; asap-protocol serves /ready. MON-HEALTH-1 GETs the
    path the manifest names on the real agent and finds the pods could never become ready."""
    manifest = tmp_path / "deployment.yaml"
    manifest.write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: orders}\nspec:\n  template:\n"
                        "    spec:\n      containers:\n      - name: agent\n        image: orders:1\n"
                        "        command: [uvicorn, orders.app:app]\n"
                        "        livenessProbe: {httpGet: {path: /health, port: 8000}}\n"
                        "        readinessProbe: {httpGet: {path: /readyz, port: 8000}}\n")
    params = one_target(demo_params, "hardened", k8s_manifests=[manifest])
    r = check("MON-HEALTH-1", "hardened", params)
    assert r.status is Status.FAIL and "readiness /readyz (readinessProbe of deployment.yaml" in r.summary, r.summary
    assert "HTTP 404" in r.summary
    asked = [a["path"] for a in r.details["observation"]["answers"]]
    assert asked == ["/health", "/readyz", "/.well-known/asap/health"]


def test_no_429_counter_anywhere_is_a_skip_naming_the_selector(demo_params, check):
    """A job no shipped rule selects and no agent 429 counter: without targets[].proxy_requests no verdict,
    the parameter to set; with one that selects nothing in the real Prometheus, still none."""
    params = one_target(demo_params, "hardened", prometheus_job="orders-agent")
    r = check("MON-ALERT-4", "hardened", params)
    assert r.status is Status.SKIP and "targets[hardened].proxy_requests is not set" in r.summary, r.summary
    params = one_target(demo_params, "hardened", prometheus_job="orders-agent",
                        proxy_requests='nginx_ingress_controller_requests{ingress="orders-agent"}')
    r = check("MON-ALERT-4", "hardened", params)
    assert r.status is Status.SKIP and "selects no series in Prometheus" in r.summary, r.summary
    assert r.details["observation"]["proxy"]["has_series"] is False


# -------------------------------------------------------------------------- Alertmanager routing
def _routing(r) -> dict:
    return r.details["observation"]["routing"]


def test_alerts_are_routed_by_the_real_alertmanager(deployment, check):
    """Discovered through Prometheus (/api/v1/alertmanagers), routed by amtool with the configuration the
    running Alertmanager loaded: the hardened agent's pages reach on-call, the misconfigured agent's
    down alert is routed to "null"."""
    r = check("MON-ALERT-3", "hardened")
    assert r.status is Status.PASS and "Alertmanager routes ASAPAgentDown to oncall (webhook)" in r.summary, r.summary
    assert _routing(r)["source"] == "Prometheus /api/v1/alertmanagers"
    assert _routing(r)["alertmanager"] == deployment.alertmanager.url
    r = check("MON-ALERT-3", "misconfigured")
    assert r.status is Status.FAIL, r.summary
    assert "routes ASAPAgentDown to receiver 'null'" in r.summary and "it notifies no one" in r.summary, r.summary
    r = check("MON-ALERT-4", "hardened")
    assert "Alertmanager routes ASAPRateLimitExceeded to tickets (webhook)" in r.summary, r.summary
    r = check("MON-ALERT-1", "misconfigured")  # its rule can never fire (no series): no routing is asked
    assert r.status is Status.FAIL and r.details["observation"]["routing"] is None, r.details


def test_alertmanager_named_in_the_parameters(deployment, tmp_path, check):
    """alertmanager.url asks that Alertmanager; alertmanager.config_file routes that file and wins over the url
    (here a copy of the team's configuration without the "null" route)."""
    params = load_params(write_test_params(tmp_path / "url", alertmanager={"url": deployment.alertmanager.url}))
    r = check("MON-ALERT-3", "misconfigured", params)
    assert _routing(r)["source"] == "alertmanager.url" and "receiver 'null'" in r.summary, r.summary
    fixed = tmp_path / "alertmanager.yml"
    text = deployment.alertmanager.config_file.read_text()
    fixed.write_text(text.replace('job = "asap-misconfigured"', 'job = "some-other-job"'))
    params = load_params(write_test_params(tmp_path / "file", alertmanager={
        "url": deployment.alertmanager.url, "config_file": str(fixed)}))
    r = check("MON-ALERT-3", "misconfigured", params)
    assert _routing(r)["source"] == "alertmanager.config_file", r.details
    assert r.status is Status.FAIL and "routes ASAPAgentDown to oncall (webhook)" in r.summary, r.summary


def test_alertmanager_down_is_error_not_pass(deployment, tmp_path, check):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    params = load_params(write_test_params(tmp_path, alertmanager={"url": f"http://127.0.0.1:{port}"}))
    r = check("MON-ALERT-3", "hardened", params)
    assert r.status is Status.ERROR and f"Alertmanager at http://127.0.0.1:{port} could not be reached" in r.summary
    r = check("MON-ALERT-3", "misconfigured", params)  # the rule's own failure stands
    assert r.status is Status.FAIL and "could not be looked at" in r.summary, r.summary
