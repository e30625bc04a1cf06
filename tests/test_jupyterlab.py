"""The interactive path for real: JupyterLab on loopback, a section notebook walked in headless
Chromium (one subsection run on its own, then the whole walk), a manual item confirmed by clicking
its widget, the run folder written from the lab (results, pages, signed manifest); the
confirmations file holds the click and a headless run afterwards shows the item `confirmed`."""

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from asap_runbook.catalog import load_catalog
from asap_runbook.results import RunResults, SectionRun, Status

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = Path("/work/screenshots")
ITEM, TARGET, SECTION = "SCALE-CACHE-3", "hardened", "scaling"  # a manual item of the scaling section

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (scripts/bootstrap --test)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(deployment, tmp_path):
    """JupyterLab on loopback over a copy of the notebooks, with params made for the test one
    directory up (the notebooks' default `../params/demo.yaml`)."""
    from conftest import write_test_params
    from asap_runbook.runner import ensure_kernel
    ensure_kernel()
    root = tmp_path / "notebooks"
    shutil.copytree(REPO / "notebooks", root)
    params = write_test_params(tmp_path / "params", targets=[TARGET], active=False)
    params.rename(params.with_name("demo.yaml"))
    token, port = secrets.token_hex(16), free_port()
    home = tmp_path / "jupyter-home"
    env = {**os.environ,  # the deployment fixture's ASAP_DEMO_* variables, for the kernel
           "PYTHONPATH": str(REPO), "ASAP_RUNBOOK_USER": "Jupyter Tester",
           "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "JUPYTER_RUNTIME_DIR": str(home / "runtime")}
    # render every cell (JupyterLab 4 only renders the cells in view by default)
    tracker = home / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text('{"windowingMode": "none", "autoStartDefaultKernel": true}')
    news = home / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false"}')
    log = open(tmp_path / "jupyterlab.log", "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # a loaded machine starts JupyterLab slowly
        while True:
            try:
                if httpx.get(f"{base}/api/status", params={"token": token}, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("JupyterLab did not start: " + (tmp_path / "jupyterlab.log").read_text()[-2000:])
            time.sleep(0.3)
        yield base, token, tmp_path / "params" / "demo.yaml", tmp_path / "params" / "confirmations.yaml"
        # the notebooks' out_dir is ../outputs: tmp_path / "outputs"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def keep(shot: Path) -> None:
    print(f"screenshot: {shot}")
    if SCREENSHOTS.parent.is_dir():
        SCREENSHOTS.mkdir(exist_ok=True)
        (SCREENSHOTS / shot.name).write_bytes(shot.read_bytes())
        print(f"screenshot kept: {SCREENSHOTS / shot.name}")


def wait_for(look, what: str, seconds: float = 120):
    """Poll `look()` until it returns something; fail saying `what` never came."""
    deadline = time.monotonic() + seconds
    while (got := look()) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} never came within {seconds:g} s")
        time.sleep(0.5)
    return got


def _finished_section(outputs: Path) -> SectionRun | None:
    for path in outputs.glob(f"*/sections/{SECTION}.json"):
        try:
            run = SectionRun.model_validate_json(path.read_text())
        except ValueError:
            continue
        if run.finished_at is not None:
            return run
    return None


def test_walk_a_subsection_confirm_by_clicking_and_write_the_run_folder(lab, tmp_path):
    from playwright.sync_api import sync_playwright
    base, token, params, confirmations = lab
    key = f"{ITEM}-{TARGET}"
    t0, phases = time.monotonic(), {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(45_000)
            page.goto(f"{base}/lab/tree/{SECTION}.ipynb?token={token}")
            page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-Cell")
            if page.locator(".jp-Dialog").count():  # "Select Kernel", should the setting above be ignored
                page.click(".jp-Dialog .jp-mod-accept")
            # the kernel is connected and idle: the status bar says "<kernel> | Idle"
            page.locator(".jp-StatusBar-Widget").get_by_text("| Idle").wait_for()
            phases["notebook open, kernel idle"] = time.monotonic() - t0

            # walk one subsection: the intro, parameters, first cell, then "Client Configuration"
            # (heading, what its items ask, run them), cell by cell with Shift+Enter
            page.locator(".jp-Notebook .jp-Cell").first.click()
            for _ in range(6):
                page.keyboard.press("Shift+Enter")
            first = [i.id for i in load_catalog().section(SECTION) if i.subsection == "Client Configuration"]
            sections = wait_for(lambda: _finished_section(tmp_path / "outputs"), "the first subsection's results")
            assert sorted(r.item_id for r in sections.results) == sorted(first)  # only those items ran
            page.get_by_text("Why:").first.wait_for()  # what the items ask, and why, was shown
            shot = tmp_path / "jupyterlab-walk-subsection.png"
            page.screenshot(path=str(shot))
            keep(shot)
            phases["one subsection walked"] = time.monotonic() - t0

            page.click(".lm-MenuBar-item:has-text('Run')")
            page.click(".lm-Menu-item[data-command='runmenu:run-all']")
            first_prompt = page.locator(".jp-CodeCell .jp-InputPrompt").first
            page.wait_for_function("el => /\\[(\\*|\\d+)\\]/.test(el.textContent)", arg=first_prompt.element_handle())
            button = page.locator(f".asap-confirm-{key}")
            try:
                button.wait_for(state="visible")
            except Exception:
                page.screenshot(path=str(tmp_path / "jupyterlab-failure.png"), full_page=True)
                errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
                raise AssertionError(f"no confirm button; see {tmp_path / 'jupyterlab-failure.png'}; stderr: {errors}")
            phases["run all -> panel shown"] = time.monotonic() - t0
            # the walk's last cell writes the run folder from the lab; widget clicks wait for the kernel
            lab_run = wait_for(lambda: next((p.parent for p in (tmp_path / "outputs").glob("*/manifest.json")), None),
                               "the run folder written by the walk's last cell", 240)
            phases["run folder written from the lab"] = time.monotonic() - t0
            # each subsection shows its own panel; "who" is typed in the item's panel, never prefilled
            panel = page.locator(".asap-confirm-panel", has=button)
            panel.locator(".asap-confirm-who input").fill("Jupyter Tester")
            page.locator(f".asap-note-{key} input").fill("cache TTLs reviewed in the lab")
            page.locator(f".asap-evidence-{key} input").fill("https://wiki.example/ops/77")
            button.scroll_into_view_if_needed()
            button.click()
            state = page.locator(f".asap-state-{key}")
            state.get_by_text("confirmed by Jupyter Tester").wait_for()
            phases["clicked -> confirmed shown"] = time.monotonic() - t0
            shot = tmp_path / "jupyterlab-confirm.png"
            state.scroll_into_view_if_needed()
            page.screenshot(path=str(shot))
            keep(shot)
        finally:
            browser.close()

    records = yaml.safe_load(confirmations.read_text())["confirmations"]
    assert [(r["item"], r["target"], r["by"], r["note"], r["evidence_url"]) for r in records] == [
        (ITEM, TARGET, "Jupyter Tester", "cache TTLs reviewed in the lab", "https://wiki.example/ops/77")]

    # the lab wrote the same run folder a headless run does: every item of the walked section, a page, a manifest
    from asap_runbook.signing import verify
    walked = RunResults.model_validate_json((lab_run / "results.json").read_text())
    every = {i.id for i in load_catalog().section(SECTION)}
    assert {r.item_id for r in walked.results} == every and walked.sections == [SECTION]
    assert (lab_run / f"{SECTION}.html").exists() and (lab_run / "junit.xml").exists()
    assert verify(lab_run).intact

    # a headless run afterwards (papermill, the same notebook) reads the file
    from asap_runbook.runner import run
    _, run_dir = run(params, tmp_path / "runs", [SECTION], say=lambda *_: None)
    results = RunResults.model_validate_json((run_dir / "results.json").read_text())
    r = next(r for r in results.results if (r.item_id, r.target) == (ITEM, TARGET))
    assert r.status is Status.CONFIRMED and r.confirmation.by == "Jupyter Tester"
    assert r.confirmation.note == "cache TTLs reviewed in the lab"
    phases["headless run done"] = time.monotonic() - t0
    print("elapsed since the browser started (s): " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()))
