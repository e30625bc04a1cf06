"""Security checks, proven both ways against the real reference deployment (hardened passes,
misconfigured fails or warns), plus the edge cases no real server here produces."""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest

from asap_runbook import _tls
from asap_runbook.catalog import Verification, load_catalog
from asap_runbook.engine import run_check
from asap_runbook.results import Status
from conftest import REPO, expected, one_target

AUTOMATED = [i.id for i in load_catalog().section("security") if i.verification is not Verification.MANUAL]
# SEC-AUTH-4 reads a JWT's lifetime; the reference token is opaque, so it is proven below with JWTs
BOTH_WAYS = [i for i in AUTOMATED if i != "SEC-AUTH-4"]
# nothing counts 429/413 for the misconfigured agent and its params name no proxy counter: skip, never fail
SKIP_ON_MISCONFIGURED = {"SEC-RATE-4", "SEC-SIZE-3"}


def test_security_coverage_is_at_least_20_of_25():
    from asap_runbook.checks import registered
    regs = registered()
    assert len(AUTOMATED) >= 20
    assert all(i in regs for i in AUTOMATED), [i for i in AUTOMATED if i not in regs]
    assert regs["SEC-RATE-1"].exclusive


@pytest.mark.parametrize("item_id", BOTH_WAYS)
def test_passes_on_hardened(check, item_id):
    r = check(item_id, "hardened")
    assert r.status is expected(item_id, "hardened"), f"{r.status}: {r.summary}"
    assert r.evidence, "a pass carries its evidence"


@pytest.mark.parametrize("item_id", BOTH_WAYS)
def test_fails_or_warns_on_misconfigured(check, item_id):
    r = check(item_id, "misconfigured")
    assert r.status is expected(item_id, "misconfigured"), f"{r.status}: {r.summary}"
    if r.status in (Status.FAIL, Status.WARN):
        assert r.remediation, "a failure carries its remediation"


@pytest.mark.parametrize("item_id", sorted(SKIP_ON_MISCONFIGURED))
def test_proxy_counter_is_read_from_prometheus(check, demo_params, item_id):
    """A named proxy counter is queried in the real Prometheus: `up` has no status label, so 429s/413s could
    not be told apart there (fail); a selector that matches nothing is a skip naming the parameter."""
    no_label = one_target(demo_params, "misconfigured", proxy_requests='up{job="asap-misconfigured"}')
    r = check(item_id, "misconfigured", no_label)
    assert r.status is Status.FAIL and "carries no status-code label" in r.summary, r.summary
    nothing = one_target(demo_params, "misconfigured", proxy_requests='nginx_ingress_controller_requests{ingress="x"}')
    r = check(item_id, "misconfigured", nothing)
    assert r.status is Status.SKIP and "selects no series" in r.summary, r.summary


# ---------------------------------------------------------------- what the findings say

def test_tls_versions_name_the_old_ones(check):
    r = check("SEC-TLS-3", "misconfigured")
    assert "TLSv1.0" in r.summary and "TLSv1.1" in r.summary


def test_tls_refusal_is_not_trusted_when_the_client_cannot_speak_it(check, monkeypatch):
    """If this machine could not speak TLS 1.0, the hardened server's refusal proves nothing: error, never pass."""
    real = _tls.client_capabilities()
    fake = dict(real, **{"TLSv1.0": _tls.Handshake("TLSv1.0", False, error="no protocols available")})
    monkeypatch.setattr(_tls, "client_capabilities", lambda *a, **k: fake)
    r = check("SEC-TLS-3", "hardened")
    assert r.status is Status.ERROR
    assert "cannot test TLSv1.0 from this machine" in r.summary


def test_client_self_test_speaks_every_version_here():
    caps = _tls.client_capabilities()
    assert caps["TLSv1.2"].ok and caps["TLSv1.3"].ok
    assert set(caps) == {"TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3"}


def test_certificate_reasons(check):
    r = check("SEC-TLS-2", "misconfigured")
    assert "self-signed" in r.summary and "expired" in r.summary


def test_auth_lists_routes_open_without_credentials(check):
    r = check("SEC-AUTH-2", "hardened")
    assert r.details["unauthenticated_routes"]["/asap/metrics"] == 200
    assert r.details["unauthenticated_routes"]["/docs"] == 404


def test_hardcoded_token_value_is_never_shown(check):
    r = check("SEC-AUTH-3", "misconfigured")
    source = REPO / "examples/misconfigured/src/orders_agent/downstream.py"
    line = next(n for n, text in enumerate(source.read_text().splitlines(), 1) if "inv-3f9a7c1e5b2d4a6f8e0c" in text)
    assert f"downstream.py:{line}" in r.summary
    assert "inv-3f9a7c1e5b2d4a6f8e0c" not in json.dumps([e.data for e in r.evidence])


def test_xff_spoofing_is_shown_on_misconfigured(check):
    r = check("SEC-RATE-1", "misconfigured")
    assert "no HTTP 429" in r.summary and "X-Forwarded-For" in r.summary


def test_burst_evidence_says_what_was_sent(check):
    r = check("SEC-RATE-1", "hardened")
    labels = " ".join(e.label for e in r.evidence)
    assert "burst A" in labels and "burst B" in labels and "first 429" in labels
    assert r.details["max_requests"] == 40


def test_active_probes_are_opt_in(demo_params):
    t = demo_params.target("hardened")
    off = t.model_copy(update={"active_probes": t.active_probes.model_copy(update={"rate_limit_burst": False,
                                                                                  "oversize_body": False})})
    params = demo_params.model_copy(update={"targets": [off]})
    for item in ("SEC-RATE-1", "SEC-SIZE-1"):
        r = run_check(item, params, "hardened")
        assert r.status is Status.SKIP and "active probe not enabled" in r.summary
    assert "10/second;100/minute" in run_check("SEC-RATE-1", params, "hardened").summary


def test_size_limit_is_learned_from_the_agent(check):
    r = check("SEC-SIZE-1", "misconfigured")
    assert r.details["agent_limit_from_log"] == 10485760
    assert check("SEC-SIZE-1", "hardened").details["agent_limit_from_log"] == 1048576


def test_canary_is_found_in_the_misconfigured_log(check):
    r = check("SEC-HANDLER-4", "misconfigured")
    assert "/docs" in r.summary and "payload canary" in r.summary


def test_nonce_claim_is_checked(check):
    r = check("SEC-REPLAY-2", "hardened")
    assert "nonce-less" in r.summary


# ---------------------------------------------------------------- token lifetime (JWTs)

def _jwt(claims: dict) -> str:
    def enc(d):
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
    return f"{enc({'alg': 'RS256', 'typ': 'JWT'})}.{enc(claims)}.c2lnbmF0dXJl"


@pytest.mark.parametrize(("minutes", "status"), [(30, Status.PASS), (24 * 60, Status.FAIL), (5, Status.WARN),
                                                 (None, Status.FAIL)])
def test_jwt_lifetime(demo_params, monkeypatch, minutes, status):
    now = int(time.time())
    claims = {"iss": "https://idp.example", "iat": now} | ({"exp": now + minutes * 60} if minutes else {})
    monkeypatch.setenv("RB_TEST_JWT", _jwt(claims))
    r = run_check("SEC-AUTH-4", one_target(demo_params, "hardened", token_env="RB_TEST_JWT"), "hardened")
    assert r.status is status, r.summary
    assert _jwt(claims) not in r.model_dump_json()


def test_opaque_token_awaits_a_person(check):
    r = check("SEC-AUTH-4", "hardened")
    assert r.status is Status.MANUAL and "opaque" in r.summary


def test_no_token_at_all_fails(check):
    assert check("SEC-AUTH-4", "misconfigured").status is Status.FAIL


# ---------------------------------------------------------------- redirect edge cases (mock transport)
# No real server here redirects off-host or HTTP->HTTP; a MockTransport plays the proxy.

MANIFEST = {"id": "urn:asap:agent:mock", "endpoints": {"asap": "https://agent.example/asap"}, "auth": None}


def _params_for_mock(demo_params):
    return one_target(demo_params, "hardened", base_url="https://agent.example", http_url="http://agent.example",
                      ca_file=None)


@pytest.mark.parametrize(("location", "needle"), [("https://evil.example/health", "leaves the host"),
                                                  ("http://agent.example:8080/health", "HTTP redirects to HTTP")])
def test_redirect_edge_cases(demo_params, location, needle):
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/.well-known/asap/manifest.json":
            return httpx.Response(200, json=MANIFEST)
        if request.url.scheme == "http" and request.url.port in (None, 80):
            return httpx.Response(301, headers={"Location": location})
        return httpx.Response(200, json={"status": "ok"})
    r = run_check("SEC-TLS-5", _params_for_mock(demo_params), "hardened", transport=httpx.MockTransport(handler))
    assert r.status is Status.FAIL and needle in r.summary


# ---------------------------------------------------------------- parsers

def test_nginx_sizes_and_inheritance():
    from asap_runbook import _nginx
    root = _nginx.parse("""
        http { client_max_body_size 2m;
          server { listen 80; location / { proxy_pass http://a; } }
          server { listen 443 ssl; client_max_body_size 0; location /asap { proxy_pass http://a; client_max_body_size 512k; }
                   location / { proxy_pass http://a; } } }""")
    got = {b.where: b.bytes for b in _nginx.body_limits(root)}
    assert got == {"server 80 location /": 2 * 1024 ** 2, "server 443 ssl location /asap": 512 * 1024,
                   "server 443 ssl location /": 0}
    assert _nginx.size_bytes("1g") == 1024 ** 3
    with pytest.raises(_nginx.NginxParseError):
        _nginx.parse("http { server { ")


def test_credential_scan_ignores_names_and_placeholders(tmp_path):
    from asap_runbook import _source_scan
    (tmp_path / "a.py").write_text('TOKEN_ENV = "ASAP_AGENT_TOKEN"\npassword = "changeme"\n'
                                   'token = os.environ["X"]\napi_key = "sk_live_9fK2mQ7xZ1pL4vB8"\n')
    (tmp_path / "deploy.yaml").write_text("env:\n  - name: TOKEN\n    valueFrom: {secretKeyRef: {name: s}}\n"
                                          "  api_token: 'Zx81kQp0aLm3Yt7R'\n")
    hits = _source_scan.hardcoded_credentials([tmp_path]).hits
    assert sorted(h.file + ":" + str(h.line) for h in hits) == ["a.py:4", "deploy.yaml:4"]
    assert all("sk_live" not in h.what and "Zx81" not in h.what for h in hits)


def test_console_log_lines_parse():
    from asap_runbook import logs
    line = ("\x1b[2m2026-11-25T19:20:23.997496Z\x1b[0m [\x1b[32minfo     \x1b[0m] \x1b[1masap.server.rate_limit_enabled"
            "\x1b[0m [asap.transport.server] manifest_id=urn:asap:agent:x rate_limit=10/second message='a b'")
    ev = logs.parse_line(line)
    assert ev.event == "asap.server.rate_limit_enabled"
    assert ev.fields["rate_limit"] == "10/second" and ev.fields["message"] == "a b"
    assert logs.parse_line("x" * 2_000_000) is None  # a huge logged payload is skipped, not parsed


def test_startup_facts_survive_a_long_log(tmp_path):
    """Startup configuration is at the head of the log; a log grown past the read bound keeps it."""
    from asap_runbook import logs
    log = tmp_path / "agent.log"
    start = json.dumps({"manifest_id": "urn:asap:agent:x", "rate_limit": "5/second", "event": "asap.server.rate_limit_enabled"})
    log.write_text(start + "\n" + ("filler " * 1000 + "\n") * 2000 + '{"event": "late"}\n')
    evs = logs.events(log)
    assert logs.last_for_agent(evs, "asap.server.rate_limit_enabled", "urn:asap:agent:x") is not None
    assert evs[-1].event == "late"


def test_startup_events_by_prefix_are_those_of_a_full_parse(tmp_path):
    """The checks parse only the startup events' lines (a busy agent logs megabytes of requests): the same
    events, with the same line numbers, as parsing every line, in JSON and in console rendering."""
    from asap_runbook import logs
    from asap_runbook.checks.security import STARTUP_EVENTS
    lines = [
        json.dumps({"event": "asap.rate_limit.memory_storage", "manifest_id": "urn:asap:agent:x"}),
        json.dumps({"event": "asap.request.received", "path": "/asap", "note": "mentions asap.server. in a field"}),
        "2026-11-30T10:00:00Z [info     ] asap.server.max_request_size [asap.transport.server] "
        "manifest_id=urn:asap:agent:x max_request_size=1048576",
        json.dumps({"event": "asap.server.rate_limit_enabled", "manifest_id": "urn:asap:agent:x", "rate_limit": "5/second"}),
    ] + [json.dumps({"event": "asap.request.received", "n": i}) for i in range(500)]
    log = tmp_path / "agent.log"
    log.write_text("\n".join(lines) + "\n")
    wanted = logs.events(log, STARTUP_EVENTS)
    full = [e for e in logs.events(log) if e.event.startswith(STARTUP_EVENTS)]
    assert [(e.line_no, e.event, e.fields) for e in wanted] == [(e.line_no, e.event, e.fields) for e in full]
    assert [(e.line_no, e.event) for e in wanted] == [
        (1, "asap.rate_limit.memory_storage"), (3, "asap.server.max_request_size"), (4, "asap.server.rate_limit_enabled")]
    fact = logs.last_for_agent(wanted, "asap.server.rate_limit_enabled", "urn:asap:agent:x")
    assert logs.storage_backend_before(wanted, fact).event == "asap.rate_limit.memory_storage"


def test_burst_too_small_to_exceed_the_limit_is_skipped_not_failed(demo_params):
    t = demo_params.target("hardened")
    small = t.model_copy(update={"active_probes": t.active_probes.model_copy(update={"max_requests": 4})})
    r = run_check("SEC-RATE-1", demo_params.model_copy(update={"targets": [small]}), "hardened")
    assert r.status is Status.SKIP and "max_requests" in r.summary


def test_missing_log_file_is_one_sentence(demo_params, tmp_path):
    # without targets[].app (introspection), the limiter's configuration comes from the log alone
    params = one_target(demo_params, "hardened", log_file=tmp_path / "nope.log", app=None)
    for item in ("SEC-RATE-2", "SEC-HANDLER-4"):
        r = run_check(item, params, "hardened")
        assert r.status is Status.ERROR and "does not exist" in r.summary, r.summary
    assert run_check("SEC-RATE-3", params, "hardened").status is Status.SKIP
