"""The output contract: one Result per (item, target), gathered into a versioned results file.

`schema_version` changes only when a field changes meaning or disappears; ids never change
meaning (lessons-from-peers: testssl #1994).
"""

from __future__ import annotations

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


def counts(results: list[Result]) -> dict[str, int]:
    out = {s.value: 0 for s in Status}
    for r in results:
        out[r.status.value] += 1
    return out


def blockers(results: list[Result]) -> list[str]:
    """What stands between this run and sign-off, one line each."""
    lines = []
    for r in results:
        if r.status is Status.FAIL and r.blocking:
            lines.append(f"{r.item_id} on {r.target}: fail: {r.summary}")
        elif r.status is Status.ERROR:
            lines.append(f"{r.item_id} on {r.target}: error: {r.summary}")
        elif r.status is Status.MANUAL:
            lines.append(f"{r.item_id} on {r.target}: awaiting a person")
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


def exit_code(results: list[Result], problems: list[str] = ()) -> int:
    """0 ready, 1 a blocking fail, 3 incomplete (errors or pending manual items, no blocking fail).

    Non-blocking fails (advice such as "consider ...") are reported but do not hold sign-off.
    """
    if any(r.status is Status.FAIL and r.blocking for r in results):
        return ExitCode.NOT_READY
    if problems or any(r.status in (Status.ERROR, Status.MANUAL) for r in results):
        return ExitCode.INCOMPLETE
    return ExitCode.READY


READINESS = {ExitCode.READY: "ready", ExitCode.NOT_READY: "not ready", ExitCode.INCOMPLETE: "incomplete"}
