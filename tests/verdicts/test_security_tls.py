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
