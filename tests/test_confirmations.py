"""Confirmations and waivers: the file format, expiry, the CLI, and what a real run makes of them."""

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from asap_runbook import cli
from asap_runbook.catalog import load_catalog
from asap_runbook.confirmations import add_confirmation, apply_records, load_confirmations, validate_files
from asap_runbook.errors import ParamsError
from asap_runbook.params import load_params
from asap_runbook.results import Result, RunResults, Status, blockers, exit_code


@pytest.fixture
def params(tmp_path):
    """Minimal parameters (nothing is contacted): two targets, records files in tmp."""
    p = tmp_path / "params.yaml"
    p.write_text("environment: staging\nwaivers_file: waivers.yaml\ntargets:\n"
                 "  - {name: api, base_url: 'https://127.0.0.1:9'}\n  - {name: worker, base_url: 'https://127.0.0.1:10'}\n")
    return p


def result(item_id, target="api", status=Status.MANUAL, summary="awaiting a person: look"):
    item = load_catalog().get(item_id)
    return Result(item_id=item_id, target=target, section=item.section, subsection=item.subsection, title=item.text,
                  status=status, summary=summary, severity=str(item.severity), blocking=item.blocking,
                  verification=str(item.verification))


def test_default_confirmations_file_is_per_environment_beside_params(params, tmp_path):
    assert load_params(params).confirmations_file == tmp_path / "confirmations" / "staging.yaml"


def test_unconfirmed_stays_manual(params):
    p = load_params(params)
    [r] = apply_records([result("SEC-HANDLER-5")], p)
    assert r.status is Status.MANUAL and r.confirmation is None


def test_confirmed_item_carries_who_when_note(params):
    p = load_params(params)
    add_confirmation(p.confirmations_file, "SEC-HANDLER-5", "Alice", target="api", note="reviewed handlers",
                     evidence_url="https://tickets.example/1")
    api, worker = apply_records([result("SEC-HANDLER-5"), result("SEC-HANDLER-5", "worker")], p)
    assert api.status is Status.CONFIRMED
    assert api.confirmation.by == "Alice" and api.confirmation.note == "reviewed handlers"
    assert api.confirmation.evidence_url == "https://tickets.example/1"
    ttl = load_catalog().get("SEC-HANDLER-5").confirmation_ttl_days
    assert api.confirmation.expires_at - api.confirmation.at == timedelta(days=ttl)
    assert worker.status is Status.MANUAL, "a confirmation for one target does not cover another"
    assert exit_code([api]) == 0 and not blockers([api])


def test_confirmation_without_target_covers_every_target(params):
    p = load_params(params)
    add_confirmation(p.confirmations_file, "MON-LOG-4", "Alice", note="log retention set to 30 days", evidence_url="https://tickets.example/7")
    rs = apply_records([result("MON-LOG-4"), result("MON-LOG-4", "worker")], p)
    assert [r.status for r in rs] == [Status.CONFIRMED, Status.CONFIRMED]


def test_expired_confirmation_is_manual_again_with_the_reason(params):
    p = load_params(params)
    ttl = load_catalog().get("SEC-HANDLER-5").confirmation_ttl_days
    add_confirmation(p.confirmations_file, "SEC-HANDLER-5", "Alice", target="api", note="reviewed",
                     at=datetime.now(UTC) - timedelta(days=ttl + 1))
    [r] = apply_records([result("SEC-HANDLER-5")], p)
    assert r.status is Status.MANUAL
    assert "expired" in r.summary and "Alice" in r.summary
    assert r.details["expired_confirmation"]["by"] == "Alice"
    assert exit_code([r]) == 3


def test_per_item_ttl_overrides_the_catalog_default(params):
    p = load_params(params)
    add_confirmation(p.confirmations_file, "SEC-HANDLER-5", "Alice", target="api", ttl_days=2, note="reviewed",
                     at=datetime.now(UTC) - timedelta(days=3))
    [r] = apply_records([result("SEC-HANDLER-5")], p)
    assert r.status is Status.MANUAL and "valid 2 days" in r.summary


def test_latest_record_wins_and_history_is_kept(params):
    p = load_params(params)
    old = datetime.now(UTC) - timedelta(days=400)
    add_confirmation(p.confirmations_file, "SEC-HANDLER-5", "Old Timer", target="api", at=old, note="long ago")
    add_confirmation(p.confirmations_file, "SEC-HANDLER-5", "Alice", target="api", note="renewed")
    [r] = apply_records([result("SEC-HANDLER-5")], p)
    assert r.status is Status.CONFIRMED and r.confirmation.by == "Alice"
    assert [c.by for c in load_confirmations(p.confirmations_file).confirmations] == ["Old Timer", "Alice"]


def test_concurrent_writers_lose_nothing(params):
    p = load_params(params)
    threads = [threading.Thread(target=add_confirmation, args=(p.confirmations_file, "MON-LOG-4", f"person{i}"),
                                kwargs={"note": "retention checked", "evidence_url": "https://t.example/1"})
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(load_confirmations(p.confirmations_file).confirmations) == 8
    assert not list(p.confirmations_file.parent.glob("*.tmp")), "no temp file left behind"


def test_a_skipped_blocking_item_is_not_verified_until_a_person_closes_it(params):
    """A skip is not a pass: SEC-TLS-5 skipped (no http_url) keeps the run incomplete and says how
    to verify it; a confirmation with a note and evidence closes it."""
    p = load_params(params)
    skipped = result("SEC-TLS-5", status=Status.SKIP, summary="targets[api].http_url is not set")
    assert exit_code([skipped]) == 3
    [line] = blockers([skipped])
    assert "not verified: targets[api].http_url is not set" in line and "asap-runbook confirm SEC-TLS-5" in line
    add_confirmation(p.confirmations_file, "SEC-TLS-5", "Alice", target="api", note="port 80 closed at the LB",
                     evidence_url="https://tickets.example/80")
    [closed] = apply_records([skipped], p)
    assert closed.status is Status.CONFIRMED and exit_code([closed]) == 0 and blockers([closed]) == []


def test_a_skipped_advisory_item_does_not_block(params):
    advisory = result("SEC-HANDLER-5", status=Status.SKIP, summary="not enabled")
    assert exit_code([advisory]) == 0 and blockers([advisory]) == []


def test_a_record_without_note_or_evidence_does_not_close_a_blocking_item(params):
    """Records written by hand (or by an older version) must meet the same bar as the CLI's."""
    p = load_params(params)
    p.confirmations_file.parent.mkdir(parents=True, exist_ok=True)
    p.confirmations_file.write_text(yaml.safe_dump({"schema_version": 1, "confirmations": [
        {"item": "MON-LOG-4", "target": "api", "by": "Alice", "at": datetime.now(UTC).isoformat(), "note": "ok"},
        {"item": "SEC-HANDLER-5", "target": "api", "by": "Bob", "at": datetime.now(UTC).isoformat()}]}))
    blocking, advisory = apply_records([result("MON-LOG-4"), result("SEC-HANDLER-5")], p)
    assert blocking.status is Status.MANUAL and "links no evidence" in blocking.summary
    assert advisory.status is Status.MANUAL and "has no note" in advisory.summary


def test_confirmation_does_not_override_an_automated_verdict(params):
    p = load_params(params)
    add_confirmation(p.confirmations_file, "SEC-TLS-1", "Alice", note="trust me", evidence_url="https://tickets.example/7")
    [r] = apply_records([result("SEC-TLS-1", status=Status.FAIL, summary="plain HTTP answered")], p)
    assert r.status is Status.FAIL


def write_waivers(path, *waivers):
    path.write_text(yaml.safe_dump({"schema_version": 1, "waivers": list(waivers)}))


def waiver(item="SEC-TLS-1", target="api", expires="2099-01-01", **kw):
    return {"item": item, "target": target, "approver": "Bob", "reason": "legacy clients", "ticket": "OPS-1",
            "expires": expires, **kw}


@pytest.mark.parametrize("status", [Status.FAIL, Status.WARN, Status.ERROR])
def test_waived_finding_keeps_its_fields_and_original_status(params, tmp_path, status):
    p = load_params(params)
    write_waivers(tmp_path / "waivers.yaml", waiver())
    fail = result("SEC-TLS-1", status=status, summary="plain HTTP answered")
    [r] = apply_records([fail], p)
    assert r.status is Status.WAIVED
    assert (r.waiver.approver, r.waiver.reason, r.waiver.ticket) == ("Bob", "legacy clients", "OPS-1")
    assert r.waiver.original_status is status and r.waiver.expires.year == 2099
    assert "plain HTTP answered" in r.summary
    assert exit_code([r]) == 0 and blockers([r]) == [], "a waived finding does not block sign-off"
    if status is not Status.WARN:  # a warning never blocked in the first place
        assert exit_code([fail]) != 0


def test_waiver_applies_only_to_its_target_and_not_to_passes(params, tmp_path):
    p = load_params(params)
    write_waivers(tmp_path / "waivers.yaml", waiver(target="worker"))
    other, ok = apply_records([result("SEC-TLS-1", status=Status.FAIL), result("SEC-TLS-1", "worker", Status.PASS)], p)
    assert other.status is Status.FAIL and ok.status is Status.PASS


def test_expired_waiver_is_ignored_with_a_warning(params, tmp_path, capsys):
    p = load_params(params)
    write_waivers(tmp_path / "waivers.yaml", waiver(expires="2020-01-01"))
    [r] = apply_records([result("SEC-TLS-1", status=Status.FAIL, summary="plain HTTP answered")], p)
    assert r.status is Status.FAIL and r.waiver is None
    assert "expired on 2020-01-01" in r.summary
    assert r.details["expired_waiver"]["ticket"] == "OPS-1"
    assert "waiver for SEC-TLS-1 on api" in capsys.readouterr().err
    assert exit_code([r]) == 1


@pytest.mark.parametrize("content, words", [
    ("waivers: [{item: NOPE-1, target: api, approver: a, reason: r, ticket: t, expires: 2099-01-01}]", "unknown checklist item"),
    ("waivers: [{item: SEC-TLS-1, target: api, approver: a, reason: r, expires: 2099-01-01}]", "ticket"),
    ("waivers: [{item: SEC-TLS-1", "not valid YAML"),
])
def test_malformed_waivers_file_is_one_sentence(params, tmp_path, content, words):
    (tmp_path / "waivers.yaml").write_text(content)
    with pytest.raises(ParamsError) as e:
        validate_files(load_params(params))
    assert words in str(e.value) and "\n" not in str(e.value)


def test_cli_confirm_writes_the_file(params, capsys):
    code = cli.main(["confirm", "SEC-HANDLER-5", "--target", "api", "--by", "Dana", "--note", "handler audit done",
                     "--evidence", "https://x.example/9", "--params", str(params)])
    assert code == 0
    p = load_params(params)
    [rec] = load_confirmations(p.confirmations_file).confirmations
    assert (rec.item, rec.target, rec.by, rec.note, rec.evidence_url) == ("SEC-HANDLER-5", "api", "Dana",
                                                                          "handler audit done", "https://x.example/9")
    assert "valid until" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["confirm", "NOPE-9", "--by", "D", "--note", "n"], "unknown checklist item"),
    (["confirm", "SEC-HANDLER-5", "--target", "nope", "--by", "D", "--note", "n"], "no target named 'nope'"),
    (["confirm", "SEC-HANDLER-5", "--by", " ", "--note", "n"], "needs a name"),
    (["confirm", "SEC-HANDLER-5", "--by", "D", "--note", "  "], "needs a note"),
    (["confirm", "SEC-TLS-5", "--by", "D", "--note", "port 80 closed"], "needs a link to the evidence"),
])
def test_cli_confirm_bad_input_exits_2(params, capsys, argv, words):
    assert cli.main([*argv, "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_headless_check_against_the_real_deployment_reads_confirmations(deployment, tmp_path, check):
    """The engine path a notebook and `asap-runbook run` take, against the real reference target."""
    from conftest import write_test_params
    params = load_params(write_test_params(tmp_path))
    assert check("SCALE-STATE-3", "hardened", params).status is Status.MANUAL
    add_confirmation(params.confirmations_file, "SCALE-STATE-3", "Erin", target="hardened", note="snapshots tested")
    r = check("SCALE-STATE-3", "hardened", params)
    assert r.status is Status.CONFIRMED and r.confirmation.by == "Erin"


# -- the shared full run (conftest.evidence_run) ---------------------------------------------

def test_full_run_shows_confirmation_and_waivers(evidence_run):
    run = RunResults.model_validate_json((evidence_run.run_dir / "results.json").read_text())
    by = {(r.item_id, r.target): r for r in run.results}
    conf = by[("SCALE-CACHE-3", "hardened")]
    assert conf.status is Status.CONFIRMED and conf.confirmation.by == "Alice Operator"
    assert by[("SCALE-CACHE-3", "misconfigured")].status is Status.MANUAL
    waived = by[("SEC-TLS-4", "misconfigured")]
    assert waived.status is Status.WAIVED and waived.waiver.original_status is Status.FAIL
    assert waived.waiver.ticket == "OPS-1234"
    assert not any("SEC-TLS-4 on misconfigured" in b for b in run.blockers)
    expired = by[("SEC-TLS-1", "misconfigured")]
    assert expired.status is Status.FAIL and "expired_waiver" in expired.details
    assert "warning: waiver for SEC-TLS-1 on misconfigured (OPS-999) expired" in evidence_run.proc.stdout
    assert run.counts["confirmed"] >= 1 and run.counts["waived"] == 1


def test_full_run_html_shows_confirmation_and_waiver(evidence_run):
    html = (evidence_run.run_dir / "index.html").read_text()
    assert 'id="waivers"' in html and 'id="confirmations"' in html
    assert "Alice Operator" in html and "cache TTLs reviewed with the payments team" in html
    assert "Bob Approver" in html and "OPS-1234" in html
    # the evidence rows (with who confirmed and who waived) are on the section pages
    assert "confirmed by <b>Alice Operator</b>" in (evidence_run.run_dir / "scaling.html").read_text()
    assert "waived by <b>Bob Approver</b> (OPS-1234) until 2099-12-31" in (evidence_run.run_dir / "security.html").read_text()
    run = json.loads((evidence_run.run_dir / "results.json").read_text())
    assert any(r["status"] == "waived" and r["section"] == "security" for r in run["results"])


def test_run_with_a_malformed_waivers_file_exits_2_before_anything_runs(params, tmp_path, capsys):
    (tmp_path / "waivers.yaml").write_text("waivers: [{item: SEC-TLS-1, target: api}]\n")
    assert cli.main(["run", "--params", str(params), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "waivers file" in err and "approver" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_applying_twice_changes_nothing(params, tmp_path):
    p = load_params(params)
    write_waivers(tmp_path / "waivers.yaml", waiver(expires="2020-01-01"), waiver(item="SEC-TLS-4"))
    add_confirmation(p.confirmations_file, "MON-LOG-4", "Alice", note="retention checked", evidence_url="https://tickets.example/7")
    once = apply_records([result("SEC-TLS-1", status=Status.FAIL), result("SEC-TLS-4", status=Status.FAIL),
                          result("MON-LOG-4")], p)
    assert [r.status for r in once] == [Status.FAIL, Status.WAIVED, Status.CONFIRMED]
    assert apply_records(once, p) == once


def _write_run(out, params, *results):
    """A run directory as `asap-runbook run` leaves it, as far as `confirm` reads it."""
    from asap_runbook.results import now
    run_dir = out / "20261130T000000Z-abcd"
    run_dir.mkdir(parents=True)
    run = RunResults(run_id=run_dir.name, runbook_version="t", environment="staging", params_file=str(params.resolve()),
                     params_digest="x", started_at=now(), finished_at=now(), sections=["security"],
                     targets=["api", "worker"], results=list(results), counts={}, exit_code=3, readiness="incomplete")
    (run_dir / "results.json").write_text(run.model_dump_json())
    (run_dir / "manifest.json").write_text(json.dumps({"run_id": run_dir.name, "params_file": str(params.resolve()),
                                                       "started_at": now().isoformat()}))
    return run_dir


def test_cli_refuses_to_confirm_what_the_run_verified(params, tmp_path, capsys):
    out = tmp_path / "outputs"
    _write_run(out, params, result("SEC-TLS-1", status=Status.FAIL, summary="plain HTTP answered"),
               result("SEC-TLS-5", status=Status.SKIP, summary="targets[api].http_url is not set"))
    argv = ["--by", "Dana", "--note", "looked", "--evidence", "https://x.example/1", "--params", str(params), "--out", str(out)]
    assert cli.main(["confirm", "SEC-TLS-1", "--target", "api", *argv]) == 2
    err = capsys.readouterr().err
    assert "SEC-TLS-1 was verified automatically in run 20261130T000000Z-abcd on api (fail)" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not load_params(params).confirmations_file.exists()
    assert cli.main(["confirm", "SEC-TLS-5", "--target", "api", *argv]) == 0, "what the run could not verify, a person closes"
