"""SEC-REPLAY-3 from recorded observations: the probe's outcome, the process count from the
deployment files, the nonce store from introspection. No server."""

from __future__ import annotations

import pytest

from asap_runbook.checks.security import NonceReplay, judge_nonce_replay
from asap_runbook.results import Status

OK, REPLAYED = "HTTP 200 JSON-RPC error -32012 no handler", "HTTP 200 JSON-RPC error -32003 Invalid nonce"
MEMORY = {"class": "InMemoryNonceStore", "module": "asap.transport.validators", "backed_by": [], "kind": "memory"}
REDIS = {"class": "RedisNonceStore", "module": "app.stores", "backed_by": ["redis"], "kind": "external"}


def obs(accepted: int, sends: int, at_least: int, exact: int | None, store: dict | None) -> NonceReplay:
    return NonceReplay(sends, [OK] * accepted + [REPLAYED] * (sends - accepted), accepted,
                       {"at_least": at_least, "exact": exact, "how": "3 replica(s) x 4 gunicorn worker(s)"},
                       store, "introspected" if store else "targets[x].app is not set", None)


@pytest.mark.parametrize("case,o,expected", [
    ("memory store, 12 processes, lucky probe", obs(1, 7, 12, 12, MEMORY), Status.FAIL),
    ("memory store, formula workers (at least 9)", obs(1, 7, 9, None, MEMORY), Status.FAIL),
    ("memory store, one process", obs(1, 3, 1, 1, MEMORY), Status.PASS),
    ("redis store, 12 processes", obs(1, 7, 12, 12, REDIS), Status.PASS),
    ("replayed on a second process", obs(2, 7, 12, 12, None), Status.FAIL),
    ("no nonce check, several processes", obs(7, 7, 4, 4, MEMORY), Status.FAIL),
    ("no nonce check, one process", obs(3, 3, 1, 1, None), Status.WARN),
    ("store unknown, several processes", obs(1, 7, 4, 4, None), Status.SKIP),
    ("store unknown, process count unknown", obs(1, 3, 1, None, None), Status.SKIP),
    ("never accepted", obs(0, 3, 1, 1, None), Status.ERROR),
])
def test_nonce_replay_verdicts(case, o, expected):
    r = judge_nonce_replay(o)
    assert r.status is expected, f"{case}: {r.summary}"


def test_unknown_store_names_the_input():
    r = judge_nonce_replay(obs(1, 7, 4, 4, None))
    assert "targets[x].app is not set" in r.summary


# ---------------------------------------------------------------- SEC-REPLAY-1 / SEC-REPLAY-2
from asap_runbook.checks.security import judge_nonce_checked, judge_timestamp_window  # noqa: E402

PASSED = {"brief": "HTTP 200 JSON-RPC error -32012", "code": -32012, "passed": True}
STALE = {"brief": "HTTP 200 JSON-RPC error -32002", "code": -32002, "passed": False}
DUP = {"brief": "HTTP 200 JSON-RPC error -32003", "code": -32003, "passed": False}
AUTH = {"brief": "HTTP 200 JSON-RPC error -32600", "code": -32600, "passed": False}


@pytest.mark.parametrize("seen,expected", [
    ({"old": STALE, "future": STALE}, Status.PASS),
    ({"old": PASSED, "future": STALE}, Status.FAIL),
    ({"old": AUTH, "future": STALE}, Status.ERROR),   # refused by auth: the timestamp check was never reached
])
def test_timestamp_window(seen, expected):
    assert judge_timestamp_window(seen, []).status is expected


@pytest.mark.parametrize("seen,claims,expected", [
    ({"fresh": PASSED, "repeated": DUP, "empty": DUP}, False, Status.PASS),
    ({"fresh": PASSED, "repeated": PASSED, "empty": PASSED}, False, Status.WARN),   # require_nonce off
    ({"fresh": PASSED, "repeated": PASSED, "empty": PASSED}, True, Status.FAIL),
    ({"fresh": PASSED, "repeated": DUP, "empty": DUP, "absent": PASSED}, True, Status.FAIL),
    ({"fresh": PASSED, "repeated": DUP, "empty": PASSED}, False, Status.FAIL),
    ({"fresh": AUTH, "repeated": AUTH, "empty": AUTH}, False, Status.ERROR),
])
def test_nonce_checked(seen, claims, expected):
    assert judge_nonce_checked(seen, claims, []).status is expected
