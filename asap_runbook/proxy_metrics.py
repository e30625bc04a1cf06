"""Where a proxy or ingress counts the responses it sends, by status code (SEC-RATE-4, SEC-SIZE-3,
and MON-ALERT-4's 429/413 rules).

asap-protocol 2.5.10 exports no counter of 429 or 413 responses; the checklist's own remediation
is to count them at the proxy. `targets[].proxy_requests` names that counter as a PromQL selector
(e.g. `nginx_ingress_controller_requests{ingress="orders-agent"}`); the status-code label is
`targets[].proxy_status_label`, else the one the common exporters use (KNOWN), else whichever of
STATUS_LABELS the series carry.
"""

from __future__ import annotations

import re

# request counters of common proxies/ingresses -> their exact status-code label
KNOWN: dict[str, str] = {
    "nginx_ingress_controller_requests": "status",          # ingress-nginx
    "nginx_http_requests_total": "status",                  # nginx log exporters (e.g. prometheus-nginxlog-exporter)
    "traefik_service_requests_total": "code",
    "traefik_entrypoint_requests_total": "code",
    "traefik_router_requests_total": "code",
    "envoy_cluster_upstream_rq": "envoy_response_code",     # Envoy / Contour / Emissary
    "istio_requests_total": "response_code",
    "kong_http_requests_total": "code",                     # Kong (prometheus plugin)
    "haproxy_frontend_http_responses_total": "code",        # class only ("4xx"): cannot tell 429 from 413
}
STATUS_LABELS = ("status", "code", "status_code", "response_code", "envoy_response_code")
_METRIC = re.compile(r"^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)")


def metric_name(selector: str) -> str | None:
    m = _METRIC.match(selector)
    return m.group(1) if m else None


def known_label(selector: str) -> str | None:
    return KNOWN.get(metric_name(selector) or "")


def labels_query(selector: str) -> str:
    """One series per status-like label combination the selector's series carry."""
    return f"count by ({', '.join(STATUS_LABELS)}) ({selector})"


def discovery_query() -> str:
    """Counters of the common exporters present in Prometheus at all (to name them when nothing is set)."""
    return f'count by (__name__, job) ({{__name__=~"{"|".join(KNOWN)}"}})'
