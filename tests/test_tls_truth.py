"""TLS truth on bad certificates (issue 11 §3), on real nginx servers.

Four hardened nginx fronts (the reference template) in front of the real hardened agent, each
serving a certificate made here: expired, self-signed, from another CA, for another host.
`tls_verify` is left at its default and `ca_file` names the test CA. SEC-TLS-2 must fail and say
which it is; TLS versions, HSTS and the redirect are still judged (over an unverified
connection); every other check that talks to the agent ends `error` with one shared cause.
"""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from asap_runbook.catalog import Verification, load_catalog
from asap_runbook.checks._registry import registered
from asap_runbook.engine import run_check, run_section
from asap_runbook.params import Params, ProbeSettings, Target
from asap_runbook.reference import pki
from asap_runbook.results import Status, collapse_causes

TRUST_FREE = {"SEC-TLS-3", "SEC-TLS-4", "SEC-TLS-5"}  # judged over an unverified connection
# probe/drill items that do not talk to the agent through the probe client
NOT_THROUGH_THE_AGENT = {"SEC-TLS-2": "judges the certificate itself",
                         "SEC-AUTH-4": "reads the token's own claims when token_env is given",
                         "MON-HEALTH-4": "starts its own copy of the agent"}
NOW = dt.datetime.now(dt.UTC)
EXPIRED_AFTER = NOW - dt.timedelta(days=10)


@pytest.fixture(scope="module")
def fronts(deployment, tmp_path_factory):
    d = tmp_path_factory.mktemp("badcerts")
    ca, other = pki.make_ca("asap-runbook test CA"), pki.make_ca("Some Other CA")
    (d / "ca.pem").write_bytes(ca.cert.public_bytes(Encoding.PEM))
    loopback = ["127.0.0.1", "localhost"]
    # real-looking lifetimes (90 days), the expired one ended 10 days ago
    certs = {
        "expired": dict(hosts=loopback, issuer=ca, not_before=EXPIRED_AFTER - dt.timedelta(days=90),
                        not_after=EXPIRED_AFTER),
        "self-signed": dict(hosts=loopback, issuer=None),
        "other-ca": dict(hosts=loopback, issuer=other),
        "wrong-host": dict(hosts=["api.example.com"], issuer=ca),
    }
    urls = {}
    for case, kw in certs.items():
        cert, key = d / f"{case}.pem", d / f"{case}-key.pem"
        pki.make_leaf(cert, key, kw.pop("hosts"), **kw)
        urls[case] = deployment.start_tls_front(f"badcert-{case}", cert, key)
    yield d / "ca.pem", urls
    for case in certs:
        deployment.stop_tls_front(f"badcert-{case}")


def _params(fronts, **changes) -> Params:
    ca_file, urls = fronts
    targets = [Target(name=case, base_url=base, http_url=plain, ca_file=ca_file, token_env="ASAP_DEMO_TOKEN",
                      **changes) for case, (base, plain) in urls.items()]
    return Params(targets=targets, probe=ProbeSettings(timeout_seconds=3))


@pytest.fixture(scope="module")
def bad_cert_run(fronts):
    params = _params(fronts)
    return [r for s in ("security", "monitoring") for r in run_section(s, params).results]


def _agent_items() -> set[str]:
    """Items whose check talks to the agent (from the catalog's verification kind, not the needs)."""
    checks = registered()
    return {i.id for i in load_catalog().items if i.id in checks
            and i.verification in (Verification.PROBE, Verification.DRILL)}


EXPECT = {  # what SEC-TLS-2 must say, and which other kinds it must not name (each case is one problem)
    "expired": (["expired:", f"{EXPIRED_AFTER:%Y-%m-%d}", f"{EXPIRED_AFTER - dt.timedelta(days=90):%Y-%m-%d}"],
                ["self-signed:", "for another host", "from a CA not in"]),
    "self-signed": (["self-signed:", "CN=127.0.0.1"], ["expired:", "for another host", "from a CA not in"]),
    "other-ca": (["from a CA not in", "Some Other CA"], ["expired:", "self-signed:", "for another host"]),
    "wrong-host": (["for another host", "api.example.com", "not 127.0.0.1"],
                   ["expired:", "self-signed:", "from a CA not in"]),
}


@pytest.mark.parametrize("case", list(EXPECT))
def test_certificate_check_fails_saying_which(bad_cert_run, case):
    r = next(r for r in bad_cert_run if r.target == case and r.item_id == "SEC-TLS-2")
    assert r.status is Status.FAIL, r.summary
    says, not_says = EXPECT[case]
    assert all(s in r.summary for s in says), r.summary
    assert not any(s in r.summary for s in not_says), r.summary


@pytest.mark.parametrize("case", list(EXPECT))
def test_trust_free_checks_are_judged_over_an_unverified_connection(bad_cert_run, case):
    got = {r.item_id: r for r in bad_cert_run if r.target == case and r.item_id in TRUST_FREE}
    assert {i: r.status for i, r in got.items()} == {i: Status.PASS for i in TRUST_FREE}, \
        {i: r.summary for i, r in got.items()}
    assert all(r.details.get("tls_unverified") is True for r in got.values())
    assert "TLSv1.0" not in got["SEC-TLS-3"].summary.split("refused")[-1]  # 1.0/1.1 refused, as the template says


OPENSSL_SAYS = {"expired": "certificate has expired", "self-signed": "self-signed certificate",
                "other-ca": "certificate in certificate chain", "wrong-host": "mismatch"}


@pytest.mark.parametrize("case", list(EXPECT))
def test_other_checks_end_in_error_with_one_shared_cause(bad_cert_run, case):
    mine = [r for r in bad_cert_run if r.target == case]
    blocked = [r for r in mine if r.item_id in _agent_items() - TRUST_FREE - set(NOT_THROUGH_THE_AGENT)]
    assert blocked and all(r.status is Status.ERROR for r in blocked), [(r.item_id, r.status) for r in blocked]
    causes = {r.details.get("cause") for r in blocked}
    assert len(causes) == 1, causes
    cause = causes.pop()
    assert "does not verify" in cause and f"targets[{case}].tls_verify: false" in cause
    assert OPENSSL_SAYS[case] in cause  # the client's own reason, from the handshake that failed
    groups = [g for g in collapse_causes(mine) if g[1] == cause]
    assert len(groups) == 1 and set(groups[0][2]) >= {r.item_id for r in blocked}


def test_tls_verify_false_looks_past_the_certificate(fronts):
    """The operator's way past it: the other checks run, and SEC-TLS-2 still fails."""
    params = _params(fronts, tls_verify=False)
    assert run_check("SEC-TLS-2", params, "expired").status is Status.FAIL
    r = run_check("SEC-AUTH-1", params, "expired")
    assert r.status is Status.PASS and "cause" not in r.details, r.summary
