"""`asap-runbook run`: execute the section notebooks, render them, and write the evidence.

Execution (papermill) and rendering (nbconvert) are separate steps (nbconvert #1300: tags
that hide code are ignored with --execute). Notebooks run in parallel kernels of the
project's own kernel, named explicitly (papermill #251/#761). Rendering happens in this
process, one exporter for every page.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from importlib import metadata, resources
from pathlib import Path

from . import section_file
from ._paths import shipped
from .catalog import load_catalog
from .errors import UsageError
from .fleet import page_context
from .params import Params, load_params, params_digest
from .report import env as jinja_env
from .report import findings_html, style
from markupsafe import Markup
from .results import (
    READINESS, FailOn, Result, RunResults, SectionRun, Status, blockers, collapse_causes, counts, exit_code,
    gated_exit_code, now,
)

KERNEL_NAME = "asap-runbook"
NOTEBOOKS_DIR = shipped("notebooks")
log = logging.getLogger("asap_runbook")


def version() -> str:
    try:
        return metadata.version("asap-runbook")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def ensure_kernel() -> str:
    """Register the project's kernel in this environment if it is missing; return its name."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL_NAME)
        if Path(spec.argv[0]).resolve() == Path(sys.executable).resolve() or spec.argv[0] == sys.executable:
            return KERNEL_NAME
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install
    install(kernel_name=KERNEL_NAME, display_name="asap-runbook (Python 3.13)", prefix=sys.prefix)
    return KERNEL_NAME


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


def notebook_path(section: str) -> Path:
    return NOTEBOOKS_DIR / f"{section}.ipynb"


def _kernel_imports_this_package() -> None:
    """Kernels start in notebooks/; make them import this very copy of the package, so a headless
    run, a checkout beside another one, and the CLI all run the same code."""
    root = str(Path(__file__).resolve().parent.parent)
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *[p for p in paths if p]])


def execute(section: str, params_path: Path, run_dir: Path, notebook: Path | None = None, *, targets: list[str] | None = None,
            replay: bool = False, shared_dir: Path | None = None) -> str | None:
    """Run one section notebook (or `notebook`: the benchmark's floor); return None, or one sentence saying why it failed.
    `targets`: only these (a work unit of a distributed run). `replay`: show the section's results file that is
    already in `run_dir` instead of probing (the pages of a distributed run, rendered where its results are put together).
    `shared_dir`: a private folder the kernels of one run share (introspection answers, introspect.SHARED_DIR_ENV)."""
    import papermill as pm
    _kernel_imports_this_package()
    out = run_dir / "notebooks" / f"{section}.ipynb"
    try:
        pm.execute_notebook(
            str(notebook or notebook_path(section)), str(out),
            parameters={"params_path": str(params_path), "run_dir": str(run_dir),
                        **({"replay": True} if replay else {}), **({"targets": targets} if targets is not None else {})},
            kernel_name=KERNEL_NAME, cwd=str(NOTEBOOKS_DIR), progress_bar=False,
            # progress comes from sections/*.progress.json, and papermill saves the notebook at the end
            # and on failure anyway: rewriting (and re-validating) it after every cell cost ~0.2 s of CPU
            log_output=False, request_save_on_cell_execute=False,
            kernel_manager_class=ipc_kernel_manager(replay=replay, shared_dir=shared_dir),
            shutdown_kernel="immediate",  # the notebook is saved and complete: do not wait for the interpreter to wind down
        )
    except pm.PapermillExecutionError as e:
        return f"the {section} notebook stopped at cell {e.exec_count}: {e.ename}: {e.evalue}"
    except Exception as e:  # kernel died, timeout, missing kernel: still one sentence
        return f"the {section} notebook could not run: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def ipc_kernel_manager(replay: bool = False, shared_dir: Path | None = None):
    """Kernels talk to us over Unix sockets in a private directory, not loopback TCP: ipykernel
    warns on stderr about unencrypted TCP for every notebook, and other local users cannot
    connect to an ipc socket in a 0700 directory."""
    import shutil
    import tempfile
    from jupyter_client import AsyncKernelManager

    class IpcKernelManager(AsyncKernelManager):
        def __init__(self, **kw):
            super().__init__(**kw)
            self._ipc_dir = tempfile.mkdtemp(prefix="asap-kernel-")
            self.transport = "ipc"
            self.ip = os.path.join(self._ipc_dir, "k")

        async def _async_pre_start_kernel(self, **kw):
            # only the kernels of a headless run know they are headless (notebook.py): no progress
            # widget, no confirm controls nobody can click; this process's environment is untouched
            kw["env"] = {**(kw.get("env") or os.environ), "ASAP_RUNBOOK_HEADLESS": "1"}
            if replay:  # notebook.run reads the section's results instead of probing (a distributed run's pages)
                kw["env"]["ASAP_RUNBOOK_REPLAY"] = "1"
            if shared_dir is not None:
                from .introspect import SHARED_DIR_ENV
                kw["env"][SHARED_DIR_ENV] = str(shared_dir)
            cmd, kw = await super()._async_pre_start_kernel(**kw)
            # no input history: nobody recalls a headless run's cells, and the kernels of a run each wrote
            # theirs to the one shared SQLite file (up to 0.8 s of a kernel's CPU)
            return [*cmd, "--HistoryManager.enabled=False"], kw

        async def _async_cleanup_resources(self, restart: bool = False) -> None:
            await super()._async_cleanup_resources(restart)
            if not restart:
                shutil.rmtree(self._ipc_dir, ignore_errors=True)

    return IpcKernelManager


class Renderer:
    """One nbconvert exporter for every page: no new Python process per page."""

    def __init__(self):
        from .html_export import LeanHTMLExporter  # HTMLExporter minus a slow BeautifulSoup pass
        base = str(resources.files("asap_runbook") / "templates" / "nbconvert")
        self.exporter = LeanHTMLExporter(template_name="asap_offline", extra_template_basedirs=[base],
                                     exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)

    def render(self, notebook: Path, html_path: Path) -> None:
        import nbformat
        nb = nbformat.read(str(notebook), as_version=4)
        css = style()
        body, _ = self.exporter.from_notebook_node(
            nb, resources={"metadata": {"name": notebook.stem.title()}, "asap_css": css})
        # outputs carry the stylesheet for JupyterLab; the page has it once, in its head
        head, sep, rest = body.partition("</head>")
        html_path.write_text(head + sep + rest.replace(f"<style>{css}</style>", ""))


def drop_section_files(run_dir: Path) -> None:
    """The kernels' per-section results and progress files, once results.json holds every result:
    the evidence is kept once as data (results.json), not also per section (issue 15, lean)."""
    import shutil
    shutil.rmtree(run_dir / "sections", ignore_errors=True)


PAGE_HEADER_MARK = "<!--asap-runbook:page-header-->"


def stamp_section_pages(run: RunResults, run_dir: Path, pages: dict[str, str]) -> None:
    """Pages are rendered as their notebooks finish, before the verdict is known: once it is, each
    gets the run's header (run id, date, environment, verdict, a link back to the summary)."""
    header = jinja_env().get_template("_header.html.j2").render(run=run, back="index.html")
    for page in pages.values():
        path = run_dir / page
        text = path.read_text()
        if PAGE_HEADER_MARK in text:
            path.write_text(text.replace(PAGE_HEADER_MARK, header, 1))


def _section_path(run_dir: Path, section: str) -> Path:
    return run_dir / "sections" / f"{section}.json"


def _section_header(run_dir: Path, section: str) -> SectionRun | None:
    """The section's fields, its results not read; None when it wrote no readable results file."""
    try:
        return section_file.header(_section_path(run_dir, section))
    except (OSError, ValueError):
        return None


def _section_results(run_dir: Path, section: str) -> Iterator[Result]:
    """The section's results, one at a time: from its results file, or, if its kernel died first,
    what the partial file holds (up to a line cut short). ValueError: the results file is torn."""
    from .engine import partial_path
    path = _section_path(run_dir, section)
    if path.exists():
        yield from section_file.results(path)
        return
    partial = partial_path(path)
    if not partial.exists():
        return
    with open(partial, "rb") as f:  # only b"\n" ends a line (JSON escapes it inside strings)
        for line in f:
            try:
                result = Result.model_validate_json(line)
            except ValueError:  # a line cut short when the kernel died
                return
            yield result


def _load_section(run_dir: Path, section: str, lean_if=lambda r: False) -> SectionRun | None:
    """The section's results file, whole (`lean_if(result)`: that result kept lean); if its kernel
    died first, what the partial file holds; None when there is neither, or the file is torn."""
    from .engine import partial_path
    from .results import lean
    path = _section_path(run_dir, section)
    header = _section_header(run_dir, section)
    if header is None and (path.exists() or not partial_path(path).exists()):
        return None
    try:
        results = [lean(r) if lean_if(r) else r for r in _section_results(run_dir, section)]
    except ValueError:
        return None
    return (header or SectionRun(section=section, started_at=now())).model_copy(update={"results": results})


def _missing(section: str, params: Params, have: set[tuple[str, str]], why: str) -> list[Result]:
    """Never lose a result: every (item, target) the section should have produced and did not, as `error`."""
    out = []
    for item in load_catalog().section(section):
        for t in params.targets:
            if (item.id, t.name) not in have:
                out.append(Result(item_id=item.id, target=t.name, section=section, subsection=item.subsection,
                                  title=item.text, status=Status.ERROR, summary=why, severity=str(item.severity),
                                  blocking=item.blocking, verification=str(item.verification),
                                  remediation=None))
    return out


def _gather(chosen: list[str], run_dir: Path, params: Params, problems: list[str], lean_all: bool,
            whole: Path) -> list[Result]:
    """Every section's results, one at a time, with confirmations and waivers applied (also to the results
    filled in for a section that could not run): written whole to `whole` (JSON lines), returned lean when
    `lean_all` (a fleet: results.json and the per-target pages are written from `whole`, one result at a time)."""
    from .confirmations import records_applier
    from .results import lean
    settle = records_applier(params)
    results: list[Result] = []
    whole.parent.mkdir(parents=True, exist_ok=True)
    with open(whole, "wb") as out:
        def keep(r: Result) -> None:
            r = settle(r)
            out.write(r.model_dump_json().encode() + b"\n")
            results.append(lean(r) if lean_all else r)
        for section in chosen:
            why = next((p for p in problems if f"the {section} notebook" in p), None)
            start, n, have = out.tell(), len(results), set()
            try:
                for r in _section_results(run_dir, section):
                    have.add((r.item_id, r.target))
                    keep(r)
            except ValueError:  # a torn results file is not trusted: as if the section wrote nothing
                out.seek(start)
                out.truncate()
                del results[n:]
                have = set()
            for r in _missing(section, params, have, why or f"the {section} section wrote no result for this item"):
                keep(r)
    return results


def _results_of(path: Path) -> Iterator[Result]:
    with open(path, "rb") as f:
        for line in f:
            yield Result.model_validate_json(line)


def run_coverage(results: list[Result], targets: list[str], not_run: list[str]):
    """Coverage against the whole checklist: items of sections left out count as not verified."""
    from .results import coverage
    catalog = load_catalog()
    size = {s: len(list(catalog.section(s))) for s in not_run}
    blocking = {s: sum(i.blocking for i in catalog.section(s)) for s in not_run}
    return coverage(results, targets, size, blocking)


def verdict_lines(run: RunResults) -> list[str]:
    """The verdict as the terminal shows it: readiness, scope, coverage per target."""
    c = run.counts
    scope = ("whole checklist" if not run.sections_not_run else
             f"PARTIAL run: {', '.join(run.sections)} only; not run: {', '.join(run.sections_not_run)}")
    lines = [f"{run.readiness.upper()} (exit {run.exit_code}), {scope}: " + ", ".join(f"{v} {k}" for k, v in c.items() if v)]
    from .results import ALL_TARGETS
    per_target = [t for t in run.targets if t in run.coverage]
    if len(per_target) <= 20:
        lines += [f"  coverage on {t}: {run.coverage[t].line()}" for t in per_target]
    if ALL_TARGETS in run.coverage and len(per_target) != 1:
        lines.append(f"  coverage, all targets: {run.coverage[ALL_TARGETS].line()}")
    return lines


def coverage_rows(run: RunResults, groups: dict[str, dict[str, str]]) -> tuple[list, bool]:
    """The verdict's coverage rows: per target (and all) for a small run; for a fleet, all targets
    and one row per group value ("team: sre"), so the top of the page stays short."""
    from .report import is_fleet
    from .results import ALL_TARGETS, Coverage
    whole = [("all targets", run.coverage[ALL_TARGETS])] if ALL_TARGETS in run.coverage else []
    if not is_fleet(run):
        per = [(t, run.coverage[t]) for t in run.targets if t in run.coverage]
        return per + (whole if len(per) > 1 else []), False
    by_group: dict[str, Coverage] = {}
    for t in run.targets:
        for k, v in (groups.get(t) or {}).items():
            c = by_group.setdefault(f"{k}: {v}", Coverage())
            for f in Coverage.model_fields:
                setattr(c, f, getattr(c, f) + getattr(run.coverage[t], f))
    return whole + sorted(by_group.items()), True


def write_index(run: RunResults, run_dir: Path, section_pages: dict[str, str], sign_off: dict | None = None,
                **extra) -> None:
    """The summary page. It can be rendered again (an after-the-fact sign-off); the per-target
    pages (write_target_pages) do not change with it."""
    from .report import evidence_href, is_fleet, summary_lists, MAX_ROWS
    fleet = is_fleet(run)
    by_section: dict[str, list[Result]] = {s: [] for s in run.sections}
    by_target: dict[str, list[Result]] = {t: [] for t in run.targets}
    for r in run.results:
        by_section.setdefault(r.section, []).append(r)
        by_target.setdefault(r.target, []).append(r)
    per_section = {s: counts(by_section[s]) for s in run.sections}
    per_target = {t: counts(by_target[t]) for t in run.targets}

    def link(r: Result) -> str:
        return evidence_href(r.section, r.item_id, r.target, section_pages, fleet)

    catalog = load_catalog()

    def href(item_id: str, target: str) -> str:  # drift rows know the item and target, not the section
        try:
            section = catalog.get(item_id).section
        except KeyError:
            section = ""
        return evidence_href(section, item_id, target, section_pages, fleet)

    context = page_context(run, run_dir, **extra)  # drift and the targets x items matrix (fleet.py)
    matrix = context["matrix"]
    if not fleet:
        for row in matrix["rows"]:
            row["links"] = [evidence_href(row["section"], row["item_id"], t, section_pages, False) for t in run.targets]
    groups = {t["name"]: t["groups"] for t in matrix["targets"]}
    cov_rows, cov_grouped = coverage_rows(run, groups)
    # a section without a rendered page keeps its findings here, so every link has somewhere to land
    orphans = {s: Markup(findings_html(by_section[s], evidence=not fleet)) if s not in section_pages and by_section[s]
               else "" for s in run.sections}
    html = jinja_env().get_template("index.html.j2").render(
        run=run, sign_off=sign_off, style=style(), per_section=per_section, per_target=per_target, pages=section_pages,
        statuses=[s.value for s in Status], lists=summary_lists(run, link, fleet), link=link, href=href, fleet=fleet,
        cov_rows=cov_rows, cov_grouped=cov_grouped, orphans=orphans, max_rows=MAX_ROWS,
        waived=[r for r in run.results if r.waiver], confirmed=[r for r in run.results if r.confirmation],
        **context,
    )
    (run_dir / "index.html").write_text(html)


def write_target_pages(run: RunResults, run_dir: Path, matrix: dict, spans: dict[str, list[tuple[int, int]]]) -> None:
    """A fleet's evidence, one page per target: no page has to hold every target's evidence, nor the
    run every target's results at once (each page's are read back from results.json at `spans`,
    write_results_json's). (A small run has none: its evidence is on the section pages.)"""
    from .report import is_fleet, target_page
    if not is_fleet(run):
        return
    template = jinja_env().get_template("target.html.j2")
    css = style()
    (run_dir / "targets").mkdir(exist_ok=True)
    with open(run_dir / "results.json", "rb") as f:
        def read(offset: int, length: int) -> Result:
            f.seek(offset)
            return Result.model_validate_json(f.read(length))
        for t in run.targets:
            mine = [read(*span) for span in spans.get(t, [])]
            sections = [(s, Markup(findings_html([r for r in mine if r.section == s], evidence=True)))
                        for s in run.sections if any(r.section == s for r in mine)]
            info = matrix["by_name"].get(t, {})
            (run_dir / target_page(t)).write_text(template.render(
                run=run, target=t, style=css, sections=sections, coverage=run.coverage.get(t),
                code=info.get("exit_code"), readiness=info.get("readiness", "")))


def write_results_json(run: RunResults, path: Path, results: Iterable[Result]) -> dict[str, list[tuple[int, int]]]:
    """results.json as `run.model_dump_json(indent=1)` writes it with `results` as its results, written one
    result at a time (a fleet's never held whole); returns where each target's results are in it (offset,
    length), in order."""
    head, mark, tail = run.model_copy(update={"results": []}).model_dump_json(indent=1).partition('\n "results": []')
    spans: dict[str, list[tuple[int, int]]] = {}
    with open(path, "wb") as f:
        f.write((head + mark.removesuffix("]")).encode())
        n = 0
        for r in results:
            f.write(b"\n" if n == 0 else b",\n")
            # nested two levels deep; no line of a JSON dump is empty, so every line gets the indent
            body = ("  " + r.model_dump_json(indent=1).replace("\n", "\n  ")).encode()
            spans.setdefault(r.target, []).append((f.tell(), len(body)))
            f.write(body)
            n += 1
        f.write(("\n ]" if n else "]").encode() + tail.encode())
    return spans


def write_manifest(run: RunResults, run_dir: Path, key=None, summary: dict | None = None) -> Path:
    """SHA-256 of every artifact, chained to the previous run's manifest, signed when a key is given.
    `summary`: the small fields outputs/index.html shows (outputs_index.summary_fields)."""
    from . import signing
    return signing.write_manifest_file(
        signing.build_manifest(run, run_dir, key, signing.previous_link(run_dir), extra=summary), run_dir)


def finish(run_dir: str | os.PathLike, params_path: str | os.PathLike, say=print, **kw) -> tuple[int, Path]:
    """`asap-runbook finish RUN_DIR`: the run folder a walk in JupyterLab wrote (sections/*.json),
    rendered, gated and signed exactly as `run` does: the same notebooks re-executed in replay mode
    (nothing sent to a target), the same results.json, junit.xml, pages, drift and manifest.
    Items of a walked section that were not run are `error` (not verified), sections not walked are not run."""
    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir} is not a folder: name the run folder a walk wrote (outputs/<run id>).")
    walked = sorted((run_dir / "sections").glob("*.json")) if (run_dir / "sections").is_dir() else []
    catalog = load_catalog()
    sections = [s for s in catalog.sections if any(p.stem == s for p in walked)]
    if not sections:
        raise UsageError(f"{run_dir} holds no section results (sections/<section>.json): walk a section first.")
    if (run_dir / "manifest.json").exists():
        raise UsageError(f"{run_dir} is already finished (it has a manifest.json): walk again into a new folder.")
    return run(params_path, run_dir.parent, sections, say=say, walked=run_dir, **kw)


def usable_out_dir(out_dir: str | os.PathLike) -> Path:
    """The outputs folder, checked before anything runs: a file or an unwritable place is one sentence."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a folder: name a folder for the run directories.")
    if out.is_dir() and not os.access(out, os.W_OK):
        raise UsageError(f"--out {out} is not writable.")
    return out


def _execute_and_render(chosen: list[str], params_path: Path, run_dir: Path, totals: dict[str, int], say,
                        replay: bool = False, params: Params | None = None) -> tuple[list[str], dict[str, str]]:
    """Every section's notebook in its own kernel, in parallel; each page rendered as soon as its notebook is done.
    `params`: the run's, when its apps are to be introspected while the kernels start (introspect.answer_ahead)."""
    problems: list[str] = []
    t0 = time.monotonic()
    from .progress import watch_sections
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(chosen)) as pool, \
            tempfile.TemporaryDirectory(prefix="asap-run-shared-") as shared, \
            watch_sections(run_dir / "sections", totals, say) as tell:
        answered = _apps_ahead(chosen, params, Path(shared)) if params is not None and not replay else (lambda: None)
        futures = {pool.submit(execute, s, params_path, run_dir, replay=replay, shared_dir=Path(shared)): s
                   for s in chosen}
        try:
            renderer = Renderer()  # built while the kernels start
            pages = {}
            for fut in concurrent.futures.as_completed(futures):
                section, why = futures[fut], fut.result()
                if why:
                    problems.append(why)
                tell(f"  {section}: {'executed' if not why else why}{' (pages)' if replay else ''} "
                     f"({time.monotonic() - t0:.1f} s)")
                nb = run_dir / "notebooks" / f"{section}.ipynb"
                if nb.exists():
                    renderer.render(nb, run_dir / f"{section}.html")
                    pages[section] = f"{section}.html"
        finally:
            # before the shared folder goes, even when a kernel's thread raised: an answer written while
            # the folder is removed would put an OSError in place of that exception
            answered()
    return problems, pages


def _apps_ahead(chosen: list[str], params: Params, shared: Path) -> Callable[[], None]:
    """The run's apps introspected once, as the kernels start, when a chosen section reads them (an item
    whose inputs name targets[].app); returns the wait for the answers."""
    from .catalog import input_names
    from .introspect import answer_ahead
    catalog = load_catalog()
    if not any("targets[].app" in input_names(entry) for s in chosen for item in catalog.section(s)
               for entry in item.inputs):
        return lambda: None
    return answer_ahead(params, shared, cwd=NOTEBOOKS_DIR)


def write_evidence(run_results: RunResults, run_dir: Path, pages: dict[str, str], groups: dict[str, dict[str, str]],
                   key, fail_on: FailOn, sign_off_by: str | None, say=print, *, handler: logging.Handler | None = None,
                   manifest_extra: dict | None = None, whole: Callable[[], Iterable[Result]] | None = None) -> int:
    """Everything a run writes once its results are known (a local run, a Dask run, a merge of runs):
    results.json, junit.xml, drift, sign-off, index.html, summary.md, the signed manifest, the
    outputs index; the verdict on the terminal. Returns the exit code under `fail_on`.
    `whole()`: the results whole, in order, when `run_results.results` holds them lean (results.lean)."""
    from . import signing
    spans = write_results_json(run_results, run_dir / "results.json",
                               whole() if whole is not None else run_results.results)
    drop_section_files(run_dir)
    stamp_section_pages(run_results, run_dir, pages)
    from . import ci
    ci.write_junit(run_results, run_dir / "junit.xml", pages, fail_on)
    for r in run_results.results:  # expired waivers are ignored, loudly
        if "expired_waiver" in r.details:
            say(f"  warning: waiver for {r.item_id} on {r.target} ({r.details['expired_waiver']['ticket']}) "
                f"expired on {r.details['expired_waiver']['expires'][:10]}; it is ignored")
    from . import drift as drift_mod, fleet, outputs_index
    previous = signing.previous_link(run_dir)  # the manifest chain, as write_manifest will record it
    drift = drift_mod.drift_since_previous(run_results, run_dir, previous["manifest_sha256"] if previous else None)
    drift_mod.write_drift(drift, run_dir)
    sign_off = signing.sign_off_record(run_results, sign_off_by, key)
    signing.write_sign_off(sign_off, run_dir)
    matrix = fleet.build_matrix(run_results, groups)
    write_index(run_results, run_dir, pages, sign_off, drift=drift, matrix=matrix)
    write_target_pages(run_results, run_dir, matrix, spans)
    gated = gated_exit_code(run_results.results, run_results.problems, run_results.sections_not_run, fail_on)
    ci.write_summary(ci.summary_markdown(run_results, pages, fail_on, gated, drift), run_dir, say)
    if handler is not None:  # the run's log is complete: the manifest covers it
        log.removeHandler(handler)
        handler.close()
    write_manifest(run_results, run_dir, key, {**outputs_index.summary_fields(run_results, drift, sign_off),
                                              **(manifest_extra or {})})
    outputs_index.write_outputs_index(run_dir.parent)
    signing.report_sign_off(sign_off, key, say)
    for line in verdict_lines(run_results):
        say(line)
    for target, cause, ids in collapse_causes(run_results.results):
        say(f"  {len(ids)} check{'s' if len(ids) > 1 else ''} could not run on {target}: {cause}")
    for p in run_results.problems:
        say(f"  problem: {p}")
    if drift.base_run_id:
        c = drift.counts()
        say(f"since {drift.base_run_id}: {c['new_failures']} new failure(s), {c['fixed']} fixed, "
            f"{c['regressed']} regressed, {c['expired']} expired, {c['unchanged']} unchanged")
    if gated != run_results.exit_code:
        say(f"exit {gated} under --fail-on {fail_on.value} (readiness: {run_results.readiness}, "
            f"exit {run_results.exit_code})")
    return gated


def run(params_path: str | os.PathLike, out_dir: str | os.PathLike = "outputs", sections: list[str] | None = None,
        say=print, sign_off_by: str | None = None, signing_key: str | None = None,
        fail_on: FailOn = FailOn.INCOMPLETE, walked: Path | None = None, executor: str | None = None,
        unit_targets: int | None = None) -> tuple[int, Path | None]:
    """Run the runbook; return (exit code under `fail_on`, run directory). results.json records the
    readiness itself. Bad parameters raise ParamsError before anything runs. `walked`: a run folder
    a walk in JupyterLab wrote; its sections are rendered from their results (replay), not run again.
    `executor`: ``dask://HOST:PORT`` runs the checks on a Dask cluster in units of `unit_targets`
    targets (dask_run.py)."""
    params_path = Path(params_path).resolve()
    out_dir = usable_out_dir(out_dir)
    params = load_params(params_path)
    from . import confirmations, signing
    confirmations.validate_files(params)  # a malformed confirmations/waivers file: one sentence, nothing runs
    key = signing.load_signing_key(signing_key)
    catalog = load_catalog()
    chosen = sections or list(catalog.sections)
    unknown = [s for s in chosen if s not in catalog.sections]
    if unknown:
        raise UsageError(f"unknown section {unknown[0]!r}; choose from {', '.join(catalog.sections)}.")
    ensure_kernel()
    cluster = None
    if executor:  # a bad address or an unreachable scheduler: one sentence before anything runs
        from . import dask_run
        cluster = dask_run.connect(executor)
    run_id = walked.name if walked else new_run_id()
    run_dir = Path(out_dir).resolve() / run_id
    try:
        (run_dir / "notebooks").mkdir(parents=True, exist_ok=walked is not None)
    except OSError as e:
        raise UsageError(f"--out {out_dir}: cannot create the run directory ({e.strerror}).") from None
    handler = logging.FileHandler(run_dir / "runbook.log")
    log.addHandler(handler)
    started = min((sr.started_at for s in chosen if (sr := _section_header(run_dir, s))), default=now()) if walked else now()
    say(f"asap-runbook {version()}: run {run_id}, {len(params.targets)} target(s), sections {', '.join(chosen)}")
    totals = {s: len(list(catalog.section(s))) * len(params.targets) for s in chosen}
    if cluster is not None:  # the checks run on a Dask cluster; the results and pages are put together here
        from . import dask_run
        problems = dask_run.run_units(cluster, params_path, params, chosen, run_dir, say, unit_targets)
        page_problems, pages = _execute_and_render(chosen, params_path, run_dir, totals, say, replay=True)
        problems += page_problems
    else:
        problems, pages = _execute_and_render(chosen, params_path, run_dir, totals, say, replay=walked is not None,
                                              params=params)
    from .report import INLINE_EVIDENCE_MAX_TARGETS
    whole = run_dir / "sections" / "all-results.jsonl"  # gone with sections/ once results.json is written
    results = _gather(chosen, run_dir, params, problems, len(params.targets) > INLINE_EVIDENCE_MAX_TARGETS, whole)
    pages = {s: pages[s] for s in chosen if s in pages}
    not_run = [s for s in catalog.sections if s not in chosen]
    code = exit_code(results, problems, not_run)
    tnames = [t.name for t in params.targets]
    run_results = RunResults(
        run_id=run_id, runbook_version=version(), environment=params.environment, params_file=str(params_path),
        params_digest=params_digest(params_path), started_at=started, finished_at=now(), sections=chosen,
        targets=tnames, results=results, counts=counts(results), exit_code=code,
        readiness=READINESS[code], blockers=blockers(results, not_run), problems=problems,
        sections_not_run=not_run, coverage=run_coverage(results, tnames, not_run),
    )
    gated = write_evidence(run_results, run_dir, pages, {t.name: t.groups for t in params.targets}, key, fail_on,
                           sign_off_by, say, handler=handler, whole=lambda: _results_of(whole))
    say(f"evidence: {run_dir / 'index.html'}")
    return gated, run_dir
