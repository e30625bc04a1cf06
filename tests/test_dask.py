"""`run --executor dask://`: a real Dask scheduler and two workers on loopback run the reference
deployment's targets; one worker is killed mid-run; the run folder matches a local run."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from asap_runbook.params import load_params

from asap_runbook import dask_run
from asap_runbook.errors import UsageError
from asap_runbook.reference.dask_cluster import LoopbackDaskCluster
from asap_runbook.runner import run

from conftest import REPO, write_test_params

pytest.importorskip("distributed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster(deployment, tmp_path):
    c = LoopbackDaskCluster(tmp_path)  # the workers' environment (this one's) holds the token
    try:
        c.add_worker()
        c.add_worker()
        c.wait_workers(2)
        yield c
    finally:
        c.stop()


def _statuses(run_dir: Path) -> dict[tuple[str, str], str]:
    results = json.loads((run_dir / "results.json").read_text())["results"]
    return {(r["item_id"], r["target"]): r["status"] for r in results}


def _kill_when_busy(worker: subprocess.Popen, done: threading.Event, killed: list) -> None:
    """Kill the worker (and its kernels) as soon as it runs a unit: a kernel among its descendants."""
    proc = psutil.Process(worker.pid)
    while not done.is_set():
        try:
            if any("ipykernel" in " ".join(k.cmdline()) for k in proc.children(recursive=True)):
                os.killpg(worker.pid, signal.SIGKILL)
                killed.append(time.monotonic())
                return
        except psutil.Error:
            pass
        time.sleep(0.05)


def test_dask_run_survives_a_dead_worker_and_matches_a_local_run(deployment, cluster, tmp_path, monkeypatch):
    # a generous probe timeout: both runs must look, on a 2-CPU machine shared with the cluster
    params = write_test_params(tmp_path / "p", active=False, probe={"timeout_seconds": 10})
    local_code, local_dir = run(params, tmp_path / "local", say=lambda s: None)

    # the client does not hold the token: the hardened target's authenticated checks can only
    # pass if the workers read it from their own environment
    monkeypatch.delenv("ASAP_DEMO_TOKEN")
    done, killed, lines = threading.Event(), [], []
    killer = threading.Thread(target=_kill_when_busy, args=(cluster.workers[0], done, killed))
    killer.start()
    try:
        code, run_dir = run(params, tmp_path / "dask", executor=f"dask://127.0.0.1:{cluster.port}", unit_targets=1,
                            say=lines.append)
    finally:
        done.set()
        killer.join()
    assert killed, "the first worker never ran a unit"
    assert cluster.workers[0].poll() is not None  # it is dead, and the run still completed every unit
    said = "\n".join(lines)
    units = 4 * len(load_params(params).targets)  # (section, one target) each
    assert f"dask: {units} unit(s) of up to 1 target(s) on 2 worker(s), 2 thread(s)" in said
    assert "failed" not in said, said  # the killed worker's unit was retried on the other one

    assert _statuses(run_dir) == _statuses(local_dir)
    assert code == local_code
    got = json.loads((run_dir / "results.json").read_text())
    assert got["problems"] == [] and got["readiness"] == "not ready"
    # one run folder with what a local run writes
    names = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())  # noqa: E731
    assert names(run_dir) == names(local_dir)
    assert "SEC-AUTH-1" in (run_dir / "security.html").read_text()
    assert subprocess.run([sys.executable, "-m", "asap_runbook", "verify", str(run_dir)], cwd=REPO,
                          capture_output=True).returncode in (0, 4)  # intact (signed or not)


def test_a_unit_that_keeps_failing_is_error_with_the_reason(deployment, cluster, tmp_path, monkeypatch):
    """The parameters refer to a variable only the client has: every worker refuses the unit, Dask
    retries it, and its results are `error` saying why; nothing crashes."""
    params = write_test_params(tmp_path / "p", targets=["misconfigured"], active=False)
    text = params.read_text().replace("http_url: ${ASAP_DEMO_MISCONFIGURED_HTTP_URL}",
                                      "http_url: ${ASAP_TEST_CLIENT_ONLY_URL}")
    assert text != params.read_text()
    params.write_text(text)
    monkeypatch.setenv("ASAP_TEST_CLIENT_ONLY_URL", os.environ["ASAP_DEMO_MISCONFIGURED_HTTP_URL"])
    code, run_dir = run(params, tmp_path / "dask", executor=f"dask://127.0.0.1:{cluster.port}",
                        sections=["security"], say=lambda s: None)
    got = json.loads((run_dir / "results.json").read_text())
    assert code == 3 and got["readiness"] == "incomplete"
    assert {r["status"] for r in got["results"]} == {"error"}
    assert "ASAP_TEST_CLIENT_ONLY_URL" in got["results"][0]["summary"]
    assert "after 3 attempt(s)" in got["problems"][0]


def test_executor_address_must_be_dask_host_port():
    with pytest.raises(UsageError, match="expected dask://HOST:PORT"):
        dask_run.address("tcp://127.0.0.1:8786")
    assert dask_run.address("dask://10.0.0.5:8786") == "tcp://10.0.0.5:8786"
    with pytest.raises(UsageError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:"):
        dask_run.connect(f"dask://127.0.0.1:{_free_port()}")


def test_plan_splits_each_section_over_the_workers():
    names = [f"t{i}" for i in range(250)]
    units = dask_run.plan(names, ["security", "scaling"], worker_threads=2)
    assert [len(c) for s, c in units if s == "security"] == [100, 100, 50]  # capped at MAX_UNIT_TARGETS
    assert [t for s, c in units if s == "scaling" for t in c] == names
    assert [len(c) for _, c in dask_run.plan(names[:10], ["security"], 2)] == [5, 5]
