"""The engine: every (item, target) of a section becomes exactly one Result.

Small on purpose: the catalog says what to check, the registry says how, the engine only
schedules, times, bounds and records. Checks of one target run concurrently (bounded).
`exclusive` checks (bursts, drills that stop a dependency or restart the agent) run afterwards,
and in an `asap-runbook run` they also wait for the other sections' kernels: every section holds
a shared lock on the run while its ordinary checks run, and takes it exclusively for its
exclusive checks (see :class:`RunLock`), so a drill's outage never turns another section's
probes into false findings.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

from . import pacing, preflight, section_file
from .catalog import CatalogItem, Verification, load_catalog
from .checks._registry import CheckContext, Finding, close_run_state, registered
from .errors import RunbookError
from .params import Params, Target
from .probe import Probe
from .results import Evidence, Result, SectionRun, Status, lean, now

log = logging.getLogger("asap_runbook")

Progress = Callable[[str, str, Status], None]


def _result(item: CatalogItem, target: Target, finding: Finding, started, duration: float) -> Result:
    status = finding.status
    return Result(
        item_id=item.id, target=target.name, section=item.section, subsection=item.subsection,
        title=item.text, status=status, summary=finding.summary, severity=str(item.severity),
        blocking=item.blocking, verification=str(item.verification), evidence=finding.evidence,
        remediation=item.remediation if status in (Status.FAIL, Status.WARN, Status.ERROR) else None,
        details=finding.details, started_at=started, duration_seconds=round(duration, 3),
    )


def _pending(item: CatalogItem) -> Finding:
    if item.verification == Verification.MANUAL:
        return Finding(Status.MANUAL, "awaiting a person: " + (item.manual_guidance or "see the checklist item").strip())
    return Finding(Status.MANUAL, "not automated yet: confirm by hand")


def _check_timeout(params: Params, target: Target, exclusive: bool) -> float:
    base = params.probe.timeout_seconds * 6
    if target.app:
        from .introspect import introspection_timeout  # the check may import the app in a child first
        base = max(base, introspection_timeout(params) + params.probe.timeout_seconds * 2)
    if exclusive or target.active_probes.drills:
        base = max(base, target.active_probes.max_seconds + params.probe.timeout_seconds * 2)
    return base


class _Recorder:
    """Writes the section's results as they arrive (state written into the artifact as it runs).

    Each result is appended once to `<section>.partial.jsonl` (at most one write per
    FLUSH_INTERVAL, plus the final one), and `<section>.json` is written once, when the section is
    done, from the partial file (section_file.py): a fleet's results are never re-serialised while it
    runs (rewriting the whole file at every flush cost O(results^2)), nor held: `run.results` keeps
    each result `lean` (results.lean) when `lean(result)` says so, as a fleet's pages need it; with no
    file to write, every result is kept whole. If the kernel dies, the runner recovers what the
    partial file holds. Beside it, `<section>.progress.json` says how many checks are done and which
    are running, for the CLI's progress bar. `settle`: what a result becomes before it is recorded
    (confirmations and waivers applied).
    """

    FLUSH_INTERVAL = 0.5

    def __init__(self, section: str, path: Path | None, total: int = 0,
                 lean: Callable[[Result], bool] = lambda r: False, settle: Callable[[Result], Result] | None = None):
        self.run = SectionRun(section=section, started_at=now())
        self.path = path
        self.total = total
        self.running: dict[tuple[str, str], None] = {}
        self._last_flush = 0.0
        self._lean = lean if path is not None else (lambda r: False)
        self._settle = settle
        self._pending: list[bytes] = []  # results' JSON lines not yet in the partial file
        self._spans: list[tuple[int, int]] = []  # per result in run.results: (offset, length) in the partial file
        self._size = 0  # bytes in the partial file
        if path is not None:  # a partial file left by a kernel that died belongs to no result recorded here
            partial_path(path).unlink(missing_ok=True)

    def start(self, item_id: str, target: str) -> None:
        self.running[(item_id, target)] = None
        self._maybe_flush()

    def add(self, result: Result, settled: bool = False) -> None:
        """Record a result (`settled`: its confirmations and waivers are applied already)."""
        self.running.pop((result.item_id, result.target), None)
        if self._settle is not None and not settled:
            result = self._settle(result)
        if self.path is not None:
            line = (result.model_dump_json() + "\n").encode()
            self._spans.append((self._size, len(line)))
            self._size += len(line)
            self._pending.append(line)
        self.run.results.append(lean(result) if self._lean(result) else result)
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= self.FLUSH_INTERVAL:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._pending:
            with open(partial_path(self.path), "ab") as f:
                f.write(b"".join(self._pending))
            self._pending.clear()
        _write_atomic(self.path.with_name(self.path.stem + ".progress.json"), json.dumps({
            "section": self.run.section, "done": len(self.run.results), "total": self.total,
            "running": [f"{i} on {t}" for i, t in self.running], "finished": self.run.finished_at is not None,
        }))

    def sort(self, key: Callable[[Result], tuple]) -> None:
        """Order the results (and where each is in the partial file) by `key`."""
        order = sorted(range(len(self.run.results)), key=lambda n: key(self.run.results[n]))
        self.run.results = [self.run.results[n] for n in order]
        if self._spans:
            self._spans = [self._spans[n] for n in order]

    def finish(self) -> None:
        """The section is done: its results file, once, copied from the partial file in the results'
        order; the partial file is no longer needed."""
        self.flush()
        if self.path is None:
            return
        partial = partial_path(self.path)
        if not self._spans:  # nothing recorded: no partial file either
            section_file.write(self.path, self.run, [])
            return
        with open(partial, "rb") as f:
            def lines():
                for offset, length in self._spans:
                    f.seek(offset)
                    yield f.read(length).decode()
            section_file.write(self.path, self.run, lines())
        partial.unlink()


def partial_path(section_json: Path) -> Path:
    """Where a running section appends its results (one JSON object per line)."""
    return section_json.with_name(section_json.stem + ".partial.jsonl")


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class RunLock:
    """Reader/writer lock shared by the sections of one run (their kernels are separate
    processes): flock on a file named after the run directory, kept in the temp dir so it never
    becomes an artifact. Ordinary checks hold it shared, exclusive checks hold it alone. Without
    a run directory (a notebook run cell by cell, a single check) there is nothing to share."""

    POLL_SECONDS = 0.2
    MAX_WAIT_SECONDS = 900.0

    def __init__(self, run_dir: Path | None):
        self.path = None
        if run_dir is not None:
            key = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
            self.path = Path(tempfile.gettempdir()) / f"asap-runbook-run-{key}.lock"

    @contextlib.asynccontextmanager
    async def hold(self, exclusive: bool):
        """Yields the seconds waited; raises RunbookError after MAX_WAIT_SECONDS."""
        if self.path is None:
            yield 0.0
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            t0 = time.monotonic()
            while True:  # polled, not blocking: cancellation-safe and bounded
                try:
                    fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() - t0 > self.MAX_WAIT_SECONDS:
                        raise RunbookError(f"other sections of this run kept running for {self.MAX_WAIT_SECONDS:g} s; "
                                           "the check did not run so as not to disturb them") from None
                    await asyncio.sleep(self.POLL_SECONDS)
            yield time.monotonic() - t0
        finally:
            os.close(fd)  # releases the lock


async def _run_target(items: list[CatalogItem], target: Target, params: Params, rec: _Recorder,
                      run_dir: Path | None, progress: Progress | None, transport, *,
                      state: dict | None = None, serial: bool = False, needs: set[str] = frozenset(),
                      prometheus: str | None = None, run_state: dict | None = None) -> None:
    """Run `items` against one target: concurrently (bounded by probe.concurrency), or one after
    another when `serial` (exclusive checks). `state` carries over between the two phases; the
    first phase looks once before the checks (the preflight, for `needs`: every need of the section).
    `run_state` is shared by every target of the section run (CheckContext.once_per_run)."""
    checks = registered({i.section for i in items})
    sem = asyncio.Semaphore(1 if serial else params.probe.concurrency)
    state = {} if state is None else state
    run_state = {} if run_state is None else run_state
    async with Probe(target, params.probe, transport=transport) as probe, \
            preflight.open_probe(target, params, transport) as unverified:
        probe.requests_sent = state.get("requests_sent", 0)  # the request budget spans both phases
        pf: preflight.Preflight | None = state.get("preflight")
        if pf is None:
            pf = state["preflight"] = await preflight.run(target, params, probe, needs, prometheus, transport)
            rec.run.preflight[target.name] = pf.record()
        for p, seen in ((probe, pf.manifest), (unverified, pf.open_manifest)):
            if seen is not None:
                p.remember_manifest(seen)

        async def one(item: CatalogItem) -> None:
            started, t0 = now(), time.monotonic()
            rec.start(item.id, target.name)
            reg = checks.get(item.id)
            blocked = reg and pf.blocking(reg.needs)
            if reg is None:
                finding = _pending(item)
            elif blocked:
                need, cause = blocked
                finding = Finding.errored(cause, cause=cause, unmet_need=need)
            else:
                # the certificate does not verify: what does not depend on trust is judged without it
                look_past = pf.unverified and "trust" not in reg.needs
                ctx = CheckContext(item=item, target=target, params=params, probe=unverified if look_past else probe,
                                   run_dir=run_dir, state=state, run_state=run_state)
                limit = _check_timeout(params, target, reg.exclusive)
                try:  # time spent waiting for the target's rate limit does not count against `limit`
                    finding, clock = await pacing.run_timed(reg.fn(ctx), limit)
                    if clock.paced_seconds >= 0.05:
                        finding.details.setdefault("paced_seconds", round(clock.paced_seconds, 2))
                except asyncio.TimeoutError:
                    finding = Finding.errored(f"the check did not finish within {limit:g} s")
                except RunbookError as e:
                    finding = Finding.errored(e.message)
                    if e.message in pf.causes.values():  # met the preflight's failure (e.g. a static check's manifest look)
                        finding.details["cause"] = e.message
                except Exception as e:  # a bug in a check: one sentence in the report, traceback in the log
                    log.error("check %s on %s crashed:\n%s", item.id, target.name, traceback.format_exc())
                    finding = Finding.errored(f"the check itself failed ({type(e).__name__}: {e}); see runbook.log")
                if look_past and reg.needs & preflight.TARGET_NEEDS:
                    finding.details["tls_unverified"] = True
                    finding.evidence.append(Evidence(label="judged over an unverified TLS connection (no token sent)",
                                                     data=pf.causes["trust"]))
            result = _result(item, target, finding, started, time.monotonic() - t0)
            rec.add(result)
            if progress:
                progress(item.id, target.name, result.status)

        async def bounded(item):
            async with sem:
                await one(item)

        try:
            await asyncio.gather(*(bounded(i) for i in items))
        finally:
            state["requests_sent"] = probe.requests_sent + unverified.requests_sent


def _split(items: list[CatalogItem]) -> tuple[list[CatalogItem], list[CatalogItem]]:
    checks = registered({i.section for i in items})
    exclusive = [i for i in items if i.id in checks and checks[i.id].exclusive]
    return [i for i in items if i not in exclusive], exclusive


async def _run_phases(items: list[CatalogItem], targets: list[Target], params: Params, rec: _Recorder,
                      run_dir: Path | None, progress: Progress | None, transport) -> None:
    """Ordinary checks of every target under the shared run lock, then the exclusive ones under
    the exclusive lock (concurrent across targets, one at a time within a target)."""
    regular, exclusive = _split(items)
    lock = RunLock(run_dir)
    states: dict[str, dict] = {t.name: {} for t in targets}
    run_state: dict = {}  # what the checks read once for every target (CheckContext.once_per_run)
    checks = registered({i.section for i in items})
    needs = set().union(*(checks[i.id].needs for i in items if i.id in checks))
    # Prometheus is the same for every target: asked once per section run
    asks = "prometheus" in needs and any(t.prometheus_job for t in targets)
    prometheus = await preflight.prometheus_error(params) if asks else None
    # targets run concurrently, at most probe.max_targets_in_parallel at once (a fleet must not
    # exhaust the runbook host's sockets); within a target, probe.concurrency checks at once
    fleet = asyncio.Semaphore(params.probe.max_targets_in_parallel)

    # a target whose active probes are all off has exclusive checks that only skip: they follow its
    # ordinary ones at once, and its state (parsed logs, preflight) is dropped when it is done, so a
    # passive fleet holds the state of at most max_targets_in_parallel targets, not of every target
    passive = {t.name for t in targets if not t.active_probes.any_enabled}
    active = [t for t in targets if t.name not in passive]

    async def phase(chosen: list[CatalogItem], serial: bool, among: list[Target]) -> None:
        async def bounded_target(t: Target) -> None:
            async with fleet:
                await _run_target(chosen, t, params, rec, run_dir, progress, transport, state=states[t.name],
                                  serial=serial, needs=needs, prometheus=prometheus, run_state=run_state)
                if t.name in passive and not serial:
                    if exclusive:
                        await _run_target(exclusive, t, params, rec, run_dir, progress, transport, state=states[t.name],
                                          serial=True, needs=needs, prometheus=prometheus, run_state=run_state)
                    states.pop(t.name)
        await asyncio.gather(*(bounded_target(t) for t in among))

    try:
        if regular:
            async with lock.hold(exclusive=False):
                await phase(regular, serial=False, among=targets)
        elif exclusive and passive:
            await phase(exclusive, serial=True, among=[t for t in targets if t.name in passive])
        if exclusive and active:
            try:
                async with lock.hold(exclusive=True) as waited:
                    if waited >= 1:
                        log.info("exclusive checks waited %.1f s for the run's other sections", waited)
                    await phase(exclusive, serial=True, among=active)
            except RunbookError as e:
                for t in active:
                    for item in exclusive:
                        rec.add(_result(item, t, Finding.errored(e.message), now(), 0.0))
    finally:
        close_run_state(run_state)


async def run_section_async(section: str, params: Params, *, run_dir: Path | None = None,
                            targets: list[str] | None = None, items: list[str] | None = None,
                            progress: Progress | None = None, transport=None) -> SectionRun:
    """Run a section's items against its targets. `items` (ids of this section) runs only those,
    as a walk through the notebook does one subsection at a time: the section's results file then
    keeps every other result it already holds and replaces those of the items run again, so it
    always holds the section as walked so far. Phases and the run lock are the same either way."""
    catalog = load_catalog()
    section_items = list(catalog.section(section))
    if not section_items:
        raise RunbookError(f"unknown section {section!r}; choose from {', '.join(catalog.sections)}")
    run_items = section_items
    if items is not None:
        ids = {i.id for i in section_items}
        unknown = [i for i in items if i not in ids]
        if unknown:
            raise RunbookError(f"{unknown[0]} is not an item of the {section} section")
        run_items = [i for i in section_items if i.id in set(items)]
    chosen = [t for t in params.targets if not targets or t.name in targets]
    out = Path(run_dir) / "sections" / f"{section}.json" if run_dir else None
    from .confirmations import records_applier  # confirmations and waivers turn manual/fail into confirmed/waived
    rec = _Recorder(section, out, total=len(run_items) * len(chosen), settle=records_applier(params),
                    lean=held_lean(chosen))
    if items is not None:
        _keep_previous(rec, out, {(i.id, t.name) for i in run_items for t in chosen})
    rec.flush()
    await _run_phases(run_items, chosen, params, rec, run_dir, progress, transport)
    order = {i.id: n for n, i in enumerate(section_items)}
    rank = {t.name: n for n, t in enumerate(params.targets)}  # not list.index: a fleet's sort would be quadratic
    rec.sort(key=lambda r: (order[r.item_id], rank.get(r.target, len(rank))))
    rec.run.finished_at = now()
    rec.finish()
    return rec.run


def held_lean(targets: list[Target]) -> Callable[[Result], bool]:
    """Which results a section's notebook holds lean (results.lean; the results file has them whole): a
    fleet's pages show no evidence beside the findings, and a passive target draws no burst or drill
    figure from its results."""
    from .report import INLINE_EVIDENCE_MAX_TARGETS
    if len(targets) <= INLINE_EVIDENCE_MAX_TARGETS:
        return lambda r: False
    passive = {t.name for t in targets if not t.active_probes.any_enabled}
    return lambda r: r.target in passive


def _keep_previous(rec: _Recorder, path: Path | None, rerun: set[tuple[str, str]]) -> None:
    """Record what the section's results file already holds, minus the (item, target) pairs about to run
    again (their confirmations were applied when they were first recorded)."""
    if path is None or not path.exists():
        return
    try:
        rec.run.started_at = section_file.header(path).started_at
        kept = [r for r in section_file.results(path) if (r.item_id, r.target) not in rerun]
    except ValueError:
        return  # a torn or foreign file: start the section afresh rather than trust it
    for r in kept:
        rec.add(r, settled=True)
    rec.total += len(kept)


def run_section(section: str, params: Params, **kw) -> SectionRun:
    """Synchronous wrapper that also works inside Jupyter, where an event loop is already running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run_section_async(section, params, **kw))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run_section_async(section, params, **kw)).result()


async def run_check_async(item_id: str, params: Params, target: str, *, run_dir: Path | None = None,
                          transport=None) -> Result:
    """Run one catalog item against one target through the same path a section run takes."""
    item = load_catalog().get(item_id)
    t = params.target(target)
    from .confirmations import records_applier
    rec = _Recorder(item.section, None, settle=records_applier(params))
    await _run_phases([item], [t], params, rec, run_dir, None, transport)
    return rec.run.results[0]


def run_check(item_id: str, params: Params, target: str, **kw) -> Result:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run_check_async(item_id, params, target, **kw))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run_check_async(item_id, params, target, **kw)).result()
