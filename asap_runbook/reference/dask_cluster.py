"""A Dask scheduler and workers on loopback: `asap-runbook run --executor dask://127.0.0.1:PORT` tried
on one machine (the tests and bench/fleet_bench.py use it). Real `dask scheduler` and `dask worker`
processes, each in its own process group, so that killing a worker takes its kernels with it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding asap_runbook: the workers import this copy


class LoopbackDaskCluster:
    def __init__(self, workdir: Path, env: dict[str, str] | None = None, logs: bool = True):
        """`env`: the workers' environment (default: this process's; it is where they read tokens from).
        `logs`: keep each process's output in `workdir/<name>.log`, else discard it."""
        self.workdir = Path(workdir)
        self.logs = logs
        base = dict(os.environ if env is None else env)
        self.env = {**base, "PYTHONPATH": os.pathsep.join(
            [str(PACKAGE_ROOT), *([base["PYTHONPATH"]] if base.get("PYTHONPATH") else [])])}
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []
        self.workers: list[subprocess.Popen] = []
        self.scheduler = self._start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", str(self.port),
                                     "--no-dashboard")

    def _start(self, name: str, *args: str) -> subprocess.Popen:
        out = open(self.workdir / f"{name}.log", "w") if self.logs else subprocess.DEVNULL
        try:
            p = subprocess.Popen([str(Path(sys.executable).with_name("dask")), *args], cwd=self.workdir, env=self.env,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            if self.logs:
                out.close()  # the child has its own copy
        self.procs.append(p)
        return p

    def add_worker(self) -> subprocess.Popen:
        """One `dask worker --nworkers 1 --nthreads 1`: a unit at a time, like one runner."""
        w = self._start(f"worker{len(self.workers)}", "worker", self.address, "--host", "127.0.0.1",
                        "--nworkers", "1", "--nthreads", "1", "--no-dashboard", "--local-directory", str(self.workdir))
        self.workers.append(w)
        return w

    def wait_workers(self, n: int, timeout: float = 60) -> None:
        from distributed import Client
        with Client(self.address, timeout="30s", set_as_default=False) as c:
            c.wait_for_workers(n, timeout=timeout)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def __enter__(self) -> "LoopbackDaskCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
