"""Security verdicts on configuration as observed (manifest auth, HSTS header, JWT claims, the
limiter's limit and storage): recorded observations, no server."""

from __future__ import annotations

import pytest

from asap_runbook.checks.security import (
    LimiterConfig, judge_hsts, judge_manifest_auth, judge_rate_limit_shared, judge_rate_limit_tuned,
    judge_token_lifetime)
from asap_runbook.results import Status


@pytest.mark.parametrize("auth,expected", [
    (None, Status.FAIL),
    ({"schemes": ["bearer"]}, Status.PASS),
    ({"schemes": [], "oauth2": {"token_url": "https://idp/token"}}, Status.PASS),
    ({"schemes": ["basic"]}, Status.FAIL),        # 2.5.10 never accepts Basic on the wire
    ({"schemes": ["apikey"]}, Status.FAIL),
])
def test_manifest_auth(auth, expected):
    assert judge_manifest_auth(auth).status is expected


@pytest.mark.parametrize("header,expected", [
    (None, Status.FAIL),
    ("max-age=31536000; includeSubDomains", Status.PASS),
    ('max-age="31536000"; includeSubDomains; preload', Status.PASS),
    ("max-age=300; includeSubDomains", Status.FAIL),
    ("max-age=31536000", Status.FAIL),
    ("includeSubDomains", Status.FAIL),
])
def test_hsts(header, expected):
    assert judge_hsts(header, 15552000, "t", []).status is expected


NOW = 1_800_000_000


@pytest.mark.parametrize("claims,expected", [
    ({"iat": NOW, "exp": NOW + 3600}, Status.PASS),
    ({"iat": NOW, "exp": NOW + 30 * 86400}, Status.FAIL),
    ({"iat": NOW, "exp": NOW + 60}, Status.WARN),
    ({"iat": NOW}, Status.FAIL),                       # no exp: never expires
    ({"exp": NOW + 3600}, Status.PASS),                # no iat: counted from now
])
def test_token_lifetime(claims, expected):
    assert judge_token_lifetime(claims, 5, 1440, "t", NOW).status is expected


def limiter(limit, storage, at_least=1, exact=1, read_from="introspected app", proxy=()):
    return LimiterConfig(limit, storage, read_from, {"at_least": at_least, "exact": exact, "how": "test"},
                         list(proxy))


@pytest.mark.parametrize("obs,expected", [
    (limiter("10/second;100/minute", "redis", 12, 12), Status.PASS),
    (limiter("10/second", "memory", 12, 12), Status.FAIL),           # 120/s in effect, over 100
    (limiter("5/second", "memory", 4, 4), Status.PASS),
    (limiter("100000/second", "memory"), Status.FAIL),
    (limiter(None, None, read_from="startup log agent.log"), Status.FAIL),    # read, and there is no limit
    (limiter(None, None, read_from="targets[x].app is not set; targets[x].log_file is not set"), Status.SKIP),
    (limiter("ten per second", "memory"), Status.ERROR),
])
def test_rate_limit_tuned(obs, expected):
    assert judge_rate_limit_tuned(obs, 100, "t").status is expected


@pytest.mark.parametrize("obs,expected", [
    (limiter("10/second", "redis", 12, 12), Status.PASS),
    (limiter("10/second", "memory", 12, 12), Status.FAIL),
    (limiter("10/second", "memory", 9, None), Status.FAIL),          # gunicorn formula: at least 9
    (limiter("10/second", "memory", 1, 1), Status.WARN),
    (limiter("10/second", "memory", 1, None), Status.SKIP),          # how many processes: not said
    (limiter("10/second", "memory", 4, 4, proxy=["orders-agent:15"]), Status.PASS),
    (limiter("10/second", "MemcachedStorage", 4, 4), Status.MANUAL),
    (limiter(None, None, read_from="targets[x].app is not set"), Status.SKIP),
])
def test_rate_limit_shared(obs, expected):
    assert judge_rate_limit_shared(obs).status is expected


from asap_runbook.checks.security import judge_auth_enforced  # noqa: E402

REFUSED = {"outcome": "refused", "brief": "HTTP 200 JSON-RPC error -32600"}
PASSED = {"outcome": "passed", "brief": "HTTP 200 JSON-RPC error -32012"}
BAD_GW = {"outcome": "unknown", "brief": "HTTP 502"}
ROUTES = {"/health": 200, "/asap/metrics": 200, "/docs": 404}


@pytest.mark.parametrize("outcomes,expected", [
    ({"none": REFUSED, "wrong": REFUSED, "basic": REFUSED}, Status.PASS),
    ({"none": PASSED, "wrong": REFUSED, "basic": REFUSED}, Status.FAIL),
    ({"none": REFUSED, "wrong": REFUSED, "basic": PASSED}, Status.FAIL),
    ({"none": BAD_GW, "wrong": REFUSED, "basic": REFUSED}, Status.ERROR),
])
def test_auth_enforced(outcomes, expected):
    r = judge_auth_enforced(outcomes, ROUTES, [])
    assert r.status is expected
    assert r.details["unauthenticated_routes"] == ROUTES
