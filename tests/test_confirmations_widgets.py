"""The confirmation panel without a browser: it shows the file's state on open, a click writes the
file, and nothing waits for a click (the browser path is tests/test_jupyterlab.py)."""

import ipywidgets as w
import pytest

from asap_runbook import notebook as rb
from asap_runbook.catalog import load_catalog
from asap_runbook.confirmations import add_confirmation, load_confirmations
from asap_runbook.params import load_params
from asap_runbook.results import Result, SectionRun, Status, now


def result(item_id, target, status=Status.MANUAL):
    item = load_catalog().get(item_id)
    return Result(item_id=item_id, target=target, section=item.section, subsection=item.subsection, title=item.text,
                  status=status, summary="awaiting a person", severity=str(item.severity), blocking=item.blocking,
                  verification=str(item.verification))


@pytest.fixture
def params(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("environment: staging\ntargets:\n  - {name: api, base_url: 'https://127.0.0.1:9'}\n")
    return p


def section(*results):
    return SectionRun(section="scaling", started_at=now(), results=list(results))


def find(widget, cls):
    """Every descendant carrying a DOM class (what the browser test selects on)."""
    out = [widget] if cls in getattr(widget, "_dom_classes", ()) else []
    for child in getattr(widget, "children", ()):
        out += find(child, cls)
    return out


def test_panel_lists_pending_items_and_a_click_writes_the_file(params, monkeypatch):
    monkeypatch.setenv("ASAP_RUNBOOK_USER", "Ivy Operator")
    panel = rb.confirm_panel(section(result("SCALE-CACHE-3", "api"), result("SCALE-SERVER-1", "api", Status.PASS)), str(params))
    assert len(find(panel, "asap-confirm-SCALE-CACHE-3-api")) == 1
    assert not find(panel, "asap-confirm-SCALE-SERVER-1-api"), "automated verdicts get no confirm control"
    [who] = find(panel, "asap-confirm-who")
    assert who.value == "" and who.placeholder == "Ivy Operator", "who is typed, never guessed (only a hint)"
    who.value = "Ivy Operator"
    [state] = find(panel, "asap-state-SCALE-CACHE-3-api")
    assert "not confirmed" in state.value
    find(panel, "asap-note-SCALE-CACHE-3-api")[0].value = "no shared cache needed: 1 instance"
    find(panel, "asap-confirm-SCALE-CACHE-3-api")[0].click()
    [rec] = load_confirmations(load_params(params).confirmations_file).confirmations
    assert (rec.item, rec.target, rec.by, rec.note) == ("SCALE-CACHE-3", "api", "Ivy Operator",
                                                        "no shared cache needed: 1 instance")
    assert "confirmed" in state.value and "Ivy Operator" in state.value


def test_panel_shows_the_current_state_on_open(params):
    add_confirmation(load_params(params).confirmations_file, "SCALE-CACHE-3", "Jack", target="api", note="done")
    panel = rb.confirm_panel(section(result("SCALE-CACHE-3", "api", Status.CONFIRMED)), str(params))
    [state] = find(panel, "asap-state-SCALE-CACHE-3-api")
    assert "confirmed</b> by Jack" in state.value


def test_click_without_a_name_says_so_and_writes_nothing(params):
    panel = rb.confirm_panel(section(result("SCALE-CACHE-3", "api")), str(params))
    find(panel, "asap-confirm-who")[0].value = "  "
    find(panel, "asap-confirm-SCALE-CACHE-3-api")[0].click()
    assert "needs a name" in find(panel, "asap-state-SCALE-CACHE-3-api")[0].value
    assert not load_params(params).confirmations_file.exists()


def test_bad_params_is_one_sentence_not_a_traceback(tmp_path):
    panel = rb.confirm_panel(section(result("SCALE-CACHE-3", "api")), str(tmp_path / "missing.yaml"))
    assert isinstance(panel, w.HTML) and "does not exist" in panel.value


def test_nothing_pending(params):
    panel = rb.confirm_panel(section(result("SCALE-SERVER-1", "api", Status.PASS)), str(params))
    assert "No item in this section awaits a person" in panel.value


def test_notebook_run_with_a_malformed_waivers_file_is_one_sentence(tmp_path, capsys):
    p = tmp_path / "params.yaml"
    p.write_text("waivers_file: waivers.yaml\ntargets:\n  - {name: api, base_url: 'https://127.0.0.1:9'}\n")
    (tmp_path / "waivers.yaml").write_text("waivers: [{item: SEC-TLS-1}]\n")
    assert rb.run("security", str(p)) is None
    err = capsys.readouterr().err
    assert "waivers file" in err and "Traceback" not in err


def test_click_without_a_note_says_so_and_writes_nothing(params):
    panel = rb.confirm_panel(section(result("SCALE-CACHE-3", "api")), str(params))
    find(panel, "asap-confirm-who")[0].value = "Kim Operator"
    find(panel, "asap-confirm-SCALE-CACHE-3-api")[0].click()
    assert "needs a note" in find(panel, "asap-state-SCALE-CACHE-3-api")[0].value
    assert not load_params(params).confirmations_file.exists()


def test_a_blocking_item_the_run_skipped_can_be_closed_with_evidence_only(params):
    """SEC-TLS-5 skipped (no http_url) is blocking: the panel offers it, and without an evidence
    link the click is refused; an automated verdict on the same item gets no control."""
    skipped = result("SEC-TLS-5", "api", Status.SKIP)
    panel = rb.confirm_panel(section(skipped, result("SEC-TLS-1", "api", Status.PASS)), str(params))
    assert not find(panel, "asap-confirm-SEC-TLS-1-api")
    find(panel, "asap-confirm-who")[0].value = "Lee Operator"
    find(panel, "asap-note-SEC-TLS-5-api")[0].value = "port 80 closed on the load balancer"
    find(panel, "asap-confirm-SEC-TLS-5-api")[0].click()
    assert "needs a link to the evidence" in find(panel, "asap-state-SEC-TLS-5-api")[0].value
    assert not load_params(params).confirmations_file.exists()
    find(panel, "asap-evidence-SEC-TLS-5-api")[0].value = "https://wiki.example/lb-listeners"
    find(panel, "asap-confirm-SEC-TLS-5-api")[0].click()
    [rec] = load_confirmations(load_params(params).confirmations_file).confirmations
    assert (rec.item, rec.by, rec.evidence_url) == ("SEC-TLS-5", "Lee Operator", "https://wiki.example/lb-listeners")
