"""`asap-runbook run`: execute the section notebooks, render them, and write the evidence.

Execution (papermill) and rendering (nbconvert) are separate steps (nbconvert #1300: tags
that hide code are ignored with --execute). Notebooks run in parallel kernels of the
project's own kernel, named explicitly (papermill #251/#761). Rendering happens in this
process, one exporter for every page.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import os
import secrets
import sys
import time
from datetime import UTC, datetime
from importlib import metadata, resources
from pathlib import Path
from xml.etree import ElementTree as ET

from .catalog import load_catalog
from .errors import UsageError
from .fleet import page_context
from .params import Params, load_params, params_digest
from .report import env as jinja_env
from .report import findings_html, style
from markupsafe import Markup
from .results import (
    READINESS, Result, RunResults, SectionRun, Status, blockers, collapse_causes, counts, exit_code, now,
)

KERNEL_NAME = "asap-runbook"
NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"
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


def execute(section: str, params_path: Path, run_dir: Path, notebook: Path | None = None) -> str | None:
    """Run one section notebook (or `notebook`: the benchmark's floor); return None, or one sentence saying why it failed."""
    import papermill as pm
    _kernel_imports_this_package()
    out = run_dir / "notebooks" / f"{section}.ipynb"
    try:
        pm.execute_notebook(
            str(notebook or notebook_path(section)), str(out),
            parameters={"params_path": str(params_path), "run_dir": str(run_dir)},
            kernel_name=KERNEL_NAME, cwd=str(NOTEBOOKS_DIR), progress_bar=False,
            # progress comes from sections/*.progress.json, and papermill saves the notebook at the end
            # and on failure anyway: rewriting (and re-validating) it after every cell cost ~0.2 s of CPU
            log_output=False, request_save_on_cell_execute=False,
            kernel_manager_class=ipc_kernel_manager(),
            shutdown_kernel="immediate",  # the notebook is saved and complete: do not wait for the interpreter to wind down
        )
    except pm.PapermillExecutionError as e:
        return f"the {section} notebook stopped at cell {e.exec_count}: {e.ename}: {e.evalue}"
    except Exception as e:  # kernel died, timeout, missing kernel: still one sentence
        return f"the {section} notebook could not run: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def ipc_kernel_manager():
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
            return await super()._async_pre_start_kernel(**kw)

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
        body, _ = self.exporter.from_notebook_node(nb, resources={"metadata": {"name": notebook.stem.title()}})
        html_path.write_text(body)


def _load_section(run_dir: Path, section: str) -> SectionRun | None:
    path = run_dir / "sections" / f"{section}.json"
    if not path.exists():
        return None
    try:
        return SectionRun.model_validate_json(path.read_text())
    except ValueError:
        return None


def _fill_missing(results: list[Result], section: str, params: Params, why: str) -> list[Result]:
    """Never lose a result: every (item, target) the section should have produced appears, as `error` if missing."""
    have = {(r.item_id, r.target) for r in results}
    out = list(results)
    for item in load_catalog().section(section):
        for t in params.targets:
            if (item.id, t.name) not in have:
                out.append(Result(item_id=item.id, target=t.name, section=section, subsection=item.subsection,
                                  title=item.text, status=Status.ERROR, summary=why, severity=str(item.severity),
                                  blocking=item.blocking, verification=str(item.verification),
                                  remediation=None))
    return out


def write_junit(run: RunResults, path: Path) -> None:
    suites = ET.Element("testsuites", name="asap-runbook", tests=str(len(run.results)))
    for section in run.sections:
        rs = [r for r in run.results if r.section == section]
        suite = ET.SubElement(suites, "testsuite", name=section, tests=str(len(rs)),
                              failures=str(sum(r.status is Status.FAIL for r in rs)),
                              errors=str(sum(r.status is Status.ERROR for r in rs)),
                              skipped=str(sum(r.status in (Status.SKIP, Status.MANUAL) for r in rs)))
        for r in rs:
            case = ET.SubElement(suite, "testcase", classname=f"{section}.{r.target}", name=f"{r.item_id} {r.title}",
                                 time=f"{r.duration_seconds:.3f}")
            if r.status is Status.FAIL:
                ET.SubElement(case, "failure", message=r.summary, type="blocking" if r.blocking else "advisory")
            elif r.status is Status.ERROR:
                ET.SubElement(case, "error", message=r.summary)
            elif r.status in (Status.SKIP, Status.MANUAL):
                ET.SubElement(case, "skipped", message=f"{r.status.value}: {r.summary}")
            else:
                ET.SubElement(case, "system-out").text = f"{r.status.value}: {r.summary}"
    ET.indent(suites)
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)


def write_index(run: RunResults, run_dir: Path, section_pages: dict[str, str], sign_off: dict | None = None,
                **extra) -> None:
    per_section = {s: counts([r for r in run.results if r.section == s]) for s in run.sections}
    per_target = {t: counts([r for r in run.results if r.target == t]) for t in run.targets}
    html = jinja_env().get_template("index.html.j2").render(
        run=run, sign_off=sign_off, style=style(), per_section=per_section, per_target=per_target, pages=section_pages,
        statuses=[s.value for s in Status],
        findings=lambda section: Markup(findings_html([r for r in run.results if r.section == section])),
        **page_context(run, run_dir, **extra),  # drift and the targets x items matrix (fleet.py)
    )
    (run_dir / "index.html").write_text(html)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(run: RunResults, run_dir: Path, key=None, summary: dict | None = None) -> Path:
    """SHA-256 of every artifact, chained to the previous run's manifest, signed when a key is given.
    `summary`: the small fields outputs/index.html shows (outputs_index.summary_fields)."""
    from . import signing
    return signing.write_manifest_file(
        signing.build_manifest(run, run_dir, key, signing.previous_link(run_dir), extra=summary), run_dir)


def run(params_path: str | os.PathLike, out_dir: str | os.PathLike = "outputs", sections: list[str] | None = None,
        say=print, sign_off_by: str | None = None, signing_key: str | None = None) -> tuple[int, Path | None]:
    """Run the runbook; return (exit code, run directory). Bad parameters raise ParamsError before anything runs."""
    params_path = Path(params_path).resolve()
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
    run_id = new_run_id()
    run_dir = Path(out_dir).resolve() / run_id
    (run_dir / "notebooks").mkdir(parents=True)
    handler = logging.FileHandler(run_dir / "runbook.log")
    log.addHandler(handler)
    started = now()
    say(f"asap-runbook {version()}: run {run_id}, {len(params.targets)} target(s), sections {', '.join(chosen)}")
    problems: list[str] = []
    t0 = time.monotonic()
    from .progress import watch_sections
    totals = {s: len(list(catalog.section(s))) * len(params.targets) for s in chosen}
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(chosen)) as pool, \
            watch_sections(run_dir / "sections", totals, say) as tell:
        futures = {pool.submit(execute, s, params_path, run_dir): s for s in chosen}
        renderer = Renderer()  # built while the kernels start; each page is rendered as soon as its notebook is done
        pages = {}
        for fut in concurrent.futures.as_completed(futures):
            section, why = futures[fut], fut.result()
            if why:
                problems.append(why)
            tell(f"  {section}: {'executed' if not why else why} ({time.monotonic() - t0:.1f} s)")
            nb = run_dir / "notebooks" / f"{section}.ipynb"
            if nb.exists():
                renderer.render(nb, run_dir / f"{section}.html")
                pages[section] = f"{section}.html"
    results: list[Result] = []
    for section in chosen:
        sr = _load_section(run_dir, section)
        why = next((p for p in problems if f"the {section} notebook" in p), None)
        got = sr.results if sr else []
        results += _fill_missing(got, section, params, why or f"the {section} section wrote no result for this item")
    from .confirmations import apply_records  # also covers results filled in for a section that could not run
    results = apply_records(results, params)
    pages = {s: pages[s] for s in chosen if s in pages}
    code = exit_code(results, problems)
    run_results = RunResults(
        run_id=run_id, runbook_version=version(), environment=params.environment, params_file=str(params_path),
        params_digest=params_digest(params_path), started_at=started, finished_at=now(), sections=chosen,
        targets=[t.name for t in params.targets], results=results, counts=counts(results), exit_code=code,
        readiness=READINESS[code], blockers=blockers(results), problems=problems,
    )
    (run_dir / "results.json").write_text(run_results.model_dump_json(indent=1))
    write_junit(run_results, run_dir / "junit.xml")
    for r in results:  # expired waivers are ignored, loudly
        if "expired_waiver" in r.details:
            say(f"  warning: waiver for {r.item_id} on {r.target} ({r.details['expired_waiver']['ticket']}) "
                f"expired on {r.details['expired_waiver']['expires'][:10]}; it is ignored")
    from . import drift as drift_mod, fleet, outputs_index
    previous = signing.previous_link(run_dir)  # the manifest chain, as write_manifest will record it
    drift = drift_mod.drift_since_previous(run_results, run_dir, previous["manifest_sha256"] if previous else None)
    drift_mod.write_drift(drift, run_dir)
    sign_off = signing.sign_off_record(run_results, sign_off_by, key)
    signing.write_sign_off(sign_off, run_dir)
    write_index(run_results, run_dir, pages, sign_off, drift=drift,
                matrix=fleet.build_matrix(run_results, {t.name: t.groups for t in params.targets}))
    log.removeHandler(handler)
    handler.close()
    write_manifest(run_results, run_dir, key, outputs_index.summary_fields(run_results, drift, sign_off))
    outputs_index.write_outputs_index(run_dir.parent)
    signing.report_sign_off(sign_off, key, say)
    c = run_results.counts
    say(f"{run_results.readiness.upper()} (exit {code}): " + ", ".join(f"{v} {k}" for k, v in c.items() if v))
    for target, cause, ids in collapse_causes(results):
        say(f"  {len(ids)} check{'s' if len(ids) > 1 else ''} could not run on {target}: {cause}")
    for p in problems:
        say(f"  problem: {p}")
    if drift.base_run_id:
        c = drift.counts()
        say(f"since {drift.base_run_id}: {c['new_failures']} new failure(s), {c['fixed']} fixed, "
            f"{c['regressed']} regressed, {c['expired']} expired, {c['unchanged']} unchanged")
    say(f"evidence: {run_dir / 'index.html'}")
    return code, run_dir
