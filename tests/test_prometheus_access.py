"""Prometheus as teams run it, live: a real Prometheus (Debian's binary) behind basic auth, over TLS
with a certificate from a CA made here, under a route prefix, scraping the reference hardened agent;
and rule files read instead of the loaded rules. Real checks run against it:

* the right credentials and CA: real verdicts (the catalog's for the hardened agent);
* a wrong password, no CA file, a wrong prefix, an unset variable: every Prometheus check ends in
  `error` with one sentence saying which;
* the password never reaches a run's artifacts or console (the canary idea of test_secrets.py).

Basic auth in Prometheus's --web.config.file wants a bcrypt hash: the `bcrypt` package (pyca, a test
dependency) makes it; Debian's prometheus ships no hasher and Python 3.13 has no `crypt`.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import bcrypt
import httpx
import pytest
import yaml

import asap_runbook
from asap_runbook.engine import run_check, run_section
from asap_runbook.params import Alertmanager, Prometheus
from asap_runbook.reference import pki
from asap_runbook.reference.deployment import DEFAULT_ALERT_RULES, STOCK_ALERT_RULES
from asap_runbook.results import Status

from conftest import REPO, expected, one_target, write_test_params
from test_secrets import canary_forms, files_holding

TEAM_ROUTES = Alertmanager(config_file=Path(asap_runbook.__file__).parent / "data" / "alertmanager" / "alertmanager.yml")

USER = "sre-runbook"
PASSWORD_ENV = "ASAP_TEST_PROM_PASSWORD"
PREFIX = "/prometheus"
PROM_ITEMS = ("MON-METRICS-2", "MON-ALERT-3")  # need Prometheus; robust on a freshly scraped agent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def secure_prometheus(deployment, tmp_path_factory):
    """Prometheus on https://127.0.0.1:PORT/prometheus, basic auth, scraping the hardened agent with the
    shipped rules loaded."""
    binary = shutil.which("prometheus")
    assert binary, "Debian's prometheus package is a test dependency (it runs the reference deployment too)"
    work = tmp_path_factory.mktemp("secure-prom")
    ca = pki.make_ca("asap-runbook test Prometheus CA")
    (work / "ca.pem").write_bytes(pki._pem(ca.cert))
    pki.make_leaf(work / "cert.pem", work / "key.pem", ["127.0.0.1"], issuer=ca)
    password = secrets.token_urlsafe(24)
    (work / "web.yml").write_text(yaml.safe_dump({
        "tls_server_config": {"cert_file": str(work / "cert.pem"), "key_file": str(work / "key.pem")},
        "basic_auth_users": {USER: bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()}}))
    hardened = deployment.hardened
    (work / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "2s", "evaluation_interval": "2s", "scrape_timeout": "2s"},
        "rule_files": [str(DEFAULT_ALERT_RULES)],
        "scrape_configs": [{"job_name": "asap-hardened", "scheme": "https", "metrics_path": "/asap/metrics",
                            "tls_config": {"ca_file": str(hardened.ca_file)},
                            "static_configs": [{"targets": [hardened.base_url.removeprefix("https://")]}]}]}))
    port = _free_port()
    url = f"https://127.0.0.1:{port}{PREFIX}"
    log = (work / "prometheus.log").open("wb")
    proc = subprocess.Popen([binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}", f"--web.config.file={work / 'web.yml'}",
                             f"--web.route-prefix={PREFIX}", f"--web.external-url={url}/"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait_scraped(url, work / "ca.pem", password, proc)
        yield SimpleNamespace(url=url, ca_file=work / "ca.pem", password=password, log=work / "prometheus.log")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _wait_scraped(url: str, ca_file: Path, password: str, proc: subprocess.Popen, bound: float = 90) -> None:
    """Until the hardened agent has been scraped once (a start-up wait, bounded; nothing is judged by it)."""
    deadline, last = time.monotonic() + bound, None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            r = httpx.get(f"{url}/api/v1/query", params={"query": 'up{job="asap-hardened"} == 1'},
                          auth=(USER, password), verify=ssl.create_default_context(cafile=ca_file), timeout=5)
            if r.status_code == 200 and r.json()["data"]["result"]:
                return
            last = r.text[:200]
        except httpx.HTTPError as e:
            last = repr(e)
        time.sleep(0.5)
    raise AssertionError(f"the secure Prometheus never scraped the hardened agent (exit {proc.poll()}): {last}")


@pytest.fixture
def secured(secure_prometheus, demo_params, monkeypatch):
    """params(**prometheus changes): the hardened target and the secure Prometheus, the password in the
    environment."""
    monkeypatch.setenv(PASSWORD_ENV, secure_prometheus.password)
    right = {"url": secure_prometheus.url, "ca_file": secure_prometheus.ca_file, "window": "1m",
             "basic_auth": {"username": USER, "password_env": PASSWORD_ENV}}

    def params(**changes):
        prom = Prometheus.model_validate(right | changes)
        # this Prometheus sends to no Alertmanager: the alerts are routed by the team's configuration file
        return one_target(demo_params, "hardened").model_copy(update={"prometheus": prom, "alertmanager": TEAM_ROUTES})
    return params


def test_the_right_credentials_and_ca_give_real_verdicts(secured):
    for item in PROM_ITEMS:
        r = run_check(item, secured(), "hardened")
        assert r.status == expected(item, "hardened") == Status.PASS, (item, r.summary)


@pytest.mark.parametrize("change, words", [
    (lambda sp: {}, f"401 Unauthorized, it refused basic auth as '{USER}' (prometheus.basic_auth)"),
    (lambda sp: {"ca_file": None}, "its TLS certificate did not verify (self-signed certificate in certificate chain); "
                                   "set prometheus.ca_file to the CA that signed it"),
    (lambda sp: {"url": sp.url.removesuffix(PREFIX)}, "404 Not Found, nothing answers the API under"),
    (lambda sp: {"basic_auth": {"username": USER, "password_env": "ASAP_TEST_PROM_UNSET"}},
     "was not asked the build info query: the environment variable ASAP_TEST_PROM_UNSET "
     "(prometheus.basic_auth.password_env) is not set"),
], ids=["wrong-password", "no-ca-file", "wrong-prefix", "unset-variable"])
def test_what_keeps_prometheus_from_answering_is_an_error_with_its_cause(secured, secure_prometheus, monkeypatch,
                                                                        change, words):
    params = secured(**change(secure_prometheus))
    if "401" in words:
        monkeypatch.setenv(PASSWORD_ENV, "not-" + secure_prometheus.password)
    for item in PROM_ITEMS:
        r = run_check(item, params, "hardened")
        assert r.status == Status.ERROR, (item, r.summary)
        assert words in r.summary and r.details["unmet_need"] == "prometheus", (item, r.summary)
        assert "\n" not in r.summary and secure_prometheus.password not in r.summary


def test_the_prometheus_password_never_reaches_the_evidence(secure_prometheus, deployment, tmp_path):
    """A real headless run of the Monitoring section through the secure Prometheus: its password (the
    canary) is in no artifact and not on the console, and the run did use it (a Prometheus verdict passed)."""
    import os
    params = write_test_params(tmp_path, targets=["hardened"], active=False, prometheus={
        "url": secure_prometheus.url, "ca_file": str(secure_prometheus.ca_file), "window": "1m",
        "basic_auth": {"username": USER, "password_env": PASSWORD_ENV}},
        alertmanager={"config_file": str(TEAM_ROUTES.config_file)})
    out = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "-m", "asap_runbook", "run", "--params", str(params), "--sections",
                           "monitoring", "--out", str(out)], capture_output=True, text=True, timeout=900, cwd=REPO,
                          env=os.environ | {PASSWORD_ENV: secure_prometheus.password})
    run_dir = next(p for p in out.iterdir() if p.is_dir())
    results = json.loads((run_dir / "results.json").read_text())["results"]
    status = {r["item_id"]: r["status"] for r in results if r["target"] == "hardened"}
    assert status["MON-ALERT-3"] == "pass", proc.stdout[-2000:] + proc.stderr[-2000:]
    forms = canary_forms(secure_prometheus.password) | {
        "basic-base64": base64.b64encode(f"{USER}:{secure_prometheus.password}".encode())}
    assert files_holding(run_dir, forms) == []
    assert secure_prometheus.password not in proc.stdout + proc.stderr


# ------------------------------------------------------------------ rules that live elsewhere
ALERT_ITEMS = ["MON-ALERT-1", "MON-ALERT-2", "MON-ALERT-3", "MON-ALERT-4"]


def _alert_statuses(params) -> dict[tuple[str, str], tuple[Status, str]]:
    run = run_section("monitoring", params, items=ALERT_ITEMS)
    return {(r.item_id, r.target): (r.status, r.summary) for r in run.results}


def test_rule_files_judge_like_the_live_rules(demo_params, tmp_path):
    """The files the reference Prometheus loads, pointed at as prometheus.rule_files, give every alert
    item on the three reference targets the status the loaded rules give; a broken copy fails them all.
    (Run first, with the hardened alert checks: an alert firing live would be a warn, which files cannot see.)"""
    live = _alert_statuses(demo_params)
    files = demo_params.model_copy(update={"prometheus": demo_params.prometheus.model_copy(
        update={"rule_files": [str(DEFAULT_ALERT_RULES), str(STOCK_ALERT_RULES)]})})
    from_files = _alert_statuses(files)
    assert len(live) == len(ALERT_ITEMS) * 3
    assert {k: s for k, (s, _) in from_files.items()} == {k: s for k, (s, _) in live.items()}
    assert {k: expected(*k) for k in live} == {k: s for k, (s, _) in live.items()}

    broken = tmp_path / "asap-alerts-broken.yml"
    broken.write_text(DEFAULT_ALERT_RULES.read_text().replace('expr: up{job=~"asap-.*"} == 0',
                                                              'expr: up{job=~"asap-.*"} == == 0'))
    bad = _alert_statuses(files.model_copy(update={"prometheus": files.prometheus.model_copy(
        update={"rule_files": [str(broken), str(STOCK_ALERT_RULES)]})}))
    assert {s for s, _ in bad.values()} == {Status.FAIL}
    assert all(summary.startswith(f"rule file {broken} does not load (promtool check rules: FAILED:")
               for _, summary in bad.values())


def test_rules_from_a_ruler_elsewhere_with_its_own_credentials(secure_prometheus, demo_params, monkeypatch):
    """The reference (open) Prometheus scrapes; the rules are read from another API behind basic auth,
    TLS and a prefix (here the secure Prometheus, which serves the same /api/v1/rules as a ruler)."""
    monkeypatch.setenv(PASSWORD_ENV, secure_prometheus.password)
    ruler = {"url": secure_prometheus.url, "ca_file": secure_prometheus.ca_file,
             "basic_auth": {"username": USER, "password_env": PASSWORD_ENV}}
    params = one_target(demo_params, "hardened").model_copy(update={"prometheus": Prometheus.model_validate(
        demo_params.prometheus.model_dump() | {"rules_api": ruler})})
    r = run_check("MON-ALERT-3", params, "hardened")
    assert r.status == Status.PASS, r.summary
    source = next(e.data for e in r.evidence if e.label == "alerting rules read from")
    assert source == {"kind": "rules_api", "where": f"{secure_prometheus.url}/api/v1/rules"}

    monkeypatch.setenv(PASSWORD_ENV, "not-" + secure_prometheus.password)
    r = run_check("MON-ALERT-3", params, "hardened")
    assert r.status == Status.ERROR
    assert r.summary == (f"The rules API at {secure_prometheus.url} could not answer the rules query: 401 Unauthorized, "
                         f"it refused basic auth as '{USER}' (prometheus.rules_api.basic_auth)")
