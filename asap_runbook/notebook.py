"""What the section notebooks call. Every bit of logic lives here so a test can reach it;
the notebooks only pass parameters and display what comes back."""

from __future__ import annotations

import os
import sys
from pathlib import Path

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
    if os.environ.get("ASAP_RUNBOOK_REPLAY") and run_dir:
        # a distributed run: the workers ran the checks; this kernel only shows what they found
        # (read-only: not one request to a target)
        return SectionRun.model_validate_json((Path(run_dir) / "sections" / f"{section}.json").read_text())
    bar = _progress_bar(section, params, targets)
    try:
        return run_section(section, params, run_dir=Path(run_dir) if run_dir else None, targets=targets,
                           progress=_advance(bar) if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()


def _progress_bar(section: str, params, targets: list[str] | None):
    """A progress bar while the section runs, in JupyterLab (a widget) or a terminal.

    Not in headless runs (`asap-runbook run` sets ASAP_RUNBOOK_HEADLESS): there the CLI shows
    progress, and a widget would only leave a dead "HBox(...)" in the rendered evidence."""
    if os.environ.get("ASAP_RUNBOOK_HEADLESS"):
        return None
    from tqdm.auto import tqdm
    from .catalog import load_catalog
    n_targets = len([t for t in params.targets if not targets or t.name in targets])
    total = len(list(load_catalog().section(section))) * n_targets
    return tqdm(total=total, desc=section, unit="check")


def _advance(bar):
    def progress(item_id: str, target: str, status: Status) -> None:
        bar.set_postfix_str(f"{item_id} on {target}: {status.value}", refresh=False)
        bar.update(1)
    return progress


def table(section_run: SectionRun | None):
    """One row per (item, target) as a pandas DataFrame: the machine-readable view of the section.

    pandas is imported here, not at module level: a headless run never calls this, and importing
    pandas in each of the four kernels costs more than all the probes of a section."""
    import pandas as pd
    rows = [{"item": r.item_id, "target": r.target, "status": r.status.value, "blocking": r.blocking,
             "verification": r.verification, "summary": r.summary} for r in (section_run.results if section_run else [])]
    return pd.DataFrame(rows, columns=["item", "target", "status", "blocking", "verification", "summary"])


class StatusTable:
    """Counts of statuses per target; shows as an HTML table in a notebook, as text elsewhere."""

    def __init__(self, section_run: SectionRun | None):
        results = section_run.results if section_run else []
        self.statuses = [s.value for s in Status if any(r.status is s for r in results)]
        self.counts: dict[str, dict[str, int]] = {}
        for r in results:
            row = self.counts.setdefault(r.target, {s: 0 for s in self.statuses})
            row[r.status.value] += 1

    def _repr_html_(self) -> str:
        import html
        head = "".join(f"<th>{s}</th>" for s in self.statuses)
        body = "".join(
            f"<tr><td>{html.escape(t)}</td>" + "".join(
                f'<td><span class="st st-{s}">{n}</span></td>' if n else "<td>0</td>" for s, n in row.items()) + "</tr>"
            for t, row in self.counts.items())
        return f'<style>{style()}</style><table class="rb"><thead><tr><th>target</th>{head}</tr></thead><tbody>{body}</tbody></table>'

    def __repr__(self) -> str:
        return "\n".join(f"{t}: " + ", ".join(f"{n} {s}" for s, n in row.items() if n) for t, row in self.counts.items())

    def frame(self):
        import pandas as pd
        return pd.DataFrame.from_dict(self.counts, orient="index")


def summary(section_run: SectionRun | None) -> StatusTable:
    """Counts of statuses per target."""
    return StatusTable(section_run)


def show(section_run: SectionRun | None) -> None:
    """The section's findings, a table per subsection with evidence on demand."""
    if section_run is None:
        return
    _display(_html(f"<style>{style()}</style>" + findings_html(section_run.results)))


def awaiting_a_person(results) -> list:
    """Items only a person can close now: manual ones, and blocking ones this run did not verify."""
    return [r for r in results if r.status is Status.MANUAL or (r.status is Status.SKIP and r.blocking)]


def show_pending(section_run: SectionRun | None) -> None:
    """Items that await a person, with what to check."""
    if section_run is None:
        return
    pending = awaiting_a_person(section_run.results)
    if not pending:
        _display(_html("<p>No item awaits a person in this section.</p>"))
        return
    import html
    rows = "".join(f"<tr><td><code>{r.item_id}</code></td><td>{html.escape(r.target)}</td><td>{html.escape(r.title)}</td>"
                   f"<td>{html.escape(r.summary)}</td></tr>" for r in pending)
    _display(_html(f"<p><b>{len(pending)}</b> item(s) await a person:</p>"
                   f'<table class="rb"><thead><tr><th>item</th><th>target</th><th>checklist item</th>'
                   f"<th>what to check</th></tr></thead><tbody>{rows}</tbody></table>"))


def monitoring_plots(section_run: SectionRun | None, params_path: str, targets: list[str] | None = None):
    """Monitoring: request rate, error ratio and latency from Prometheus over the window (static PNG)."""
    from .monitoring_live import monitoring_plots as plots
    return plots(section_run, params_path, targets)


def confirm_panel(section_run: SectionRun | None, params_path: str):
    """Items that await a person, each with a confirm control that writes the confirmations file.

    In a headless run nobody can click, and the rendered page shows widgets only as a placeholder,
    so the panel is a short note instead: building hundreds of controls for a fleet (and reading
    the confirmations file once per row) cost seconds per section and showed nothing more."""
    if os.environ.get("ASAP_RUNBOOK_HEADLESS"):
        return _confirm_note(section_run, params_path)
    from .widgets import confirm_panel as panel
    return panel(section_run, params_path)


def _confirm_note(section_run: SectionRun | None, params_path: str):
    import html
    if section_run is None:
        return None
    pending = awaiting_a_person(section_run.results)
    confirmed = [r for r in section_run.results if r.status is Status.CONFIRMED]
    return _html(
        f"<p><b>{len(pending)}</b> item(s) await a person and <b>{len(confirmed)}</b> are confirmed (who, when and "
        "until when: in the findings above). Confirm in JupyterLab with this notebook's confirm panel, or with "
        f"<code>asap-runbook confirm ITEM --target TARGET --by NAME --note '...' --evidence URL --params {html.escape(str(params_path))}</code>.</p>")
