"""MON-HEALTH-4 (drain on SIGTERM) verdicts from observations: no servers, milliseconds."""

from __future__ import annotations

import pytest

from asap_runbook.checks.monitoring import judge_drain
from asap_runbook.results import Status


def _obs(**over):
    obs = {"grace_seconds": 30.0, "grace_from": "terminationGracePeriodSeconds of k8s.yaml", "held_seconds": 3.0,
           "response_status": 200, "exited_after_seconds": 3.4, "timeline": [], "agent_output": []}
    return obs | over


@pytest.mark.parametrize("obs, status, words", [
    (_obs(), Status.PASS, "within the 30 s grace period"),
    # uvicorn's careless 1 s drain: the request whose body was still arriving is cut
    (_obs(response_status=None, exited_after_seconds=1.1), Status.FAIL, "cut without an answer"),
    # answered, but a lingering background task keeps the process alive past the grace period
    (_obs(exited_after_seconds=41.0), Status.FAIL, "beyond the 30 s grace period"),
    (_obs(exited_after_seconds=None, waited_seconds=31.0), Status.FAIL, "still running"),
    # the agent's rate limiter answered 429 at once: nothing was in flight, no verdict
    (_obs(response_status=429), Status.ERROR, "rate limiter"),
])
def test_drain_verdicts(obs, status, words):
    f = judge_drain(obs)
    assert f.status is status and words in f.summary, f.summary
