"""The check registry: `@check("ITEM-ID")` binds an async function to a catalog item.

A check looks at one target and returns a Finding. It never returns `pass` because it could
not look: it returns `errored(...)` (could not run) or `skipped(...)` (not applicable, not
enabled, missing parameter).
"""

from __future__ import annotations

import asyncio
import importlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable

from ..preflight import NEEDS
from ..results import Evidence, Status

if TYPE_CHECKING:
    from ..catalog import CatalogItem
    from ..params import Params, Target, Threshold
    from ..probe import Probe
    from ..prom import Prom

# how long a read shared by every target of a section run (CheckContext.once_per_run) is used before it is
# read again: a fleet's section runs for minutes, and alert states and scrape health change meanwhile
SHARED_READ_FRESH_SECONDS = 60.0
# a Prometheus query about a job's series (its error rate now, its latency, which instances are down) is the same
# question for every target of that job: asked again once this old, a few scrapes, well inside the alert window
JOB_READ_FRESH_SECONDS = 10.0


@dataclass
class Finding:
    status: Status
    summary: str
    evidence: list[Evidence] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def _make(cls, status, summary, evidence=None, **details):
        return cls(status, summary, _evidence(evidence), details)

    @classmethod
    def passed(cls, summary: str, evidence=None, **details) -> "Finding":
        return cls._make(Status.PASS, summary, evidence, **details)

    @classmethod
    def failed(cls, summary: str, evidence=None, **details) -> "Finding":
        return cls._make(Status.FAIL, summary, evidence, **details)

    @classmethod
    def warned(cls, summary: str, evidence=None, **details) -> "Finding":
        return cls._make(Status.WARN, summary, evidence, **details)

    @classmethod
    def skipped(cls, reason: str, evidence=None, **details) -> "Finding":
        return cls._make(Status.SKIP, reason, evidence, **details)

    @classmethod
    def errored(cls, reason: str, evidence=None, **details) -> "Finding":
        return cls._make(Status.ERROR, reason, evidence, **details)


def _evidence(items) -> list[Evidence]:
    out = []
    for e in items or []:
        if isinstance(e, Evidence):
            out.append(e)
        elif isinstance(e, tuple):
            out.append(Evidence(label=e[0], data=e[1]))
        elif isinstance(e, dict) and "label" in e:
            out.append(Evidence(label=e["label"], data=e.get("data")))
        else:
            out.append(Evidence(label="observation", data=e))
    return out


@dataclass(frozen=True)
class SharedRead:
    """What `CheckContext.once_per_run` read for every target of a section run, and when (UTC): a target
    judged later in the run says how old the answer it was judged from is."""
    value: Any
    read_at: datetime

    def when(self) -> str:
        return self.read_at.isoformat(timespec="seconds")


def close_run_state(run_state: dict[str, Any]) -> None:
    """The section run is over: a shared read nobody waits for any more (its checks timed out) ends, and the
    Prometheus session its targets shared is closed."""
    for held in run_state.values():
        if isinstance(held, tuple) and isinstance(held[1], asyncio.Future):
            held[1].cancel()
    prom = run_state.pop("prometheus", None)
    if prom is not None:
        prom.close()


def _failed(fut: asyncio.Future) -> bool:
    return fut.done() and (fut.cancelled() or fut.exception() is not None)


@dataclass
class CheckContext:
    item: "CatalogItem"
    target: "Target"
    params: "Params"
    probe: "Probe"
    run_dir: Path | None = None
    state: dict[str, Any] = field(default_factory=dict)  # shared by the checks of one target
    run_state: dict[str, Any] = field(default_factory=dict)  # shared by every target of the section run

    def threshold(self, name: str) -> "Threshold":
        return getattr(self.params.thresholds, name)

    async def once(self, key: str, make: Callable[[], Awaitable[Any]]) -> Any:
        """`make()` awaited once per target and shared by the checks that read the same observation
        (they run concurrently, so the first caller starts it and the others await the same future)."""
        fut = self.state.get(key)
        if fut is None:
            fut = self.state[key] = asyncio.ensure_future(make())
        return await asyncio.shield(fut)

    async def once_per_run(self, key: str, make: Callable[[], Awaitable[Any]],
                           fresh_seconds: float | None = None) -> SharedRead:
        """`make()` awaited once for every target of the section run, for what does not depend on the target
        (Prometheus's rules, its scrape targets, the Alertmanager configuration): read again once it is
        `fresh_seconds` (default SHARED_READ_FRESH_SECONDS) old, or when it failed (the targets waiting on it
        share the failure, later ones ask again). Never for an observation of the target itself: each target's is its own."""
        held = self.run_state.get(key)
        fresh = SHARED_READ_FRESH_SECONDS if fresh_seconds is None else fresh_seconds
        if held is None or time.monotonic() - held[0] > fresh or _failed(held[1]):
            async def read() -> SharedRead:
                at = datetime.now(UTC)
                return SharedRead(await make(), at)
            held = self.run_state[key] = (time.monotonic(), asyncio.ensure_future(read()))
        return await asyncio.shield(held[1])

    async def job_read(self, job: str, what: str, make: Callable[[], Awaitable[Any]]) -> SharedRead:
        """A Prometheus read about `job`'s series, shared by every target of the section run that names the
        job (targets[].prometheus_job) and asked again once JOB_READ_FRESH_SECONDS old: Prometheus's answer
        depends on the job and the moment, not on which target asks."""
        return await self.once_per_run(f"job {job!r}: {what}", make, JOB_READ_FRESH_SECONDS)

    def prometheus(self) -> "Prom | None":
        """The client of params.prometheus for this section run: one session, its connections kept alive,
        for every target (None when the parameters name no Prometheus)."""
        if self.params.prometheus is None:
            return None
        if "prometheus" not in self.run_state:
            from ..prom import Prom
            self.run_state["prometheus"] = Prom(self.params.prometheus)
        return self.run_state["prometheus"]

    def prometheus_and_job(self) -> "tuple[Prom, str] | Finding":
        """The Prometheus client and the target's job, or the skip naming the input that is not set."""
        prom = self.prometheus()
        if prom is None:
            return Finding.skipped("prometheus.url is not set (no Prometheus to read the target's job from)")
        if not self.target.prometheus_job:
            return Finding.skipped(f"targets[{self.target.name}].prometheus_job is not set")
        return prom, self.target.prometheus_job

    def require_active(self, switch: str) -> Finding | None:
        """Return a skip Finding unless the operator enabled this active probe for the target."""
        if not getattr(self.target.active_probes, switch):
            return Finding.skipped(
                f"active probe not enabled: set targets[{self.target.name}].active_probes.{switch}: true"
            )
        return None


CheckFn = Callable[[CheckContext], Awaitable[Finding]]


@dataclass(frozen=True)
class RegisteredCheck:
    item_id: str
    fn: CheckFn
    exclusive: bool  # sends load (bursts): runs alone, after the target's other checks
    needs: frozenset[str] = frozenset()  # preconditions (see preflight.NEEDS); unmet -> error, not run


REGISTRY: dict[str, RegisteredCheck] = {}
AGENT = ("agent", "trust")  # talks to the agent over a trusted connection
AGENT_TOKEN = ("agent", "trust", "token")  # ... and presents the configured token


def check(item_id: str, *, exclusive: bool = False, needs: tuple[str, ...] = ()) -> Callable[[CheckFn], CheckFn]:
    """Register `fn` for `item_id`. `needs` names what it cannot look without (preflight.NEEDS):
    when the target's preflight found one missing, the engine ends the item `error` with that
    cause and does not run it."""
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise RuntimeError(f"{item_id}: unknown needs {sorted(unknown)}; choose from {', '.join(NEEDS)}")

    def register(fn: CheckFn) -> CheckFn:
        if item_id in REGISTRY:
            raise RuntimeError(f"two checks registered for {item_id}")
        REGISTRY[item_id] = RegisteredCheck(item_id, fn, exclusive, frozenset(needs))
        return fn
    return register


SECTION_MODULES = ("monitoring", "resilience", "scaling", "security")  # one module per catalog section


def registered(sections: Iterable[str] | None = None) -> dict[str, RegisteredCheck]:
    """The registry, filled by importing the section modules: all of them, or only `sections`' (a kernel
    runs one section, and importing the other three cost it 0.2-0.4 s of CPU)."""
    for name in sections if sections is not None else SECTION_MODULES:
        importlib.import_module(f"{__package__}.{name}")
    return REGISTRY
