"""What the section notebooks call. Every bit of logic lives here so a test can reach it;
the notebooks only pass parameters and display what comes back."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from .engine import run_section
from .errors import RunbookError
from .params import load_params
from .report import findings_html, style
from .results import SectionRun, Status


def _display(obj) -> None:
    try:
        from IPython.display import display
    except ImportError:  # plain Python: print something readable
        print(obj)
        return
    display(obj)


def _html(markup: str):
    from IPython.display import HTML
    return HTML(markup)


def run(section: str, params_path: str, run_dir: str | None = None, targets: list[str] | None = None) -> SectionRun | None:
    """Run one section's checks and show the results. Bad parameters: one sentence, no traceback."""
    try:
        params = load_params(params_path)
        from .confirmations import validate_files
        validate_files(params)  # a malformed confirmations or waivers file: one sentence here too
    except RunbookError as e:
        _display(_html(f"<p style='color:#8c0b07'><b>Cannot run:</b> {e.message}</p>"))
        print(f"asap-runbook: {e.message}", file=sys.stderr)
        return None
    return run_section(section, params, run_dir=Path(run_dir) if run_dir else None, targets=targets)


def table(section_run: SectionRun | None) -> pd.DataFrame:
    """One row per (item, target): the machine-readable view of the section."""
    rows = [{"item": r.item_id, "target": r.target, "status": r.status.value, "blocking": r.blocking,
             "verification": r.verification, "summary": r.summary} for r in (section_run.results if section_run else [])]
    return pd.DataFrame(rows, columns=["item", "target", "status", "blocking", "verification", "summary"])


def summary(section_run: SectionRun | None) -> pd.DataFrame:
    """Counts of statuses per target."""
    df = table(section_run)
    if df.empty:
        return df
    return df.pivot_table(index="target", columns="status", values="item", aggfunc="count", fill_value=0)


def show(section_run: SectionRun | None) -> None:
    """The section's findings, a table per subsection with evidence on demand."""
    if section_run is None:
        return
    _display(_html(f"<style>{style()}</style>" + findings_html(section_run.results)))


def show_pending(section_run: SectionRun | None) -> None:
    """Items that await a person, with what to check."""
    if section_run is None:
        return
    pending = [r for r in section_run.results if r.status is Status.MANUAL]
    if not pending:
        _display(_html("<p>No item awaits a person in this section.</p>"))
        return
    df = pd.DataFrame([{"item": r.item_id, "target": r.target, "checklist item": r.title, "what to check": r.summary}
                       for r in pending])
    _display(_html(f"<p><b>{len(pending)}</b> item(s) await a person:</p>"))
    _display(df)


def confirm_panel(section_run: SectionRun | None, params_path: str):
    """Items that await a person, each with a confirm control that writes the confirmations file."""
    from .widgets import confirm_panel as panel
    return panel(section_run, params_path)
