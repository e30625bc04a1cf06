"""End to end: `asap-runbook run` against the real reference deployment, and the exit-code contract."""

import hashlib
import json
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from asap_runbook import report

from asap_runbook.catalog import load_catalog
from asap_runbook.results import Result, RunResults, Status, exit_code

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ["security", "monitoring", "scaling", "resilience"]


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "asap_runbook", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_exit_code_is_not_ready(demo_run):
    proc, _ = demo_run
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "NOT READY (exit 1), whole checklist" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_every_artifact_exists(demo_run):
    _, run_dir = demo_run
    for name in ["index.html", "results.json", "junit.xml", "manifest.json", "runbook.log"]:
        assert (run_dir / name).is_file(), name
    for s in SECTIONS:
        assert (run_dir / f"{s}.html").is_file()
        assert (run_dir / "notebooks" / f"{s}.ipynb").is_file()
    assert not (run_dir / "sections").exists(), "results.json holds every result: no per-section copy is kept"


def test_results_validate_and_cover_every_item_and_target(demo_run):
    _, run_dir = demo_run
    run = RunResults.model_validate_json((run_dir / "results.json").read_text())
    assert run.schema_version == 1
    keys = [(r.item_id, r.target) for r in run.results]
    expected = {(i.id, t) for i in load_catalog().items for t in ("hardened", "misconfigured", "stock")}
    assert len(keys) == len(set(keys)) == len(expected) == 183
    assert set(keys) == expected
    assert run.exit_code == 1 and run.readiness == "not ready"
    assert sum(run.counts.values()) == 183
    assert not any("Traceback" in r.summary for r in run.results)


@pytest.mark.parametrize("item_id", ["SEC-TLS-1", "SEC-TLS-4", "MON-METRICS-2", "SCALE-SERVER-1", "RES-2"])
def test_first_checks_both_ways_through_the_notebooks(demo_run, item_id):
    _, run_dir = demo_run
    run = RunResults.model_validate_json((run_dir / "results.json").read_text())
    by = {(r.item_id, r.target): r for r in run.results}
    assert by[(item_id, "hardened")].status is Status.PASS, by[(item_id, "hardened")].summary
    assert by[(item_id, "misconfigured")].status is Status.FAIL, by[(item_id, "misconfigured")].summary


def test_manifest_hashes_match_files(demo_run):
    _, run_dir = demo_run
    manifest = json.loads((run_dir / "manifest.json").read_text())
    files = {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and p.name != "manifest.json"}
    assert set(manifest["files"]) >= files - {"manifest.sig"}
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((run_dir / rel).read_bytes()).hexdigest() == digest, rel


def test_junit_has_one_testcase_per_item_and_target(demo_run):
    _, run_dir = demo_run
    root = ET.parse(run_dir / "junit.xml").getroot()
    cases = root.findall(".//testcase")
    assert len(cases) == 183
    assert root.findall(".//failure"), "the misconfigured target's failures are JUnit failures"

    # every failure's evidence path names a rendered page holding the finding's anchor
    for failure in root.findall(".//failure"):
        ref = failure.text.splitlines()[-1].removeprefix("evidence: ")
        page, anchor = ref.split("#")
        assert f'id="{anchor}"' in (run_dir / page).read_text(), ref
    tls1 = next(c for c in cases if c.get("classname") == "security.misconfigured" and c.get("name").startswith("SEC-TLS-1 "))
    assert tls1.find("failure").get("type") == "blocking"
    assert tls1.find("failure").text.splitlines()[-1] == "evidence: security.html#SEC-TLS-1--misconfigured"


def test_html_hides_code_and_loads_nothing_remote(demo_run):
    _, run_dir = demo_run
    for page in ["index.html", *[f"{s}.html" for s in SECTIONS]]:
        html = (run_dir / page).read_text()
        assert "<script src=" not in html and "cdnjs" not in html, page
    security = (run_dir / "security.html").read_text()
    assert "import asap_runbook" not in security, "code cells are hidden"
    assert "SEC-TLS-1" in security


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_targets_are_errors_not_failures(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text(f"""
targets:
  - name: closed-port
    base_url: https://127.0.0.1:{_closed_port()}
  - name: no-such-host
    base_url: https://no-such-host.invalid
probe: {{timeout_seconds: 2}}
""")
    proc = run_cli("run", "--params", str(params), "--out", str(tmp_path / "out"), "--sections", "security")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    run_dir = next(p for p in (tmp_path / "out").iterdir() if p.is_dir())  # outputs/index.html sits beside the runs
    run = RunResults.model_validate_json((run_dir / "results.json").read_text())
    probes = [r for r in run.results if r.verification == "probe" and r.status is not Status.MANUAL]
    assert probes and all(r.status in (Status.ERROR, Status.SKIP) for r in probes), [(r.item_id, r.status) for r in probes]
    assert any("cannot connect" in r.summary for r in probes if r.target == "closed-port")
    assert not any(r.status is Status.PASS for r in probes)
    for f in run_dir.rglob("*.html"):
        assert "Traceback" not in f.read_text()
    # the summary collapses what could not run for one cause into one row per target
    page = (run_dir / "index.html").read_text()
    unverified = page[page.index('id="unverified"'):page.index('id="awaiting"')]
    biggest = max(report.not_looked(run.results), key=lambda c: len(c[2]))
    assert len(biggest[2]) > 1 and f"{len(biggest[2])} checks" in unverified


def _r(status, blocking=True):
    return Result(item_id="X-1", target="t", section="s", subsection="s", title="t", status=status, summary="",
                  severity="high", blocking=blocking, verification="probe")


@pytest.mark.parametrize("statuses, code", [
    ([Status.PASS, Status.SKIP], 3),                   # a skip is not a pass: a blocking item nobody verified
    ([Status.PASS, (Status.SKIP, False)], 0),          # an advisory item skipped does not hold sign-off
    ([Status.PASS, Status.CONFIRMED, Status.WAIVED], 0),
    ([Status.PASS, (Status.FAIL, False)], 0),          # advisory fail does not hold sign-off
    ([Status.PASS, Status.FAIL], 1),
    ([Status.FAIL, Status.ERROR, Status.MANUAL], 1),   # a blocking fail wins
    ([Status.PASS, Status.ERROR], 3),
    ([Status.PASS, Status.MANUAL], 3),
    ([Status.WARN], 0),
])
def test_exit_code_contract(statuses, code):
    results = [_r(*s) if isinstance(s, tuple) else _r(s) for s in statuses]
    assert exit_code(results) == code


def test_a_partial_run_is_never_ready():
    assert exit_code([_r(Status.PASS)], sections_not_run=["monitoring"]) == 3
    assert exit_code([_r(Status.FAIL)], sections_not_run=["monitoring"]) == 1, "a blocking fail still wins"


def test_cell_by_cell_gives_the_same_results_as_headless(demo_run):
    """What an SRE runs in JupyterLab (the notebook's own calls) equals the headless run."""
    import asap_runbook.notebook as rb
    _, run_dir = demo_run
    headless = RunResults.model_validate_json((run_dir / "results.json").read_text())
    for section in ["security", "scaling", "resilience"]:
        interactive = rb.run(section, str(REPO / "params" / "demo.yaml"))
        mine = {(r.item_id, r.target): r.status for r in interactive.results}
        theirs = {(r.item_id, r.target): r.status for r in headless.results if r.section == section}
        assert mine == theirs, section
        assert not rb.table(interactive).empty
