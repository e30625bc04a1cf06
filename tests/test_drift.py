"""Drift between runs, the previous-run lookup, `asap-runbook diff`, and outputs/index.html."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from asap_runbook import drift
from asap_runbook.cli import main
from asap_runbook.outputs_index import write_outputs_index
from asap_runbook.results import Confirmation, Result, RunResults, Status, Waiver, counts

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _r(item: str, status: Status, target: str = "api", **kw) -> Result:
    return Result(item_id=item, target=target, section="security", subsection="s", title=f"title {item}",
                  status=status, summary=f"{item} is {status.value}", severity="high", blocking=True,
                  verification="probe", **kw)


def _run(run_id: str, results: list[Result], started: datetime, digest: str = "d1",
         params_file: str = "/p/prod.yaml") -> RunResults:
    return RunResults(run_id=run_id, runbook_version="0", environment="prod", params_file=params_file,
                      params_digest=digest, started_at=started, finished_at=started, sections=["security"],
                      targets=sorted({r.target for r in results}), results=results, counts=counts(results),
                      exit_code=1, readiness="not ready")


def test_compare_sorts_every_change_into_its_category():
    base = _run("a", [
        _r("FIXED", Status.FAIL), _r("REGRESSED", Status.PASS), _r("SAME", Status.FAIL),
        _r("ERR-THEN-FAIL", Status.ERROR), _r("GONE", Status.PASS),
        _r("CONF", Status.CONFIRMED, confirmation=Confirmation(by="ana", at=T0, expires_at=T0 + timedelta(days=1))),
        _r("WAIV", Status.WAIVED, waiver=Waiver(approver="bo", reason="r", ticket="OPS-1", expires=T0 + timedelta(days=2),
                                                 original_status=Status.FAIL)),
    ], T0)
    current = _run("b", [
        _r("FIXED", Status.PASS), _r("REGRESSED", Status.WARN), _r("SAME", Status.FAIL),
        _r("ERR-THEN-FAIL", Status.FAIL), _r("NEW-TARGET", Status.FAIL, target="new"),
        _r("CONF", Status.MANUAL), _r("WAIV", Status.FAIL),
    ], T0 + timedelta(days=3))
    d = drift.compare(base, current)
    ids = {cat: [(c.item_id, c.target) for c in getattr(d, cat)] for cat in drift.CATEGORIES}
    assert ids["fixed"] == [("FIXED", "api")]
    assert ids["regressed"] == [("REGRESSED", "api"), ("WAIV", "api")]
    assert ids["new_failures"] == [("ERR-THEN-FAIL", "api"), ("NEW-TARGET", "new")]
    assert ids["unchanged"] == [("SAME", "api")]
    assert sorted(ids["other"]) == [("CONF", "api"), ("GONE", "api")]
    assert sorted(ids["expired"]) == [("CONF", "api"), ("WAIV", "api")]
    notes = {c.item_id: c.note for c in d.expired}
    assert "confirmation by ana expired 2026-01-02" == notes["CONF"]
    assert "waiver by bo (OPS-1) expired 2026-01-03" == notes["WAIV"]
    assert d.counts() == {"new_failures": 2, "fixed": 1, "regressed": 2, "expired": 2, "other": 2, "unchanged": 1}


def test_unexpired_confirmation_is_not_reported():
    conf = Confirmation(by="ana", at=T0, expires_at=T0 + timedelta(days=30))
    base = _run("a", [_r("C", Status.CONFIRMED, confirmation=conf)], T0)
    current = _run("b", [_r("C", Status.CONFIRMED, confirmation=conf)], T0 + timedelta(days=1))
    assert drift.compare(base, current).expired == []


def _write_run(out: Path, run: RunResults, extra: dict | None = None) -> Path:
    d = out / run.run_id
    d.mkdir(parents=True)
    (d / "results.json").write_text(run.model_dump_json())
    manifest = {"run_id": run.run_id, "params_digest": run.params_digest, "params_file": run.params_file,
                "started_at": run.started_at.isoformat(), "readiness": run.readiness, "exit_code": run.exit_code,
                "files": {"results.json": hashlib.sha256((d / "results.json").read_bytes()).hexdigest()},
                **(extra or {})}
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


def test_previous_run_is_the_newest_older_one_of_the_same_parameters(tmp_path):
    _write_run(tmp_path, _run("r1", [_r("X", Status.FAIL)], T0))
    _write_run(tmp_path, _run("r2", [_r("X", Status.FAIL)], T0 + timedelta(hours=1), digest="other", params_file="/p/other.yaml"))
    _write_run(tmp_path, _run("r3", [_r("X", Status.FAIL)], T0 + timedelta(hours=2), digest="edited"))  # same file, edited
    _write_run(tmp_path, _run("r5", [_r("X", Status.FAIL)], T0 + timedelta(hours=9)))  # newer: not "previous"
    current = _run("r4", [_r("X", Status.PASS)], T0 + timedelta(hours=3))
    d4 = _write_run(tmp_path, current)
    found, how = drift.find_previous(d4, "d1", "/p/prod.yaml", current.started_at)
    assert found.name == "r3" and how == "newest older run with the params file"
    found, how = drift.find_previous(d4, "d1", "/elsewhere/prod.yaml", current.started_at)
    assert found.name == "r1" and how == "newest older run with the params digest"
    d = drift.drift_since_previous(current, d4)
    assert d.base_run_id == "r3" and d.params_changed and [c.item_id for c in d.fixed] == ["X"]


def test_previous_run_follows_the_manifest_chain_when_present(tmp_path):
    """With previous_manifest_sha256 links, the chain wins over timestamps."""
    d1 = _write_run(tmp_path, _run("c1", [_r("X", Status.FAIL)], T0 + timedelta(hours=5)))  # clock skew: looks newer
    sha1 = hashlib.sha256((d1 / "manifest.json").read_bytes()).hexdigest()
    d2 = _write_run(tmp_path, _run("c2", [_r("X", Status.FAIL)], T0, digest="other", params_file="/p/x.yaml"),
                    {"previous_manifest_sha256": sha1})
    sha2 = hashlib.sha256((d2 / "manifest.json").read_bytes()).hexdigest()
    current = _run("c3", [_r("X", Status.PASS)], T0 + timedelta(hours=1))
    d3 = _write_run(tmp_path, current)
    found, how = drift.find_previous(d3, "d1", "/p/prod.yaml", None, previous_manifest_sha256=sha2)
    assert found.name == "c1" and how.startswith("manifest chain")


def test_a_changed_results_file_is_refused(tmp_path):
    d = _write_run(tmp_path, _run("t1", [_r("X", Status.FAIL)], T0))
    (d / "results.json").write_text((d / "results.json").read_text().replace('"fail"', '"pass"'))
    with pytest.raises(drift.UsageError, match="does not match the SHA-256"):
        drift.load_run(d)
    current = _run("t2", [_r("X", Status.PASS)], T0 + timedelta(hours=1))
    out = drift.drift_since_previous(current, _write_run(tmp_path, current))
    assert out.base_run_id is None and "cannot be compared" in out.problem


def test_outputs_index_reads_manifests_only(tmp_path):
    for i in range(3):
        d = _write_run(tmp_path, _run(f"run{i}", [_r("X", Status.FAIL)], T0 + timedelta(hours=i)),
                       {"counts": {"fail": 1}, "drift": {"base_run_id": None}, "signed_off_by": "ana" if i == 1 else None})
        (d / "results.json").unlink()  # the index must not need it
    html = write_outputs_index(tmp_path).read_text()
    assert html.index("run2") < html.index("run1") < html.index("run0"), "newest first"
    assert "ana" in html and 'href="run0/index.html"' in html


def test_diff_cli_text_json_and_bad_run(tmp_path, capsys):
    _write_run(tmp_path, _run("a", [_r("X", Status.FAIL), _r("Y", Status.PASS)], T0))
    _write_run(tmp_path, _run("b", [_r("X", Status.PASS), _r("Y", Status.FAIL)], T0 + timedelta(hours=1)))
    assert main(["diff", "a", "b", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "Fixed (1):" in text and "Regressed (1):" in text and "fail -> pass" in text
    assert main(["diff", str(tmp_path / "a"), str(tmp_path / "b"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["counts"]["fixed"] == 1 and doc["regressed"][0]["item_id"] == "Y"
    assert main(["diff", "a", "nope", "--out", str(tmp_path)]) == 2
    assert "no run 'nope'" in capsys.readouterr().err


def test_diff_fail_on_regression_exits_1_with_one_line(tmp_path, capsys):
    _write_run(tmp_path, _run("a", [_r("X", Status.FAIL), _r("Y", Status.PASS), _r("Z", Status.PASS)], T0))
    _write_run(tmp_path, _run("b", [_r("X", Status.PASS), _r("Y", Status.WARN), _r("Z", Status.PASS),
                                    _r("N", Status.FAIL)], T0 + timedelta(hours=1)))
    _write_run(tmp_path, _run("c", [_r("X", Status.PASS), _r("Y", Status.PASS), _r("Z", Status.PASS),
                                    _r("N", Status.PASS)], T0 + timedelta(hours=2)))
    assert main(["diff", "a", "b", "--out", str(tmp_path)]) == 0, "without the flag diff only reports"
    capsys.readouterr()
    assert main(["diff", "a", "b", "--out", str(tmp_path), "--json", "--fail-on-regression"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["counts"]["regressed"] == 1, "stdout stays one JSON document"
    assert err.strip().splitlines() == ["asap-runbook: 2 finding(s) worse in b than in a: 1 new failure(s), 1 regressed"]
    assert main(["diff", "b", "c", "--out", str(tmp_path), "--fail-on-regression"]) == 0, "only fixes: not worse"
    assert capsys.readouterr().err == ""


def test_two_real_runs_one_fixed_one_regressed(deployment, tmp_path, capsys):
    """Full `asap-runbook run` twice against the real agents; between the runs the two targets swap
    deployments, so SEC-TLS-4 is fixed on one and regressed on the other."""
    env = deployment.env()
    hardened = {"base_url": env["ASAP_DEMO_HARDENED_URL"], "ca_file": env["ASAP_DEMO_CA_FILE"],
                "token_env": "ASAP_DEMO_TOKEN"}
    weak = {"base_url": env["ASAP_DEMO_MISCONFIGURED_URL"], "tls_verify": False}
    params = tmp_path / "params.yaml"
    out = tmp_path / "outputs"

    def write(api, web):
        params.write_text(yaml.safe_dump({"environment": "drift", "targets": [{"name": "api", **api}, {"name": "web", **web}]}))

    write(hardened, weak)
    assert main(["run", "--params", str(params), "--out", str(out), "--sections", "security"]) == 1
    write(weak, hardened)
    assert main(["run", "--params", str(params), "--out", str(out), "--sections", "security"]) == 1
    said = capsys.readouterr().out
    assert "fixed" in said and "regressed" in said
    runs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert main(["diff", runs[0], runs[1], "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert ("SEC-TLS-4", "web") in {(c["item_id"], c["target"]) for c in doc["fixed"]}
    assert ("SEC-TLS-4", "api") in {(c["item_id"], c["target"]) for c in doc["regressed"]}
    second = json.loads((out / runs[1] / "manifest.json").read_text())
    assert second["drift"]["base_run_id"] == runs[0] and second["drift"]["fixed"] >= 1
    assert second["previous"]["run_id"] == runs[0]  # the signed chain that drift followed
    saved = json.loads((out / runs[1] / "drift.json").read_text())
    assert saved["found_by"].startswith("manifest chain") and "drift.json" in second["files"]
    page = (out / runs[1] / "index.html").read_text()
    assert "What changed since the previous run" in page and f"../{runs[0]}/index.html" in page
    assert 'href="security.html#SEC-TLS-4--web"' in page  # the drift row and the matrix link into the evidence
    assert 'id="SEC-TLS-4--web"' in (out / runs[1] / "security.html").read_text()
    index = (out / "index.html").read_text()
    assert index.index(runs[1]) < index.index(runs[0])
    assert os.environ.get("ASAP_DEMO_TOKEN") and os.environ["ASAP_DEMO_TOKEN"] not in page + index


def test_summary_page_rendered_again_keeps_drift_and_matrix(tmp_path):
    """An after-the-fact sign-off re-renders index.html with no drift passed: it comes from drift.json."""
    from asap_runbook.runner import write_index
    base = _run("a", [_r("SEC-TLS-1", Status.FAIL)], T0)
    current = _run("b", [_r("SEC-TLS-1", Status.PASS)], T0 + timedelta(hours=1))
    d = tmp_path / "b"
    d.mkdir()
    drift.write_drift(drift.compare(base, current, "manifest chain (same params digest)"), d)
    write_index(current, d, {})
    page = (d / "index.html").read_text()
    assert "Fixed (1)" in page and 'href="#SEC-TLS-1--api">pass</a>' in page
