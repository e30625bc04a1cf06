"""SEC-RATE-1 (the burst) and SEC-HANDLER-4 (canaries in the log) from recorded observations, the odd ones
included: a burst too slow to judge, a 429 without Retry-After, X-Forwarded-For rotation that bypasses the
limit, a canary in one log line but not the other, a log that cannot be read. No server."""

from __future__ import annotations

import pytest

from asap_runbook.checks.security import CanarySearch, RateBurst, canary_lines, judge_canaries, judge_rate_burst
from asap_runbook.results import Status

CEILING = 50.0
PACED = "8/second"  # probe.rate_limit of params/demo.yaml


def burst(statuses_a: list, seconds_a: float = 0.5, retry_after: str | None = "1", statuses_b: list | None = None,
          seconds_b: float | None = 0.5, budget_b: int | None = 11, xff_log_lines: list[str] | None = None,
          configured: str | None = "10/second;100/minute") -> RateBurst:
    """A burst as observe_rate_burst records it (burst B only after a 429)."""
    got_429 = 429 in statuses_a
    return RateBurst(configured, 40, 10.0, 0.0, statuses_a, seconds_a,
                     retry_after=retry_after if got_429 else None, waited_b=1.2 if got_429 else None,
                     budget_b=budget_b if got_429 else None, statuses_b=statuses_b if got_429 else None,
                     seconds_b=seconds_b if got_429 and statuses_b is not None else None,
                     xff_spoof=None if got_429 or xff_log_lines is None else
                     {"spoof": "203.0.113.7", "response": "HTTP 200 JSON-RPC error -32012",
                      "log lines naming the spoofed address": xff_log_lines},
                     first_exchange={"response": {"status": 429}} if got_429 else None)


HARDENED = burst([200] * 10 + [429], statuses_b=[200] * 3 + [429])  # what the hardened agent gives


@pytest.mark.parametrize("case,obs,expected,needle", [
    ("429 with Retry-After, rotation refused", HARDENED, Status.PASS, "Retry-After: 1 after 10 back-to-back"),
    ("429 without Retry-After", burst([200] * 10 + [429], retry_after=None, statuses_b=[200, 429]), Status.WARN,
     "no numeric Retry-After"),
    ("Retry-After as an HTTP date", burst([200] * 10 + [429], retry_after="Wed, 21 Oct 2026 07:28:00 GMT",
                                          statuses_b=[429]), Status.WARN, "no numeric Retry-After"),
    ("rotating X-Forwarded-For bypasses", burst([200] * 10 + [429], statuses_b=[200] * 15), Status.FAIL,
     "bypasses the limit: 15 requests"),
    # seen on a loaded runner: 15 rotated requests spread over 1.9 s never beat the 8/s limit they had to beat
    ("burst B too slow to judge rotation", burst([200] * 10 + [429], statuses_b=[200] * 15, seconds_b=1.935),
     Status.ERROR, "burst B (rotating X-Forwarded-For) reached only ~7.8/s (15 requests in 1.9 s), not above 10/s "
                   "(the agent's logged limit)"),
    # faster than probe.rate_limit (8/s) but not than the agent's 10/s: still no observation of a bypass
    ("burst B under the agent's limit", burst([200] * 10 + [429], statuses_b=[200] * 15, seconds_b=1.6),
     Status.ERROR, "reached only ~9.4/s"),
    ("no budget left for burst B", burst([200] * 39 + [429], budget_b=0, statuses_b=None), Status.WARN,
     "not enough request budget left (0)"),
    ("no 429 at 80/s", burst([200] * 40, seconds_a=0.5), Status.FAIL, "40 requests in 0.5 s (~80/s) and no HTTP 429"),
    ("no 429, spoofed address logged", burst([200] * 40, xff_log_lines=['{"client": "203.0.113.7"}']), Status.FAIL,
     "logged the spoofed X-Forwarded-For 203.0.113.7"),
    ("no 429 but the burst too slow to judge", burst([200] * 40, seconds_a=8.0), Status.ERROR,
     "reached only ~5.0/s (40 requests in 8.0 s), not above 8/s"),
    ("no 429 and no HTTP answer at all", burst(["ConnectError"] * 40), Status.ERROR,
     "none of the 40 requests of the burst got an HTTP answer (ConnectErrorx40"),
])
def test_rate_burst_verdicts(case, obs, expected, needle):
    r = judge_rate_burst(obs, CEILING, PACED)
    assert r.status is expected, f"{case}: {r.summary}"
    assert needle in r.summary, f"{case}: {r.summary}"


def test_too_slow_is_judged_against_the_lowest_limit():
    """4/s is slow for the ceiling (50/s) and probe.rate_limit (8/s) but fast for an agent limit of 2/s: a fail."""
    slow = burst([200] * 20, seconds_a=5.0, configured="2/second")
    assert judge_rate_burst(slow, CEILING, PACED).status is Status.FAIL
    assert judge_rate_burst(burst([200] * 20, seconds_a=5.0, configured=None), CEILING, PACED).status is Status.ERROR


def test_burst_evidence_and_timeline():
    obs = HARDENED
    obs.timeline = [{"burst": "A", "t": 0.01, "status": 200, "retry_after": None}]
    r = judge_rate_burst(obs, CEILING, PACED)
    labels = [e.label for e in r.evidence]
    assert labels[0].startswith("waited before burst A") and labels[1].startswith("burst A")
    assert "first 429" in labels and labels[-1].startswith("burst B")
    assert r.evidence[1].data == "200x10, 429x1"
    assert r.details["timeline"] is obs.timeline and r.details["configured_limit_from_log"] == "10/second;100/minute"


def test_the_spoof_is_evidence_even_when_the_burst_was_too_slow():
    r = judge_rate_burst(burst([200] * 40, seconds_a=8.0, xff_log_lines=[]), CEILING, PACED)
    assert r.status is Status.ERROR
    assert any("X-Forwarded-For: 203.0.113.7" in e.label for e in r.evidence)


# ---------------------------------------------------------------- SEC-HANDLER-4
CLOSED = {"/docs": 404, "/redoc": 404, "/openapi.json": 404}
OPEN = {"/docs": 200, "/redoc": 200, "/openapi.json": 200}
SENT = [{"how": "canary in payload fields api_key/password of a read-only envelope", "answer": "HTTP 200 -32002",
         "canary": "rbcanary1f2e"},
        {"how": "canary as a bearer token", "answer": "HTTP 200 -32600", "canary": "rbcanaryauth9a8b"}]


def search(surfaces=CLOSED, found=None, log_named=True, log_error=None, handler_skip=None) -> CanarySearch:
    return CanarySearch("t", surfaces, log_named, SENT if log_named else [], handler_skip,
                        "agent.log" if log_named and not log_error else None, log_error, found or {})


@pytest.mark.parametrize("case,obs,expected,needle", [
    ("closed, nothing in the log", search(), Status.PASS, "do not appear in agent.log"),
    ("payload canary in the log", search(found={"payload canary": [12]}), Status.FAIL,
     "secrets reached the log (payload canary in agent.log)"),
    ("debug open and the canary logged", search(OPEN, {"payload canary": [3]}), Status.FAIL, "/docs"),
    ("debug open, no log named", search(OPEN, log_named=False), Status.FAIL, "debug surfaces open"),
    ("closed, no log named", search(log_named=False), Status.SKIP, "targets[t].log_file / log_command is not set"),
    ("log unreadable", search(log_error="log file /x/agent.log does not exist"), Status.ERROR,
     "log file /x/agent.log does not exist"),
    ("handler probes off", search(handler_skip="active probe not enabled: set targets[t].active_probes."
                                               "handler_probes: true"), Status.SKIP, "what a handler logs is unseen"),
])
def test_canary_verdicts(case, obs, expected, needle):
    r = judge_canaries(obs)
    assert r.status is expected, f"{case}: {r.summary}"
    assert needle in r.summary, f"{case}: {r.summary}"


LOG = "\n".join([
    '{"event": "asap.request.received", "payload": {"api_key": "***", "password": "***"}}',
    '{"event": "asap.request.auth_failed", "token_prefix": "rbcanary"}',   # the first 8 characters only
    '{"event": "handler", "input": "{\'api_key\': \'rbcanary1f2e\'}"}',
])


def test_canary_found_in_one_line_but_not_the_other():
    found = canary_lines(LOG, [("payload canary", "rbcanary1f2e"), ("bearer canary", "rbcanaryauth9a8b"[8:])], None)
    assert found == {"payload canary": [3]}  # the token_prefix line is not the bearer canary


def test_the_configured_token_is_reported_without_where():
    found = canary_lines(LOG + "\nAuthorization: Bearer s3cr3t-token-value", [], "s3cr3t-token-value")
    assert found == {"the configured bearer token": ["(present; line numbers withheld)"]}
    assert canary_lines(LOG, [], "event") == {}  # in the log, but under 8 characters: too common to look for


def test_burst_b_without_a_logged_limit_must_beat_burst_a_s_pace():
    """No limit in the log: burst A met its 429 after 11 requests in 0.5 s (22/s); a burst B at 10/s says
    nothing, one at 30/s without a 429 is a bypass."""
    timeline = [{"burst": "A", "t": 0.5, "status": 429}]
    slow = burst([200] * 10 + [429], statuses_b=[200] * 15, seconds_b=1.5, configured=None)
    slow.timeline = timeline
    r = judge_rate_burst(slow, CEILING, PACED)
    assert r.status is Status.ERROR and "not above 22/s (the pace at which burst A met its first 429)" in r.summary
    fast = burst([200] * 10 + [429], statuses_b=[200] * 15, seconds_b=0.5, configured=None)
    fast.timeline = timeline
    assert judge_rate_burst(fast, CEILING, PACED).status is Status.FAIL
