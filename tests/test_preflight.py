"""No verdict without an observation (issue 11 §2, §4): the preflight, the needs checks declare,
and every automated check run against targets that cannot be looked at.

Table tests for the pure parts (causes from what the preflight saw, which need blocks first,
collapse_causes); live tests with real bad servers (tests/badservers.py), a port nothing listens
on, the real hardened agent with its token variable unset, and a Prometheus URL nothing answers.
"""

from __future__ import annotations

import socket

import pytest

from asap_runbook import preflight
from asap_runbook.catalog import Verification, load_catalog
from asap_runbook.checks._registry import check, registered
from asap_runbook.engine import run_check, run_section
from asap_runbook.errors import NotAnAsapAgent, TargetTimeout, TargetUnreachable, TargetUntrusted
from asap_runbook.params import ActiveProbes, Params, Prometheus, ProbeSettings, Target
from asap_runbook.results import Result, Status, collapse_causes

from badservers import BadServers, hang, not_asap
from conftest import one_target

VERDICTS = {Status.PASS, Status.FAIL, Status.WARN}
MANIFEST = {"id": "urn:asap:agent:x"}
T = Target(name="api", base_url="https://127.0.0.1:8443", token_env="RUNBOOK_TEST_TOKEN", prometheus_job="api")
UNREACHABLE = TargetUnreachable("cannot connect to https://127.0.0.1:8443/.well-known/asap/manifest.json: "
                                "connection refused")
UNTRUSTED = TargetUntrusted("the certificate of https://127.0.0.1:8443/.well-known/asap/manifest.json does not "
                            "verify: certificate has expired")
NOT_ASAP = NotAnAsapAgent("https://127.0.0.1:8443/.well-known/asap/manifest.json answered HTTP 200 without an "
                          "ASAP manifest; is this an ASAP agent?")
TIMEOUT = TargetTimeout("GET https://127.0.0.1:8443/.well-known/asap/manifest.json did not complete within 10 s")


# ------------------------------------------------------------------------------ table tests
@pytest.mark.parametrize("verified, unverified, token, prom, unmet", [
    (MANIFEST, None, "t", None, set()),
    (UNREACHABLE, None, "t", None, {"reach", "agent"}),
    (TIMEOUT, None, "t", None, {"reach", "agent"}),
    (NOT_ASAP, None, "t", None, {"agent"}),
    (UNTRUSTED, MANIFEST, "t", None, {"trust"}),
    (UNTRUSTED, NOT_ASAP, "t", None, {"trust", "agent"}),
    (UNTRUSTED, TIMEOUT, "t", None, {"reach", "agent"}),  # no answer at all: trust is not the story
    (None, None, "t", None, set()),  # no check needed the target: nothing looked, nothing claimed
    (MANIFEST, None, None, None, {"token"}),
    (MANIFEST, None, "", None, {"token"}),  # set but empty is no token
    (MANIFEST, None, "t", "Prometheus at http://127.0.0.1:9 could not answer the build info query: connection "
                         "refused", {"prometheus"}),
])
def test_causes_from_what_was_seen(monkeypatch, verified, unverified, token, prom, unmet):
    if token is None:
        monkeypatch.delenv("RUNBOOK_TEST_TOKEN", raising=False)
    else:
        monkeypatch.setenv("RUNBOOK_TEST_TOKEN", token)
    causes = preflight.judge(T, verified, unverified, prom)
    assert set(causes) == unmet
    if "trust" in unmet:
        assert "set targets[api].tls_verify: false" in causes["trust"] and "certificate has expired" in causes["trust"]
    if "reach" in unmet:
        assert causes["reach"] == causes["agent"] == (verified if not unverified else unverified).message
    if "token" in unmet:
        assert causes["token"] == "the environment variable RUNBOOK_TEST_TOKEN (targets[api].token_env) is not set"


def test_no_token_env_means_no_token_need(monkeypatch):
    monkeypatch.delenv("RUNBOOK_TEST_TOKEN", raising=False)
    assert preflight.judge(T.model_copy(update={"token_env": None}), MANIFEST, None, None) == {}


def test_no_prometheus_job_means_no_prometheus_need(monkeypatch):
    """Without a job the checks judge the target without Prometheus (or skip): its outage is not theirs."""
    monkeypatch.setenv("RUNBOOK_TEST_TOKEN", "t")
    assert preflight.judge(T.model_copy(update={"prometheus_job": None}), MANIFEST, None, "Prometheus down") == {}


@pytest.mark.parametrize("needs, expect", [
    ({"reach"}, ("reach", "R")),
    ({"agent", "trust", "token"}, ("agent", "R")),  # the same cause as reach: no answer at all
    ({"token"}, ("token", "K")),
    ({"prometheus"}, None),
    (set(), None),
])
def test_first_unmet_need_is_reported(needs, expect):
    pf = preflight.Preflight("api", causes={"reach": "R", "agent": "R", "token": "K"})
    assert pf.blocking(needs) == expect


def test_trust_is_reported_before_agent_and_token():
    pf = preflight.Preflight("api", causes={"trust": "C", "agent": "A", "token": "K"})
    assert pf.blocking({"agent", "trust", "token"}) == ("trust", "C")
    assert pf.blocking({"agent"}) == ("agent", "A")
    assert pf.unverified


def test_the_unverified_probe_never_sends_the_token(monkeypatch):
    monkeypatch.setenv("RUNBOOK_TEST_TOKEN", "secret-value")
    p = preflight.open_probe(T, Params(targets=[T]))
    assert p.auth_headers() == {} and p.target.tls_verify is False
    assert preflight.Probe(T, ProbeSettings()).auth_headers() == {"Authorization": "Bearer secret-value"}


def _r(item, target, status, cause=None):
    return Result(item_id=item, target=target, section="s", subsection="x", title="t", status=status, summary="s",
                  severity="high", blocking=True, verification="probe", details={"cause": cause} if cause else {})


def test_collapse_causes_groups_per_target_and_cause():
    results = [_r("A-1", "api", Status.ERROR, "connection refused: https://api"),
               _r("A-2", "api", Status.ERROR, "connection refused: https://api"),
               _r("A-3", "api", Status.ERROR),  # an error of its own, no shared cause
               _r("A-4", "api", Status.PASS, "connection refused: https://api"),  # not an error: not counted
               _r("A-1", "web", Status.ERROR, "connection refused: https://api"),
               _r("A-5", "api", Status.ERROR, "Prometheus down")]
    assert collapse_causes(results) == [("api", "connection refused: https://api", ["A-1", "A-2"]),
                                        ("web", "connection refused: https://api", ["A-1"]),
                                        ("api", "Prometheus down", ["A-5"])]
    assert collapse_causes([]) == []


# ------------------------------------------------------------------------------ declarations
NOT_THROUGH_THE_AGENT = {"SEC-AUTH-4": "reads the token's own claims when token_env is given",
                         "MON-HEALTH-4": "starts its own copy of the agent"}


def test_every_check_that_looks_at_the_target_declares_it():
    """Needs follow from the catalog's verification kind, with the exceptions named above."""
    checks = registered()
    for item in load_catalog().items:
        reg = checks.get(item.id)
        if reg is None:
            continue
        if item.verification in (Verification.PROBE, Verification.DRILL) and item.id not in NOT_THROUGH_THE_AGENT:
            assert reg.needs & {"reach", "agent"}, item.id
        if item.verification is Verification.PROMETHEUS:
            assert "prometheus" in reg.needs, item.id
        if "agent" in reg.needs:
            assert "trust" in reg.needs, f"{item.id}: talks to the agent, so it needs a trusted connection"


def test_an_unknown_need_is_refused():
    with pytest.raises(RuntimeError, match="unknown needs"):
        check("X-1", needs=("agnet",))


# ------------------------------------------------------------------------------ live matrix
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TLS_LAYER = {"SEC-TLS-2", "SEC-TLS-3", "SEC-TLS-4", "SEC-TLS-5"}


@pytest.fixture(scope="module")
def unobservable_run(demo_params):
    """Every section against a port nothing listens on, a server that never answers and a web
    server that is no ASAP agent, each with the hardened agent's inputs (log, token, job)."""
    hardened = demo_params.target("hardened")
    with BadServers() as s:
        s.add("hanging", hang)
        s.add("not-asap", not_asap)
        urls = dict(s.url, unreachable=f"http://127.0.0.1:{_closed_port()}")
        targets = [Target(name=n, base_url=u, http_url=u, log_file=hardened.log_file, token_env=hardened.token_env,
                          prometheus_job=hardened.prometheus_job) for n, u in urls.items()]
        params = Params(targets=targets, probe=ProbeSettings(timeout_seconds=1))
        runs = {sec: run_section(sec, params) for sec in load_catalog().sections}
    return runs


def _needs_the_target(target: str, item_id: str) -> bool:
    """From the catalog (not from the checks' own declarations): probe, drill and Prometheus items
    read the target; on a web server that answered, the TLS layer can still be judged."""
    item = load_catalog().get(item_id)
    if item.id not in registered() or item.id in NOT_THROUGH_THE_AGENT:
        return False
    if target == "not-asap" and item.id in TLS_LAYER:
        return False
    return item.verification in (Verification.PROBE, Verification.DRILL, Verification.PROMETHEUS) \
        or item.id == "SEC-RATE-2"  # static, but finds the agent's startup line by its manifest id


def test_no_verdict_on_what_could_not_be_seen(unobservable_run):
    for section, run in unobservable_run.items():
        looked = [r for r in run.results if _needs_the_target(r.target, r.item_id)]
        assert looked or section == "scaling"
        verdicts = [(r.target, r.item_id, r.status.value, r.summary) for r in looked if r.status in VERDICTS]
        assert not verdicts, verdicts


def test_one_cause_per_unobservable_target(unobservable_run):
    results = [r for run in unobservable_run.values() for r in run.results]
    groups = collapse_causes(results)
    assert {t for t, _, _ in groups} == {"hanging", "not-asap", "unreachable"}
    causes = {t: c for t, c, _ in groups}
    assert "connection refused" in causes["unreachable"]
    assert "did not complete within" in causes["hanging"]
    assert "without an ASAP manifest" in causes["not-asap"]
    assert len(groups) == 3, [(t, c) for t, c, _ in groups]  # one line per target, every blocked item in it
    ids = {t: set(i) for t, _, i in groups}
    assert {"SEC-RATE-4", "SEC-SIZE-3", "SEC-AUTH-1", "MON-METRICS-1", "RES-1"} <= ids["unreachable"]


def test_preflight_is_recorded_once_per_target(unobservable_run):
    pf = unobservable_run["security"].preflight
    assert set(pf) == {"hanging", "not-asap", "unreachable"}
    assert set(pf["not-asap"]["causes"]) == {"agent"}
    assert set(pf["unreachable"]["causes"]) == {"reach", "agent"}
    assert pf["unreachable"]["observed"]["token_env"] == "ASAP_DEMO_TOKEN: set"


PROMETHEUS_ITEMS = [i.id for i in load_catalog().items if i.verification is Verification.PROMETHEUS]


@pytest.fixture(scope="module")
def prometheus_down(demo_params):
    hardened = demo_params.target("hardened").model_copy(update={"active_probes": ActiveProbes()})
    params = demo_params.model_copy(update={
        "targets": [hardened], "prometheus": Prometheus(url=f"http://127.0.0.1:{_closed_port()}", timeout_seconds=1)})
    return params, {i: run_check(i, params, "hardened") for i in PROMETHEUS_ITEMS}


def test_prometheus_down_gives_no_verdict(prometheus_down):
    params, got = prometheus_down
    assert len(got) == 7
    assert {i: r.status for i, r in got.items()} == {i: Status.ERROR for i in got}, \
        {i: r.summary for i, r in got.items()}
    causes = {r.details["cause"] for r in got.values()}
    assert causes == {f"Prometheus at {params.prometheus.url} could not answer the build info query: "
                      "connection refused"}


def test_prometheus_down_leaves_other_checks_alone(prometheus_down):
    params, _ = prometheus_down
    r = run_check("MON-HEALTH-1", params, "hardened")
    assert r.status in VERDICTS and "cause" not in r.details


def test_unset_token_blocks_only_what_presents_it(demo_params, monkeypatch):
    monkeypatch.delenv("RUNBOOK_TEST_UNSET_TOKEN", raising=False)
    params = one_target(demo_params, "hardened", token_env="RUNBOOK_TEST_UNSET_TOKEN", active_probes=ActiveProbes())
    cause = "the environment variable RUNBOOK_TEST_UNSET_TOKEN (targets[hardened].token_env) is not set"
    for item in ("SEC-AUTH-5", "SEC-REPLAY-2"):
        r = run_check(item, params, "hardened")
        assert r.status is Status.ERROR and r.details["cause"] == cause and r.summary == cause
    r = run_check("SEC-AUTH-1", params, "hardened")  # reads the manifest only: still judged
    assert r.status is Status.PASS, r.summary
