"""SEC-RATE-4 / SEC-SIZE-3 from recorded observations: the agent's own counter, a proxy's or ingress's
request counter by status (ingress-nginx, Traefik, Envoy, HAProxy's classes), or nothing named."""

from __future__ import annotations

import pytest

from asap_runbook import proxy_metrics
from asap_runbook.checks.security import RejectionCounting, judge_rejection_counting
from asap_runbook.results import Status


def obs(**kw) -> RejectionCounting:
    base = dict(code="429", agent_exported=[], agent_unreadable=None, prometheus=True, agent_in_prometheus=[],
                proxy_selector=None, proxy_label=None, proxy_label_combos=[], target="stock")
    return RejectionCounting(**(base | kw))


INGRESS = 'nginx_ingress_controller_requests{ingress="orders-agent"}'
CASES = {
    "agent wrapper counter scraped": (obs(agent_exported=["asap_rate_limit_exceeded_total"],
                                          agent_in_prometheus=["asap_rate_limit_exceeded_total"]), Status.PASS),
    "ingress-nginx by status, 429 seen": (obs(proxy_selector=INGRESS, proxy_label="status",
                                              proxy_label_combos=[{"status": "200"}, {"status": "429"}]), Status.PASS),
    "traefik by code, no 429 yet": (obs(proxy_selector='traefik_service_requests_total{service="orders@k8s"}',
                                        proxy_label="code", proxy_label_combos=[{"code": "200"}]), Status.PASS),
    "haproxy status classes only": (obs(proxy_selector='haproxy_frontend_http_responses_total{proxy="fe"}',
                                        proxy_label="code", proxy_label_combos=[{"code": "2xx"}, {"code": "4xx"}]),
                                    Status.FAIL),
    "selector without a status label": (obs(proxy_selector='up{job="edge"}', proxy_label_combos=[{}]), Status.FAIL),
    "selector matches nothing": (obs(proxy_selector=INGRESS, proxy_label="status"), Status.SKIP),
    "bad selector": (obs(proxy_selector="sum(", proxy_error="PrometheusApiClientException: parse error"),
                     Status.ERROR),
    "agent exports, not scraped": (obs(agent_exported=["asap_rate_limit_exceeded_total"]), Status.FAIL),
    "stock agent, nothing named": (obs(candidates=['nginx_ingress_controller_requests{job="ingress"}']), Status.SKIP),
}


@pytest.mark.parametrize("case", CASES)
def test_rejection_counting_verdicts(case):
    o, expected = CASES[case]
    r = judge_rejection_counting(o, "HTTP 429 responses", "no counter in asap-protocol 2.5.10")
    assert r.status is expected, f"{case}: {r.summary}"


def test_nothing_named_never_fails_and_names_the_parameter():
    r = judge_rejection_counting(CASES["stock agent, nothing named"][0], "HTTP 429 responses", "none")
    assert "targets[stock].proxy_requests is not set" in r.summary
    assert "nginx_ingress_controller_requests" in r.summary


def test_exporter_defaults():
    assert proxy_metrics.known_label(INGRESS) == "status"
    assert proxy_metrics.known_label("traefik_service_requests_total") == "code"
    assert proxy_metrics.known_label("envoy_cluster_upstream_rq{x='y'}") == "envoy_response_code"
    assert proxy_metrics.known_label("my_counter") is None
