"""The confirmation panel: the section's items that await a person, each with a confirm control.

Widgets are the interface; the confirmations file is the record. A click writes the file
(atomically) and nothing ever waits for a click, so a headless run of the same notebook simply
shows the panel's state and moves on (papermill #400/#723).
"""

from __future__ import annotations

import html
from pathlib import Path

from .catalog import load_catalog
from .confirmations import add_confirmation, default_user, latest, load_confirmations
from .errors import RunbookError
from .params import load_params
from .report import _md_code
from .results import SectionRun, Status, now


def _state(path: Path, item: str, target: str) -> str:
    """One line of HTML: the current record for (item, target) in the file."""
    try:
        rec = latest(load_confirmations(path).confirmations, item, target)
    except RunbookError as e:
        return f"<span style='color:#8c0b07'>{html.escape(e.message)}</span>"
    if rec is None:
        return "<span style='color:#0b3d91'>not confirmed</span>"
    when, until = f"{rec.at:%Y-%m-%d %H:%M} UTC", f"{rec.expires_at():%Y-%m-%d}"
    who = html.escape(rec.by) + ("" if rec.target else " (every target)")
    if rec.expires_at() <= now():
        return f"<span style='color:#8c0b07'>confirmation by {who} on {when} <b>expired</b> on {until}: confirm again</span>"
    note = f": {html.escape(rec.note)}" if rec.note else ""
    return f"<span style='color:#0b514d'><b>confirmed</b> by {who} on {when}, valid until {until}{note}</span>"


def _guidance(item_id: str) -> str:
    item = load_catalog().get(item_id)
    if item.manual_guidance:
        what = item.manual_guidance
    else:
        what = f"Not automated yet ({item.verification}): check it by hand. {item.rationale}"
    return (f"<div><b>What to check and what evidence to attach:</b> {_md_code(what.strip())}</div>"
            f"<div style='color:#57606a'><b>How to fix:</b> {_md_code(item.remediation.strip())}</div>")


def confirm_panel(section_run: SectionRun | None, params_path: str):
    """Show the section's pending and confirmed items with a confirm control each; return the panel."""
    import ipywidgets as w
    if section_run is None:
        return None
    try:
        params = load_params(params_path)
    except RunbookError as e:
        return w.HTML(f"<p style='color:#8c0b07'><b>Cannot show confirmations:</b> {html.escape(e.message)}</p>")
    path = Path(params.confirmations_file)
    # what a person can close: items awaiting one, blocking items this run could not verify (a
    # missing input, an active probe left off), and those already confirmed. Never an observed verdict.
    from .notebook import awaiting_a_person
    rows = awaiting_a_person(section_run.results) + [r for r in section_run.results if r.status is Status.CONFIRMED]
    if not rows:
        return w.HTML("<p>No item in this section awaits a person.</p>")
    # "who" is always typed by the person confirming: a guessed default would sign for someone else
    who = w.Text(value="", description="Who", placeholder=default_user() or "your name",
                 layout=w.Layout(width="40%"))
    who.add_class("asap-confirm-who")
    header = w.HTML(f"<p><b>{len(rows)}</b> item(s) for a person. A confirmation is written to "
                    f"<code>{html.escape(str(path))}</code> and counts in every run, headless ones included, "
                    f"until it expires.</p>")
    boxes = [header, who]
    for r in rows:
        key = f"{r.item_id}-{r.target}"
        state = w.HTML(_state(path, r.item_id, r.target))
        note = w.Text(description="Note", placeholder="what you checked", layout=w.Layout(width="60%"))
        evidence = w.Text(description="Evidence", placeholder="link to the evidence (ticket, page, screenshot)",
                          layout=w.Layout(width="60%"))
        button = w.Button(description=f"Confirm {r.item_id} on {r.target}", button_style="success",
                          tooltip=f"record that you confirmed {r.item_id} on {r.target}", layout=w.Layout(width="max-content"))
        note.add_class(f"asap-note-{key}")
        evidence.add_class(f"asap-evidence-{key}")
        button.add_class(f"asap-confirm-{key}")
        state.add_class(f"asap-state-{key}")

        def on_click(_b, r=r, note=note, evidence=evidence, state=state):
            try:
                add_confirmation(path, r.item_id, who.value, target=r.target, note=note.value, evidence_url=evidence.value)
            except RunbookError as e:
                state.value = f"<span style='color:#8c0b07'>{html.escape(e.message)}</span>"
                return
            state.value = _state(path, r.item_id, r.target) + " <i>(saved; run this subsection again to see it in the results)</i>"

        button.on_click(on_click)
        title = w.HTML(f"<h4 style='margin:.6em 0 .2em'><code>{html.escape(r.item_id)}</code> on "
                       f"<b>{html.escape(r.target)}</b>: {_md_code(r.title)}</h4>" + _guidance(r.item_id))
        boxes.append(w.VBox([title, state, note, evidence, button],
                            layout=w.Layout(border="1px solid #d0d7de", padding="4px 8px", margin="4px 0")))
    panel = w.VBox(boxes)
    panel.add_class("asap-confirm-panel")
    return panel
