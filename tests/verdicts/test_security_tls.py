"""SEC-TLS-3 and SEC-TLS-5 from recorded observations (handshakes, redirect hops). No server."""

from __future__ import annotations

import pytest

from asap_runbook._tls import Handshake
from asap_runbook.checks.security import judge_http_redirect, judge_tls_versions
from asap_runbook.results import Status

CAN = {"TLSv1.0": True, "TLSv1.1": True, "TLSv1.2": True, "TLSv1.3": True}


def hs(*accepted: str, error: str = "[SSL: UNSUPPORTED_PROTOCOL] unsupported protocol") -> dict:
    return {v: Handshake(v, v in accepted, cipher="TLS_AES_256_GCM_SHA384" if v in accepted else None,
                         error=None if v in accepted else error) for v in CAN}


@pytest.mark.parametrize("seen,can,expected", [
    (hs("TLSv1.2", "TLSv1.3"), CAN, Status.PASS),
    (hs("TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3"), CAN, Status.FAIL),
    (hs("TLSv1.2"), CAN, Status.WARN),                                   # no 1.3
    (hs("TLSv1.3"), CAN, Status.WARN),                                   # 1.3 only
    (hs("TLSv1.2", "TLSv1.3"), CAN | {"TLSv1.0": False}, Status.ERROR),  # a refusal this client could not test
    (hs(error="[Errno 111] Connection refused"), CAN, Status.ERROR),
])
def test_tls_versions(seen, can, expected):
    assert judge_tls_versions(seen, can, "h:443").status is expected


START = "http://orders.example.com/health"


def hop(url, status, location=""):
    return {"url": url, "status": status, "location": location}


@pytest.mark.parametrize("hops,expected,needle", [
    ([hop(START, 301, "https://orders.example.com/health"), hop("https://orders.example.com/health", 200)],
     Status.PASS, "permanent"),
    ([hop(START, 302, "https://orders.example.com/health"), hop("https://orders.example.com/health", 200)],
     Status.PASS, "temporary"),
    ([hop(START, 200)], Status.FAIL, "not a redirect"),
    ([hop(START, 301, "https://evil.example.net/")], Status.FAIL, "leaves the host"),
    ([hop(START, 301, "http://orders.example.com:8080/health")], Status.FAIL, "HTTP redirects to HTTP"),
    ([hop(START, 301, "/health")], Status.FAIL, "absolute Location"),
    ([hop(START, 301, "https://orders.example.com/a"), hop("https://orders.example.com/a", 502)], Status.FAIL, "502"),
    ([hop(START, 301, "https://orders.example.com/a")] * 4, Status.FAIL, "more than 3 redirects"),
])
def test_http_redirect(hops, expected, needle):
    r = judge_http_redirect(START, hops, [])
    assert r.status is expected and needle in r.summary, r.summary


# ---------------------------------------------------------------- SEC-TLS-2
import datetime as dt  # noqa: E402

from asap_runbook._tls import CertReport  # noqa: E402
from asap_runbook.checks.security import judge_certificate  # noqa: E402

NOW = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)


def cert(days_left: float = 60, life: float = 90, **kw) -> CertReport:
    after = NOW + dt.timedelta(days=days_left)
    base = dict(verified=True, verify_error=None, subject="CN=orders.example.com", issuer="CN=R11, O=Let's Encrypt",
                self_signed=False, not_before=after - dt.timedelta(days=life), not_after=after, hostname_ok=True,
                sans=["orders.example.com"])
    return CertReport(**(base | kw))


@pytest.mark.parametrize("rep,expected,needle", [
    (cert(), Status.PASS, "60 days left of a 90-day lifetime"),
    (cert(days_left=10), Status.WARN, "expires in 10 days"),
    (cert(days_left=-3, verified=False, verify_error="certificate has expired"), Status.FAIL, "expired"),
    (cert(self_signed=True, verified=False, verify_error="self-signed certificate", issuer="CN=orders"),
     Status.FAIL, "self-signed"),
    (cert(hostname_ok=False, sans=["other.example.com"], verified=False,
          verify_error="Hostname mismatch, certificate is not valid"), Status.FAIL, "for another host"),
    (cert(verified=False, verify_error="unable to get local issuer certificate"), Status.FAIL, "from a CA not in"),
    (cert(life=825), Status.WARN, "lives 825 days"),
])
def test_certificate(rep, expected, needle):
    r = judge_certificate(rep, "the system trust store", "orders.example.com", "https://orders.example.com",
                          (30, "t"), (398, "t"), NOW)
    assert r.status is expected and needle in r.summary, r.summary
