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
        from .section_file import load
        return load(Path(run_dir) / "sections" / f"{section}.json")
    bar = _progress_bar(section, params, targets)
    try:
        return run_section(section, params, run_dir=Path(run_dir) if run_dir else None, targets=targets,
                           progress=_advance(bar) if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()


def _progress_bar(section: str, params, targets: list[str] | None, n_items: int | None = None):
    """A progress bar while the section runs, in JupyterLab (a widget) or a terminal.

    Not in headless runs (`asap-runbook run` sets ASAP_RUNBOOK_HEADLESS): there the CLI shows
    progress, and a widget would only leave a dead "HBox(...)" in the rendered evidence."""
    if os.environ.get("ASAP_RUNBOOK_HEADLESS"):
        return None
    from tqdm.auto import tqdm
    from .catalog import load_catalog
    n_targets = len([t for t in params.targets if not targets or t.name in targets])
    total = (n_items if n_items is not None else len(list(load_catalog().section(section)))) * n_targets
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


def drill_timelines(section_run: SectionRun | None) -> int:
    """One timeline picture per drill that ran (attempts at the fault proxy, outage, breaker, SIGTERM,
    restart), drawn from the observation kept as its evidence. Returns how many were shown."""
    from .drills import DRILL_ITEMS, timeline_png
    shown = 0
    for r in (section_run.results if section_run else []):
        obs = next((e.data for e in r.evidence if e.label == "observation"), None)
        if r.item_id in DRILL_ITEMS and isinstance(obs, dict) and (png := timeline_png(r.item_id, r.target, obs)):
            from IPython.display import Image
            _display(Image(png))
            shown += 1
    if not shown:
        _display(_html("<p>No drill ran here (they are opt-in: <code>targets[].active_probes.drills</code>, "
                       "plus each drill's parameters, see docs/drills.md).</p>"))
    return shown


# ----------------------------------------------------------------------------------------- the walk
DEMO_HINT = ("Start the reference deployment with <code>asap-runbook demo --serve</code> in a terminal "
             "(JupyterLab: File &gt; New &gt; Terminal), then paste the <code>export</code> lines it prints "
             "into <code>rb.demo_env(\"\"\"...\"\"\")</code> in a cell here (or start <code>asap-runbook lab</code> "
             "from a shell where you pasted them), and run this cell again.")


def demo_env(export_lines: str) -> list[str]:
    """Set the variables of `asap-runbook demo --serve`'s `export NAME=value` lines in this kernel;
    return their names. The token line reads its file (`"$(cat FILE)"`), as the shell would."""
    import re
    import shlex
    names = []
    for line in export_lines.splitlines():
        m = re.fullmatch(r"\s*export\s+([A-Za-z_][A-Za-z0-9_]*)=(.*)", line)
        if not m:
            continue
        name, raw = m.groups()
        cat = re.fullmatch(r'"\$\(cat (.+)\)"', raw.strip())
        if cat:
            value = Path(shlex.split(cat.group(1))[0]).read_text().strip()
        else:
            value = " ".join(shlex.split(raw))
        os.environ[name] = value
        names.append(name)
    if not names:
        print("no `export NAME=value` line found: paste the lines `asap-runbook demo --serve` printed", file=sys.stderr)
    return names


async def _reachable(url: str, timeout: float) -> str | None:
    """None when a TCP connection to the URL's host and port opens within `timeout`, else why not."""
    import asyncio
    from urllib.parse import urlsplit
    u = urlsplit(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(u.hostname, port), timeout)
    except (OSError, asyncio.TimeoutError) as e:
        return f"{u.hostname}:{port} {'did not answer within %g s' % timeout if isinstance(e, asyncio.TimeoutError) else 'refused the connection'}"
    writer.close()
    return None


def unreachable_targets(params, targets: list[str] | None = None, timeout: float = 1.0) -> dict[str, str]:
    """Targets whose base_url does not accept a TCP connection within `timeout` (all at once: never hangs)."""
    import asyncio
    import concurrent.futures
    chosen = [t for t in params.targets if not targets or t.name in targets]

    async def look():
        return await asyncio.gather(*(_reachable(t.base_url, timeout) for t in chosen))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # works inside Jupyter's running loop too
        found = pool.submit(asyncio.run, look()).result()
    return {t.name: why for t, why in zip(chosen, found) if why}


class Walk:
    """A section walked subsection by subsection; one object per section notebook.

    Three modes, one code path (`engine.run_section`):
    - headless (`asap-runbook run`): the first cell runs the whole section once, with the run's
      lock and phases exactly as before; each subsection cell then shows that subsection's results.
    - lab (JupyterLab): nothing runs until a subsection cell does; it runs that subsection's items
      (`run_section(items=...)`), which the engine merges into the section's results file.
    - replay (`write_evidence`/`asap-runbook finish`): the notebook re-executed headlessly over a
      run folder the lab wrote: results are read from it, nothing is sent to any target.
    """

    def __init__(self, section: str, params_path: str, run_dir: str | None = None,
                 targets: list[str] | None = None, out_dir: str = "../outputs", replay: bool = False):
        from .catalog import load_catalog
        self.section, self.params_path, self.targets = section, params_path, targets
        self.headless = bool(os.environ.get("ASAP_RUNBOOK_HEADLESS"))
        self.mode = "replay" if replay else "headless" if self.headless else "lab"
        self.out_dir = Path(out_dir)
        self.run_dir = Path(run_dir) if run_dir else None
        self.items = list(load_catalog().section(section))
        self.params = None
        self.error: str | None = None
        self.results: SectionRun | None = None
        try:
            self.params = load_params(params_path)
            from .confirmations import validate_files
            validate_files(self.params)
        except RunbookError as e:
            self.error = e.message
            demo = "ASAP_DEMO_" in e.message
            _display(_html(f"<p style='color:#8c0b07'><b>Cannot run:</b> {_esc(e.message)}</p>"
                           + (f"<p>{DEMO_HINT}</p>" if demo and self.mode == "lab" else "")))
            print(f"asap-runbook: {e.message}", file=sys.stderr)
            return
        if self.mode == "headless":
            if section == "monitoring":  # its last cell plots (monitoring_plots)
                _import_meanwhile("pandas", "matplotlib.figure")
            self.results = self._run(None)
        elif self.mode == "replay":
            from .engine import held_lean
            from .runner import _load_section  # the same reader the runner assembles results.json with
            chosen = [t for t in self.params.targets if not targets or t.name in targets]
            self.results = _load_section(self.run_dir, section, held_lean(chosen)) if self.run_dir else None
            if self.results is None:
                self.error = f"{self.run_dir} holds no results of the {section} section to render"
                print(f"asap-runbook: {self.error}", file=sys.stderr)
        else:
            self._greet()

    def subsections(self) -> list[str]:
        return list(dict.fromkeys(i.subsection for i in self.items))

    def _items(self, subsection: str):
        chosen = [i for i in self.items if i.subsection == subsection]
        if not chosen:
            raise RunbookError(f"no subsection {subsection!r} in the {self.section} section; "
                               f"choose from {', '.join(self.subsections())}")
        return chosen

    def _greet(self) -> None:
        """The lab's first cell: where results go, and whether the targets answer (a quick look)."""
        down = unreachable_targets(self.params, self.targets)
        note = ""
        if down:
            listed = "; ".join(f"{_esc(t)}: {_esc(why)}" for t, why in down.items())
            demo = self.params.environment == "demo"
            note = (f"<p style='color:#8c0b07'><b>Not reachable now:</b> {listed}. Checks that probe "
                    "these targets will be <code>error</code>.</p>" + (f"<p>{DEMO_HINT}</p>" if demo else ""))
        where = (f"<code>{_esc(str(self.run_dir))}</code>" if self.run_dir else
                 f"a new folder in <code>{_esc(str(self.out_dir))}</code>, made when the first subsection runs")
        _display(_html(
            f"<p>Walk the <b>{self.section}</b> section subsection by subsection: read what the items ask, run "
            f"them, fix or confirm, go on. Results go to {where}; the last cell writes the run folder (results, "
            f"pages, manifest) as <code>asap-runbook run</code> does. To walk several sections into one run "
            f"folder, give their notebooks the same <code>run_dir</code>.</p>" + note))

    def _ensure_run_dir(self) -> Path:
        if self.run_dir is None:
            from .runner import new_run_id
            self.run_dir = (self.out_dir / new_run_id()).resolve()
            self.run_dir.mkdir(parents=True)
        return self.run_dir

    def _run(self, items: list[str] | None) -> SectionRun:
        total = len(items) if items is not None else len(self.items)
        bar = _progress_bar(self.section, self.params, self.targets, total)
        try:
            return run_section(self.section, self.params, run_dir=self.run_dir, targets=self.targets, items=items,
                               progress=_advance(bar) if bar is not None else None)
        finally:
            if bar is not None:
                bar.close()

    def read(self, subsection: str):
        """What the subsection's items ask and why (the catalog), before running them. Only in the lab:
        the evidence pages show the findings, and the catalog is one `asap-runbook explain ID` away."""
        if self.mode != "lab":
            return None
        rows = []
        for i in self._items(subsection):
            how = {"manual": "a person confirms it"}.get(str(i.verification), f"checked by {i.verification}")
            rows.append(f"<li><code>{i.id}</code> {'<b>blocking</b>, ' if i.blocking else ''}{how}: "
                        f"{_md(i.text)}<br><span style='color:#57606a'><i>Why:</i> {_md(i.rationale.strip())}</span></li>")
        return _html(f"<ul>{''.join(rows)}</ul>")

    def run(self, subsection: str) -> SectionRun | None:
        """Run the subsection's checks (lab) or take them from the section's run (headless, replay);
        show their findings and fixes, and in the lab a confirm control for each item awaiting a person."""
        if self.error:
            return None
        ids = [i.id for i in self._items(subsection)]
        if self.mode == "lab":
            self._ensure_run_dir()
            self.results = self._run(ids)
        mine = [r for r in (self.results.results if self.results else []) if r.item_id in ids]
        # the stylesheet once per notebook, not once per subsection: the page carries it a single time
        styled, self._styled = getattr(self, "_styled", False), True
        _display(_html(("" if styled else f"<style>{style()}</style>") + findings_html(mine)))
        from .timelines import show_for
        show_for(mine)  # e.g. the rate-limit burst: requests over time, 429s, Retry-After
        if self.mode == "lab" and awaiting_a_person(mine):
            from .widgets import confirm_panel as panel
            _display(panel(SectionRun(section=self.section, started_at=self.results.started_at, results=mine),
                           self.params_path))
        return self.results

    def overview(self) -> None:
        """Where the section stands: statuses per target, and what awaits a person."""
        if self.error:
            return
        _display(summary(self.results))
        show_pending(self.results)
        if self.mode != "lab":
            _display(_confirm_note(self.results, self.params_path))

    def plots(self, **kw):
        if self.error:
            return None
        from .monitoring_live import monitoring_plots as plots
        return plots(self.results, self.params_path, self.targets, run_dir=self.run_dir, **kw)

    def write_evidence(self, signing_key: str | None = None):
        """Lab: render and sign what this walk wrote, as `asap-runbook run` would (runner.finish).
        Headless and replay: nothing to do, the runner writes the evidence."""
        if self.mode != "lab":
            return None
        if self.run_dir is None or not (self.run_dir / "sections").is_dir():
            _display(_html("<p>Nothing to write yet: run a subsection first.</p>"))
            return None
        import concurrent.futures
        from .runner import finish
        lines: list[str] = []
        try:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:  # papermill runs its own event loop
                code, run_dir = pool.submit(finish, self.run_dir, self.params_path, say=lines.append,
                                            signing_key=signing_key).result()
        except RunbookError as e:
            _display(_html(f"<p style='color:#8c0b07'><b>Cannot write the run folder:</b> {_esc(e.message)}</p>"))
            return None
        _display(_html("<pre>" + _esc("\n".join(lines)) + "</pre>"
                       + f"<p>Run folder: <code>{_esc(str(run_dir))}</code> (exit {code}); open "
                       f"<code>{_esc(str(run_dir / 'index.html'))}</code>.</p>"))
        return run_dir


def _import_meanwhile(*modules: str) -> None:
    """Import what a later cell needs while the checks wait on the network: a thread that takes the GIL
    between their requests (the plotting libraries are ~1 s of CPU; a headless run ends with them)."""
    import importlib
    import threading

    def load() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the cell that needs it says what is wrong
                return
    threading.Thread(target=load, name="import-meanwhile", daemon=True).start()


def walk(section: str, params_path: str, run_dir: str | None = None, targets: list[str] | None = None,
         out_dir: str = "../outputs", replay: bool = False) -> Walk:
    """The first cell of a section notebook: see :class:`Walk`."""
    return Walk(section, params_path, run_dir, targets, out_dir, replay)


def _esc(text: str) -> str:
    import html
    return html.escape(text)


def _md(text: str) -> str:
    from .report import _md_code
    return str(_md_code(text))
