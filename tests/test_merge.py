"""`asap-runbook merge`: two real runs (two "regions", two signing keys) as one signed fleet report
whose sources `verify` re-checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asap_runbook import merge, signing
from asap_runbook.cli import main
from asap_runbook.results import RunResults
from asap_runbook.runner import run

from conftest import write_test_params


@pytest.fixture(scope="module")
def regions(deployment, tmp_path_factory):
    """One security run per region, each signed by its own key."""
    work = tmp_path_factory.mktemp("regions")
    runs = {}
    for region, target in (("eu-west", "hardened"), ("us-east", "misconfigured")):
        key, _, _ = signing.keygen(work / f"{region}.pem")
        params = write_test_params(work / region, targets=[target], active=False, environment=region)
        _, run_dir = run(params, work / region / "out", ["security"], signing_key=str(key), say=lambda s: None)
        runs[region] = run_dir
    merge_key, merge_pub, _ = signing.keygen(work / "fleet.pem")
    return runs, merge_key, merge_pub, work


def _statuses(run_dir: Path) -> dict[tuple[str, str], str]:
    return {(r["item_id"], r["target"]): r["status"]
            for r in json.loads((run_dir / "results.json").read_text())["results"]}


def test_merge_is_one_signed_report_whose_sources_verify(regions, capsys):
    runs, key, pub, work = regions
    code = main(["merge", str(runs["eu-west"]), str(runs["us-east"]), "--out", str(work / "fleet"),
                 "--signing-key", str(key)])
    merged = next(p for p in (work / "fleet").iterdir() if p.is_dir())
    got = json.loads((merged / "results.json").read_text())
    assert got["targets"] == ["hardened", "misconfigured"]
    assert _statuses(merged) == _statuses(runs["eu-west"]) | _statuses(runs["us-east"])
    # the misconfigured agent fails blocking items; only security ran, so the rest is not run
    assert code == 1 and got["readiness"] == "not ready"
    assert got["sections_not_run"] == ["monitoring", "scaling", "resilience"]
    manifest = json.loads((merged / "manifest.json").read_text())
    assert [s["environment"] for s in manifest["sources"]] == ["eu-west", "us-east"]
    assert manifest["sources"][0]["manifest_sha256"] == signing.sha256_file(runs["eu-west"] / "manifest.json")
    capsys.readouterr()
    assert main(["verify", str(merged), "--public-key", str(pub)]) == 0
    out = capsys.readouterr().out
    assert f"source {runs['eu-west'].name} (eu-west): manifest unchanged, signed by" in out
    assert "INTACT" in out


def test_verify_catches_a_source_rewritten_under_a_re_signed_merge(regions, capsys):
    """Whoever holds the merge key cannot change what a region's run said: its own signature says no."""
    runs, key, pub, work = regions
    assert main(["merge", str(runs["eu-west"]), str(runs["us-east"]), "--out", str(work / "forged"),
                 "--signing-key", str(key)]) == 1
    merged = next(p for p in (work / "forged").iterdir() if p.is_dir())
    src = merged / "sources" / runs["us-east"].name / "results.json"
    src.write_text(src.read_text().replace('"status": "fail"', '"status": "pass"'))
    manifest = json.loads((merged / "manifest.json").read_text())
    manifest["files"] = signing.artifact_digests(merged)
    signing.write_manifest_file(signing.sign(manifest, signing.load_signing_key(str(key))), merged)
    capsys.readouterr()
    assert main(["verify", str(merged), "--public-key", str(pub)]) == 1
    out = capsys.readouterr().out
    assert f"sources: source {runs['us-east'].name}: results.json is not the one its manifest lists" in out


def test_a_tampered_source_is_not_merged(regions, tmp_path, capsys):
    runs, _, _, work = regions
    import shutil
    copy = tmp_path / runs["us-east"].name
    shutil.copytree(runs["us-east"], copy)
    (copy / "summary.md").write_text("all good\n")
    assert main(["merge", str(runs["eu-west"]), str(copy), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "does not match its manifest (changed: summary.md); it is not merged." in err
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_shared_target_names_are_qualified_by_environment(regions):
    runs, *_ = regions
    a = RunResults.model_validate_json((runs["eu-west"] / "results.json").read_text())
    b = a.model_copy(update={"run_id": "other", "environment": "ap-south"})
    m = merge.merged_results([a, b], "m")
    assert m.targets == ["eu-west/hardened", "ap-south/hardened"]
    assert len(m.results) == 2 * len(a.results)
    assert {r.target for r in m.results} == set(m.targets)
