"""The reference deployment, exercised for real (processes, sockets, TLS; no mocks)."""

from __future__ import annotations

import os
import secrets
import socket
import ssl
import subprocess
import time
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from asap_runbook.reference import PROBE_SENDER, ReferenceDeployment, ReferenceDeploymentError
from asap_runbook.reference.deployment import DEFAULT_ALERT_RULES, find_binary

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    not (find_binary("nginx") and find_binary("redis-server") and find_binary("prometheus")
         and find_binary("prometheus-alertmanager")),
    reason="needs Debian nginx, redis-server, prometheus and prometheus-alertmanager",
)

EXPECTED_ENV = {
    "ASAP_DEMO_HARDENED_URL",
    "ASAP_DEMO_HARDENED_HTTP_URL",
    "ASAP_DEMO_CA_FILE",
    "ASAP_DEMO_TOKEN",
    "ASAP_DEMO_MISCONFIGURED_URL",
    "ASAP_DEMO_MISCONFIGURED_HTTP_URL",
    "ASAP_DEMO_MISCONFIGURED_DIRECT_URL",
    "ASAP_DEMO_PROMETHEUS_URL",
    "ASAP_DEMO_ALERTMANAGER_URL",
    "ASAP_DEMO_CONTROL",
    "ASAP_DEMO_WORKDIR",
    "ASAP_DEMO_HARDENED_LOG",
    "ASAP_DEMO_MISCONFIGURED_LOG",
    "ASAP_DEMO_HARDENED_NGINX_CONF",
    "ASAP_DEMO_MISCONFIGURED_NGINX_CONF",
    "ASAP_DEMO_REDIS",  # redis:// URL, for app introspection (params app_env)
    "ASAP_DEMO_STOCK_URL",
    "ASAP_DEMO_STOCK_HTTP_URL",
    "ASAP_DEMO_STOCK_DIRECT_URL",
    "ASAP_DEMO_STOCK_LOG",
    "ASAP_DEMO_STOCK_NGINX_CONF",
}


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    d = ReferenceDeployment(tmp_path_factory.mktemp("reference"), prometheus=True, misconfigured_agents=1)
    with d:
        yield d


@pytest.fixture(scope="module")
def env(dep):
    return dep.env()


@pytest.fixture(scope="module")
def client(env):
    with httpx.Client(verify=ssl.create_default_context(cafile=env["ASAP_DEMO_CA_FILE"]), timeout=10) as c:
        yield c


def _request(nonce: str | None = "auto", skill: str = "echo", inp: dict | None = None) -> dict:
    extensions = {} if nonce is None else {"nonce": secrets.token_hex(16) if nonce == "auto" else nonce}
    envelope = {
        "asap_version": "0.1",
        "sender": PROBE_SENDER,
        "recipient": "urn:asap:agent:hardened-ref",
        "payload_type": "task.request",
        "timestamp": datetime.now(timezone.utc).isoformat(),
        "payload": {"conversation_id": "conv_test", "skill_id": skill, "input": inp or {"msg": "hi"}},
    }
    if extensions:
        envelope["extensions"] = extensions
    return {"jsonrpc": "2.0", "method": "asap.send", "id": f"t-{uuid.uuid4().hex[:8]}", "params": {"envelope": envelope}}


def _post(client: httpx.Client, url: str, body, token: str | None = None) -> httpx.Response:
    """POST /asap, waiting out the rate limit if the test itself trips it."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for _ in range(10):
        r = client.post(f"{url}/asap", json=body, headers=headers)
        if r.status_code != 429:
            return r
        time.sleep(float(r.headers.get("retry-after", "1")))
    return r


def _tls10_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def _tls_version(url: str, ctx: ssl.SSLContext) -> str:
    host, port = url.removeprefix("https://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as s:
            return s.version()


# ------------------------------------------------------------------------------------------------
def test_env_has_exactly_the_documented_names(dep, env):
    assert set(env) == EXPECTED_ENV
    assert len(env["ASAP_DEMO_TOKEN"]) >= 32
    ports = [int(env[k].rsplit(":", 1)[1]) for k in EXPECTED_ENV if k.endswith("_URL")]
    assert len(set(ports)) == len(ports)
    assert Path(env["ASAP_DEMO_CA_FILE"]).is_file()
    assert Path(env["ASAP_DEMO_HARDENED_NGINX_CONF"]).is_file()
    assert Path(env["ASAP_DEMO_WORKDIR"]) == dep.workdir
    assert dep.hardened.log_file == Path(env["ASAP_DEMO_HARDENED_LOG"]) == dep.workdir / "logs" / "hardened.log"
    assert len(dep.misconfigured) == 1 and dep.misconfigured[0].name == "misconfigured"
    # the token is never written into the env file or any config
    assert env["ASAP_DEMO_TOKEN"] not in dep.env_file.read_text()
    for conf in (f for f in dep.conf_dir.rglob("*") if f.is_file()):
        assert env["ASAP_DEMO_TOKEN"] not in conf.read_text()
    assert (dep.token_file.stat().st_mode & 0o077) == 0


# ------------------------------------------------------------------------------------------------ stock
def _task(skill: str, data: dict, sender: str) -> dict:
    from datetime import UTC, datetime
    return {"jsonrpc": "2.0", "method": "asap.send", "id": 1, "params": {"envelope": {
        "asap_version": "0.1", "sender": sender, "recipient": "urn:asap:agent:orders-service",
        "payload_type": "task.request", "timestamp": datetime.now(UTC).isoformat(),
        "payload": {"conversation_id": "c1", "skill_id": skill, "input": data}}}}


def test_stock_agent_is_the_example_source_at_the_library_defaults(dep, env, client):
    """The stock target runs examples/stock/src as written (uvicorn --app-dir), behind Debian's stock
    nginx.conf whose site is an included file: no HSTS, nginx's default body size, certbot's redirect."""
    stock = dep.stock
    assert stock.app_ref == "orders_service.app:app" and "--app-dir" in stock.uvicorn_argv
    assert Path(stock.uvicorn_argv[stock.uvicorn_argv.index("--app-dir") + 1]) == REPO / "examples" / "stock" / "src"
    main_conf = Path(env["ASAP_DEMO_STOCK_NGINX_CONF"]).read_text()
    assert "include " in main_conf and "client_max_body_size" not in main_conf
    (site,) = (dep.conf_dir / "stock-sites").iterdir()
    assert "proxy_pass" in site.read_text() and "Strict-Transport-Security" not in site.read_text()
    r = client.get(f"{env['ASAP_DEMO_STOCK_URL']}/.well-known/asap/manifest.json")
    assert r.status_code == 200 and "strict-transport-security" not in r.headers
    m = r.json()
    assert m["auth"]["schemes"] == ["bearer"] and m["endpoints"]["asap"] == f"{env['ASAP_DEMO_STOCK_URL']}/asap"
    assert [s["id"] for s in m["capabilities"]["skills"]] == ["lookup_order", "check_stock", "reconcile_orders"]
    redirect = httpx.get(f"{env['ASAP_DEMO_STOCK_HTTP_URL']}/health", timeout=5)
    assert redirect.status_code == 301 and redirect.headers["location"].startswith(env["ASAP_DEMO_STOCK_URL"])
    assert client.get(f"{env['ASAP_DEMO_STOCK_URL']}/readyz").json() == {"status": "ready"}  # the k8s probe's path


def test_stock_agent_skills_answer_its_client_identity(env, client):
    """Bearer auth through create_app's token_validator: the token maps to urn:asap:agent:orders-client,
    and only that sender gets through; check_stock calls the inventory (here: misconfigured) agent."""
    url, auth = f"{env['ASAP_DEMO_STOCK_URL']}/asap", {"Authorization": f"Bearer {env['ASAP_DEMO_TOKEN']}"}
    r = client.post(url, json=_task("lookup_order", {"order_id": "A-1001"}, "urn:asap:agent:orders-client"), headers=auth)
    assert r.json()["result"]["envelope"]["payload"]["result"]["status"] == "shipped"
    r = client.post(url, json=_task("check_stock", {"order_id": "A-1002"}, "urn:asap:agent:orders-client"), headers=auth)
    result = r.json()["result"]["envelope"]["payload"]
    assert result["status"] == "completed" and result["result"]["sku"] == "GADGET-7", result
    r = client.post(url, json=_task("lookup_order", {"order_id": "A-1001"}, "urn:asap:agent:sre-probe"), headers=auth)
    assert "Sender does not match" in r.text
    r = client.post(url, json=_task("lookup_order", {"order_id": "A-1001"}, "urn:asap:agent:orders-client"))
    assert r.json()["error"]["data"]["status_code"] == 401


def test_recorded_pid_is_uvicorn_itself(dep):
    cmdline = Path(f"/proc/{dep.hardened.pid}/cmdline").read_bytes().split(b"\0")
    assert b"uvicorn" in cmdline and b"asap_runbook.reference.hardened_app:app" in cmdline
    assert os.getpgid(dep.hardened.pid) == dep.hardened.pid  # own process group


def test_hardened_health_over_tls12_plus_with_hsts(env, client):
    r = client.get(f"{env['ASAP_DEMO_HARDENED_URL']}/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    hsts = r.headers["strict-transport-security"]
    assert "max-age=31536000" in hsts and "includeSubDomains" in hsts
    assert "server" not in r.headers or "uvicorn" not in r.headers["server"]
    ctx = ssl.create_default_context(cafile=env["ASAP_DEMO_CA_FILE"])
    assert _tls_version(env["ASAP_DEMO_HARDENED_URL"], ctx) in ("TLSv1.2", "TLSv1.3")
    old = ssl.create_default_context(cafile=env["ASAP_DEMO_CA_FILE"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError):
        _tls_version(env["ASAP_DEMO_HARDENED_URL"], old)


def test_hardened_plain_http_redirects(env):
    r = httpx.get(f"{env['ASAP_DEMO_HARDENED_HTTP_URL']}/health?x=1", follow_redirects=False, timeout=5)
    assert r.status_code == 301
    assert r.headers["location"] == f"{env['ASAP_DEMO_HARDENED_URL']}/health?x=1"


def test_hardened_asap_auth_and_nonce(env, client):
    url, token = env["ASAP_DEMO_HARDENED_URL"], env["ASAP_DEMO_TOKEN"]
    r = _post(client, url, _request())
    assert r.status_code == 200 and r.json()["error"]["code"] == -32600

    body = _request(nonce="n-" + secrets.token_hex(8))
    r = _post(client, url, body, token)
    result = r.json()["result"]["envelope"]
    assert result["payload"]["result"] == {"echoed": {"msg": "hi"}}
    assert result["sender"] == "urn:asap:agent:hardened-ref"

    replay = _post(client, url, body, token)  # same nonce: shared Redis store rejects it
    assert replay.json()["error"]["code"] == -32003

    r = _post(client, url, _request(nonce=None), token)
    assert r.status_code == 200
    err = r.json()["error"]
    assert err["code"] == -32003 and err["message"] == "Nonce required"

    batch = [_request(), _request(nonce=None)]
    r = _post(client, url, batch, token)
    assert [item["error"]["code"] for item in r.json()] == [-32003, -32003]


def test_hardened_metrics_are_scrapeable_and_extended(env, client):
    r = client.get(f"{env['ASAP_DEMO_HARDENED_URL']}/asap/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    for name in ("asap_requests_total", "asap_rate_limit_exceeded_total", "asap_request_size_exceeded_total"):
        assert name in text
    assert 'refagent_tasks_total{skill="echo"}' in text
    info = client.get(f"{env['ASAP_DEMO_HARDENED_URL']}/.well-known/asap-runbook/reference.json").json()
    assert "metrics-content-type" in info["wrapper_fixes"]


def test_hardened_websocket_through_nginx(env):
    websockets_sync = pytest.importorskip("websockets.sync.client")
    ctx = ssl.create_default_context(cafile=env["ASAP_DEMO_CA_FILE"])
    ws_url = env["ASAP_DEMO_HARDENED_URL"].replace("https://", "wss://") + "/asap/ws"
    import json

    with websockets_sync.connect(ws_url, ssl=ctx, open_timeout=5) as ws:  # no token in the handshake
        ws.send(json.dumps(_request()))
        answer = json.loads(ws.recv(timeout=5))
    assert answer["error"]["code"] == -32600


def test_hardened_proxy_body_limit(env, client):
    r = client.post(f"{env['ASAP_DEMO_HARDENED_URL']}/asap", content=b"x" * (1024 * 1024 + 10))
    assert r.status_code == 413


def test_misconfigured_tls10_and_plain_http(env):
    ctx = _tls10_context()
    assert _tls_version(env["ASAP_DEMO_MISCONFIGURED_URL"], ctx) == "TLSv1"
    with httpx.Client(verify=ctx, timeout=5) as c:
        r = c.get(f"{env['ASAP_DEMO_MISCONFIGURED_URL']}/health")
    assert r.status_code == 200 and "strict-transport-security" not in r.headers
    r = httpx.get(f"{env['ASAP_DEMO_MISCONFIGURED_HTTP_URL']}/health", follow_redirects=False, timeout=5)
    assert r.status_code == 200
    r = httpx.get(f"{env['ASAP_DEMO_MISCONFIGURED_DIRECT_URL']}/docs", timeout=5)
    assert r.status_code == 200
    r = httpx.post(f"{env['ASAP_DEMO_MISCONFIGURED_HTTP_URL']}/asap", json=_request(nonce=None), timeout=5)
    assert "result" in r.json()
    # the weak certificate: self-signed and expired
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(Path(env["ASAP_DEMO_MISCONFIGURED_NGINX_CONF"]).parent.parent.joinpath(
        "pki", "weak-selfsigned-expired.pem").read_bytes())
    assert cert.issuer == cert.subject
    assert cert.not_valid_after_utc < datetime.now(timezone.utc)


def test_hardened_certificate_lifespan(dep):
    from cryptography import x509

    leaf = x509.load_pem_x509_certificates(dep.pki.cert_chain.read_bytes())[0]
    days = (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days
    assert 89 <= days <= 91
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_prometheus_scrapes_hardened_up_misconfigured_down(dep):
    targets = dep.wait_prometheus_targets(timeout=15)
    assert {t["health"] for t in targets["asap-hardened"]} == {"up"}, targets
    bad = targets["asap-misconfigured"][0]
    assert bad["health"] == "down" and "EOF" in bad["lastError"], bad
    rules = httpx.get(f"{dep.prometheus.url}/api/v1/rules", timeout=5).json()["data"]["groups"]
    names = {r["name"] for g in rules for r in g["rules"]}
    assert {"ASAPHighErrorRate", "ASAPHighLatencyP99", "ASAPAgentDown", "ASAPRateLimitExceeded"} <= names


def test_prometheus_sends_alerts_to_the_alertmanager_with_the_shipped_routing(dep):
    import time

    from asap_runbook.reference import ALERTMANAGER_CONFIG
    sends_to = f"{dep.alertmanager.url}/api/v2/alerts"
    deadline = time.monotonic() + 15
    while True:  # Prometheus's notifier picks its Alertmanagers up shortly after start
        active = httpx.get(f"{dep.prometheus.url}/api/v1/alertmanagers", timeout=5).json()["data"]["activeAlertmanagers"]
        if [a["url"] for a in active] == [sends_to] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert [a["url"] for a in active] == [sends_to]
    loaded = httpx.get(f"{dep.alertmanager.url}/api/v2/status", timeout=5).json()["config"]["original"]
    assert 'receiver: "null"' in loaded and "job=\"asap-misconfigured\"" in loaded, loaded
    assert dep.alertmanager.config_file == ALERTMANAGER_CONFIG
    assert dep.alertmanager.data_dir.parent == dep.workdir


def test_shipped_alertmanager_config_passes_amtool():
    from asap_runbook.reference import ALERTMANAGER_CONFIG
    out = subprocess.run([find_binary("amtool"), "check-config", str(ALERTMANAGER_CONFIG)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "3 receivers" in out.stdout, out.stdout + out.stderr


@pytest.mark.skipif(not find_binary("promtool"), reason="promtool not installed")
def test_alert_rules_pass_promtool():
    out = subprocess.run([find_binary("promtool"), "check", "rules", str(DEFAULT_ALERT_RULES)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr


def test_ready_follows_redis(dep, env, client):
    url = f"{env['ASAP_DEMO_HARDENED_URL']}/ready"
    r = client.get(url)
    assert r.status_code == 200 and r.json() == {"status": "ok", "checks": {"redis": "ok"}}
    dep.stop_redis()
    try:
        r = client.get(url)
        assert r.status_code == 503 and r.json() == {"status": "not ready", "failed": ["redis"]}
    finally:
        dep.start_redis()
    r = client.get(url)
    assert r.status_code == 200


def test_token_not_in_logs(dep, env):
    token = env["ASAP_DEMO_TOKEN"]
    for log in dep.logs_dir.iterdir():
        assert token not in log.read_text(errors="replace"), log


def test_zz_teardown_stops_everything(dep):
    pids = dep.pids()
    ports = dep.ports()
    pgids = set(pids.values())
    dep.stop()
    assert dep.shutdown_seconds is not None and dep.shutdown_seconds < 15
    for name, pid in pids.items():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    leftovers = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) in pgids:
                    leftovers.append(entry.name)
            except ProcessLookupError:
                pass
    assert not leftovers
    for port in ports:
        with socket.socket() as s:
            s.settimeout(0.3)
            assert s.connect_ex(("127.0.0.1", port)) != 0, port


def test_missing_binary_is_a_clear_error(tmp_path, monkeypatch):
    import asap_runbook.reference.deployment as d

    real = d.find_binary
    monkeypatch.setattr(d, "find_binary", lambda name: None if name == "nginx" else real(name))
    with pytest.raises(ReferenceDeploymentError, match="nginx"):
        with ReferenceDeployment(tmp_path, prometheus=False):
            pass


def test_missing_alertmanager_names_its_package(tmp_path, monkeypatch):
    import asap_runbook.reference.deployment as d

    real = d.find_binary
    monkeypatch.setattr(d, "find_binary", lambda name: None if "alertmanager" in name else real(name))
    with pytest.raises(ReferenceDeploymentError, match="prometheus-alertmanager.*pass prometheus=False"):
        with ReferenceDeployment(tmp_path, prometheus=True):
            pass
    assert not (tmp_path / "logs").exists(), "nothing started"


def test_without_prometheus_and_two_misconfigured(tmp_path):
    with ReferenceDeployment(tmp_path, prometheus=False, misconfigured_agents=2) as d:
        env = d.env()
        assert "ASAP_DEMO_PROMETHEUS_URL" not in env and "ASAP_DEMO_ALERTMANAGER_URL" not in env
        assert [m.name for m in d.misconfigured] == ["misconfigured", "misconfigured-2"]
        for m in d.misconfigured:
            assert httpx.get(f"{m.http_url}/health", timeout=5).status_code == 200
        pids = d.pids()
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_component_failure_names_it_and_cleans_up(tmp_path):
    bad_rules = tmp_path / "bad-rules.yml"
    bad_rules.write_text("groups:\n  - name: x\n    rules:\n      - alert: Bad\n        expr: this is not promql (\n")
    d = ReferenceDeployment(tmp_path / "wd", prometheus=True, misconfigured_agents=0, alert_rules=bad_rules)
    with pytest.raises(ReferenceDeploymentError) as info:
        d.start()
    assert "prometheus" in str(info.value)
    assert d.pids()
    for pid in d.pids().values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_cli_prints_exports_without_token_and_stops_on_sigint(tmp_path):
    import signal
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo))
    proc = subprocess.Popen(
        [sys.executable, "-m", "asap_runbook.reference", "--workdir", str(tmp_path), "--no-prometheus"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=repo,
    )
    lines = []
    try:
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("export ASAP_DEMO_MISCONFIGURED_NGINX_CONF"):
                break
        token = (tmp_path / "token").read_text().strip()
        out = "".join(lines)
        assert "export ASAP_DEMO_HARDENED_URL=https://127.0.0.1:" in out
        assert f'export ASAP_DEMO_TOKEN="$(cat {tmp_path / "token"})"' in out
        assert token not in out
        url = next(line.split("=", 1)[1].strip() for line in lines if line.startswith("export ASAP_DEMO_HARDENED_HTTP_URL="))
        assert httpx.get(f"{url}/health", timeout=5).status_code == 301
    finally:
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert token not in rest + err
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=2)

