"""Fleets: the generated parameters, the targets x items matrix, progress, and `demo --fleet`."""

from __future__ import annotations

import io
import os
import json
import re

import pytest
import yaml

from asap_runbook import fleet, progress
from asap_runbook.cli import main
from asap_runbook.params import load_params
from asap_runbook.results import Status


def test_fleet_params_name_every_agent_and_no_secret(deployment, tmp_path):
    path = fleet.fleet_params(deployment, tmp_path / "fleet.yaml")
    text = path.read_text()
    assert deployment.token not in text
    params = load_params(path)
    assert [t.name for t in params.targets] == ["hardened", "misconfigured"]
    assert params.target("hardened").token_env == "ASAP_DEMO_TOKEN"
    assert params.target("misconfigured").groups["role"] == "misconfigured"


def test_matrix_links_every_cell_to_its_evidence(deployment, tmp_path):
    """The summary page of a real run: one cell per (item, target), each a link to an existing row
    of the section page that holds its evidence."""
    params = fleet.fleet_params(deployment, tmp_path / "fleet.yaml", active_probes=False)
    assert main(["run", "--params", str(params), "--out", str(tmp_path / "out"), "--sections", "security"]) in (1, 3)
    run_dir = next(p for p in (tmp_path / "out").iterdir() if p.is_dir())
    page = (run_dir / "index.html").read_text()
    results = json.loads((run_dir / "results.json").read_text())["results"]
    links = re.findall(r'<a class="st st-(\w+) cell" href="([\w.]*)#([\w.-]+--[\w.-]+)">(\w+)</a>', page)
    assert len(links) == len(results)
    anchors = {name: set(re.findall(r'<tr id="([\w.-]+--[\w.-]+)">', (run_dir / name).read_text()))
               for name in {p for _, p, _, _ in links}}
    assert set(anchors) == {"security.html"}, "the evidence is on the section page"
    for status, page_name, anchor, text in links:
        assert anchor in anchors[page_name] and status == text  # colour class and text agree
    by = {(r["item_id"], r["target"]): r["status"] for r in results}
    assert by[("SEC-TLS-4", "hardened")] == "pass" and by[("SEC-TLS-4", "misconfigured")] == "fail"
    assert 'href="security.html#SEC-TLS-4--misconfigured">fail</a>' in page
    assert "not ready" in page and "role: misconfigured" in page  # per-target readiness and groups


def test_progress_describes_sections_and_running_checks(tmp_path):
    (tmp_path / "security.progress.json").write_text(json.dumps(
        {"done": 3, "total": 50, "running": ["SEC-TLS-2 on a", "SEC-AUTH-1 on b"], "finished": False}))
    (tmp_path / "scaling.progress.json").write_text(json.dumps({"done": 20, "total": 20, "running": [], "finished": True}))
    totals = {"security": 50, "scaling": 20, "monitoring": 32}
    done, text = progress.describe(progress.read_progress(tmp_path, list(totals)), totals)
    assert done == 23
    assert text == "security 3/50 · scaling 20/20 ✓ · monitoring 0/32 · running SEC-TLS-2 on a (+1)"
    stream = io.StringIO()
    with progress.watch_sections(tmp_path, totals, say=lambda s: stream.write(s + "\n"), stream=stream,
                                 enabled=True) as tell:
        tell("  security: executed")
    assert "security: executed" in stream.getvalue() and "23/102" in stream.getvalue()


def test_notebook_progress_callback_advances_a_bar():
    from asap_runbook.notebook import _advance

    class Bar:
        n, post = 0, ""
        def update(self, k): self.n += k
        def set_postfix_str(self, s, refresh=True): self.post = s

    bar = Bar()
    _advance(bar)("SEC-TLS-1", "hardened", Status.PASS)
    assert bar.n == 1 and bar.post == "SEC-TLS-1 on hardened: pass"


def test_demo_fleet_flag_starts_n_agents(tmp_path, capsys):
    """`asap-runbook demo --fleet 3`: three agents on free ports, a params file for them, one run."""
    saved = dict(os.environ)  # the demo exports its deployment's variables; the session deployment's must survive
    try:
        code = main(["demo", "--fleet", "3", "--no-prometheus", "--out", str(tmp_path)])
    finally:
        os.environ.clear()
        os.environ.update(saved)
    said = capsys.readouterr().out
    assert code == 0, said
    # the deployment's files are gone with it, so read the params file as YAML, not load_params
    targets = yaml.safe_load((tmp_path / "fleet-3.params.yaml").read_text())["targets"]
    assert [t["name"] for t in targets] == ["hardened", "misconfigured", "misconfigured-2"]
    assert len({t["base_url"] for t in targets}) == 3
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    results = json.loads((run_dir / "results.json").read_text())
    assert results["targets"] == ["hardened", "misconfigured", "misconfigured-2"]
    assert (tmp_path / "index.html").exists()
    # the demo signs its evidence with a key it made in its outputs folder: verify sees the whole chain
    assert (tmp_path / ".demo-signing-key.pem").is_file() and "demo signing key" in said
    assert main(["verify", str(run_dir)]) == 0
    assert "INTACT" in capsys.readouterr().out
    assert main(["demo", "--fleet", "0"]) == 2


def test_lean_html_exporter_renders_what_the_stock_one_does():
    """The Renderer skips nbconvert's BeautifulSoup pass; the page must come out the same."""
    from importlib import resources

    import nbformat
    from bs4 import BeautifulSoup
    from nbconvert import HTMLExporter

    from asap_runbook.runner import Renderer
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [
        nbformat.v4.new_output("display_data", data={"text/html": "<table class='rb'><tr><td>fail</td></tr></table>"}),
        nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"}),
        nbformat.v4.new_output("stream", name="stdout", text="hello\n"),
    ]
    nb.cells = [nbformat.v4.new_markdown_cell("# Title"), cell]
    base = str(resources.files("asap_runbook") / "templates" / "nbconvert")
    stock = HTMLExporter(template_name="asap_offline", extra_template_basedirs=[base], exclude_input=True,
                         exclude_input_prompt=True, exclude_output_prompt=True)
    lean, _ = Renderer().exporter.from_notebook_node(nb)
    ref, _ = stock.from_notebook_node(nb)
    a, b = BeautifulSoup(lean, "html.parser"), BeautifulSoup(ref, "html.parser")
    assert a.get_text() == b.get_text()
    assert [t.name for t in a.select("[tabindex]")] == [t.name for t in b.select("[tabindex]")]
    assert [i.get("alt") for i in a.select("img")] == [i.get("alt") for i in b.select("img")] != []


def test_progress_in_a_log_prints_plain_lines(tmp_path, monkeypatch):
    """Not a terminal (CI logs): no bar, a plain line now and then."""
    monkeypatch.setattr(progress, "PLAIN_EVERY_SECONDS", 0)
    (tmp_path / "scaling.progress.json").write_text(json.dumps({"done": 5, "total": 16, "running": ["SCALE-SERVER-1 on a"]}))
    stream = io.StringIO()
    with progress.watch_sections(tmp_path, {"scaling": 16}, say=lambda s: None, stream=stream, enabled=None):
        pass
    assert "progress: 5/16 checks · scaling 5/16 · running SCALE-SERVER-1 on a" in stream.getvalue()
    assert "\r" not in stream.getvalue()


def test_introspection_runs_one_child_per_distinct_app(monkeypatch):
    """A fleet naming one app for many targets costs one child process, not one per target."""
    import threading
    from asap_runbook import introspect
    calls = []

    def child(ref, app_path, app_env, timeout, drop_env):
        calls.append((ref, dict(app_env or {})))
        return {"app_class": "ASAPApp", "rate_limits": ["10/second"]}
    monkeypatch.setattr(introspect, "_introspect_child", child)
    monkeypatch.setattr(introspect, "_cache", {})
    threads = [threading.Thread(target=introspect.introspect_app, args=("m:app", None, {"A": "1"}, 10.0, ("TOK",)))
               for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [("m:app", {"A": "1"})]
    got = introspect.introspect_app("m:app", None, {"A": "1"}, 10.0, ("TOK",))
    got["rate_limits"].append("mutated by one check")  # each caller gets its own copy
    assert introspect.introspect_app("m:app", None, {"A": "1"}, 10.0, ("TOK",))["rate_limits"] == ["10/second"]
    introspect.introspect_app("m:app", None, {"A": "2"}, 10.0, ("TOK",))  # another environment: another child
    assert len(calls) == 2


def test_the_kernels_of_one_run_share_one_introspection_child_per_app(tmp_path):
    """Security and scaling run in separate kernels and both read the same apps: with the run's
    shared folder, the first kernel's child answers both (its error too); without it each imports."""
    import subprocess
    import sys
    (tmp_path / "tiny_app.py").write_text(
        "import os, types\n"
        "open(os.path.join(os.path.dirname(__file__), 'imports.log'), 'a').write('imported\\n')\n"
        "class App: pass\n"
        "app = App(); app.state = types.SimpleNamespace(max_request_size=1024)\n")
    (tmp_path / "broken_app.py").write_text(
        "import os\n"
        "open(os.path.join(os.path.dirname(__file__), 'imports.log'), 'a').write('broken\\n')\n"
        "raise RuntimeError('no database')\n")
    kernel = ("import sys; from pathlib import Path; from asap_runbook import introspect\n"
              "print(introspect.introspect_app('tiny_app:app', app_path=Path(sys.argv[1]))['max_request_size'])\n"
              "try: introspect.introspect_app('broken_app:app', app_path=Path(sys.argv[1]))\n"
              "except introspect.IntrospectionError as e: print(e.message)\n")

    def two_kernels(env_extra):
        env = {**os.environ, **env_extra}
        procs = [subprocess.Popen([sys.executable, "-c", kernel, str(tmp_path)], env=env, stdout=subprocess.PIPE,
                                  text=True) for _ in range(2)]
        return [p.communicate(timeout=120)[0].splitlines() for p in procs]

    shared = tmp_path / "shared"
    shared.mkdir()
    outputs = two_kernels({"ASAP_RUNBOOK_SHARED_DIR": str(shared)})
    assert outputs[0] == outputs[1] and outputs[0][0] == "1024"
    assert "RuntimeError: no database" in outputs[0][1]
    assert sorted((tmp_path / "imports.log").read_text().split()) == ["broken", "imported"]
    (tmp_path / "imports.log").unlink()
    two_kernels({})
    assert sorted((tmp_path / "imports.log").read_text().split()) == ["broken", "broken", "imported", "imported"]


def _apps(tmp_path):
    """Apps that log their imports, tell whether asap-protocol's dependencies were loaded before them
    (a forked child of the process that preloaded them), and whether the target's token reached them."""
    folder = tmp_path / "apps"
    folder.mkdir()
    (folder / "preloaded_app.py").write_text(
        "import os, sys, types\n"
        "open(os.path.join(os.path.dirname(__file__), 'imports.log'), 'a').write('preloaded_app\\n')\n"
        "class App: pass\n"
        "app = App(); app.state = types.SimpleNamespace(max_request_size=int('fastapi' in sys.modules),\n"
        "                                               max_batch_size=os.environ.get('APP_SETTING'))\n")
    (folder / "tattle_app.py").write_text(
        "import os\nraise RuntimeError('token=' + os.environ.get('MY_TOKEN', 'absent'))\n")
    shadowing = tmp_path / "shadowing"  # an app folder with its own module named like a preloaded one
    shadowing.mkdir()
    (shadowing / "structlog.py").write_text("")
    (shadowing / "preloaded_app.py").write_text((folder / "preloaded_app.py").read_text())
    return folder, shadowing


def test_the_run_introspects_its_apps_once_as_the_kernels_start(tmp_path, monkeypatch):
    """The runner's one process imports asap-protocol's dependencies once and forks a child per app:
    each child sees its own environment and not the token; the kernels read the answers and import
    nothing themselves; an app folder that shadows a preloaded module gets a fresh interpreter."""
    from types import SimpleNamespace
    from asap_runbook import introspect
    folder, shadowing = _apps(tmp_path)
    monkeypatch.setenv("MY_TOKEN", "canary-7f3a9c")
    monkeypatch.setattr(introspect, "_cache", {})

    def target(ref, path, env=None):
        return SimpleNamespace(app=ref, app_path=path, app_env=env or {}, token_env="MY_TOKEN")
    params = SimpleNamespace(probe=SimpleNamespace(timeout_seconds=3), targets=[
        target("preloaded_app:app", folder, {"APP_SETTING": "a"}), target("preloaded_app:app", folder, {"APP_SETTING": "a"}),
        target("preloaded_app:app", folder, {"APP_SETTING": "b"}), target("tattle_app:app", folder),
        target("preloaded_app:app", shadowing)])
    shared = tmp_path / "shared"
    shared.mkdir()
    introspect.answer_ahead(params, shared)()
    assert (folder / "imports.log").read_text().split() == ["preloaded_app", "preloaded_app"]  # two environments
    monkeypatch.setenv(introspect.SHARED_DIR_ENV, str(shared))
    a, b = (introspect.introspect_target(t, params) for t in params.targets[1:3])
    assert (a["max_batch_size"], b["max_batch_size"]) == ("a", "b")
    assert a["max_request_size"] == 1  # imported in a child of the preloading process
    assert introspect.introspect_target(params.targets[4], params)["max_request_size"] == 0  # a fresh interpreter
    with pytest.raises(introspect.IntrospectionError) as e:
        introspect.introspect_target(params.targets[3], params)
    assert "token=absent" in e.value.message and "canary" not in e.value.message
    assert (folder / "imports.log").read_text().split() == ["preloaded_app", "preloaded_app"]  # none by the kernels


def test_when_the_run_cannot_introspect_ahead_each_kernel_looks_for_itself(tmp_path, monkeypatch):
    from types import SimpleNamespace
    from asap_runbook import introspect
    folder, _ = _apps(tmp_path)
    monkeypatch.setattr(introspect, "_cache", {})
    monkeypatch.setattr(introspect, "_introspect_many", lambda keys, cwd: iter(()))  # it died before answering
    t = SimpleNamespace(app="preloaded_app:app", app_path=folder, app_env={"APP_SETTING": "c"}, token_env=None)
    params = SimpleNamespace(probe=SimpleNamespace(timeout_seconds=3), targets=[t])
    shared = tmp_path / "shared"
    shared.mkdir()
    introspect.answer_ahead(params, shared)()
    monkeypatch.setenv(introspect.SHARED_DIR_ENV, str(shared))
    assert introspect.introspect_target(t, params)["max_batch_size"] == "c"
    assert (folder / "imports.log").read_text().split() == ["preloaded_app"]  # by the kernel, in its own child


def test_an_app_that_hangs_is_one_sentence_and_the_others_still_answer(tmp_path):
    from asap_runbook import introspect
    folder, _ = _apps(tmp_path)
    (folder / "hanging_app.py").write_text("import time\ntime.sleep(120)\n")
    answers = list(introspect._introspect_many([("hanging_app:app", str(folder), (), 1.0, ()),
                                                ("preloaded_app:app", str(folder), (("APP_SETTING", "x"),), 30.0, ())],
                                               None))
    assert [i for i, _ in answers] == [1, 0]  # each as it comes: the others need not wait for the slow one
    assert answers[1][1] == {"error": "importing hanging_app:app did not finish within 1 s"}
    assert answers[0][1]["config"]["max_batch_size"] == "x"


def test_a_kernel_thread_that_raises_is_the_error_the_run_gives_after_the_apps_answered(tmp_path, monkeypatch):
    """An exception in a section's thread propagates as itself, and only once the run's introspection is
    over: an answer written while the shared folder is removed would raise an OSError in its place."""
    import threading
    from types import SimpleNamespace
    from asap_runbook import introspect, runner
    folder, _ = _apps(tmp_path)
    (folder / "slow_app.py").write_text("import time\ntime.sleep(1.5)\nfrom preloaded_app import app\n")
    monkeypatch.setattr(introspect, "_cache", {})

    def execute(section, *a, **kw):
        raise RuntimeError(f"{section} kernel thread failed")
    monkeypatch.setattr(runner, "execute", execute)
    params = SimpleNamespace(probe=SimpleNamespace(timeout_seconds=10), targets=[
        SimpleNamespace(app="slow_app:app", app_path=folder, app_env={}, token_env=None)])
    (tmp_path / "run" / "notebooks").mkdir(parents=True)
    with pytest.raises(RuntimeError, match="security kernel thread failed"):
        runner._execute_and_render(["security"], tmp_path / "p.yaml", tmp_path / "run", {"security": 1},
                                   lambda line: None, params=params)
    assert not [t for t in threading.enumerate() if t.name == "introspect-ahead"]
    assert (folder / "imports.log").read_text().split() == ["preloaded_app"]  # the slow app was answered


def test_section_results_are_appended_once_and_recovered_if_the_kernel_dies(tmp_path):
    """Results go to a partial file as they arrive (each written once); the results file is
    written at the end; a section whose kernel died is recovered from the partial file."""
    from asap_runbook import engine, runner
    from asap_runbook.results import Result

    def result(i: int) -> Result:
        return Result(item_id="SEC-TLS-1", target=f"t{i}", section="security", subsection="TLS", title="TLS",
                      status=Status.PASS, summary="ok", severity="critical", blocking=True, verification="probe")
    path = tmp_path / "sections" / "security.json"
    rec = engine._Recorder("security", path, total=3)
    rec.add(result(0))
    rec.add(result(1))
    rec.flush()
    rec.add(result(2))
    rec.flush()
    partial = engine.partial_path(path)
    assert [json.loads(line)["target"] for line in partial.read_text().splitlines()] == ["t0", "t1", "t2"]
    assert not path.exists()
    with open(partial, "a") as f:
        f.write('{"item_id": "SEC-TLS-1", "tar')  # the kernel died mid-line
    got = runner._load_section(tmp_path, "security")
    assert [r.target for r in got.results] == ["t0", "t1", "t2"]
    rec.finish()
    assert not partial.exists()
    assert [r.target for r in runner._load_section(tmp_path, "security").results] == ["t0", "t1", "t2"]


def _result(i: int, item: str = "SEC-TLS-1", summary: str = "ok"):
    from datetime import UTC, datetime
    from asap_runbook.results import Evidence, Result
    return Result(item_id=item, target=f"t{i}", section="security", subsection="TLS", title="TLS",
                  status=Status.FAIL, summary=summary, severity="critical", blocking=True, verification="probe",
                  evidence=[Evidence(label="exchange", data={"body": "x" * 500, "i": i})],
                  details={"observation": {"seen": list(range(50))}, "cause": "c"},
                  started_at=datetime(2026, 11, 30, tzinfo=UTC))


def test_a_fleets_section_holds_its_results_lean_and_writes_them_whole(tmp_path):
    """The recorder keeps lean copies (no evidence data, no observation) of what `lean` names, and the
    section's results file, written from the partial file in the sorted order, has every result whole."""
    from asap_runbook import engine, section_file
    path = tmp_path / "sections" / "security.json"
    rec = engine._Recorder("security", path, total=6, lean=lambda r: r.target != "t5")
    for i in (3, 1, 5, 0, 2, 4):
        rec.add(_result(i, summary="line\u2028separator\u0085and\nnewline" if i == 2 else "ok"))
        if i == 5:
            rec.flush()
    rec.sort(key=lambda r: r.target)
    rec.finish()
    held = {r.target: r for r in rec.run.results}
    assert [e.data for e in held["t1"].evidence] == [None] and held["t1"].details == {"observation": None, "cause": "c"}
    assert held["t1"].summary == "ok" and held["t1"].status is Status.FAIL
    assert held["t5"].evidence[0].data["i"] == 5, "results `lean` does not name are held whole"
    written = section_file.load(path)
    assert [r.target for r in written.results] == ["t0", "t1", "t2", "t3", "t4", "t5"]
    assert written.results == [_result(i, summary=written.results[2].summary if i == 2 else "ok") for i in range(6)]
    assert written.results[2].summary == "line\u2028separator\u0085and\nnewline"
    assert json.loads(path.read_text())["results"][4]["evidence"][0]["data"]["i"] == 4, "one JSON document"
    assert not engine.partial_path(path).exists()


def test_a_section_file_of_the_earlier_layout_is_still_read(tmp_path):
    from asap_runbook import runner, section_file
    from asap_runbook.results import SectionRun, now
    path = tmp_path / "sections" / "security.json"
    path.parent.mkdir()
    path.write_text(SectionRun(section="security", started_at=now(), results=[_result(0), _result(1)]).model_dump_json(indent=1))
    assert [r.target for r in section_file.results(path)] == ["t0", "t1"]
    assert section_file.header(path).results == []
    assert runner._load_section(tmp_path, "security").results == [_result(0), _result(1)]


def test_results_json_written_one_result_at_a_time_is_the_models_own(tmp_path):
    """write_results_json writes exactly what RunResults.model_dump_json(indent=1) does, and the spans it
    returns read back each target's results whole."""
    from asap_runbook import runner
    from asap_runbook.results import Result, RunResults, now
    results = [_result(i, item) for item in ("SEC-TLS-1", "SEC-TLS-2") for i in range(3)]
    for rs in (results, []):
        run = RunResults(run_id="r", runbook_version="v", environment="e\u2028", params_file="p", params_digest="d",
                         started_at=now(), finished_at=now(), sections=["security"], targets=["t0", "t1", "t2"],
                         results=rs, counts={}, exit_code=1, readiness="not ready")
        path = tmp_path / "results.json"
        spans = runner.write_results_json(run, path, iter(rs))
        assert path.read_text() == run.model_dump_json(indent=1)
        raw = path.read_bytes()
        assert {t: [Result.model_validate_json(raw[o:o + n]) for o, n in s] for t, s in spans.items()} == \
            {t: [r for r in rs if r.target == t] for t in ("t0", "t1", "t2") if rs}


def test_a_section_that_recorded_nothing_still_writes_its_results_file(tmp_path):
    from asap_runbook import engine, section_file
    path = tmp_path / "sections" / "security.json"
    rec = engine._Recorder("security", path)
    rec.flush()
    rec.finish()
    assert section_file.load(path).results == [] and section_file.header(path).section == "security"


def test_only_a_fleets_passive_targets_are_held_lean():
    """A small run's pages show evidence inline, and an active target's figures are drawn from its
    results: both are held whole; a fleet's passive targets lean."""
    from asap_runbook.engine import held_lean
    from asap_runbook.params import Target
    from asap_runbook.report import INLINE_EVIDENCE_MAX_TARGETS
    passive = [Target(name=f"t{i}", base_url="https://x") for i in range(INLINE_EVIDENCE_MAX_TARGETS + 1)]
    active = Target(name="t0", base_url="https://x", active_probes={"drills": True})
    assert held_lean(passive)(_result(1)) and held_lean(passive)(_result(0))
    assert not held_lean([active, *passive[1:]])(_result(0)) and held_lean([active, *passive[1:]])(_result(1))
    assert not held_lean(passive[:INLINE_EVIDENCE_MAX_TARGETS])(_result(1))
