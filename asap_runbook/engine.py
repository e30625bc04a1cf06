"""The engine: every (item, target) of a section becomes exactly one Result.

Small on purpose: the catalog says what to check, the registry says how, the engine only
schedules, times, bounds and records. Checks of one target run concurrently (bounded);
`exclusive` checks (bursts) run alone afterwards so their load cannot skew the others.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import time
import traceback
from pathlib import Path
from typing import Callable

from .catalog import CatalogItem, Verification, load_catalog
from .checks._registry import CheckContext, Finding, registered
from .errors import ProbeError, RunbookError
from .params import Params, Target
from .probe import Probe
from .results import Result, SectionRun, Status, now

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
    if exclusive or target.active_probes.drills:
        base = max(base, target.active_probes.max_seconds + params.probe.timeout_seconds * 2)
    return base


class _Recorder:
    """Writes the section's results file as results arrive (state written into the artifact as it runs).

    Writes are throttled (at most one per FLUSH_INTERVAL, plus the final one): rewriting the whole
    file after every result costs O(results^2), which a fleet of 20 targets turns into seconds.
    Beside it, `<section>.progress.json` says how many checks are done and which are running,
    for the CLI's progress bar.
    """

    FLUSH_INTERVAL = 0.5

    def __init__(self, section: str, path: Path | None, total: int = 0):
        self.run = SectionRun(section=section, started_at=now())
        self.path = path
        self.total = total
        self.running: dict[tuple[str, str], None] = {}
        self._last_flush = 0.0

    def start(self, item_id: str, target: str) -> None:
        self.running[(item_id, target)] = None
        self._maybe_flush()

    def add(self, result: Result) -> None:
        self.running.pop((result.item_id, result.target), None)
        self.run.results.append(result)
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if time.monotonic() - self._last_flush >= self.FLUSH_INTERVAL:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.path, self.run.model_dump_json(indent=1))
        _write_atomic(self.path.with_name(self.path.stem + ".progress.json"), json.dumps({
            "section": self.run.section, "done": len(self.run.results), "total": self.total,
            "running": [f"{i} on {t}" for i, t in self.running], "finished": self.run.finished_at is not None,
        }))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def _run_target(items: list[CatalogItem], target: Target, params: Params, rec: _Recorder,
                      run_dir: Path | None, progress: Progress | None, transport) -> None:
    checks = registered()
    sem = asyncio.Semaphore(params.probe.concurrency)
    async with Probe(target, params.probe, transport=transport) as probe:
        state: dict = {}
        # One look before the probes: a target that is down or is not an ASAP agent costs one
        # timeout, not one per check, and every probe check says why it could not look.
        needs_probe = any(i.id in checks and i.verification in (Verification.PROBE, Verification.DRILL) for i in items)
        if needs_probe:
            try:
                await probe.manifest()
            except ProbeError as e:
                state["preflight_error"] = e.message

        async def one(item: CatalogItem) -> None:
            started, t0 = now(), time.monotonic()
            rec.start(item.id, target.name)
            reg = checks.get(item.id)
            if reg is None:
                finding = _pending(item)
            elif state.get("preflight_error") and item.verification in (Verification.PROBE, Verification.DRILL):
                finding = Finding.errored(state["preflight_error"])
            else:
                ctx = CheckContext(item=item, target=target, params=params, probe=probe, run_dir=run_dir, state=state)
                limit = _check_timeout(params, target, reg.exclusive)
                before = getattr(reg.fn, "before_run", None)  # e.g. a disruptive drill waits for the run's other sections
                if before is not None:
                    await before(ctx)
                try:
                    finding = await asyncio.wait_for(reg.fn(ctx), timeout=limit)
                except asyncio.TimeoutError:
                    finding = Finding.errored(f"the check did not finish within {limit:g} s")
                except RunbookError as e:
                    finding = Finding.errored(e.message)
                except Exception as e:  # a bug in a check: one sentence in the report, traceback in the log
                    log.error("check %s on %s crashed:\n%s", item.id, target.name, traceback.format_exc())
                    finding = Finding.errored(f"the check itself failed ({type(e).__name__}: {e}); see runbook.log")
            result = _result(item, target, finding, started, time.monotonic() - t0)
            rec.add(result)
            if progress:
                progress(item.id, target.name, result.status)

        async def bounded(item):
            async with sem:
                await one(item)

        regular = [i for i in items if not (i.id in checks and checks[i.id].exclusive)]
        exclusive = [i for i in items if i.id in checks and checks[i.id].exclusive]
        await asyncio.gather(*(bounded(i) for i in regular))
        for item in exclusive:
            await one(item)


async def run_section_async(section: str, params: Params, *, run_dir: Path | None = None,
                            targets: list[str] | None = None, progress: Progress | None = None,
                            transport=None) -> SectionRun:
    catalog = load_catalog()
    items = list(catalog.section(section))
    if not items:
        raise RunbookError(f"unknown section {section!r}; choose from {', '.join(catalog.sections)}")
    chosen = [t for t in params.targets if not targets or t.name in targets]
    out = Path(run_dir) / "sections" / f"{section}.json" if run_dir else None
    rec = _Recorder(section, out, total=len(items) * len(chosen))
    rec.flush()
    # targets run concurrently, at most probe.max_targets_in_parallel at once (a fleet must not
    # exhaust the runbook host's sockets); within a target, probe.concurrency checks at once
    fleet = asyncio.Semaphore(params.probe.max_targets_in_parallel)

    async def bounded_target(t: Target) -> None:
        async with fleet:
            await _run_target(items, t, params, rec, run_dir, progress, transport)

    await asyncio.gather(*(bounded_target(t) for t in chosen))
    order = {i.id: n for n, i in enumerate(items)}
    tnames = [t.name for t in chosen]
    rec.run.results.sort(key=lambda r: (order[r.item_id], tnames.index(r.target)))
    rec.run.finished_at = now()
    from .confirmations import apply_records  # confirmations and waivers turn manual/fail into confirmed/waived
    rec.run.results = apply_records(rec.run.results, params)
    rec.flush()
    return rec.run


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
    rec = _Recorder(item.section, None)
    await _run_target([item], t, params, rec, run_dir, None, transport)
    from .confirmations import apply_records
    return apply_records(rec.run.results, params)[0]


def run_check(item_id: str, params: Params, target: str, **kw) -> Result:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(run_check_async(item_id, params, target, **kw))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run_check_async(item_id, params, target, **kw)).result()
