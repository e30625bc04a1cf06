"""Prometheus as teams run it, offline: credentials named in the parameters and read from the environment,
a CA file and rule files relative to the parameters file, extra headers, a path prefix kept on every
request, promtool's word on rule files. The live proof (TLS, basic auth, a route prefix) is
tests/test_prometheus_access.py."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from asap_runbook import rules_source
from asap_runbook.errors import ParamsError, PrometheusError
from asap_runbook.params import HttpEndpoint, Prometheus, load_params
from asap_runbook.prom import Prom

REPO = Path(__file__).resolve().parent.parent
SHIPPED_RULES = REPO / "asap_runbook" / "data" / "prometheus" / "asap-alerts.yml"

BEHIND_AUTH = """
targets:
  - {name: a, base_url: "https://agent.example.com", prometheus_job: orders}
prometheus:
  url: https://prom.example.com/prometheus/
  basic_auth: {username: sre-runbook, password_env: PROM_PASSWORD}
  ca_file: pki/prom-ca.pem
  headers:
    X-Scope-OrgID: payments
    X-Api-Key: {env: PROM_API_KEY}
  rule_files: ["rules/*.yml"]
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "pki").mkdir(exist_ok=True)
    (tmp_path / "pki" / "prom-ca.pem").write_text("not read offline\n")
    (tmp_path / "rules").mkdir(exist_ok=True)
    shutil.copy(SHIPPED_RULES, tmp_path / "rules" / "asap-alerts.yml")
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return p


def test_a_prometheus_behind_auth_loads_with_its_paths_relative_to_the_file(tmp_path):
    prom = load_params(write(tmp_path, BEHIND_AUTH)).prometheus
    assert prom.url == "https://prom.example.com/prometheus"  # the prefix kept, the trailing slash not
    assert prom.ca_file == tmp_path / "pki" / "prom-ca.pem"
    assert prom.verify == str(tmp_path / "pki" / "prom-ca.pem")
    assert prom.rule_files == [str(tmp_path / "rules" / "*.yml")]
    assert prom.rule_file_paths() == [tmp_path / "rules" / "asap-alerts.yml"]
    assert prom.all_env_names() == [("PROM_PASSWORD", "prometheus.basic_auth.password_env"),
                                    ("PROM_API_KEY", "prometheus.headers.X-Api-Key")]


def test_secrets_are_read_from_the_environment_when_used(tmp_path, monkeypatch):
    prom = load_params(write(tmp_path, BEHIND_AUTH)).prometheus
    monkeypatch.delenv("PROM_PASSWORD", raising=False)
    monkeypatch.delenv("PROM_API_KEY", raising=False)
    assert prom.unset_env("prometheus") == ("the environment variables PROM_PASSWORD (prometheus.basic_auth.password_env), "
                                            "PROM_API_KEY (prometheus.headers.X-Api-Key) are not set")
    assert prom.basic_credentials() is None and prom.request_headers() == {"X-Scope-OrgID": "payments"}
    monkeypatch.setenv("PROM_PASSWORD", "pw-1")
    monkeypatch.setenv("PROM_API_KEY", "key-1")
    assert prom.unset_env("prometheus") is None
    assert prom.basic_credentials() == ("sre-runbook", "pw-1")
    assert prom.request_headers() == {"X-Scope-OrgID": "payments", "X-Api-Key": "key-1"}
    assert "pw-1" not in prom.model_dump_json() and "key-1" not in prom.model_dump_json()


@pytest.mark.parametrize("prometheus, sentence", [
    ("{url: 'https://p', headers: {Authorization: 'Bearer abc'}}",
     "prometheus.headers: the Authorization header carries a credential: give it as {env: NAME}"),
    ("{url: 'https://p', bearer_token_env: T, basic_auth: {username: u, password_env: P}}",
     "prometheus: set bearer_token_env or basic_auth, not both"),
    ("{url: 'https://p', rules_api: {url: 'https://r'}, rule_files: [p.yaml]}",
     "prometheus: set rules_api or rule_files, not both"),
    ("{url: 'https://p', bearer_token_env: 'not a name'}", "prometheus.bearer_token_env: String should match pattern"),
    ("{url: 'https://p', basic_auth: {username: u, password_env: P, password: hunter2}}", "unknown key prometheus.basic_auth.password"),
    ("{url: 'https://p', ca_file: nowhere.pem}", "prometheus.ca_file: {dir}/nowhere.pem does not exist"),
    ("{url: 'https://p', rules_api: {url: 'https://r', ca_file: nowhere.pem}}",
     "prometheus.rules_api.ca_file: {dir}/nowhere.pem does not exist"),
    ("{url: 'https://p', rule_files: ['none/*.yml']}", "prometheus.rule_files[0]: {dir}/none/*.yml matches no file"),
    ("{url: 'https://p', rule_files: [missing.yml]}", "prometheus.rule_files[0]: {dir}/missing.yml does not exist"),
], ids=["literal-authorization", "two-auths", "two-rule-sources", "bad-env-name", "literal-password", "ca-missing",
        "rules-ca-missing", "glob-matches-nothing", "rule-file-missing"])
def test_bad_prometheus_settings_are_one_sentence(tmp_path, prometheus, sentence):
    p = tmp_path / "p.yaml"
    p.write_text(f"targets: [{{name: a, base_url: 'https://a.example'}}]\nprometheus: {prometheus}\n")
    with pytest.raises(ParamsError) as e:
        load_params(p)
    assert sentence.replace("{dir}", str(tmp_path)) in e.value.message
    assert e.value.message.count("\n") == 0


def test_validate_notes_an_unset_variable_and_stays_valid(tmp_path):
    p = write(tmp_path, BEHIND_AUTH)
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("PROM_PASSWORD", "PROM_API_KEY")}
    env["PROM_API_KEY"] = "set"
    proc = subprocess.run([sys.executable, "-m", "asap_runbook", "validate", str(p)], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "note: PROM_PASSWORD (prometheus.basic_auth.password_env) is not set here" in proc.stdout
    assert "PROM_API_KEY" not in proc.stdout


# ------------------------------------------------------------------ what goes on the wire
class _Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[str, dict]] = []
    status = 200

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).seen.append((self.path, dict(self.headers)))
        body = json.dumps({"status": "success", "data": {"version": "x", "resultType": "vector", "result": [],
                                                         "groups": []}}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder():
    _Recorder.seen, _Recorder.status = [], 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_every_request_keeps_the_prefix_and_carries_the_credentials(recorder, monkeypatch):
    monkeypatch.setenv("PROM_TEST_TOKEN", "tok-123")
    monkeypatch.setenv("PROM_TEST_TENANT_KEY", "k-9")
    url = f"http://127.0.0.1:{recorder.server_port}/prometheus/"
    prom = Prom(Prometheus(url=url, bearer_token_env="PROM_TEST_TOKEN",
                           headers={"X-Scope-OrgID": "payments", "X-Api-Key": {"env": "PROM_TEST_TENANT_KEY"}}))

    async def ask():
        await prom.build_info()  # our own GET
        await prom.query("up")  # prometheus-api-client's
        await prom.rules()
    asyncio.run(ask())
    paths = [p.split("?")[0] for p, _ in _Recorder.seen]
    assert paths == ["/prometheus/api/v1/status/buildinfo", "/prometheus/api/v1/query", "/prometheus/api/v1/rules"]
    for _, headers in _Recorder.seen:
        assert headers["Authorization"] == "Bearer tok-123"
        assert headers["X-Scope-OrgID"] == "payments" and headers["X-Api-Key"] == "k-9"


def test_basic_credentials_go_on_every_request(recorder, monkeypatch):
    monkeypatch.setenv("PROM_TEST_PASSWORD", "pw:with colon")
    prom = Prom(Prometheus(url=f"http://127.0.0.1:{recorder.server_port}",
                           basic_auth={"username": "sre", "password_env": "PROM_TEST_PASSWORD"}))
    asyncio.run(prom.build_info())
    asyncio.run(prom.query("up"))
    want = "Basic " + base64.b64encode(b"sre:pw:with colon").decode()
    assert [h["Authorization"] for _, h in _Recorder.seen] == [want, want]


@pytest.mark.parametrize("status, words", [
    (401, "401 Unauthorized, it refused the bearer token in PROM_TEST_TOKEN (prometheus.bearer_token_env)"),
    (403, "403 Forbidden, the bearer token in PROM_TEST_TOKEN (prometheus.bearer_token_env) may not read it"),
    (404, "404 Not Found, nothing answers the API under http://127.0.0.1:{port}/wrong (is the path prefix right"),
])
def test_refusals_are_one_sentence_naming_the_setting(recorder, monkeypatch, status, words):
    monkeypatch.setenv("PROM_TEST_TOKEN", "tok-123")
    _Recorder.status = status
    prom = Prom(Prometheus(url=f"http://127.0.0.1:{recorder.server_port}/wrong", bearer_token_env="PROM_TEST_TOKEN"))
    for ask in (prom.build_info, lambda: prom.query("up")):
        with pytest.raises(PrometheusError) as e:
            asyncio.run(ask())
        assert words.format(port=recorder.server_port) in e.value.message
        assert "tok-123" not in e.value.message and "\n" not in e.value.message


def test_an_unset_variable_stops_the_request_before_it_is_sent(recorder):
    prom = Prom(HttpEndpoint(url=f"http://127.0.0.1:{recorder.server_port}",
                             bearer_token_env="PROM_TEST_SURELY_UNSET"), "prometheus.rules_api", "The rules API")
    with pytest.raises(PrometheusError) as e:
        asyncio.run(prom.rules())
    assert e.value.message == (f"The rules API at http://127.0.0.1:{recorder.server_port} was not asked the rules "
                               "query: the environment variable PROM_TEST_SURELY_UNSET "
                               "(prometheus.rules_api.bearer_token_env) is not set")
    assert _Recorder.seen == []


# ------------------------------------------------------------------ rule files
def test_promtool_passes_the_shipped_rules_and_says_why_a_broken_copy_fails(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(SHIPPED_RULES.read_text().replace('expr: up{job=~"asap-.*"} == 0', 'expr: up{job=~"asap-.*"} == == 0'))
    good, bad = (asyncio.run(rules_source.promtool_check(p)) for p in (SHIPPED_RULES, broken))
    assert good.loads and "SUCCESS: 10 rules found" in good.promtool
    assert not bad.loads
    assert '"ASAPAgentDown": could not parse expression' in bad.promtool and str(broken) in bad.promtool


def test_promtool_missing_is_an_error_cause(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no promtool
    rule_file = tmp_path / "r.yml"
    rule_file.write_text("groups: []\n")
    with pytest.raises(rules_source.RulesUnavailable) as e:
        asyncio.run(rules_source.promtool_check(rule_file))
    assert e.value.message.startswith("promtool is not installed")


def test_rule_files_become_the_rules_api_shape():
    groups = rules_source.groups_from_file(SHIPPED_RULES)
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert rules["ASAPAgentDown"] == rules["ASAPAgentDown"] | {"type": "alerting", "duration": 60.0, "alerts": [],
                                                               "query": 'up{job=~"asap-.*"} == 0'}
    assert rules["asap:request_duration_seconds_count:rate5m"]["type"] == "recording"
    assert [g["file"] for g in groups] == [str(SHIPPED_RULES)] * len(groups)


@pytest.mark.parametrize("text, seconds", [("5m", 300), ("1h30m", 5400), ("500ms", 0.5), ("1d", 86400), (None, 0),
                                           ("0s", 0)])
def test_durations(text, seconds):
    assert rules_source.seconds(text) == seconds


def test_a_malformed_duration_is_refused():
    with pytest.raises(ValueError):
        rules_source.seconds("5 minutes")
