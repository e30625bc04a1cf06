"""Checks of one target that read the same static route share one GET (Probe.get_once), counted on a mock
transport that plays a hardened agent: the preflight's manifest look serves SEC-TLS-1, SEC-TLS-4 (its HSTS
header) and SEC-AUTH-2; /health serves SEC-AUTH-2, SEC-TLS-1 and SEC-TLS-5's hop back from plain HTTP.
Each check's evidence is still the exchange it judged."""

from __future__ import annotations

import collections

import httpx

from asap_runbook.engine import run_section
from asap_runbook.params import Params

BASE, PLAIN = "https://agent.example", "http://agent.example"
MANIFEST = {"id": "urn:asap:agent:mock", "endpoints": {"asap": f"{BASE}/asap"}, "auth": {"schemes": ["bearer"]}}
HSTS = "max-age=63072000; includeSubDomains"


def test_a_route_read_by_several_checks_of_a_target_is_one_get(tmp_path):
    sent = collections.Counter()

    def agent(request: httpx.Request) -> httpx.Response:
        sent[(request.method, str(request.url))] += 1
        if request.url.scheme == "http":
            return httpx.Response(301, headers={"Location": f"{BASE}{request.url.path}"})
        if request.method == "POST":  # every credential refused, as a hardened agent does
            return httpx.Response(200, json={"jsonrpc": "2.0", "id": "x", "error": {"code": -32600, "message": "no"}})
        if request.url.path == "/.well-known/asap/manifest.json":
            return httpx.Response(200, json=MANIFEST, headers={"strict-transport-security": HSTS})
        if request.url.path == "/health":
            return httpx.Response(200, json={"status": "ok"}, headers={"strict-transport-security": HSTS})
        return httpx.Response(404)

    params = Params.model_validate({"targets": [{"name": "t", "base_url": BASE, "http_url": PLAIN}]})
    run = run_section("security", params, items=["SEC-TLS-1", "SEC-TLS-4", "SEC-TLS-5", "SEC-AUTH-2"],
                      transport=httpx.MockTransport(agent))
    status = {r.item_id: r.status.value for r in run.results}
    assert status == {"SEC-TLS-1": "pass", "SEC-TLS-4": "pass", "SEC-TLS-5": "pass", "SEC-AUTH-2": "pass"}, \
        {r.item_id: r.summary for r in run.results}
    assert sent[("GET", f"{BASE}/.well-known/asap/manifest.json")] == 1
    assert sent[("GET", f"{BASE}/health")] == 1
    assert sent[("GET", f"{PLAIN}/health")] == 1 and sent[("GET", f"{PLAIN}/.well-known/asap/manifest.json")] == 1
    hsts = next(r for r in run.results if r.item_id == "SEC-TLS-4")
    assert hsts.evidence[0].data["request"]["url"] == f"{BASE}/.well-known/asap/manifest.json"
    assert hsts.evidence[0].data["response"]["headers"]["strict-transport-security"] == HSTS
