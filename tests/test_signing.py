"""Tamper evidence: keygen, the signed and chained manifest, verify, and sign-off."""

import json
import shutil
from pathlib import Path

import pytest

from asap_runbook import cli, signing
from asap_runbook.confirmations import add_confirmation
from asap_runbook.errors import UsageError
from asap_runbook.params import load_params
from asap_runbook.results import RunResults, Status


def copy_run(run_dir: Path, dest: Path) -> Path:
    """Tamper with a copy: the shared run stays intact for the other tests."""
    out = dest / "runs" / run_dir.name
    shutil.copytree(run_dir, out)
    return out


def verify(run_dir, *extra):
    return cli.main(["verify", str(run_dir), *extra])


# -- keys ------------------------------------------------------------------------------------

def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path, capsys):
    assert cli.main(["keygen", str(tmp_path / "k.pem")]) == 0
    assert (tmp_path / "k.pem").stat().st_mode & 0o077 == 0
    assert (tmp_path / "k.pem.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert "fingerprint SHA256:" in capsys.readouterr().out
    assert cli.main(["keygen", str(tmp_path / "k.pem")]) == 2, "never overwrite a key"


def test_signing_key_from_env_as_path_or_pem(tmp_path, monkeypatch):
    key, _, fp = signing.keygen(tmp_path / "k.pem")
    monkeypatch.setenv(signing.KEY_ENV, str(key))
    assert signing.fingerprint(signing.load_signing_key().public_key()) == fp
    monkeypatch.setenv(signing.KEY_ENV, key.read_text())
    assert signing.fingerprint(signing.load_signing_key().public_key()) == fp
    monkeypatch.delenv(signing.KEY_ENV)
    assert signing.load_signing_key() is None


@pytest.mark.parametrize("content, words", [
    (None, "cannot be read"), ("not a key", "not an unencrypted PEM private key"),
])
def test_bad_signing_key_is_one_sentence(tmp_path, content, words):
    path = tmp_path / "k.pem"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UsageError) as e:
        signing.load_signing_key(str(path))
    assert words in e.value.message


def test_run_with_a_bad_key_exits_2_before_anything_runs(tmp_path, capsys):
    params = tmp_path / "p.yaml"
    params.write_text("targets: [{name: a, base_url: 'https://127.0.0.1:9'}]\n")
    code = cli.main(["run", "--params", str(params), "--out", str(tmp_path / "out"), "--signing-key", str(tmp_path / "nope")])
    assert code == 2 and "cannot be read" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# -- verify on the shared full run -----------------------------------------------------------

def test_fresh_run_verifies_with_the_pinned_key(evidence_run, capsys):
    assert verify(evidence_run.run_dir, "--public-key", str(evidence_run.public_key)) == 0
    out = capsys.readouterr().out
    assert "INTACT" in out and "(pinned)" in out


def test_manifest_lists_every_artifact_and_is_signed(evidence_run):
    m = json.loads((evidence_run.run_dir / "manifest.json").read_text())
    files = {p.relative_to(evidence_run.run_dir).as_posix() for p in evidence_run.run_dir.rglob("*") if p.is_file()}
    assert set(m["files"]) == files - {"manifest.json"}
    assert {"index.html", "results.json", "sign-off.json", "notebooks/security.ipynb", "runbook.log"} <= set(m["files"])
    assert m["signature"]["algorithm"] == "ed25519"
    assert m["previous"] is None, "the first run in its folder"


def test_one_flipped_byte_is_named(evidence_run, tmp_path, capsys):
    run = copy_run(evidence_run.run_dir, tmp_path)
    target = run / "results.json"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    assert verify(run) == 1
    out = capsys.readouterr().out
    print(out)
    assert "changed: results.json" in out and "TAMPERED" in out
    assert "changed: index.html" not in out, "only the file that changed is named"


def test_added_and_removed_files_are_named(evidence_run, tmp_path, capsys):
    run = copy_run(evidence_run.run_dir, tmp_path)
    (run / "scaling.html").unlink()
    (run / "notebooks" / "extra.ipynb").write_text("{}")
    assert verify(run) == 1
    out = capsys.readouterr().out
    assert "removed: scaling.html" in out and "added: notebooks/extra.ipynb" in out


def test_edited_manifest_breaks_the_signature(evidence_run, tmp_path, capsys):
    """An attacker who edits a file and fixes its digest in the manifest still cannot re-sign it."""
    run = copy_run(evidence_run.run_dir, tmp_path)
    (run / "junit.xml").write_text("<testsuites/>")
    m = json.loads((run / "manifest.json").read_text())
    m["files"]["junit.xml"] = signing.sha256_file(run / "junit.xml")
    (run / "manifest.json").write_text(json.dumps(m))
    assert verify(run) == 1
    out = capsys.readouterr().out
    assert "signature: bad" in out and "changed:" not in out


def test_resigned_with_another_key_is_caught_when_the_key_is_pinned(evidence_run, tmp_path, capsys):
    run = copy_run(evidence_run.run_dir, tmp_path)
    other, _, _ = signing.keygen(tmp_path / "other.pem")
    m = json.loads((run / "manifest.json").read_text())
    signing.write_manifest_file(signing.sign(m, signing.load_signing_key(str(other))), run)
    assert verify(run) == 0, "self-consistent with its embedded key..."
    capsys.readouterr()
    assert verify(run, "--public-key", str(evidence_run.public_key)) == 1, "...but not the key the auditor trusts"
    assert "not by the pinned key" in capsys.readouterr().out


def test_missing_signature_is_reported(evidence_run, tmp_path, capsys):
    run = copy_run(evidence_run.run_dir, tmp_path)
    m = json.loads((run / "manifest.json").read_text())
    del m["signature"]
    (run / "manifest.json").write_text(json.dumps(m))
    assert verify(run) == 4
    out = capsys.readouterr().out
    assert "UNSIGNED" in out and "TAMPERED" not in out and "not signed" in out
    (run / "results.json").write_text((run / "results.json").read_text() + " ")
    assert verify(run) == 1, "unsigned and changed is tampered, not merely unsigned"
    out = capsys.readouterr().out
    assert "TAMPERED" in out and "changed: results.json" in out


def test_verify_usage_errors_exit_2(tmp_path, capsys):
    assert verify(tmp_path / "nope") == 2
    assert verify(tmp_path) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_refused_sign_off_lists_what_blocks(evidence_run):
    out = evidence_run.proc.stdout
    assert evidence_run.proc.returncode == 1
    assert "sign-off by Alice Operator refused: the run is not ready" in out
    rec = json.loads((evidence_run.run_dir / "sign-off.json").read_text())
    run = RunResults.model_validate_json((evidence_run.run_dir / "results.json").read_text())
    assert rec["signed_off"] is False and rec["refused"] == run.blockers and rec["refused"]
    assert "SEC-TLS-1 on misconfigured: fail" in "\n".join(rec["refused"])
    html = (evidence_run.run_dir / "index.html").read_text()
    assert "<b>refused</b>" in html


def test_sign_off_block_records_provenance(evidence_run):
    rec = json.loads((evidence_run.run_dir / "sign-off.json").read_text())
    assert rec["packages"]["asap-protocol"] == "2.5.10" and rec["packages"]["papermill"] != "not installed"
    assert rec["interpreter"]["executable"] and rec["git_commit"]
    html = (evidence_run.run_dir / "index.html").read_text()
    for text in (rec["run_id"], rec["params_digest"], rec["git_commit"], rec["interpreter"]["executable"],
                 "asap-protocol&nbsp;2.5.10", rec["signing_key"]):
        assert text in html, text


# -- a run that is ready: sign-off, the CLI control, the chain -------------------------------

@pytest.fixture(scope="module")
def ready_runs(deployment, tmp_path_factory):
    """The whole checklist on the hardened target with every active probe off: a first run, which
    is incomplete (items await a person, blocking items the passive run cannot verify), then every
    such item confirmed by a person with a note and evidence, and a second run, which is ready."""
    from conftest import write_test_params
    from asap_runbook.runner import run
    work = tmp_path_factory.mktemp("ready")
    params_path = write_test_params(work, targets=["hardened"], active=False)
    key, pub, _ = signing.keygen(work / "key.pem")
    out = work / "runs"
    first_code, first = run(params_path, out, None, say=lambda *_: None, signing_key=str(key))
    params = load_params(params_path)
    for r in RunResults.model_validate_json((first / "results.json").read_text()).results:
        if r.status is Status.MANUAL or (r.status is Status.SKIP and r.blocking):
            add_confirmation(params.confirmations_file, r.item_id, "Frank Operator", target=r.target,
                             note="checked by hand for the test", evidence_url="https://tickets.example/ready")
    code, second = run(params_path, out, None, say=lambda *_: None, signing_key=str(key))
    return first, second, code, key, pub, first_code


def test_a_passive_run_is_incomplete_and_says_what_would_verify_it(ready_runs):
    first, *_, first_code = ready_runs
    run = RunResults.model_validate_json((first / "results.json").read_text())
    assert first_code == 3, run.blockers
    cov = run.coverage["hardened"]
    assert cov.not_verified_blocking > 0 and cov.total == 61
    skipped = [r for r in run.results if r.status is Status.SKIP and r.blocking]
    assert skipped, "active probes are off: some blocking item cannot be verified"
    for r in skipped:
        [line] = [b for b in run.blockers if b.startswith(f"{r.item_id} on hardened:")]
        assert "not verified: " in line and r.summary in line
    rec = json.loads((first / "sign-off.json").read_text())
    assert rec["coverage"]["hardened"]["not_verified_blocking"] == cov.not_verified_blocking


def test_confirmed_run_is_ready(ready_runs):
    first, second, code, *_ = ready_runs
    run = RunResults.model_validate_json((second / "results.json").read_text())
    assert code == 0, run.blockers
    assert run.counts["confirmed"] > 0 and run.counts["manual"] == 0
    assert run.coverage["hardened"].not_verified_blocking == 0 and run.coverage["hardened"].confirmed > 0


def test_second_run_chains_to_the_first(ready_runs, capsys):
    first, second, *_ = ready_runs
    m = json.loads((second / "manifest.json").read_text())
    assert m["previous"] == {"run_id": first.name, "manifest_sha256": signing.sha256_file(first / "manifest.json")}
    assert verify(second) == 0
    assert f"chained to previous run {first.name}" in capsys.readouterr().out


def test_sign_off_cli_signs_a_ready_run_and_keeps_it_verifiable(ready_runs, capsys):
    first, second, _, key, pub, _ = ready_runs
    assert cli.main(["sign-off", str(second), "--by", "Grace Lead", "--signing-key", str(key)]) == 0
    rec = json.loads((second / "sign-off.json").read_text())
    assert rec["signed_off"] and rec["by"] == "Grace Lead" and rec["at"]
    assert "Signed off by <b>Grace Lead</b>" in (second / "index.html").read_text()
    capsys.readouterr()
    assert verify(second, "--public-key", str(pub)) == 0, capsys.readouterr().out
    assert cli.main(["sign-off", str(second), "--by", "Someone Else", "--signing-key", str(key)]) == 2
    assert "already signed off by Grace Lead" in capsys.readouterr().err


def test_sign_off_refused_when_a_later_run_chains_to_it(ready_runs, capsys):
    first, _, _, key, _, _ = ready_runs
    assert cli.main(["sign-off", str(first), "--by", "Grace Lead", "--signing-key", str(key)]) == 2
    assert "chains to this run's manifest" in capsys.readouterr().err


def test_chain_names_a_changed_previous_manifest(ready_runs, tmp_path, capsys):
    first, second, *_ = ready_runs
    out = tmp_path / "runs"
    shutil.copytree(first, out / first.name)
    shutil.copytree(second, out / second.name)
    m = out / first.name / "manifest.json"
    m.write_text(m.read_text().replace('"readiness"', '"readiness" ', 1))
    assert verify(out / second.name) == 1
    assert "chain: the previous run's manifest" in capsys.readouterr().out


def test_run_with_sign_off_by_signs_a_ready_run(ready_runs, deployment, tmp_path):
    from asap_runbook.runner import run
    first, second, _, key, _, _ = ready_runs
    params = second.parent.parent / "params.yaml"
    lines = []
    code, partial = run(params, second.parent, ["scaling"], say=lines.append, signing_key=str(key),
                        sign_off_by="Heidi Operator")
    assert code == 3, "every item of the scaling section is closed, but a partial run is not the checklist"
    assert any("PARTIAL run: scaling only" in line for line in lines)
    assert any("sign-off by Heidi Operator refused" in line for line in lines)
    rec = json.loads((partial / "sign-off.json").read_text())
    assert not rec["signed_off"] and any("section security did not run" in b for b in rec["refused"])
    lines = []
    code, third = run(params, second.parent, None, say=lines.append, signing_key=str(key),
                      sign_off_by="Heidi Operator")
    assert code == 0
    assert any(line.startswith("signed off by Heidi Operator") for line in lines)
    assert json.loads((third / "sign-off.json").read_text())["by"] == "Heidi Operator"
    assert signing.verify(third).intact
