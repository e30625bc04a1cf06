"""The output contract: one Result per (item, target), gathered into a versioned results file.

`schema_version` changes only when a field changes meaning or disappears; ids never change
meaning (lessons-from-peers: testssl #1994).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class Status(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    WARN = "warn"
    SKIP = "skip"          # not applicable, not enabled, or a parameter is missing (reason given)
    ERROR = "error"        # the check could not run: never counts as pass or fail
    MANUAL = "manual"      # awaiting a person
    CONFIRMED = "confirmed"  # a person confirmed it (who, when, note)
    WAIVED = "waived"      # a failing finding covered by an unexpired, reviewed waiver


class ExitCode:
    READY = 0
    NOT_READY = 1
    BAD_USAGE = 2
    INCOMPLETE = 3
    # `asap-runbook verify`: 0 intact and signed, 1 tampered, 4 intact but unsigned
    TAMPERED = 1
    UNSIGNED = 4


def now() -> datetime:
    return datetime.now(UTC)


class Evidence(BaseModel):
    """One piece of evidence: what was sent and seen (redacted), or what was read."""

    model_config = ConfigDict(extra="forbid")
    label: str
    data: Any = None


class Confirmation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    by: str
    at: datetime
    note: str = ""
    evidence_url: str | None = None
    expires_at: datetime | None = None


class Waiver(BaseModel):
    model_config = ConfigDict(extra="forbid")
    approver: str
    reason: str
    ticket: str
    expires: datetime
    original_status: Status


class Result(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: str
    target: str
    section: str
    subsection: str
    title: str
    status: Status
    summary: str
    severity: str
    blocking: bool
    verification: str
    evidence: list[Evidence] = Field(default_factory=list)
    remediation: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    started_at: datetime = Field(default_factory=now)
    duration_seconds: float = 0.0
    confirmation: Confirmation | None = None
    waiver: Waiver | None = None


#: what stands for each piece of evidence in a lean result (one object, shared)
ELIDED = Evidence(label="(in the results file)")


def lean(r: Result) -> Result:
    """`r` without what only its evidence shows: its evidence, and the observation and timeline kept in
    its details (as many placeholders and the same keys stay, so a page still says "evidence (3)" and
    links to where it is). What a fleet's findings tables, summary page, junit and blockers are made
    from, in memory; never written as a result (results files and per-target pages are written whole)."""
    shared = {k: sys.intern(v) for k in ("item_id", "section", "subsection", "title", "severity", "verification",
                                          "remediation") if isinstance(v := getattr(r, k), str)}  # the catalog's text, once
    return r.model_copy(update={
        **shared, "evidence": [ELIDED] * len(r.evidence),
        "details": {k: None if k in ("observation", "timeline") else v for k, v in r.details.items()}})


class SectionRun(BaseModel):
    """What one section notebook wrote: its results, as it ran."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int = SCHEMA_VERSION
    section: str
    started_at: datetime
    finished_at: datetime | None = None
    results: list[Result] = Field(default_factory=list)
    preflight: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per target: what the look before the checks saw, and the causes it found")


class Coverage(BaseModel):
    """How much of the checklist this run verified for one target (or for all of them).

    verified: an automated check observed it (pass, fail or warn); confirmed: a person did;
    waived: a reviewed waiver covers it; not_verified: skipped, errored, awaiting a person, or in a
    section that did not run. A blocking item that is not verified keeps the run from READY."""

    model_config = ConfigDict(extra="forbid")
    total: int = 0
    verified: int = 0
    confirmed: int = 0
    waived: int = 0
    not_verified: int = 0
    not_verified_blocking: int = 0

    def line(self) -> str:
        return (f"{self.verified} verified automatically, {self.confirmed} confirmed by a person, "
                f"{self.waived} waived, {self.not_verified} not verified ({self.not_verified_blocking} blocking) "
                f"of {self.total}")


class RunResults(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: int = SCHEMA_VERSION
    run_id: str
    runbook_version: str
    environment: str
    params_file: str
    params_digest: str
    started_at: datetime
    finished_at: datetime
    sections: list[str]
    targets: list[str]
    results: list[Result]
    counts: dict[str, int]
    exit_code: int
    readiness: str
    blockers: list[str] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list, description="sections that could not run, and why")
    sections_not_run: list[str] = Field(default_factory=list, description="checklist sections this run left out")
    coverage: dict[str, Coverage] = Field(default_factory=dict, description="per target, and '*' for the whole run")


def counts(results: list[Result]) -> dict[str, int]:
    out = {s.value: 0 for s in Status}
    for r in results:
        out[r.status.value] += 1
    return out


VERIFIED = (Status.PASS, Status.FAIL, Status.WARN)
NOT_VERIFIED = (Status.SKIP, Status.ERROR, Status.MANUAL)
ALL_TARGETS = "*"


def coverage(results: list[Result], targets: list[str], not_run: dict[str, int] | None = None,
             not_run_blocking: dict[str, int] | None = None) -> dict[str, Coverage]:
    """Coverage per target and for the whole run ('*'). `not_run`: per section left out, how many
    items it has (and how many of them block); they count as not verified on every target."""
    extra = sum((not_run or {}).values())
    extra_blocking = sum((not_run_blocking or {}).values())
    out = {t: Coverage(total=extra, not_verified=extra, not_verified_blocking=extra_blocking) for t in targets}
    for r in results:
        c = out.setdefault(r.target, Coverage(total=extra, not_verified=extra, not_verified_blocking=extra_blocking))
        c.total += 1
        if r.status in VERIFIED:
            c.verified += 1
        elif r.status is Status.CONFIRMED:
            c.confirmed += 1
        elif r.status is Status.WAIVED:
            c.waived += 1
        else:
            c.not_verified += 1
            c.not_verified_blocking += r.blocking
    whole = Coverage()
    for c in out.values():
        for f in Coverage.model_fields:
            setattr(whole, f, getattr(whole, f) + getattr(c, f))
    return {**out, ALL_TARGETS: whole}


def _how_to_close(r: Result) -> str:
    confirm = (f"or confirm it: asap-runbook confirm {r.item_id} --target {r.target} --by NAME --note TEXT "
               "--evidence URL")
    if r.status is Status.SKIP:
        return f"not verified: {r.summary} ({confirm})"
    return f"awaiting a person ({confirm.removeprefix('or ')})"


def blockers(results: list[Result], sections_not_run: list[str] = ()) -> list[str]:
    """What stands between this run and sign-off, one line each: every blocking fail, every error,
    every item awaiting a person, every blocking item not verified (with what would verify it),
    and every section that did not run."""
    lines = []
    for r in results:
        if r.status is Status.FAIL and r.blocking:
            lines.append(f"{r.item_id} on {r.target}: fail: {r.summary}")
        elif r.status is Status.ERROR:
            lines.append(f"{r.item_id} on {r.target}: error: {r.summary}")
        elif r.status is Status.MANUAL or (r.status is Status.SKIP and r.blocking):
            lines.append(f"{r.item_id} on {r.target}: {_how_to_close(r)}")
    for s in sections_not_run:
        lines.append(f"section {s} did not run: its items are not verified (run it: --sections {s}, "
                     "or leave --sections out for the whole checklist)")
    return lines


def collapse_causes(results: list[Result]) -> list[tuple[str, str, list[str]]]:
    """(target, cause, item ids) for the errors that share a machine-readable cause
    (`details["cause"]`, set when a precondition was missing), one entry per (target, cause),
    in the order the results come: "17 checks could not run on api: connection refused ..."."""
    groups: dict[tuple[str, str], list[str]] = {}
    for r in results:
        cause = r.details.get("cause")
        if r.status is Status.ERROR and isinstance(cause, str) and cause:
            groups.setdefault((r.target, cause), []).append(r.item_id)
    return [(target, cause, ids) for (target, cause), ids in groups.items()]


def exit_code(results: list[Result], problems: list[str] = (), sections_not_run: list[str] = ()) -> int:
    """0 ready, 1 a blocking fail, 3 incomplete: no blocking fail, but an error, an item awaiting a
    person, a blocking item skipped (not verified), or a section that did not run.

    Non-blocking fails (advice such as "consider ...") are reported but do not hold sign-off.
    """
    if any(r.status is Status.FAIL and r.blocking for r in results):
        return ExitCode.NOT_READY
    if problems or sections_not_run or any(
            r.status in (Status.ERROR, Status.MANUAL) or (r.status is Status.SKIP and r.blocking) for r in results):
        return ExitCode.INCOMPLETE
    return ExitCode.READY


class FailOn(StrEnum):
    """`run --fail-on`: what makes the exit code non-zero in CI. A ladder: `blocking` relaxes the
    default; `fail` and `warn` are stricter than it. The readiness itself never changes."""
    BLOCKING = "blocking"      # 1 on a blocking fail; nothing else (coverage gaps do not break the build)
    INCOMPLETE = "incomplete"  # the default, the readiness contract: 1 on a blocking fail, 3 when incomplete
    FAIL = "fail"              # as incomplete, and 1 on any fail, advisory included
    WARN = "warn"              # as fail, and 1 on any warn

    @property
    def counted(self) -> tuple[Status, ...]:
        """Results that make the exit 1 at this level whether or not their item blocks."""
        return {FailOn.FAIL: (Status.FAIL,), FailOn.WARN: (Status.FAIL, Status.WARN)}.get(self, ())


def gated_exit_code(results: list[Result], problems: list[str] = (), sections_not_run: list[str] = (),
                    fail_on: FailOn = FailOn.INCOMPLETE) -> int:
    """The exit code of `run --fail-on LEVEL`; codes keep their meanings (1 a counted fail, 3 incomplete).
    Only `blocking` lets a run that could not look exit 0: choosing it is choosing to gate on known
    breakage alone. A counted fail wins over incompleteness, as in exit_code()."""
    readiness = exit_code(results, problems, sections_not_run)
    if fail_on is FailOn.BLOCKING:
        return ExitCode.NOT_READY if readiness == ExitCode.NOT_READY else ExitCode.READY
    if any(r.status in fail_on.counted for r in results):
        return ExitCode.NOT_READY
    return readiness


READINESS = {ExitCode.READY: "ready", ExitCode.NOT_READY: "not ready", ExitCode.INCOMPLETE: "incomplete"}
