"""The first real check of each section, proven both ways against the reference deployment."""

import pytest

from asap_runbook.results import Status
from conftest import expected

BOTH_WAYS = ["SEC-TLS-1", "SEC-TLS-4", "MON-METRICS-2", "SCALE-SERVER-1", "RES-2"]


@pytest.mark.parametrize("item_id", BOTH_WAYS)
def test_passes_on_hardened(check, item_id):
    r = check(item_id, "hardened")
    assert r.status is expected(item_id, "hardened") is Status.PASS, r.summary


@pytest.mark.parametrize("item_id", BOTH_WAYS)
def test_fails_on_misconfigured(check, item_id):
    r = check(item_id, "misconfigured")
    assert r.status is expected(item_id, "misconfigured") is Status.FAIL, r.summary
    assert r.remediation, "a failure carries its remediation"


def test_scrape_failure_shows_why(check):
    r = check("MON-METRICS-2", "misconfigured")
    assert "EOF" in r.summary  # Prometheus's own words: the body is not OpenMetrics
