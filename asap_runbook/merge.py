"""`asap-runbook merge RUN_DIR... --out DIR`: runs made in different places (one per cluster or
region, where only a runner inside the network reaches the agents) as one signed fleet report.

Each source run is verified first (a tampered one is refused). The merged run holds, under
`sources/<run_id>/`, each source's manifest.json and results.json: the merged manifest records
each source manifest's SHA-256 and signature fingerprint, so `asap-runbook verify` on the merged
run re-checks every source (its manifest's digest, its signature, and that its results.json is the
one its manifest signed) besides the merged run's own files.

Target names that occur in more than one source are qualified with their source's environment
(`eu-west/orders`), or its run id when environments coincide, so no result hides another.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from .errors import UsageError
from .results import READINESS, FailOn, RunResults, blockers, counts, exit_code

SOURCES = "sources"


def _load_source(run_dir: Path) -> tuple[RunResults, dict]:
    from . import signing
    if not (run_dir / "results.json").is_file() or not (run_dir / signing.MANIFEST).is_file():
        raise UsageError(f"{run_dir} is not a finished asap-runbook run (no results.json or manifest.json).")
    v = signing.verify(run_dir)
    if not v.intact:
        raise UsageError(f"{run_dir} does not match its manifest ({(v.lines() or ['tampered'])[0]}); "
                         "it is not merged.")
    try:
        run = RunResults.model_validate_json((run_dir / "results.json").read_text())
    except ValueError:
        raise UsageError(f"{run_dir}/results.json is not a results file of this runbook version.") from None
    return run, json.loads((run_dir / signing.MANIFEST).read_text())


def _qualifier(runs: list[RunResults]) -> dict[str, str]:
    """run_id -> prefix for its targets ('' when no target name is shared)."""
    seen: dict[str, int] = {}
    for r in runs:
        for t in set(r.targets):
            seen[t] = seen.get(t, 0) + 1
    if all(n == 1 for n in seen.values()):
        return {r.run_id: "" for r in runs}
    envs = [r.environment for r in runs]
    unique_env = len(set(envs)) == len(envs)
    return {r.run_id: f"{r.environment if unique_env else r.run_id}/" for r in runs}


def merged_results(runs: list[RunResults], run_id: str) -> RunResults:
    """One RunResults over every source's targets (pure: what the merged report says)."""
    from .catalog import load_catalog
    from .runner import run_coverage, version
    prefix = _qualifier(runs)
    results, targets, problems = [], [], []
    for r in runs:
        p = prefix[r.run_id]
        targets += [p + t for t in r.targets]
        results += [x.model_copy(update={"target": p + x.target}) for x in r.results]
        problems += [f"{r.run_id} ({r.environment}): {x}" for x in r.problems]
    catalog_order = list(load_catalog().sections)
    ran = {s for r in runs for s in r.sections}
    not_run = sorted({s for r in runs for s in r.sections_not_run}, key=catalog_order.index)
    sections = [s for s in catalog_order if s in ran]
    code = exit_code(results, problems, not_run)
    digest = hashlib.sha256("".join(sorted(r.params_digest for r in runs)).encode()).hexdigest()
    return RunResults(
        run_id=run_id, runbook_version=version(), environment=" + ".join(dict.fromkeys(r.environment for r in runs)),
        params_file="merged: " + ", ".join(r.params_file for r in runs), params_digest=digest,
        started_at=min(r.started_at for r in runs), finished_at=max(r.finished_at for r in runs),
        sections=sections, targets=targets, results=results, counts=counts(results), exit_code=code,
        readiness=READINESS[code], blockers=blockers(results, not_run), problems=problems, sections_not_run=not_run,
        coverage=run_coverage(results, targets, not_run),
    )


def merge(run_dirs: list[str | os.PathLike], out_dir: str | os.PathLike, signing_key: str | None = None,
          fail_on: FailOn = FailOn.INCOMPLETE, say=print) -> tuple[int, Path]:
    from . import signing
    from .runner import new_run_id, usable_out_dir, write_evidence
    if not run_dirs:
        raise UsageError("merge needs at least one run directory.")
    dirs = [Path(d).resolve() for d in run_dirs]
    loaded = [_load_source(d) for d in dirs]
    ids = [run.run_id for run, _ in loaded]
    if len(set(ids)) != len(ids):
        raise UsageError(f"run {next(i for i in ids if ids.count(i) > 1)} is named twice.")
    key = signing.load_signing_key(signing_key)
    out = usable_out_dir(out_dir)
    run_id = new_run_id()
    run_dir = out.resolve() / run_id
    run_dir.mkdir(parents=True)
    sources = []
    for d, (run, manifest) in zip(dirs, loaded):
        keep = run_dir / SOURCES / run.run_id
        keep.mkdir(parents=True)
        for name in (signing.MANIFEST, "results.json"):
            shutil.copyfile(d / name, keep / name)
        sig = manifest.get("signature") or {}
        sources.append({"run_id": run.run_id, "environment": run.environment, "readiness": run.readiness,
                        "targets": len(run.targets), "manifest_sha256": signing.sha256_file(d / signing.MANIFEST),
                        "signed_by": sig.get("key_fingerprint")})
        say(f"  source {run.run_id} ({run.environment}): {len(run.targets)} target(s), {run.readiness}, "
            f"{'signed ' + sig['key_fingerprint'] if sig else 'unsigned'}")
    run = merged_results([r for r, _ in loaded], run_id)
    say(f"asap-runbook merge: run {run_id}, {len(dirs)} source run(s), {len(run.targets)} target(s)")
    gated = write_evidence(run, run_dir, {}, {}, key, fail_on, None, say, manifest_extra={"sources": sources})
    say(f"evidence: {run_dir / 'index.html'}")
    return gated, run_dir


def verify_sources(manifest: dict, run_dir: Path) -> tuple[list[str], list[str]]:
    """(problems, notes) for the source runs a merged manifest records."""
    from . import signing
    problems, notes = [], []
    for src in manifest.get("sources") or []:
        rid = src.get("run_id", "?")
        keep = run_dir / SOURCES / rid
        m_path = keep / signing.MANIFEST
        if not m_path.is_file():
            problems.append(f"source {rid}: its manifest is missing")
            continue
        if signing.sha256_file(m_path) != src.get("manifest_sha256"):
            problems.append(f"source {rid}: its manifest is not the one merged")
            continue
        try:
            m = json.loads(m_path.read_text())
        except ValueError:
            problems.append(f"source {rid}: its manifest is unreadable")
            continue
        r_path = keep / "results.json"
        if not r_path.is_file() or signing.sha256_file(r_path) != (m.get("files") or {}).get("results.json"):
            problems.append(f"source {rid}: results.json is not the one its manifest lists")
        v = signing.Verification(keep)
        signing._verify_signature(m, None, v)
        problems += [f"source {rid}: signature {s}" for s in v.signature]
        notes.append(f"source {rid} ({src.get('environment')}): manifest unchanged, "
                     + ("unsigned" if v.unsigned else f"signed by {src.get('signed_by')}, signature valid"))
    return problems, notes
