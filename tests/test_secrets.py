"""No secret reaches any artifact: the reference deployment's random bearer token is the canary,
searched byte-wise in every file of a real run directory (executed notebooks and their papermill
metadata, results, section files, log, HTML, JUnit, manifest, sign-off) (papermill #271/#706)."""

import base64
import os
import shutil
from pathlib import Path

import pytest


def canary_forms(token: str) -> dict[str, bytes]:
    raw = token.encode()
    return {"raw": raw, "base64": base64.b64encode(raw), "bearer-base64": base64.b64encode(b"Bearer " + raw),
            "hex": raw.hex().encode()}


def files_holding(run_dir: Path, forms: dict[str, bytes]) -> list[str]:
    hits = []
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        data = path.read_bytes()
        hits += [f"{path.relative_to(run_dir)} ({name})" for name, needle in forms.items() if needle in data]
    return hits


@pytest.fixture
def canary(evidence_run):
    token = os.environ.get("ASAP_DEMO_TOKEN", "")
    assert len(token) >= 32, "the reference deployment sets a random token: the canary"
    return token


def test_the_run_directory_holds_every_kind_of_artifact(evidence_run):
    names = {p.relative_to(evidence_run.run_dir).as_posix() for p in evidence_run.run_dir.rglob("*") if p.is_file()}
    for must in ("results.json", "runbook.log", "index.html", "junit.xml", "manifest.json", "sign-off.json",
                 "notebooks/security.ipynb", "security.html", "summary.md"):
        assert must in names, must
    assert b'"papermill"' in (evidence_run.run_dir / "notebooks" / "security.ipynb").read_bytes()


def test_no_artifact_contains_the_token(evidence_run, canary):
    assert files_holding(evidence_run.run_dir, canary_forms(canary)) == []


def test_the_scan_finds_a_planted_canary(evidence_run, canary, tmp_path):
    """The scan itself can fail: plant the token in a copy of the executed notebook."""
    run = tmp_path / "run"
    shutil.copytree(evidence_run.run_dir, run)
    nb = run / "notebooks" / "scaling.ipynb"
    nb.write_bytes(nb.read_bytes().replace(b'"params_path"', b'"token": "' + canary.encode() + b'", "params_path"', 1))
    assert files_holding(run, canary_forms(canary)) == ["notebooks/scaling.ipynb (raw)"]


def test_run_output_on_the_console_holds_no_token(evidence_run, canary):
    assert canary not in evidence_run.proc.stdout + evidence_run.proc.stderr
