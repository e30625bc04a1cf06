"""The pacer: its rule as a table, and its budget shared by separate processes through the file."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid

import pytest

from asap_runbook.errors import RateLimited
from asap_runbook.pacing import MARGIN_SECONDS as M
from asap_runbook.pacing import HostPacer, host_key, next_slot, parse_limits

DEFAULT = [(10, 1.0), (100, 60.0)]
NOW = 1000.0


@pytest.mark.parametrize("text, limits", [
    ("10/second;100/minute", DEFAULT),
    ("5 per 1 second", [(5, 1.0)]),
    ("100 per 1 minute, 1000/hour", [(100, 60.0), (1000, 3600.0)]),
    ("2/day", [(2, 86400.0)]),
    ("fast", []),
    (None, []),
])
def test_parse_limits(text, limits):
    assert parse_limits(text) == limits


@pytest.mark.parametrize("case, hits, blocked, slot", [
    ("empty log: now", [], 0.0, NOW),
    ("9 in the last second: now", [NOW - 0.1 * i for i in range(9)], 0.0, NOW),
    ("10 in the last second: when the oldest leaves it", [NOW - 0.05 * i for i in range(10)], 0.0,
     NOW - 0.45 + 1 + M),
    ("10 just over a second ago: now", [NOW - 1.1 - 0.01 * i for i in range(10)], 0.0, NOW),
    ("100 this minute, spread: when the oldest of them leaves the minute",
     [NOW - 0.5 * i - 2 for i in range(100)], 0.0, NOW - 2 - 49.5 + 60 + M),
    ("99 this minute: now", [NOW - 0.5 * i - 2 for i in range(99)], 0.0, NOW),
    ("a 429 blocks until its Retry-After", [], NOW + 7, NOW + 7),
    ("the later of the block and the window", [NOW - 0.05 * i for i in range(10)], NOW + 0.5, NOW - 0.45 + 1 + M),
    ("hits older than every window do not count", [NOW - 61 - i for i in range(500)], 0.0, NOW),
])
def test_next_slot(case, hits, blocked, slot):
    assert next_slot(hits, DEFAULT, NOW, blocked) == pytest.approx(slot), case


@pytest.mark.parametrize("case, hits, need, slot", [
    ("a burst of 40 on an empty log: now", [], 40, NOW),
    ("a burst waits for an empty second, whatever is left of it", [NOW - 0.5], 40, NOW - 0.5 + 1 + M),
    ("a burst of 40 with 61 this minute: when the oldest has left it", [NOW - 2 - i * 0.5 for i in range(61)], 40,
     NOW - 2 - 60 * 0.5 + 60 + M),
    ("a burst of 40 with 60 this minute: now", [NOW - 2 - i * 0.5 for i in range(60)], 40, NOW),
])
def test_next_slot_for_a_burst(case, hits, need, slot):
    assert next_slot(hits, DEFAULT, NOW, need=need) == pytest.approx(slot), case


def test_next_slot_zero_limit_never():
    assert next_slot([], [(0, 1.0)], NOW) == float("inf")


@pytest.mark.parametrize("url, key", [
    ("https://Agent.example.com/asap", "https://agent.example.com:443"),
    ("http://agent.example.com", "http://agent.example.com:80"),
    ("https://127.0.0.1:8443/prefix/asap", "https://127.0.0.1:8443"),
])
def test_host_key_ignores_path_and_target_name(url, key):
    assert host_key(url) == key


_WORKER = """
import asyncio, json, sys
from asap_runbook.pacing import pacer_for
async def main():
    p = pacer_for(sys.argv[1], "4/second", 30)
    ats = []
    for _ in range(6):
        t = await p.acquire(5)
        p.settle(t, counted=True)
        ats.append(t.at)
    print(json.dumps(ats))
asyncio.run(main())
"""


def test_two_processes_share_one_budget_per_host():
    """Two processes, six requests each, one host at 4/second: the twelve slots they were given,
    merged, never put five in one second."""
    host = f"http://pacing-test-{uuid.uuid4().hex[:8]}.invalid:1"
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, host], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    ats = sorted(a for p in procs for a in json.loads(p.communicate(timeout=60)[0]))
    assert len(ats) == 12
    gaps = [b - a for a, b in zip(ats, ats[4:])]  # slot k and slot k+4 are a window apart
    assert min(gaps) >= 1.0, gaps


def test_a_wait_over_the_bound_is_refused_naming_the_limit():
    pacer = HostPacer(f"http://pacing-test-{uuid.uuid4().hex[:8]}.invalid:1", [(1, 3600.0)], max_wait=5)

    async def go():
        first = await pacer.acquire(5)
        pacer.settle(first, counted=True)
        await pacer.acquire(5)
    with pytest.raises(RateLimited) as e:
        asyncio.run(go())
    assert "1/hour" in e.value.message and "3600 s" in e.value.message and "5 s bound" in e.value.message


def test_a_refused_request_frees_its_slot():
    """A 429 was not counted by the agent (asap-protocol tests every limit before it hits one)."""
    pacer = HostPacer(f"http://pacing-test-{uuid.uuid4().hex[:8]}.invalid:1", [(1, 3600.0)], max_wait=5)

    async def go():
        first = await pacer.acquire(5)
        pacer.settle(first, counted=False)
        return await pacer.acquire(5)
    assert asyncio.run(go()).entry  # a second slot within the hour: no RateLimited
