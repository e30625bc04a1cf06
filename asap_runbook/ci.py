"""What CI reads from a run: junit.xml, summary.md (and $GITHUB_STEP_SUMMARY). The exit code under
`--fail-on` is results.gated_exit_code. The contract, and why it looks like this: docs/ci.md.

JUnit has four outcomes CI test reporters draw (passed, failure, error, skipped). Mapping:
- fail: <failure type="blocking"|"advisory">, its text the finding, the fix and the evidence path;
- warn: named "[warn] ..." (every reporter lists names; <system-out> alone is invisible), and a
  failure (type="warning") when `--fail-on warn` counts it, else passed;
- error: <error>; skip and manual: <skipped>; confirmed and waived: passed, named "[confirmed]",
  "[waived]".
The item's blocking-ness is in every name ("(blocking)"/"(advisory)"): it never changes with the
result, so a test's identity across pipelines changes only when its status needs a marker.
"""

from __future__ import annotations

import os
from pathlib import Path
from xml.etree import ElementTree as ET

from .catalog import load_catalog
from .results import ALL_TARGETS, READINESS, FailOn, Result, RunResults, Status

STEP_SUMMARY_ENV = "GITHUB_STEP_SUMMARY"
MAX_COVERAGE_ROWS = 20
MAX_LISTED = 10


def evidence_path(r: Result, pages: dict[str, str] | None = None) -> str:
    """Where a result's evidence is, relative to the run folder: its section page (the rendered
    notebook) when there is one, else the summary page; both carry the `ITEM--TARGET` anchor."""
    return f"{(pages or {}).get(r.section, 'index.html')}#{r.item_id}--{r.target}"


def fix_for(r: Result) -> str | None:
    """The catalog's remediation for the item (results carry it only when they fail, warn or error)."""
    if r.remediation:
        return r.remediation
    try:
        return load_catalog().get(r.item_id).remediation
    except KeyError:
        return None


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _kind(r: Result) -> str:
    return "blocking" if r.blocking else "advisory"


def _details(r: Result, pages: dict[str, str] | None, what: str, fix: bool = True) -> str:
    lines = [f"{r.item_id} on {r.target}: {what}", f"finding: {_one_line(r.summary)}"]
    if fix and fix_for(r):
        lines.append(f"fix: {_one_line(fix_for(r))}")
    lines.append(f"evidence: {evidence_path(r, pages)}")
    return "\n".join(lines)


def write_junit(run: RunResults, path: Path, pages: dict[str, str] | None = None,
                fail_on: FailOn = FailOn.INCOMPLETE) -> None:
    warn_fails = Status.WARN in fail_on.counted
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    suites = ET.Element("testsuites", name="asap-runbook")
    for section in run.sections:
        rs = [r for r in run.results if r.section == section]
        n = {"tests": len(rs),
             "failures": sum(r.status is Status.FAIL or (warn_fails and r.status is Status.WARN) for r in rs),
             "errors": sum(r.status is Status.ERROR for r in rs),
             "skipped": sum(r.status in (Status.SKIP, Status.MANUAL) for r in rs)}
        for k, v in n.items():
            totals[k] += v
        suite = ET.SubElement(suites, "testsuite", name=section, **{k: str(v) for k, v in n.items()})
        props = ET.SubElement(suite, "properties")
        for k, v in (("run_id", run.run_id), ("readiness", run.readiness), ("fail_on", fail_on.value)):
            ET.SubElement(props, "property", name=k, value=v)
        for r in rs:
            marker = f"[{r.status.value}] " if r.status in (Status.WARN, Status.CONFIRMED, Status.WAIVED) else ""
            case = ET.SubElement(suite, "testcase", classname=f"{section}.{r.target}",
                                 name=f"{marker}{r.item_id} ({_kind(r)}): {_one_line(r.title)}",
                                 time=f"{r.duration_seconds:.3f}")
            props = ET.SubElement(case, "properties")
            for k, v in (("status", r.status.value), ("blocking", str(r.blocking).lower()),
                         ("severity", r.severity), ("evidence", evidence_path(r, pages))):
                ET.SubElement(props, "property", name=k, value=v)
            summary = _one_line(r.summary)
            if r.status is Status.FAIL:
                what = "blocking fail (holds sign-off)" if r.blocking else "advisory fail (does not hold sign-off)"
                ET.SubElement(case, "failure", message=summary, type=_kind(r)).text = _details(r, pages, what)
            elif r.status is Status.WARN:
                text = _details(r, pages, f"warn ({_kind(r)} item)")
                if warn_fails:
                    ET.SubElement(case, "failure", message=summary, type="warning").text = text
                else:
                    ET.SubElement(case, "system-out").text = text
            elif r.status is Status.ERROR:
                ET.SubElement(case, "error", message=summary, type="could-not-look").text = _details(
                    r, pages, "error: the check could not look, so there is no verdict", fix=False)
            elif r.status in (Status.SKIP, Status.MANUAL):
                ET.SubElement(case, "skipped", message=f"{r.status.value}: {summary}")
            else:
                ET.SubElement(case, "system-out").text = f"{r.status.value}: {summary}\nevidence: {evidence_path(r, pages)}"
    for k, v in totals.items():
        suites.set(k, str(v))
    ET.indent(suites)
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)


# ------------------------------------------------------------------------------ summary.md
def _md(text: str | None) -> str:
    """One line of Markdown: whitespace collapsed, `<` and `>` escaped outside the catalog's `code`
    spans (which render as code, where an entity would show literally)."""
    parts = _one_line(text).split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: no code spans
        parts = ["`".join(parts)]
    return "`".join(p if i % 2 else p.replace("<", "&lt;").replace(">", "&gt;") for i, p in enumerate(parts))


def _bounded(lines: list[str], more: str) -> list[str]:
    if len(lines) <= MAX_LISTED:
        return lines
    return lines[:MAX_LISTED] + [f"- and {len(lines) - MAX_LISTED} more: {more}"]


def _finding_line(r: Result, pages: dict[str, str] | None) -> str:
    fix = fix_for(r)
    return (f"- **{r.item_id}** on `{r.target}`: {_md(r.summary)} ([evidence]({evidence_path(r, pages)}))"
            + (f"  \n  **Fix:** {_md(fix)}" if fix else ""))


def summary_markdown(run: RunResults, pages: dict[str, str] | None = None, fail_on: FailOn = FailOn.INCOMPLETE,
                     gated_code: int | None = None, drift=None) -> str:
    """A short Markdown summary of the run for a CI job page: verdict, coverage, blockers with their
    fixes, what --fail-on counted, drift, and the relative link to the evidence."""
    gated_code = run.exit_code if gated_code is None else gated_code
    scope = ("whole checklist" if not run.sections_not_run else
             f"partial: {', '.join(run.sections)} only; not run: {', '.join(run.sections_not_run)}")
    out = [f"## asap-runbook: {run.readiness.upper()}", "",
           f"Run `{run.run_id}` of `{Path(run.params_file).name}` (environment `{run.environment}`), {scope}.  ",
           f"Readiness: **{run.readiness}** (exit {run.exit_code}). CI gate `--fail-on {fail_on.value}`: "
           f"**exit {gated_code}**" + (f" ({READINESS.get(gated_code, '')})" if gated_code != run.exit_code else "") + ".  ",
           " · ".join(f"{v} {k}" for k, v in run.counts.items() if v), ""]

    targets = [t for t in run.targets if t in run.coverage]
    out += ["### Coverage", "", "| target | verified | confirmed | waived | not verified (blocking) | items |",
            "|---|---:|---:|---:|---:|---:|"]

    def row(name: str, c) -> str:
        return f"| {name} | {c.verified} | {c.confirmed} | {c.waived} | {c.not_verified} ({c.not_verified_blocking}) | {c.total} |"
    out += [row(f"`{t}`", run.coverage[t]) for t in targets[:MAX_COVERAGE_ROWS]]
    if len(targets) > MAX_COVERAGE_ROWS:
        out.append(f"| … {len(targets) - MAX_COVERAGE_ROWS} more targets (see index.html) | | | | | |")
    if ALL_TARGETS in run.coverage and len(targets) != 1:
        out.append(row("**all targets**", run.coverage[ALL_TARGETS]))
    out.append("")

    failing = [r for r in run.results if r.status is Status.FAIL and r.blocking]
    if failing:
        out += [f"### Blocking failures ({len(failing)})", "",
                *_bounded([_finding_line(r, pages) for r in failing], "see [index.html](index.html)"), ""]
    extra = [r for r in run.results if r.status in fail_on.counted and not (r.status is Status.FAIL and r.blocking)]
    if extra:
        out += [f"### Also counted by `--fail-on {fail_on.value}` ({len(extra)})", "",
                *_bounded([_finding_line(r, pages) for r in extra], "see [index.html](index.html)"), ""]
    others = [b for b in run.blockers if ": fail: " not in b]
    if others:
        # collapsed: each line says how to close it, and they are many on a first run
        out += [f"<details><summary><b>Not verified, or awaiting a person ({len(others)})</b></summary>", "",
                *_bounded([f"- {_md(b)}" for b in others], "see [index.html](index.html)"), "", "</details>", ""]

    if drift is not None and drift.base_run_id:
        c = drift.counts()
        out += [f"Since `{drift.base_run_id}`: {c['new_failures']} new failure(s), {c['fixed']} fixed, "
                f"{c['regressed']} regressed, {c['expired']} expired.", ""]
    out += ["Evidence: [index.html](index.html) in the run folder "
            f"(`{run.run_id}/`; results.json, junit.xml and manifest.json beside it).", ""]
    return "\n".join(out)


def write_summary(text: str, run_dir: Path, say=print) -> Path:
    """summary.md in the run folder (hashed into the manifest like every artifact), and appended to
    $GITHUB_STEP_SUMMARY when set: the job page shows it without opening the artifact."""
    path = run_dir / "summary.md"
    path.write_text(text)
    step_summary = os.environ.get(STEP_SUMMARY_ENV)
    if step_summary:
        try:
            with open(step_summary, "a") as f:
                f.write(text + "\n")
        except OSError as e:
            say(f"  warning: could not append the summary to ${STEP_SUMMARY_ENV} ({step_summary}): {e.strerror}")
    return path
