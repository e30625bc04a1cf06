"""The CI contract (docs/ci.md): --fail-on, junit.xml, summary.md, and the example pipelines in
examples/ci/ run for real against the reference deployment."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from asap_runbook import ci
from asap_runbook.catalog import load_catalog
from asap_runbook.cli import main
from asap_runbook.results import FailOn, Result, RunResults, Status, blockers, counts, exit_code, gated_exit_code
from asap_runbook.runner import run_coverage

from conftest import write_test_params

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _r(status: Status, blocking: bool = True, item: str = "SEC-TLS-1", target: str = "api", **kw) -> Result:
    fields = dict(item_id=item, target=target, section="security", subsection="s", title=f"title of {item}",
                  status=status, summary=f"{item} on {target} is {status.value}", severity="high", blocking=blocking,
                  verification="probe")
    return Result(**{**fields, **kw})


def _run(results: list[Result], sections=("security",), not_run=()) -> RunResults:
    targets = list(dict.fromkeys(r.target for r in results))
    code = exit_code(results, sections_not_run=list(not_run))
    return RunResults(run_id="r1", runbook_version="0", environment="ci", params_file="/p/staging.yaml",
                      params_digest="d", started_at=T0, finished_at=T0, sections=list(sections), targets=targets,
                      results=results, counts=counts(results), exit_code=code,
                      readiness={0: "ready", 1: "not ready", 3: "incomplete"}[code],
                      blockers=blockers(results, list(not_run)), sections_not_run=list(not_run),
                      coverage=run_coverage(results, targets, list(not_run)))


# ------------------------------------------------------------------------------ --fail-on
B, I, F, W = FailOn.BLOCKING, FailOn.INCOMPLETE, FailOn.FAIL, FailOn.WARN


@pytest.mark.parametrize("statuses, expected", [
    # results                                    blocking incomplete fail warn
    ([Status.PASS],                              (0, 0, 0, 0)),
    ([Status.PASS, (Status.WARN, False)],        (0, 0, 0, 1)),
    ([Status.PASS, Status.WARN],                 (0, 0, 0, 1)),   # a warn on a blocking item is still a warn
    ([Status.PASS, (Status.FAIL, False)],        (0, 0, 1, 1)),   # advisory fail: counted from `fail` up
    ([Status.PASS, Status.FAIL],                 (1, 1, 1, 1)),   # a blocking fail always counts
    ([Status.PASS, Status.ERROR],                (0, 3, 3, 3)),   # could not look: only `blocking` lets it through
    ([Status.PASS, Status.MANUAL],               (0, 3, 3, 3)),
    ([Status.PASS, Status.SKIP],                 (0, 3, 3, 3)),   # a blocking item skipped is not verified
    ([Status.ERROR, (Status.FAIL, False)],       (0, 3, 1, 1)),   # a counted fail wins over incompleteness
    ([Status.MANUAL, (Status.WARN, False)],      (0, 3, 3, 1)),
    ([Status.CONFIRMED, Status.WAIVED],          (0, 0, 0, 0)),   # a waived fail is not counted at any level
])
def test_fail_on_table(statuses, expected):
    results = [_r(*s) if isinstance(s, tuple) else _r(s) for s in statuses]
    got = tuple(gated_exit_code(results, fail_on=level) for level in (B, I, F, W))
    assert got == expected
    assert gated_exit_code(results) == exit_code(results), "the default is the readiness contract"


def test_fail_on_a_partial_run():
    assert gated_exit_code([_r(Status.PASS)], sections_not_run=["monitoring"], fail_on=B) == 0
    assert gated_exit_code([_r(Status.PASS)], sections_not_run=["monitoring"], fail_on=W) == 3
    assert gated_exit_code([_r(Status.PASS)], problems=["the monitoring notebook could not run"], fail_on=F) == 3


def test_fail_on_bad_value_is_one_sentence(capsys):
    assert main(["run", "--params", "x.yaml", "--fail-on", "sometimes"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'sometimes'" in err and "Traceback" not in err


# ------------------------------------------------------------------------------ junit.xml
def _junit(tmp_path, run, pages=None, fail_on=FailOn.INCOMPLETE) -> ET.Element:
    path = tmp_path / "junit.xml"
    ci.write_junit(run, path, pages, fail_on)
    return ET.parse(path).getroot()


def _case(root, item, target="api") -> ET.Element:
    hits = [c for c in root.iter("testcase") if f" {item} (" in f" {c.get('name')}" and c.get("classname").endswith(target)]
    assert len(hits) == 1, [c.get("name") for c in root.iter("testcase")]
    return hits[0]


def _mixed_run() -> RunResults:
    return _run([
        _r(Status.FAIL, True, "SEC-TLS-1"), _r(Status.FAIL, False, "SEC-REPLAY-2"), _r(Status.WARN, False, "SEC-RATE-3"),
        _r(Status.ERROR, True, "SEC-TLS-2"), _r(Status.SKIP, True, "SEC-RATE-1"), _r(Status.MANUAL, False, "SEC-AUTH-4"),
        _r(Status.PASS, True, "SEC-TLS-3"),
    ])


def test_junit_tells_blocking_from_advisory_fails_with_finding_fix_and_evidence(tmp_path):
    root = _junit(tmp_path, _mixed_run(), {"security": "security.html"})
    blocking = _case(root, "SEC-TLS-1").find("failure")
    assert blocking.get("type") == "blocking" and blocking.get("message") == "SEC-TLS-1 on api is fail"
    text = blocking.text.splitlines()
    assert text[0] == "SEC-TLS-1 on api: blocking fail (holds sign-off)"
    assert text[1] == "finding: SEC-TLS-1 on api is fail"
    assert text[2] == "fix: " + " ".join(load_catalog().get("SEC-TLS-1").remediation.split())
    assert text[3] == "evidence: security.html#SEC-TLS-1--api"
    advisory = _case(root, "SEC-REPLAY-2")
    assert advisory.find("failure").get("type") == "advisory"
    assert advisory.find("failure").text.startswith("SEC-REPLAY-2 on api: advisory fail (does not hold sign-off)")
    assert "(advisory)" in advisory.get("name") and "(blocking)" in _case(root, "SEC-TLS-1").get("name")


def test_junit_warnings_are_named_unless_warn_fails_the_build(tmp_path):
    warn = _case(_junit(tmp_path, _mixed_run()), "SEC-RATE-3")
    assert warn.get("name").startswith("[warn] SEC-RATE-3 (advisory)")
    assert warn.find("failure") is None and warn.find("skipped") is None, "a warn does not fail a gate that ignores it"
    assert {p.get("name"): p.get("value") for p in warn.iter("property")}["status"] == "warn"
    gated_case = _case(_junit(tmp_path, _mixed_run(), fail_on=FailOn.WARN), "SEC-RATE-3")
    assert gated_case.get("name") == warn.get("name"), "the name does not change with the gate"
    gated = gated_case.find("failure")
    assert gated is not None and gated.get("type") == "warning"
    assert "evidence: index.html#SEC-RATE-3--api" in gated.text, "no section page: the summary page has the anchor"


def test_junit_counts_errors_skips_and_gated_warnings(tmp_path):
    root = _junit(tmp_path, _mixed_run())
    assert _case(root, "SEC-TLS-2").find("error").get("message") == "SEC-TLS-2 on api is error"
    assert _case(root, "SEC-RATE-1").find("skipped").get("message").startswith("skip: ")
    assert _case(root, "SEC-AUTH-4").find("skipped").get("message").startswith("manual: ")
    assert _case(root, "SEC-TLS-3").find("failure") is None
    suite = root.find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("7", "2", "1", "2")
    assert root.get("failures") == "2"
    assert _junit(tmp_path, _mixed_run(), fail_on=FailOn.WARN).get("failures") == "3"


# ------------------------------------------------------------------------------ summary.md
def test_summary_is_bounded_and_carries_fixes_and_links():
    results = [_r(Status.FAIL, True, "SEC-TLS-1", f"t{i:02}") for i in range(25)]
    results += [_r(Status.PASS, True, "SEC-TLS-2", f"t{i:02}") for i in range(25)]
    md = ci.summary_markdown(_run(results, not_run=["monitoring"]), {"security": "security.html"}, FailOn.BLOCKING, 1)
    assert md.startswith("## asap-runbook: NOT READY\n")
    assert "CI gate `--fail-on blocking`: **exit 1**" in md
    rows = [line for line in md.splitlines() if line.startswith("| `t")]
    assert len(rows) == 20 and "| … 5 more targets (see index.html) |" in md
    monitoring = len(load_catalog().section("monitoring"))  # a section not run counts as not verified
    assert f"| **all targets** | 50 | 0 | 0 | {25 * monitoring} ({25 * sum(i.blocking for i in load_catalog().section('monitoring'))}) | {50 + 25 * monitoring} |" in md
    assert "### Blocking failures (25)" in md
    listed = [line for line in md.splitlines() if line.startswith("- **SEC-TLS-1**")]
    assert len(listed) == 10 and "- and 15 more: see [index.html](index.html)" in md
    assert "([evidence](security.html#SEC-TLS-1--t00))" in listed[0]
    assert "**Fix:** Terminate TLS at the proxy" in md
    assert "section monitoring did not run" in md
    assert "Evidence: [index.html](index.html)" in md


def test_summary_lists_what_the_gate_counted_beyond_blocking_fails():
    run = _run([_r(Status.PASS), _r(Status.WARN, False, "SEC-RATE-3")])
    assert "Also counted" not in ci.summary_markdown(run, fail_on=FailOn.INCOMPLETE, gated_code=0)
    md = ci.summary_markdown(run, fail_on=FailOn.WARN, gated_code=1)
    assert "### Also counted by `--fail-on warn` (1)" in md and "- **SEC-RATE-3** on `api`" in md
    assert "**exit 1** (not ready)" in md and "Readiness: **ready** (exit 0)" in md


def test_summary_escapes_html_outside_code():
    md = ci.summary_markdown(_run([_r(Status.FAIL, item="SEC-SIZE-2", summary="body <script>x</script> over limit",
                                      remediation="set `client_max_body_size 1m;` (<= the app's `a<b`)")]))
    assert "body &lt;script&gt;x&lt;/script&gt; over limit" in md
    assert "(&lt;= the app's `a<b`)" in md, "inside code spans `<` stays as it is"


def test_summary_is_appended_to_the_github_step_summary(tmp_path, monkeypatch):
    step = tmp_path / "step-summary.md"
    step.write_text("from an earlier step\n")
    monkeypatch.setenv(ci.STEP_SUMMARY_ENV, str(step))
    (tmp_path / "run").mkdir()
    ci.write_summary("## asap-runbook: READY\n", tmp_path / "run")
    assert (tmp_path / "run" / "summary.md").read_text() == "## asap-runbook: READY\n"
    assert step.read_text() == "from an earlier step\n## asap-runbook: READY\n\n"
    said = []
    monkeypatch.setenv(ci.STEP_SUMMARY_ENV, str(tmp_path / "no-such-dir" / "summary.md"))
    ci.write_summary("x", tmp_path / "run", say=said.append)
    assert len(said) == 1 and "could not append the summary to $GITHUB_STEP_SUMMARY" in said[0]


# ------------------------------------------------------------------------------ example pipelines
def _bash(script: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    # GitHub Actions runs `run:` with bash --noprofile --norc -eo pipefail; GitLab stops at the first failing line
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def _pipeline_env(yaml_env: dict, params: Path, **extra) -> dict:
    """The process environment, the pipeline's own variables (secrets left out: the deployment's token
    is already in the environment), and the test's substitutes: this checkout instead of the install
    step, a params file for the reference deployment, the security section only, no signing key."""
    env = {k: v for k, v in os.environ.items() if k not in ("GITHUB_STEP_SUMMARY", "ASAP_RUNBOOK_SIGNING_KEY")}
    env.update({k: str(v) for k, v in yaml_env.items() if "${{" not in str(v)})
    env.update(RUNBOOK=f"{shlex.quote(sys.executable)} -m asap_runbook", RUNBOOK_PARAMS=str(params),
               RUNBOOK_SECTIONS="security", PYTHONPATH=str(REPO), **extra)
    return env


def _one_run(out: Path) -> Path:
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def _check_run_folder(run_dir: Path) -> None:
    for name in ("junit.xml", "summary.md", "index.html", "results.json"):
        assert (run_dir / name).is_file(), name
    assert "summary.md" in json.loads((run_dir / "manifest.json").read_text())["files"], "summary.md is hashed"
    assert ET.parse(run_dir / "junit.xml").getroot().find("testsuite").get("name") == "security"


def test_github_actions_pipeline_runs(deployment, tmp_path):
    doc = yaml.safe_load((REPO / "examples" / "ci" / "github-actions.yml").read_text())
    job = doc["jobs"]["runbook"]
    step = next(s for s in job["steps"] if s.get("id") == "runbook")
    params = write_test_params(tmp_path / "params", targets=["hardened"], active=False)
    step_summary = tmp_path / "step-summary.md"
    step_summary.write_text("earlier step\n")
    work = tmp_path / "checkout"
    work.mkdir()
    env = _pipeline_env(job["env"], params, GITHUB_STEP_SUMMARY=str(step_summary), RUNNER_TEMP=str(tmp_path))
    proc = _bash(step["run"], env, work)
    # the hardened agent has no blocking fail; the partial run is incomplete, which --fail-on blocking lets through
    assert job["env"]["RUNBOOK_FAIL_ON"] == "blocking"
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "exit 0 under --fail-on blocking (readiness: incomplete, exit 3)" in proc.stdout
    out = work / job["env"]["RUNBOOK_OUT"]
    run_dir = _one_run(out)
    _check_run_folder(run_dir)
    summary = step_summary.read_text()
    assert summary.startswith("earlier step\n## asap-runbook: INCOMPLETE\n")
    assert summary.strip() == "earlier step\n" + (run_dir / "summary.md").read_text().strip()
    # the later steps' paths point at what the run wrote
    by_name = {s.get("name"): s for s in job["steps"]}
    upload = by_name["Upload the evidence"]["with"]["path"].replace("${{ env.RUNBOOK_OUT }}", job["env"]["RUNBOOK_OUT"])
    assert (work / upload).resolve() == out.resolve()
    report = by_name["Publish the JUnit report"]["with"]["report_paths"].replace("${{ env.RUNBOOK_OUT }}", job["env"]["RUNBOOK_OUT"])
    assert list(work.glob(report)) == [run_dir / "junit.xml"]
    assert by_name["Upload the evidence"]["if"] == by_name["Publish the JUnit report"]["if"] == "always()"


def test_gitlab_ci_pipeline_runs(deployment, tmp_path):
    doc = yaml.safe_load((REPO / "examples" / "ci" / "gitlab-ci.yml").read_text())
    job = doc["asap-runbook"]
    params = write_test_params(tmp_path / "params", targets=["hardened"], active=False)
    work = tmp_path / "checkout"
    work.mkdir()
    proc = _bash("\n".join(job["script"]), _pipeline_env(job["variables"], params), work)
    # the default contract: a partial run with skipped blocking items is incomplete (3), which the
    # job allows (an orange "passed with warnings" job, not a red one)
    assert job["variables"]["RUNBOOK_FAIL_ON"] == "incomplete"
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert proc.returncode in job["allow_failure"]["exit_codes"]
    assert "INCOMPLETE (exit 3" in proc.stdout
    run_dir = _one_run(work / job["variables"]["RUNBOOK_OUT"])
    _check_run_folder(run_dir)
    assert list(work.glob(job["artifacts"]["reports"]["junit"])) == [run_dir / "junit.xml"]
    assert (work / job["artifacts"]["paths"][0]).resolve() == run_dir.parent.resolve()
    assert job["artifacts"]["when"] == "always"
    assert (run_dir / "summary.md").read_text().startswith("## asap-runbook: INCOMPLETE\n")
