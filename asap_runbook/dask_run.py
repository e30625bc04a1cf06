"""`asap-runbook run --executor dask://HOST:PORT`: the checks of a fleet run on a Dask cluster.

The fleet is cut into work units of (section, group of targets). A unit runs on a worker the
same section notebook a local run executes (papermill, the `asap-runbook` kernel), with a
parameters file restricted to its targets that the unit writes itself on the worker, and sends
back only its section results (JSON). What travels through the scheduler is the parameters as
written (paths made absolute): `token_env` and `${NAME}` are names, resolved on the workers from
their own environment, so a token never leaves the machine that uses it.

Here, the client puts the units' results together into `sections/<section>.json`, exactly what a
local run's kernels write, and the runner carries on as for a local run: the section notebooks
are executed locally in replay mode (they show those results, and send no request to a target),
rendered, and results.json, junit.xml, summary, index and the signed manifest follow.

A worker that dies mid-unit costs a retry of that unit (the scheduler reschedules it; `retries`
also covers a unit that raised); a unit that keeps failing leaves its (item, target) pairs
missing, and the runner records them as `error` with the reason.

Known limit: the run's exclusive lock (engine.RunLock) is a file lock, so on a cluster it holds
within one unit only: keep active probes and drills for local runs, or one unit per section.
"""

from __future__ import annotations

import json
import math
import socket
import tempfile
import time
from pathlib import Path

import yaml

from .catalog import load_catalog
from .errors import RunbookError, UsageError
from .params import Params, portable_params
from . import section_file
from .results import Result, SectionRun, now

RETRIES = 2  # a unit is attempted at most three times
MAX_UNIT_TARGETS = 100  # bounds what one lost worker costs


def address(executor: str) -> str:
    """dask://HOST:PORT -> tcp://HOST:PORT (the scheduler's address), or one sentence."""
    scheme, sep, rest = executor.partition("://")
    host, _, port = rest.rpartition(":")
    if scheme != "dask" or not sep or not host or not port.isdigit():
        raise UsageError(f"--executor {executor!r}: expected dask://HOST:PORT (the Dask scheduler's address).")
    return f"tcp://{rest}"


def connect(executor: str):
    """A client of the scheduler; an unreachable scheduler or a missing `distributed` is one sentence."""
    addr = address(executor)
    try:
        from distributed import Client
    except ImportError:
        raise UsageError("--executor dask:// needs the Dask client: pip install 'asap-runbook[dask]'.") from None
    try:
        return Client(addr, timeout="10s", set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise UsageError(f"cannot reach the Dask scheduler at {addr}: {str(e).splitlines()[0] if str(e) else type(e).__name__}.") from None


def plan(target_names: list[str], sections: list[str], worker_threads: int,
         unit_targets: int | None = None) -> list[tuple[str, list[str]]]:
    """The work units, (section, targets): by default each section's targets are split so every
    worker thread gets about one unit per section, at most MAX_UNIT_TARGETS targets each."""
    n = len(target_names)
    size = unit_targets or min(MAX_UNIT_TARGETS, max(1, math.ceil(n / max(1, worker_threads))))
    chunks = [target_names[i:i + size] for i in range(0, n, size)]
    return [(s, chunk) for s in sections for chunk in chunks]


class UnitFailed(RunbookError):
    """A unit that produced no result; raised on the worker so that Dask retries it."""


def run_unit(section: str, params_doc: dict, targets: list[str]) -> dict:
    """Runs on a worker: the section notebook for `targets`; returns the section's results (JSON bytes)."""
    from . import runner
    from .params import load_params
    where = socket.gethostname()
    runner.ensure_kernel()
    with tempfile.TemporaryDirectory(prefix="asap-runbook-unit-") as tmp:
        keep = set(targets)
        doc = {**params_doc, "targets": [t for t in params_doc.get("targets", []) if t.get("name") in keep]}
        params_path = Path(tmp) / "params.yaml"
        params_path.write_text(yaml.safe_dump(doc, sort_keys=False))
        try:  # a file the parameters name that this worker does not have: one sentence, retried elsewhere
            load_params(params_path)
        except RunbookError as e:
            raise UnitFailed(f"on worker {where}: {e.message}") from None
        run_dir = Path(tmp) / "run"
        (run_dir / "notebooks").mkdir(parents=True)
        why = runner.execute(section, params_path, run_dir)
        out = run_dir / "sections" / f"{section}.json"
        if not out.exists():
            raise UnitFailed(f"on worker {where}: {why or 'the notebook wrote no results'}")
        return {"results": out.read_bytes(), "problem": f"{why} (on worker {where})" if why else None}


def run_units(client, params_path: Path, params: Params, sections: list[str], run_dir: Path, say=print,
              unit_targets: int | None = None, retries: int = RETRIES) -> list[str]:
    """Run every unit on the cluster, write sections/<section>.json for each section; return the problems."""
    from distributed import as_completed
    try:
        threads = sum(client.nthreads().values())
        names = [t.name for t in params.targets]
        units = plan(names, sections, threads, unit_targets)
        doc = portable_params(params_path)
        # the confirmations file the client resolved (its default is beside the parameters file, not the unit's copy)
        doc["confirmations_file"] = str(params.confirmations_file)
        say(f"  dask: {len(units)} unit(s) of up to {len(units[0][1])} target(s) on {len(client.nthreads())} "
            f"worker(s), {threads} thread(s)")
        t0 = time.monotonic()
        futures = {client.submit(run_unit, s, doc, chunk, retries=retries, pure=False,
                                 key=f"asap-runbook-{run_dir.name}-{s}-{n}"): (s, chunk)
                   for n, (s, chunk) in enumerate(units)}
        got: dict[str, list[Path]] = {s: [] for s in sections}  # each unit's results file, put together below
        problems: list[str] = []
        with client.as_current():  # as_completed looks for the current client
            for fut in as_completed(list(futures)):
                section, chunk = futures[fut]
                span = chunk[0] if len(chunk) == 1 else f"{chunk[0]} .. {chunk[-1]} ({len(chunk)} targets)"
                try:
                    out = fut.result()
                except Exception as e:  # retries exhausted, or the worker kept dying (KilledWorker)
                    message = getattr(e, "message", None) or (str(e).splitlines()[0] if str(e) else type(e).__name__)
                    problems.append(f"the {section} notebook failed for {span} after {retries + 1} attempt(s): {message}")
                    say(f"  dask: {section} for {span}: failed ({time.monotonic() - t0:.1f} s)")
                    continue
                part = run_dir / "sections" / f"{section}.unit-{len(got[section])}.json"
                part.parent.mkdir(parents=True, exist_ok=True)
                part.write_bytes(out["results"])
                got[section].append(part)
                if out["problem"]:
                    problems.append(out["problem"])
                say(f"  dask: {section} for {span}: done ({time.monotonic() - t0:.1f} s)")
    finally:
        client.close()
    for section in sections:
        write_section(section, got[section], names, run_dir)
    return problems


def write_section(section: str, parts: list[Path], target_order: list[str], run_dir: Path) -> Path:
    """The units' results files of one section as the single results file a local run's kernel writes
    (the same order: item by item, targets in the parameters' order); the units' files are removed."""
    items = {i.id: n for n, i in enumerate(load_catalog().section(section))}
    rank = {t: n for n, t in enumerate(target_order)}
    headers = [section_file.header(p) for p in parts]
    keyed = []  # (order, the result's JSON): the results are not held as objects
    for p in parts:
        for line in section_file.result_lines(p):
            r = Result.model_validate_json(line)
            keyed.append(((items.get(r.item_id, len(items)), rank.get(r.target, len(rank))), line))
    keyed.sort(key=lambda k: k[0])
    run = SectionRun(section=section, started_at=min((h.started_at for h in headers), default=now()),
                     finished_at=max((h.finished_at for h in headers if h.finished_at), default=None))
    path = run_dir / "sections" / f"{section}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    n = section_file.write(path, run, (line for _, line in keyed))
    for p in parts:
        p.unlink()
    # and the progress file a local kernel leaves behind, finished
    path.with_name(f"{section}.progress.json").write_text(json.dumps({
        "section": section, "done": n, "total": len(items) * len(target_order), "running": [],
        "finished": True}))
    return path
