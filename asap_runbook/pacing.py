"""Pacing: keep the runbook's own POSTs to an agent under the agent's rate limit.

asap-protocol counts every POST /asap (and /asap/stream) against a moving-window limit per
client address (`limits.MovingWindowRateLimiter`, default ``10/second;100/minute``); a 429 is
refused before it is counted; GETs are not limited. The four section kernels of a run, and a
run started right after another, are one client address to the agent, so the budget is kept
in a file per *host* (scheme://host:port) in the temp dir, shared under ``fcntl.flock`` by
every runbook process on this machine, not per target name or per run.

The file is a log of the requests sent in the longest window (the same moving window the
agent keeps): a request may go when, for every ``N per W s``, fewer than N logged requests lie
in the last W seconds. An entry is written when a request is sent and moved to the moment its
answer arrived (never earlier than the agent counted it); a request still in flight counts as
"now". A 429's Retry-After blocks the host for every process. A wait beyond the bound
(``probe.max_rate_limit_wait_seconds``) is not taken: the request fails with one sentence naming
the limit and the wait it would need.

Time spent waiting here does not count against a check's timeout (:func:`run_timed`), and each
check reports its own wait (``Result.details["paced_seconds"]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fcntl
import hashlib
import json
import os
import re
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable
from urllib.parse import urlsplit

from .errors import RateLimited

DEFAULT_RATE_LIMIT = "10/second;100/minute"  # asap-protocol's own default (asap.transport.rate_limit)
MARGIN_SECONDS = 0.05  # added to every window: clock granularity between this host and the agent
POLL_SECONDS = 0.25  # a waiter looks again at least this often (another process may have freed a slot)

_WINDOW = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_LIMIT = re.compile(r"(\d+)\s*(?:/|per)\s*(\d+)?\s*(second|minute|hour|day)s?", re.I)


def parse_limits(text: str | None) -> list[tuple[int, float]]:
    """'5/second;100/minute' or '5 per 1 second' -> [(5, 1), (100, 60)] (count, window seconds)."""
    return [(int(n), float(int(k or 1) * _WINDOW[w.lower()])) for n, k, w in _LIMIT.findall(text or "")]


def next_slot(hits: list[float], limits: list[tuple[int, float]], now: float, blocked_until: float = 0.0,
              margin: float = MARGIN_SECONDS, need: int = 1) -> float:
    """The earliest time >= now at which `need` more requests stay within every limit (a limit
    smaller than `need`, which a burst means to exceed, must then have an empty window).

    `hits` are the times the agent may have counted earlier requests (in flight ones as `now`).
    Pure, so the rule is table-tested."""
    slot = max(now, blocked_until)
    ordered = sorted(hits)
    for count, window in limits:
        if count <= 0:
            return float("inf")
        want = min(need, count)
        recent = [h for h in ordered if h > slot - window - margin]
        if len(recent) + want > count:
            # they may go once all but count - want of the recent hits have left the window
            slot = max(slot, recent[-(count - want + 1)] + window + margin)
    return slot


def describe(limits: list[tuple[int, float]]) -> str:
    names = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}
    return ";".join(f"{n}/{names.get(int(w), f'{w:g} s')}" for n, w in limits)


def host_key(url: str) -> str:
    """scheme://host:port: the agent's limiter keys on our address, so every path and every target
    name that reaches the same listener shares one budget."""
    u = urlsplit(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    return f"{u.scheme}://{(u.hostname or '').lower()}:{port}"


# ------------------------------------------------------------------- per-check accounting
@dataclass
class CheckClock:
    """What the pacer did for one check: its own wait, and how many paced requests it sent."""

    paced_seconds: float = 0.0
    requests: int = 0
    _timeout: Any = None  # the asyncio.Timeout guarding the check
    _loop: Any = None  # the event loop it runs on (a Timeout is only touched from its own loop)
    _credited_until: float = 0.0


_CURRENT: contextvars.ContextVar[CheckClock | None] = contextvars.ContextVar("asap_runbook_check_clock", default=None)
_CLOCKS: dict[int, CheckClock] = {}


async def run_timed(coro: Awaitable, limit: float) -> tuple[Any, CheckClock]:
    """Await `coro` under a timeout of `limit` seconds that stops while the target's rate limit
    keeps any request of this process waiting (the wait is the agent's, not the check's)."""
    clock = CheckClock()
    token = _CURRENT.set(clock)
    key = id(clock)
    _CLOCKS[key] = clock
    try:
        async with asyncio.timeout(limit) as cm:
            clock._timeout, clock._loop = cm, asyncio.get_running_loop()
            return await coro, clock
    finally:
        _CLOCKS.pop(key, None)
        _CURRENT.reset(token)


def _credit_waiting(until: float) -> None:
    """Push every running check's deadline back by the part of [now, until] not credited yet."""
    now = time.monotonic()
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    for clock in list(_CLOCKS.values()):
        start = max(now, clock._credited_until)
        if until <= start or clock._loop is not loop or clock._timeout is None or clock._timeout.when() is None:
            continue
        try:
            clock._timeout.reschedule(clock._timeout.when() + (until - start))
        except RuntimeError:  # already expiring: that check is being cancelled anyway
            continue
        clock._credited_until = until


def current_clock() -> CheckClock | None:
    return _CURRENT.get()


# ------------------------------------------------------------------- the shared budget
@dataclass
class Ticket:
    """One paced request: its log entry, and how long it waited for its slot."""

    host: str
    entry: str
    at: float  # when the slot was taken (time.time())
    waited: float = 0.0


@dataclass
class HostPacer:
    """The budget of one host, shared through a locked file by every runbook process here."""

    host: str
    limits: list[tuple[int, float]]
    max_wait: float
    path: Path = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha256(self.host.encode()).hexdigest()[:16]
        self.path = Path(tempfile.gettempdir()) / f"asap-runbook-pace-{digest}.json"

    @contextlib.contextmanager
    def _state(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for a read-modify-write of a few hundred bytes
            raw = os.read(fd, 1 << 20)
            try:
                state = json.loads(raw) if raw else {}
            except ValueError:
                state = {}  # a torn file from a killed process: start over (the agent's 429 still guards)
            state.setdefault("entries", {})
            state.setdefault("blocked_until", 0.0)
            yield state
            longest = max((w for _, w in self.limits), default=0.0)
            now = time.time()
            state["entries"] = {k: v for k, v in state["entries"].items()
                                if _when(v, now) > now - longest - 1 - MARGIN_SECONDS}
            data = json.dumps(state).encode()
            # overwrite, then cut to length: truncating to 0 first made ext4 flush the file to disk
            # (its replace-by-truncate safeguard), ~3 ms under the lock for every paced request
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)

    def _limit_phrase(self) -> str:
        return f"the target's rate limit ({describe(self.limits)} per client, probe.rate_limit / targets[].rate_limit)"

    async def acquire(self, deadline: float | None = None) -> Ticket:
        """Wait for a slot and log the request as in flight; raise ProbeError past the bound."""
        started = time.monotonic()
        while True:
            now = time.time()
            with self._state() as st:
                hits = [_when(v, now) for v in st["entries"].values()]
                slot = next_slot(hits, self.limits, now, float(st["blocked_until"]))
                if slot <= now:
                    entry = uuid.uuid4().hex[:12]
                    st["entries"][entry] = {"t": now, "open": True, "until": now + (deadline or 60.0)}
                    waited = time.monotonic() - started
                    return Ticket(self.host, entry, now, waited)
            waited = time.monotonic() - started
            need = slot - now
            if waited + need > self.max_wait:
                raise RateLimited(f"{self._limit_phrase()} would need a wait of {waited + need:.0f} s before this "
                                 f"request to {self.host}, over the {self.max_wait:g} s bound "
                                 "(probe.max_rate_limit_wait_seconds); the check did not judge")
            pause = min(need, POLL_SECONDS)
            _credit_waiting(time.monotonic() + pause)
            await asyncio.sleep(pause)

    async def reserve(self, need: int) -> float:
        """Wait, within the bound, until `need` requests fit (a burst that means to meet the limit
        must not meet what earlier checks left of it); returns the seconds waited. Logs nothing:
        the burst's requests are recorded as they are answered."""
        started = time.monotonic()
        while True:
            now = time.time()
            with self._state() as st:
                hits = [_when(v, now) for v in st["entries"].values()]
                slot = next_slot(hits, self.limits, now, float(st["blocked_until"]), need=need)
            waited = time.monotonic() - started
            if slot <= now:
                note_wait(waited)
                return waited
            if waited + slot - now > self.max_wait:
                raise RateLimited(f"{self._limit_phrase()} would need a wait of {waited + slot - now:.0f} s before "
                                  f"{need} requests fit, over the {self.max_wait:g} s bound "
                                  "(probe.max_rate_limit_wait_seconds); the burst did not run")
            pause = min(slot - now, POLL_SECONDS)
            _credit_waiting(time.monotonic() + pause)
            await asyncio.sleep(pause)

    def settle(self, ticket: Ticket, counted: bool) -> None:
        """The answer arrived: the agent counted the request by now (or, for a 429, not at all)."""
        with self._state() as st:
            if counted:
                st["entries"][ticket.entry] = {"t": time.time()}
            else:
                st["entries"].pop(ticket.entry, None)

    def record(self) -> None:
        """An unpaced request (a deliberate burst) that the agent counted."""
        with self._state() as st:
            st["entries"][uuid.uuid4().hex[:12]] = {"t": time.time()}

    def block(self, seconds: float) -> None:
        """The agent answered 429 with Retry-After: nobody on this machine sends before it passes."""
        with self._state() as st:
            st["blocked_until"] = max(float(st["blocked_until"]), time.time() + seconds)

    def check_wait(self, seconds: float, waited: float) -> None:
        if waited + seconds > self.max_wait:
            raise RateLimited(f"{self._limit_phrase()}: the agent answered HTTP 429 with Retry-After {seconds:g} s "
                             f"after {waited:.0f} s of waiting, over the {self.max_wait:g} s bound "
                             "(probe.max_rate_limit_wait_seconds); the check did not judge")


def _when(entry: dict, now: float) -> float:
    """When the agent may have counted this request: the answer's arrival, or now while in flight
    (bounded by the request's own deadline)."""
    if entry.get("open"):
        return min(now, float(entry.get("until", now)))
    return float(entry.get("t", 0.0))


_PACERS: dict[tuple, HostPacer] = {}


def pacer_for(url: str, rate_limit: str | None, max_wait: float) -> HostPacer | None:
    """The pacer for the host of `url`, or None when pacing is off (probe.rate_limit: null)."""
    limits = parse_limits(rate_limit)
    if not limits:
        return None
    key = (host_key(url), tuple(limits), max_wait)
    if key not in _PACERS:
        _PACERS[key] = HostPacer(key[0], limits, max_wait)
    return _PACERS[key]


def note_wait(seconds: float) -> None:
    clock = _CURRENT.get()
    if clock is not None and seconds > 0:
        clock.paced_seconds += seconds


async def sleep(seconds: float) -> None:
    """Wait out a Retry-After: credited to every running check's timeout like any paced wait."""
    _credit_waiting(time.monotonic() + seconds)
    await asyncio.sleep(seconds)


def note_request() -> None:
    clock = _CURRENT.get()
    if clock is not None:
        clock.requests += 1
