"""Monitoring building blocks: the shipped alert rules under promtool, histogram arithmetic on a
real asap-protocol scrape, PromQL selectors, Kubernetes manifests, log classification, and the
one edge case no server here produces (counters going backwards), through a mock transport."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from asap_runbook import k8s, logs
from asap_runbook import metrics_text as mt
from asap_runbook.promql import expand, selectors

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "asap_runbook" / "data" / "prometheus" / "asap-alerts.yml"
RULE_TESTS = REPO / "asap_runbook" / "data" / "prometheus" / "tests" / "asap-alerts.test.yml"
PROMTOOL = shutil.which("promtool")


# ----------------------------------------------------------------------------------- promtool
@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")
def test_promtool_check_rules():
    out = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package prometheus)")
def test_promtool_unit_tests_fire_and_stay_quiet():
    out = subprocess.run([PROMTOOL, "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_rule_tests_cover_each_alert_both_ways():
    import yaml

    rules = [r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing, quiet = set(), set()
    for t in tests:
        for a in t.get("alert_rule_test", []):
            (firing if a["exp_alerts"] else quiet).add(a["alertname"])
    for name in ("ASAPHighErrorRate", "ASAPHighLatencyP99", "ASAPAgentDown", "ASAPRateLimitExceeded"):
        assert name in rules and name in firing
    # "not firing" is shown either by an empty expectation or by a listed instance left out
    assert {"ASAPHighErrorRate", "ASAPAgentDown", "ASAPRateLimitExceeded"} <= quiet


# ----------------------------------------------------------------------------------- histograms
def test_real_scrape_is_double_cumulated_and_decumulates(deployment):
    """The misconfigured agent is asap-protocol as shipped: its buckets show the bug after traffic."""
    url = deployment.misconfigured[0].direct_url
    for _ in range(3):
        httpx.post(f"{url}/asap", json={"jsonrpc": "2.0", "method": "asap.send", "id": "u1", "params": {"envelope": {
            "asap_version": "0.1", "sender": "urn:asap:agent:sre-probe", "recipient": "urn:asap:agent:x",
            "payload_type": "task.request",
            "payload": {"conversation_id": "c", "skill_id": "echo", "input": {}}}}}, timeout=5)
    r = httpx.get(f"{url}/asap/metrics", timeout=5)
    exp = mt.parse_exposition(r.text, r.headers["content-type"])
    assert exp.claimed_format == "openmetrics" and exp.error and exp.other_format_ok  # §2.1
    series = mt.histogram_series(exp, "asap_request_duration_seconds")
    acc: dict[float, float] = {}
    for one in series.values():  # sum by (le)
        for le, v in one:
            acc[le] = acc.get(le, 0.0) + v
    buckets = sorted(acc.items())
    assert mt.is_double_cumulated(buckets)
    fixed = mt.decumulate(buckets)
    assert not mt.histogram_problems(fixed)
    summary = mt.latency_summary(buckets)
    assert summary["double_cumulated"] and "de-cumulated" in summary["method"]
    # the naive reading is wrong (which way and how much depends on the agent's traffic so far)
    assert summary["naive_histogram_quantile_seconds"] != pytest.approx(summary["value_seconds"])


def test_hardened_wrapper_serves_sane_buckets(deployment):
    import ssl

    h = deployment.hardened
    r = httpx.get(f"{h.base_url}/asap/metrics", verify=ssl.create_default_context(cafile=str(h.ca_file)), timeout=5)
    exp = mt.parse_exposition(r.text, r.headers["content-type"])
    assert exp.ok and exp.claimed_format == "prometheus-text"
    for buckets in mt.histogram_series(exp, "asap_request_duration_seconds").values():
        assert not mt.histogram_problems(buckets)


def test_quantile_matches_promql_interpolation():
    buckets = [(0.1, 50.0), (0.5, 90.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert mt.quantile(0.5, buckets) == pytest.approx(0.1)
    assert mt.quantile(0.9, buckets) == pytest.approx(0.5)
    assert mt.quantile(0.95, buckets) == pytest.approx(0.75)
    assert mt.quantile(0.99, [(0.1, 0.0), (float("inf"), 0.0)]) is None


# ----------------------------------------------------------------------------------- promql
def test_selectors_skip_functions_keywords_and_label_lists():
    sels = selectors('sum by (job) (rate(a_total{job=~"asap-.*", status="error"}[5m])) '
                     '/ on (job) group_left (x) sum without (le) (b) > bool 0.1 and {__name__="c"}')
    assert [s.metric for s in sels] == ["a_total", "b", "c"]
    assert sels[0].selects({"job": "asap-x"}) and not sels[0].selects({"job": "other"})


def test_recording_rules_are_followed():
    recorded = {"job:err:ratio": 'sum(rate(asap_requests_error_total{job="asap-a"}[5m]))'}
    sels = expand("job:err:ratio > 0.1", recorded)
    assert [s.metric for s in sels] == ["asap_requests_error_total"]
    assert sels[0].via == ("job:err:ratio",)
    assert sels[0].selects({"job": "asap-a"}) and not sels[0].selects({"job": "asap-b"})


def test_negative_matchers():
    (s,) = selectors('up{job!~"asap-(staging|dev)"}')
    assert s.selects({"job": "asap-prod"}) and not s.selects({"job": "asap-dev"})


# ----------------------------------------------------------------------------------- k8s
def test_example_manifests():
    ok = k8s.workloads(k8s.documents([REPO / "examples/hardened/k8s/orders-agent.yaml"]))
    (c,) = ok[0].agent_containers()
    assert k8s.probes(c)["readiness"].path == "/ready" and k8s.drain_seconds(c)[0] == 20
    assert ok[0].grace_seconds() == (40, True)
    kinds = {d.kind for d in k8s.documents([REPO / "examples/hardened/k8s/orders-agent.yaml"])}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler"} <= kinds
    bad = k8s.workloads(k8s.documents([REPO / "examples/misconfigured/k8s/orders-agent.yaml"]))
    (c,) = bad[0].agent_containers()
    assert k8s.probes(c)["readiness"] is None and k8s.drain_seconds(c)[0] is None  # unbounded uvicorn drain
    assert k8s.shell_wrapped(c)
    assert not k8s.shell_wrapped({"command": ["sh", "-c", "exec uvicorn app:app"]})


def test_malformed_manifest_is_one_sentence(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("kind: Deployment\n  spec: [unclosed\n")
    with pytest.raises(k8s.ManifestError, match="not valid YAML at line"):
        k8s.documents([p])


# ----------------------------------------------------------------------------------- logs
def test_log_classification():
    lines = [
        json.dumps({"event": "asap.request.received", "level": "info", "timestamp": "t", "trace_id": "ab"}),
        'INFO:     127.0.0.1:1 - "POST /asap HTTP/1.1" 200 OK',
        "\x1b[2m2026-11-25T19:20:52Z\x1b[0m [\x1b[32minfo     \x1b[0m] \x1b[1masap.request.processed\x1b[0m trace_id=ab",
        "/x/y.py:5: DeprecationWarning: old",
        "  import old",
        "plain print from a handler",
    ]
    s = logs.classify("test", lines)
    assert s.stats() == {"source": "test", "lines": 6, "json": 1, "console": 1, "uvicorn_plain": 1,
                         "python_warnings": 2, "other": 1}


# ----------------------------------------------------------------------------------- edge case (mock)
def test_counters_going_backwards_fail(demo_params):
    """Two workers behind one port: consecutive scrapes alternate between their counters.
    The reference deployment runs one process per agent, so this is the one mock-transport case."""
    from asap_runbook.engine import run_check_async
    from asap_runbook.results import Status

    hardened = demo_params.target("hardened")
    scrapes = iter([12.0, 8.0, 12.0, 8.0])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/.well-known/asap/manifest.json":
            return httpx.Response(200, json={"id": "urn:asap:agent:two-workers", "name": "x"})
        if request.url.path == "/asap/metrics":
            n = next(scrapes)
            text = (
                "# TYPE asap_requests_total counter\n"
                f'asap_requests_total{{payload_type="task.request",status="success"}} {n}\n'
                "# TYPE asap_requests_error_total counter\nasap_requests_error_total 0.0\n"
                "# TYPE asap_request_duration_seconds histogram\n"
                f'asap_request_duration_seconds_bucket{{le="0.1"}} {n}\n'
                f'asap_request_duration_seconds_bucket{{le="+Inf"}} {n}\n'
                f"asap_request_duration_seconds_count {n}\nasap_request_duration_seconds_sum 0.1\n"
            )
            return httpx.Response(200, text=text, headers={"content-type": "text/plain; version=0.0.4"})
        return httpx.Response(404)

    r = asyncio.run(run_check_async("MON-METRICS-3", demo_params, hardened.name,
                                    transport=httpx.MockTransport(handler)))
    assert r.status is Status.FAIL and "went backwards" in r.summary, r.summary


def test_control_without_a_running_deployment_is_one_sentence(tmp_path):
    import sys

    out = subprocess.run([sys.executable, "-m", "asap_runbook.reference", "control", "--workdir", str(tmp_path),
                          "stop-redis", "hardened"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert out.stderr.strip().startswith("cannot reach the reference deployment") and "Traceback" not in out.stderr


def test_control_stops_and_starts_the_named_redis(deployment):
    import redis

    cmd = deployment.env()["ASAP_DEMO_CONTROL"]
    mis = redis.Redis(port=deployment.misconfigured_redis.port, socket_connect_timeout=0.5)
    hardened = redis.Redis(port=deployment.redis.port, socket_connect_timeout=0.5)
    try:
        assert subprocess.run(f"{cmd} stop-redis misconfigured", shell=True, timeout=30).returncode == 0
        with pytest.raises(redis.ConnectionError):
            mis.ping()
        assert hardened.ping()  # the other one is untouched
    finally:
        assert subprocess.run(f"{cmd} start-redis misconfigured", shell=True, timeout=30).returncode == 0
    assert mis.ping()


# ----------------------------------------------------------------------------------- alert coverage
def _rules_api(*rules):
    """The shape of Prometheus's /api/v1/rules groups."""
    return [{"name": "g", "rules": list(rules)}]


def test_coverage_follows_selectors_not_names():
    from asap_runbook.alerting import CONCERNS, coverage

    groups = _rules_api(
        {"type": "recording", "name": "job:asap_errors:ratio",
         "query": 'sum(rate(asap_requests_total{job="asap-orders", status="error"}[5m])) / sum(rate(asap_requests_total[5m]))'},
        {"type": "alerting", "name": "SomethingUnrelatedByName", "query": "job:asap_errors:ratio > 0.1", "duration": 300,
         "alerts": [{"state": "firing", "labels": {"job": "asap-orders"}}]},
        {"type": "alerting", "name": "ASAPHighErrorRate", "query": 'up{job="x"} == 0', "duration": 60},
        {"type": "alerting", "name": "NaiveP99", "duration": 300,
         "query": "histogram_quantile(0.99, sum by (le) (rate(asap_request_duration_seconds_bucket[5m]))) > 1"},
    )
    err = coverage(groups, "asap-orders", CONCERNS["error_rate"])
    assert [c.name for c in err] == ["SomethingUnrelatedByName"]  # the rule *named* ASAPHighErrorRate reads `up`
    assert err[0].selects_job and err[0].alerts[0]["state"] == "firing"
    assert not coverage(groups, "asap-payments", CONCERNS["error_rate"])[0].selects_job
    lat = coverage(groups, "asap-orders", CONCERNS["latency"])
    assert [c.name for c in lat] == ["NaiveP99"] and lat[0].quantile_on_raw_buckets and lat[0].selects_job


def test_log_command_sample_and_failure():
    from asap_runbook.params import Target

    t = Target(name="t", base_url="https://x.example", log_command="printf '{\"event\":\"asap.x\",\"level\":\"info\",\"timestamp\":\"t\"}\\nhello\\n'")
    s = asyncio.run(logs.read_sample(t))
    assert s.stats()["json"] == 1 and s.stats()["other"] == 1 and s.source.startswith("$ printf")
    bad = Target(name="t", base_url="https://x.example", log_command="echo nope >&2; exit 4")
    with pytest.raises(logs.LogSourceError, match="log_command exited with 4: nope"):
        asyncio.run(logs.read_sample(bad))


class _CannedPrometheus:
    """Prometheus answers for one job `orders`: 200 requests, 30 of them server-side errors, and
    the error-rate rule in the given alert state. The check's judgement of states, not the network."""

    def __init__(self, state: str | None):
        self.state = state

    async def rules(self):
        alerts = [{"state": self.state, "labels": {"job": "orders"}, "activeAt": "2026-11-26T00:00:00Z",
                   "value": "0.15"}] if self.state else []
        return [{"name": "g", "rules": [{
            "type": "alerting", "name": "HighErrorRate", "duration": 300, "alerts": alerts,
            "query": 'sum(rate(asap_requests_error_total{job="orders"}[5m])) / '
                     'sum(rate(asap_requests_total{job="orders"}[5m])) > 0.1'}]}]

    async def query(self, promql: str, at=None):
        if promql.startswith("count("):
            return [{"metric": {}, "value": [0, "1"]}]
        if "asap_requests_error_total" in promql:
            return [{"metric": {}, "value": [0, "30"]}]
        return [{"metric": {}, "value": [0, "200"]}]

    async def target_metadata(self, job, metric):
        return []

    async def targets(self):
        return [{"labels": {"job": "orders"}, "health": "up"}]

    async def external_labels(self):
        return {}


@pytest.mark.parametrize("state, expected", [(None, "pass"), ("pending", "pass"), ("firing", "warn")])
def test_alert_states_table(state, expected):
    """Covered and quiet: pass. Pending (above the line right now): reported, still pass.
    Firing (held for the rule's `for`): warn, the agent has a live problem."""
    from asap_runbook.catalog import load_catalog
    from asap_runbook.checks import mon_alerting
    from asap_runbook.checks._registry import CheckContext
    from asap_runbook.params import Params

    import asap_runbook
    team_config = Path(asap_runbook.__file__).parent / "data" / "alertmanager" / "alertmanager.yml"
    # routing through the reference team's alertmanager.yml (read locally, routed by amtool): to oncall
    params = Params.model_validate({"prometheus": {"url": "http://127.0.0.1:9"},
                                    "alertmanager": {"config_file": str(team_config)},
                                    "targets": [{"name": "t", "base_url": "https://127.0.0.1:9", "prometheus_job": "orders"}]})
    ctx = CheckContext(item=load_catalog().get("MON-ALERT-1"), target=params.targets[0], params=params, probe=None,
                       run_dir=None, run_state={"prometheus": _CannedPrometheus(state)})
    finding = asyncio.run(mon_alerting.alert_error_rate(ctx))
    assert finding.status.value == expected, finding.summary
    assert "15.0% of 200 requests, above the 10% threshold" in finding.summary
    assert "Alertmanager routes HighErrorRate to oncall (webhook)" in finding.summary
    if state:
        assert f"HighErrorRate {state} now" in finding.summary


def test_live_error_rate_excludes_what_the_shipped_rule_excludes():
    """The error rate the finding reports and the one ASAPHighErrorRate pages on count the same errors."""
    import yaml

    from asap_runbook.monitoring_live import CLIENT_ERROR_TYPES
    rule = next(r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]
                if r.get("alert") == "ASAPHighErrorRate")
    assert f'error_type!~"{"|".join(CLIENT_ERROR_TYPES)}"' in rule["expr"]
