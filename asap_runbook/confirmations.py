"""Confirmations (a person confirmed a manual item) and waivers (a reviewed exception).

Both are plain YAML files named in the parameters; the widgets and `asap-runbook confirm`
write the confirmations file, people review the waivers file. Every run (headless or in a
notebook) reads them here, so nothing ever waits on a widget (papermill #400/#723).

confirmations file (one per environment, default `confirmations/<environment>.yaml` beside
the params file); records are appended, the latest per (item, target) counts, the rest is
the audit trail:

    schema_version: 1
    confirmations:
    - item: SEC-AUTH-3
      target: hardened          # omitted: every target
      by: Alice Example
      at: '2026-11-25T19:00:00+00:00'
      note: tokens live in Vault, rotated by the platform team
      evidence_url: https://wiki.example/ops/123
      ttl_days: 30              # optional: overrides the catalog's confirmation_ttl_days

waivers file (reviewed, e.g. through a pull request):

    schema_version: 1
    waivers:
    - item: SEC-TLS-2
      target: misconfigured     # required; '*' for every target
      approver: Bob Example
      reason: legacy clients until the migration ends
      ticket: OPS-1234
      expires: 2026-12-31       # a date means the end of that day, UTC
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys
import tempfile
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Callable, Iterator

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .catalog import load_catalog
from .errors import ParamsError
from .params import Params
from .results import Confirmation, Result, Status, Waiver, now

log = logging.getLogger("asap_runbook")

FILE_SCHEMA_VERSION = 1
WAIVABLE = (Status.FAIL, Status.WARN, Status.ERROR)
# what a person can close: an item nobody can automate, or one this run did not look at (a missing
# input, an active probe left off). An observation (pass/fail/warn) is never overridden, and an error
# is this run's fault to fix (or to waive), not something to confirm away.
CONFIRMABLE = (Status.MANUAL, Status.SKIP)


def _utc(value: datetime | date) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.combine(value, time(23, 59, 59), tzinfo=UTC)  # a bare date: the whole day counts


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item: str

    @field_validator("item")
    @classmethod
    def _known_item(cls, v: str) -> str:
        if v not in load_catalog().ids:
            raise ValueError(f"unknown checklist item {v!r}")
        return v


class ConfirmationRecord(_Record):
    target: str | None = Field(None, description="None: every target")
    by: str = Field(min_length=1)
    at: datetime
    note: str = ""
    evidence_url: str | None = None
    ttl_days: int | None = Field(None, ge=1, le=3650)

    @field_validator("at")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        return _utc(v)

    def ttl(self) -> int:
        return self.ttl_days or load_catalog().get(self.item).confirmation_ttl_days

    def expires_at(self) -> datetime:
        return self.at + timedelta(days=self.ttl())

    def covers(self, item: str, target: str) -> bool:
        return self.item == item and self.target in (None, "*", target)

    def shortfall(self) -> str | None:
        """Why this record cannot close its item, or None: a person must say what they checked,
        and for a blocking item also point at the evidence."""
        if not self.note.strip():
            return "it has no note (what was checked)"
        if load_catalog().get(self.item).blocking and not (self.evidence_url or "").strip():
            return "the item is blocking and the record links no evidence"
        return None


class WaiverRecord(_Record):
    target: str = Field(min_length=1, description="'*' for every target")
    approver: str = Field(min_length=1)
    reason: str = Field(min_length=1)
    ticket: str = Field(min_length=1)
    expires: datetime | date

    @field_validator("expires")
    @classmethod
    def _aware(cls, v: datetime | date) -> datetime:
        return _utc(v)

    def covers(self, item: str, target: str) -> bool:
        return self.item == item and self.target in ("*", target)


class ConfirmationsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: int = FILE_SCHEMA_VERSION
    confirmations: list[ConfirmationRecord] = Field(default_factory=list)


class WaiversFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: int = FILE_SCHEMA_VERSION
    waivers: list[WaiverRecord] = Field(default_factory=list)


def _read(path: Path | None, model: type[BaseModel], what: str):
    if path is None or not Path(path).exists():
        return model()
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError:
        raise ParamsError(f"The {what} file {path} is not valid YAML.") from None
    except OSError as e:
        raise ParamsError(f"The {what} file {path} cannot be read: {e.strerror}.") from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ParamsError(f"The {what} file {path}: {loc}: {err['msg'].removeprefix('Value error, ')}.") from None


def load_confirmations(path: Path | None) -> ConfirmationsFile:
    return _read(path, ConfirmationsFile, "confirmations")


def load_waivers(path: Path | None) -> WaiversFile:
    return _read(path, WaiversFile, "waivers")


def validate_files(params: Params) -> None:
    """Raise ParamsError (one sentence) before anything runs if either file is malformed."""
    load_confirmations(params.confirmations_file)
    # a waivers file is reviewed and named on purpose: a wrong path must not silently waive nothing
    if params.waivers_file is not None and not Path(params.waivers_file).is_file():
        raise ParamsError(f"The waivers file {params.waivers_file} does not exist (waivers_file in the parameters).")
    load_waivers(params.waivers_file)


def latest(records: list[ConfirmationRecord], item: str, target: str) -> ConfirmationRecord | None:
    """The most recent record covering (item, target): a target-specific one and an all-targets
    one compete on time, so a later all-targets confirmation renews every target."""
    hits = [r for r in records if r.covers(item, target)]
    return max(hits, key=lambda r: r.at) if hits else None


def _warn(message: str) -> None:
    log.warning(message)
    print(f"asap-runbook: warning: {message}", file=sys.stderr)


def apply_records(results: list[Result], params: Params, *, at: datetime | None = None) -> list[Result]:
    """Turn `manual` into `confirmed` where an unexpired confirmation covers it, and a failing
    finding into `waived` where an unexpired waiver covers it. Expired records change nothing
    but say so in the result (summary and details)."""
    settle = records_applier(params, at=at)
    return [settle(r) for r in results]


def records_applier(params: Params, *, at: datetime | None = None) -> Callable[[Result], Result]:
    """apply_records for one result at a time (the files read once): for results that stream."""
    at = at or now()
    confirmations = load_confirmations(params.confirmations_file).confirmations
    waivers = load_waivers(params.waivers_file).waivers

    def settle(r: Result) -> Result:
        if r.status in CONFIRMABLE:
            return _confirm(r, latest(confirmations, r.item_id, r.target), at)
        if r.status in WAIVABLE and "expired_waiver" not in r.details:  # idempotent: applied once per result
            return _waive(r, [w for w in waivers if w.covers(r.item_id, r.target)], at)
        return r
    return settle


def _confirm(r: Result, rec: ConfirmationRecord | None, at: datetime) -> Result:
    if rec is None:
        return r
    expires = rec.expires_at()
    seen = {"by": rec.by, "at": rec.at.isoformat(), "expires_at": expires.isoformat(), "ttl_days": rec.ttl(),
            "note": rec.note}
    short = rec.shortfall()
    if short:
        return r.model_copy(update={"summary": f"confirmation by {rec.by} on {rec.at:%Y-%m-%d} does not count: {short}. "
                                               f"{r.summary}", "details": {**r.details, "rejected_confirmation": seen}})
    if expires <= at:
        summary = (f"confirmation by {rec.by} on {rec.at:%Y-%m-%d} expired on {expires:%Y-%m-%d} "
                   f"(valid {rec.ttl()} days): awaiting a person again. {r.summary}")
        return r.model_copy(update={"summary": summary, "details": {**r.details, "expired_confirmation": seen}})
    conf = Confirmation(by=rec.by, at=rec.at, note=rec.note, evidence_url=rec.evidence_url, expires_at=expires)
    summary = f"confirmed by {rec.by} on {rec.at:%Y-%m-%d}" + (f": {rec.note}" if rec.note else "")
    return r.model_copy(update={"status": Status.CONFIRMED, "summary": summary, "confirmation": conf,
                                "details": {**r.details, "awaited": r.summary}})


def _waive(r: Result, waivers: list[WaiverRecord], at: datetime) -> Result:
    live = [w for w in waivers if w.expires > at]
    if live:
        w = max(live, key=lambda w: w.expires)
        waiver = Waiver(approver=w.approver, reason=w.reason, ticket=w.ticket, expires=w.expires, original_status=r.status)
        summary = f"waived until {w.expires:%Y-%m-%d} ({w.ticket}, approved by {w.approver}); finding was {r.status.value}: {r.summary}"
        return r.model_copy(update={"status": Status.WAIVED, "summary": summary, "waiver": waiver})
    if waivers:
        w = max(waivers, key=lambda w: w.expires)
        msg = (f"waiver for {r.item_id} on {r.target} ({w.ticket}, approved by {w.approver}) expired on "
               f"{w.expires:%Y-%m-%d}; it is ignored")
        _warn(msg)
        expired = {"approver": w.approver, "reason": w.reason, "ticket": w.ticket, "expires": w.expires.isoformat()}
        return r.model_copy(update={"summary": f"{r.summary} [{msg}]", "details": {**r.details, "expired_waiver": expired}})
    return r


# -- writing ---------------------------------------------------------------------------------

@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One writer at a time (a widget and the CLI may write together); readers need no lock
    because every write replaces the file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def add_confirmation(path: Path, item: str, by: str, *, target: str | None = None, note: str = "",
                     evidence_url: str | None = None, ttl_days: int | None = None,
                     at: datetime | None = None) -> ConfirmationRecord:
    """Append one confirmation to the file (atomically) and return it."""
    if not by or not by.strip():
        raise ParamsError("A confirmation needs a name: who confirms?")
    if not note or not note.strip():
        raise ParamsError(f"A confirmation needs a note: what did you check for {item}?")
    known = load_catalog()
    if item in known.ids and known.get(item).blocking and not (evidence_url or "").strip():
        raise ParamsError(f"{item} is blocking: a confirmation needs a link to the evidence (--evidence URL).")
    try:
        rec = ConfirmationRecord(item=item, target=target or None, by=by.strip(), at=at or now(), note=note.strip(),
                                 evidence_url=(evidence_url or "").strip() or None, ttl_days=ttl_days)
    except ValidationError as e:
        raise ParamsError(f"Cannot confirm: {e.errors()[0]['msg'].removeprefix('Value error, ')}.") from None
    path = Path(path)
    with _locked(path):
        current = load_confirmations(path)
        current.confirmations.append(rec)
        data = current.model_dump(mode="json", exclude_none=True)
        _atomic_write(path, "# Written by asap-runbook (widgets and `asap-runbook confirm`); the latest record per\n"
                            "# (item, target) counts, earlier ones are the audit trail.\n"
                      + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return rec


def verified_in_run(run_dir: Path, item: str, target: str | None) -> list[str]:
    """The targets on which `item` got an automated verdict (pass, fail or warn) in that run:
    a confirmation cannot stand in for an observation."""
    from .drift import load_run
    from .results import VERIFIED
    run = load_run(run_dir)
    return [f"{r.target} ({r.status.value})" for r in run.results
            if r.item_id == item and (target in (None, "*") or r.target == target) and r.status in VERIFIED]


def latest_run_of(params_path: Path, out_dir: Path) -> Path | None:
    """The newest run in `out_dir` made with this parameters file, if any."""
    from .drift import manifests
    want = str(Path(params_path).resolve())
    for run_dir, doc in manifests(Path(out_dir)):
        if doc.get("params_file") == want:
            return run_dir
    return None


def default_user() -> str:
    """Who is confirming: $ASAP_RUNBOOK_USER, else git's user.name, else $USER."""
    if os.environ.get("ASAP_RUNBOOK_USER"):
        return os.environ["ASAP_RUNBOOK_USER"]
    import subprocess
    try:
        name = subprocess.run(["git", "config", "user.name"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        name = ""
    return name or os.environ.get("USER", "")
