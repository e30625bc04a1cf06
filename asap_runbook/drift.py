"""Drift between two runs: what changed since the previous run of the same parameters.

"The same parameters" means: the same parameters file contents (`params_digest`) or, failing
that, the same parameters file path; so editing a threshold in `params/prod.yaml` still compares
against yesterday's run of that file (the drift says the parameters changed), and the same
file copied elsewhere still finds its history. Only runs in the same outputs folder count.

The previous run is found through the manifest chain (`previous.manifest_sha256`, written by
signing.py) when manifests carry it, else by scanning `outputs/*/manifest.json` for the newest
older run with the same parameters. Either way only small manifests are read to find it; the one
previous `results.json` is then read (and checked against its manifest's SHA-256).

Categories, per (item, target):
- fixed: was fail/warn, now pass/confirmed
- regressed: was pass/confirmed/waived, now fail/warn
- new failure: now fail/warn, and before it was neither failing nor passing (absent, skip,
  manual, error): a new target, a new check, or a check that could not look before
- unchanged: same status
- other: every other change (pass -> error, fail -> waived, manual -> confirmed, gone, ...)
- expired: a confirmation or waiver the previous run had, whose expiry has passed since
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .errors import UsageError
from .results import Result, RunResults, Status

GOOD = {Status.PASS, Status.CONFIRMED}
BAD = {Status.FAIL, Status.WARN}
CATEGORIES = ("new_failures", "fixed", "regressed", "expired", "other", "unchanged")
TITLES = {
    "new_failures": "New failures", "fixed": "Fixed", "regressed": "Regressed",
    "expired": "Confirmations or waivers expired since", "other": "Other changes", "unchanged": "Unchanged",
}


class Change(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: str
    target: str
    title: str = ""
    before: str | None = Field(None, description="status in the base run; None: not in it")
    after: str | None = Field(None, description="status in this run; None: not in it")
    summary: str = ""
    note: str = ""


class Drift(BaseModel):
    """What changed from `base_run_id` to `run_id`."""

    model_config = ConfigDict(extra="forbid")
    run_id: str
    base_run_id: str | None
    base_started_at: datetime | None = None
    found_by: str = Field("", description="how the base run was found: manifest chain, params digest, params file")
    params_changed: bool = False
    new_failures: list[Change] = Field(default_factory=list)
    fixed: list[Change] = Field(default_factory=list)
    regressed: list[Change] = Field(default_factory=list)
    expired: list[Change] = Field(default_factory=list)
    other: list[Change] = Field(default_factory=list)
    unchanged: list[Change] = Field(default_factory=list)
    problem: str | None = Field(None, description="why no comparison could be made, in one sentence")

    def counts(self) -> dict[str, int]:
        return {c: len(getattr(self, c)) for c in CATEGORIES}


# ------------------------------------------------------------------------------ comparison
def _status(r: Result | None) -> Status | None:
    return r.status if r is not None else None


def _expired(before: Result, after: Result | None, at: datetime) -> str | None:
    """The note for a confirmation or waiver of `before` whose expiry passed by `at`, else None."""
    c, w = before.confirmation, before.waiver
    if c is not None and c.expires_at is not None and c.expires_at <= at:
        if after is None or after.confirmation is None or after.confirmation.at != c.at:
            return f"confirmation by {c.by} expired {c.expires_at:%Y-%m-%d}"
    if w is not None and w.expires <= at:
        if after is None or after.waiver is None or after.waiver.expires != w.expires:
            return f"waiver by {w.approver} ({w.ticket}) expired {w.expires:%Y-%m-%d}"
    return None


def compare(base: RunResults | None, current: RunResults, found_by: str = "") -> Drift:
    drift = Drift(run_id=current.run_id, base_run_id=base.run_id if base else None,
                  base_started_at=base.started_at if base else None, found_by=found_by)
    if base is None:
        return drift
    drift.params_changed = base.params_digest != current.params_digest
    before = {(r.item_id, r.target): r for r in base.results}
    after = {(r.item_id, r.target): r for r in current.results}
    keys = list(after) + [k for k in before if k not in after]
    for key in keys:
        b, a = before.get(key), after.get(key)
        sb, sa = _status(b), _status(a)
        ref = a or b
        change = Change(item_id=key[0], target=key[1], title=ref.title, before=sb.value if sb else None,
                        after=sa.value if sa else None, summary=(a.summary if a else "no longer checked"))
        note = _expired(b, a, current.started_at) if b is not None else None
        if note:
            drift.expired.append(change.model_copy(update={"note": note}))
        if sb == sa:
            drift.unchanged.append(change)
        elif sb in BAD and sa in GOOD:
            drift.fixed.append(change)
        elif sb in GOOD | {Status.WAIVED} and sa in BAD:
            drift.regressed.append(change)
        elif sa in BAD:
            drift.new_failures.append(change)
        else:
            drift.other.append(change)
    return drift


# ------------------------------------------------------------------------------ finding the base run
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_manifest(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("run_id") else None


def manifests(out_dir: Path) -> list[tuple[Path, dict]]:
    """(run directory, manifest) of every run in the outputs folder, newest first."""
    found = []
    for m in Path(out_dir).glob("*/manifest.json"):
        doc = _read_manifest(m)
        if doc is not None:
            found.append((m.parent, doc))
    found.sort(key=lambda pd: (str(pd[1].get("started_at") or pd[1].get("created_at") or ""), pd[1]["run_id"]),
               reverse=True)
    return found


def _same_params(doc: dict, digest: str, params_file: str) -> str | None:
    if doc.get("params_digest") == digest:
        return "same params digest"
    if params_file and doc.get("params_file") == params_file:
        return "same params file"
    return None


def _link(doc: dict) -> str | None:
    """The previous run's manifest SHA-256 this manifest records (signing.py writes
    `previous: {run_id, manifest_sha256}`; `previous_manifest_sha256` is accepted too)."""
    prev = doc.get("previous")
    if isinstance(prev, dict) and prev.get("manifest_sha256"):
        return prev["manifest_sha256"]
    return doc.get("previous_manifest_sha256")


def find_previous(run_dir: Path, digest: str, params_file: str, started_at: datetime | None = None,
                  previous_manifest_sha256: str | None = None) -> tuple[Path | None, str]:
    """The run directory of the previous run of the same parameters, and how it was found."""
    run_dir = Path(run_dir)
    out_dir = run_dir.parent
    others = [(d, doc) for d, doc in manifests(out_dir) if d.resolve() != run_dir.resolve()]
    started = started_at.isoformat() if started_at else None

    def older(doc: dict) -> bool:
        when = str(doc.get("started_at") or doc.get("created_at") or "")
        return not (started and when and when >= started)

    others = [(d, doc) for d, doc in others if older(doc)]
    # the chain: from this run's link (or, before it is written, the newest manifest that is
    # part of a chain), follow previous_manifest_sha256 back to a run of the same parameters
    by_sha = {_sha256(d / "manifest.json"): (d, doc) for d, doc in others}
    node = by_sha.get(previous_manifest_sha256) if previous_manifest_sha256 else None
    if node is None and others and _link(others[0][1]) is not None:
        node = others[0]
    seen: set[Path] = set()
    while node is not None and node[0] not in seen:
        seen.add(node[0])
        why = _same_params(node[1], digest, params_file)
        if why:
            return node[0], f"manifest chain ({why})"
        node = by_sha.get(_link(node[1]) or "")
    # no chain (older manifests, or a broken one): newest older run of the same parameters
    for d, doc in others:
        why = _same_params(doc, digest, params_file)
        if why:
            return d, f"newest older run with the {why.removeprefix('same ')}"
    return None, ""


def load_run(run_dir: Path) -> RunResults:
    """A run's results.json, checked against its manifest when there is one; UsageError if unreadable."""
    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    if not path.exists():
        raise UsageError(f"{run_dir} is not a run directory (no results.json).")
    doc = _read_manifest(run_dir / "manifest.json")
    if doc and isinstance(doc.get("files"), dict) and "results.json" in doc["files"]:
        if doc["files"]["results.json"] != _sha256(path):
            raise UsageError(f"{path} does not match the SHA-256 its manifest records; it was changed after the run.")
    try:
        return RunResults.model_validate_json(path.read_text())
    except ValueError as e:
        raise UsageError(f"{path} is not a results file this version can read ({str(e).splitlines()[0]}).") from None


def drift_since_previous(run: RunResults, run_dir: Path, previous_manifest_sha256: str | None = None) -> Drift:
    """Drift of a run just made against the previous run of the same parameters in its outputs folder."""
    prev_dir, how = find_previous(run_dir, run.params_digest, run.params_file, run.started_at,
                                  previous_manifest_sha256)
    if prev_dir is None:
        return compare(None, run)
    try:
        base = load_run(prev_dir)
    except UsageError as e:
        d = compare(None, run)
        d.problem = f"previous run {prev_dir.name} cannot be compared: {e.message}"
        return d
    return compare(base, run, how)


DRIFT_FILE = "drift.json"


def write_drift(drift: Drift, run_dir: Path) -> None:
    """drift.json beside results.json: the drift as the summary page showed it (hashed in the manifest)."""
    (Path(run_dir) / DRIFT_FILE).write_text(as_json(drift))


def read_drift(run_dir: Path) -> Drift | None:
    try:
        doc = json.loads((Path(run_dir) / DRIFT_FILE).read_text())
    except (OSError, ValueError):
        return None
    doc.pop("counts", None)
    try:
        return Drift.model_validate(doc)
    except ValueError:
        return None


def resolve_run(ref: str, out_dir: Path) -> Path:
    """A run given as a directory, a results.json, or a run id inside the outputs folder."""
    p = Path(ref)
    if p.name == "results.json":
        p = p.parent
    if p.is_dir():
        return p
    cand = Path(out_dir) / ref
    if cand.is_dir():
        return cand
    raise UsageError(f"no run {ref!r}: give a run directory or a run id under {out_dir}.")


# ------------------------------------------------------------------------------ rendering
def _line(c: Change) -> str:
    arrow = f"{c.before or '(none)'} -> {c.after or '(none)'}"
    text = f"  {c.item_id:<18} {c.target:<20} {arrow:<22} {c.summary}"
    return text + (f" [{c.note}]" if c.note else "")


def text(drift: Drift, show_unchanged: bool = False) -> str:
    if drift.base_run_id is None:
        return f"run {drift.run_id}: no previous run to compare with" + (f" ({drift.problem})" if drift.problem else ".")
    head = [f"drift {drift.base_run_id} -> {drift.run_id}" + (f" (found by {drift.found_by})" if drift.found_by else "")]
    if drift.params_changed:
        head.append("  note: the parameters file changed between the two runs")
    c = drift.counts()
    head.append("  " + ", ".join(f"{c[k]} {TITLES[k].lower()}" for k in CATEGORIES))
    lines = head
    for cat in CATEGORIES:
        if cat == "unchanged" and not show_unchanged:
            continue
        rows = getattr(drift, cat)
        if rows:
            lines.append(f"{TITLES[cat]} ({len(rows)}):")
            lines += [_line(r) for r in rows]
    return "\n".join(lines)


def worse(drift: Drift) -> str | None:
    """One sentence when the newer run is worse (new failures or regressions, fail or warn), else None."""
    c = drift.counts()
    if not (c["new_failures"] or c["regressed"]):
        return None
    return (f"{c['new_failures'] + c['regressed']} finding(s) worse in {drift.run_id} than in {drift.base_run_id}: "
            f"{c['new_failures']} new failure(s), {c['regressed']} regressed")


def as_json(drift: Drift) -> str:
    doc: dict[str, Any] = drift.model_dump(mode="json")
    doc["counts"] = drift.counts()
    return json.dumps(doc, indent=1)

