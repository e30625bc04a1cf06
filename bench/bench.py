"""Benchmark (not a test): how close the runbook runs to the floor of the tools underneath.

One invocation measures, side by side:

1. runbook: `runner.run` on params/demo.yaml against the demo reference deployment (all four
   sections, rendering, results, junit, index, manifest, drift, outputs index); and beside it
   the same run with the opt-in active probes and drills switched off ("passive"), since the
   drills wait on purpose (a drain's grace period, a restart, a circuit breaker's cool-down);
2. floor: the same number of trivial notebooks (a parameters cell and `x = 1`), executed with
   the same machinery (`runner.execute`: papermill, the same kernel and kernel manager, the same
   thread pool) and rendered with the same `runner.Renderer`;
3. fleets of 1, 5 and 20 reference agents (1 hardened + N-1 misconfigured), `runner.run` on the
   parameters `fleet.fleet_params` writes for each.

For each: wall time (median of --repeat runs) and peak memory: the sum of the RSS of this
process and its descendants (the notebook kernels), sampled every 100 ms, excluding the
reference deployment's own processes (agents, nginx, Redis, Prometheus), which are the
system under test, not the runbook. Deployment start-up is reported apart and not counted.
The runbook's modules are byte-compiled first, as an installed package's are (pip compiles a wheel's
modules; an editable install writes them on first import unless PYTHONDONTWRITEBYTECODE is set, as on
the reference machine, where each kernel would otherwise compile every module it imports, each run).

    .venv/bin/python bench/bench.py [--repeat 3] [--fleets 1,5,20] [--json bench/last.json]
    .venv/bin/python bench/bench.py --passive-only --repeat 5   # (2) against the passive run alone: ~2 min
"""

from __future__ import annotations

import argparse
import compileall
import concurrent.futures
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import nbformat
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from asap_runbook import fleet, runner  # noqa: E402
from asap_runbook.catalog import load_catalog  # noqa: E402
from asap_runbook.reference import ReferenceDeployment, ReferenceDeploymentError  # noqa: E402


class PeakRSS:
    """Peak of the summed RSS of this process tree, minus the excluded subtrees.

    One pass over the process table per sample: asking psutil for each excluded process's children
    scanned /proc once per excluded process (64 ms of CPU a sample with nine agents, nginx and
    Prometheus up), and the sampler then took most of a CPU from the run it measured. What it still
    costs (~3 ms a sample) is `cpu`, its thread's own CPU seconds, which the figures take out of the
    runbook's and report apart."""

    def __init__(self, exclude_pids: set[int], interval: float = 0.1):
        self.exclude = exclude_pids
        self.interval = interval
        self.peak = 0
        self.cpu = 0.0
        self._stop = threading.Event()

    @staticmethod
    def _subtree(root: int, children: dict[int, list[int]]) -> set[int]:
        out, todo = set(), [root]
        while todo:
            pid = todo.pop()
            if pid not in out:
                out.add(pid)
                todo.extend(children.get(pid, ()))
        return out

    @staticmethod
    def _children() -> dict[int, list[int]]:
        """parent pid -> its children's, from /proc (what psutil does per call of children(), done once)."""
        out: dict[int, list[int]] = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    with open(f"/proc/{entry.name}/stat", "rb") as f:
                        ppid = int(f.read().rpartition(b")")[2].split()[1])
                except (OSError, ValueError, IndexError):
                    continue  # gone since the listing
                out.setdefault(ppid, []).append(int(entry.name))
        return out

    def sample(self) -> int:
        children = self._children()
        excluded = set().union(*(self._subtree(pid, children) for pid in self.exclude))
        total = 0
        for pid in self._subtree(os.getpid(), children) - excluded:
            try:
                total += psutil.Process(pid).memory_info().rss
            except psutil.Error:
                pass
        return total

    def _loop(self):
        start = time.thread_time()
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())
            self.cpu = time.thread_time() - start
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _deployment_pids(dep: ReferenceDeployment | None) -> set[int]:
    return set(dep.pids().values()) if dep is not None else set()


@contextmanager
def measured(dep: ReferenceDeployment | None, into: dict, key: str):
    with PeakRSS(_deployment_pids(dep)) as mem:
        c0, t0 = _cpu(), time.perf_counter()
        yield
        wall, cpu = time.perf_counter() - t0, _cpu() - c0
    into.setdefault(key, {"wall": [], "peak_rss": [], "cpu": [], "sampler_cpu": []})
    into[key]["wall"].append(wall)
    into[key]["peak_rss"].append(mem.peak)
    into[key]["cpu"].append(cpu - mem.cpu)  # the runbook's, not the benchmark's memory sampler
    into[key]["sampler_cpu"].append(mem.cpu)


def _cpu() -> float:
    """CPU seconds of this process and of its reaped children (the kernels), not the deployment's
    (its processes are reaped only when it stops): less sensitive to other load than wall time."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def trivial_notebooks(where: Path, n: int) -> list[Path]:
    """n notebooks with the same kernel and parameters cell as the sections, and one trivial cell."""
    where.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        nb = nbformat.v4.new_notebook()
        params = nbformat.v4.new_code_cell('params_path = "../params/demo.yaml"\nrun_dir = None')
        params.metadata["tags"] = ["parameters"]
        nb.cells = [nbformat.v4.new_markdown_cell(f"# trivial {i}"), params, nbformat.v4.new_code_cell("x = 1\nx")]
        nb.metadata["kernelspec"] = {"name": runner.KERNEL_NAME, "display_name": "asap-runbook", "language": "python"}
        path = where / f"trivial-{i}.ipynb"
        nbformat.write(nb, str(path))
        paths.append(path)
    return paths


def passive_params() -> Path:
    """params/demo.yaml with every target's active probes and drills off, written beside it (its
    relative paths stay valid) and removed when the benchmark ends."""
    import yaml
    data = yaml.safe_load((REPO / "params" / "demo.yaml").read_text())
    for t in data["targets"]:
        t["active_probes"] = {}
    path = REPO / "params" / f".bench-passive-{os.getpid()}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def floor_run(notebooks: list[Path], params_path: Path, out: Path) -> None:
    """Execute and render like runner.run does, with nothing of the runbook inside the notebooks."""
    run_dir = out / runner.new_run_id()
    (run_dir / "notebooks").mkdir(parents=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(notebooks)) as pool:
        futures = {pool.submit(runner.execute, nb.stem, params_path, run_dir, notebook=nb): nb for nb in notebooks}
        renderer = runner.Renderer()
        for fut in concurrent.futures.as_completed(futures):
            if fut.result():
                raise SystemExit(f"floor notebook failed: {fut.result()}")
            nb = futures[fut]
            renderer.render(run_dir / "notebooks" / f"{nb.stem}.ipynb", run_dir / f"{nb.stem}.html")


@contextmanager
def deployment(make, attempts: int = 3):
    """Start a reference deployment; retry when another process took a port between pick and bind."""
    for attempt in range(attempts):
        dep = make()
        try:
            dep.start()
            break
        except ReferenceDeploymentError:
            if attempt == attempts - 1:
                raise
    try:
        yield dep
    finally:
        dep.stop()


def as_installed() -> None:
    """The runbook's modules byte-compiled, as an installed package's are (the module docstring says why)."""
    compileall.compile_dir(str(REPO / "asap_runbook"), quiet=1)


def quiet(_line: str) -> None:
    pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--fleets", default="1,5,20")
    ap.add_argument("--json", type=Path, help="also write the figures as JSON here")
    ap.add_argument("--passive-only", action="store_true",
                    help="only the floor and the passive run (no active demo, whose drills wait on purpose; no fleets)")
    args = ap.parse_args()
    fleets = [] if args.passive_only else [int(x) for x in args.fleets.split(",")]
    runner.ensure_kernel()
    as_installed()
    work = Path(tempfile.mkdtemp(prefix="asap-bench-"))
    figures: dict[str, dict] = {}
    startup: dict[str, float] = {}
    sections = list(load_catalog().sections)
    passive: Path | None = None
    try:
        # (1) and (2), interleaved so that drift of the machine affects both alike
        with deployment(lambda: ReferenceDeployment(work / "demo", prometheus=True)) as dep:
            startup["demo"] = dep.startup_seconds
            os.environ.update(dep.env())
            dep.wait_prometheus_targets()
            notebooks = trivial_notebooks(work / "trivial", len(sections))
            passive = passive_params()
            # one warm-up of each, not counted: first kernel start pays for cold disk caches
            floor_run(notebooks, REPO / "params" / "demo.yaml", work / "warm")
            runner.run(passive, work / "warm", say=quiet)
            for _ in range(args.repeat):
                with measured(dep, figures, "floor"):
                    floor_run(notebooks, REPO / "params" / "demo.yaml", work / "floor")
                if not args.passive_only:
                    with measured(dep, figures, "runbook"):
                        code, _ = runner.run(REPO / "params" / "demo.yaml", work / "runbook", say=quiet)
                    figures["runbook"].setdefault("exit_codes", []).append(code)
                with measured(dep, figures, "passive"):
                    code, _ = runner.run(passive, work / "passive", say=quiet)
                figures["passive"].setdefault("exit_codes", []).append(code)
        # (3) fleets
        for n in fleets:
            with deployment(lambda: fleet.fleet_deployment(work / f"fleet-{n}", n, prometheus=True)) as dep:
                startup[f"fleet-{n}"] = dep.startup_seconds
                os.environ.update(dep.env())
                dep.wait_prometheus_targets(timeout=30)  # as for the demo: checks should not wait on first scrapes
                params = fleet.fleet_params(dep, work / f"fleet-{n}.yaml")
                for _ in range(args.repeat):
                    with measured(dep, figures, f"fleet-{n}"):
                        code, _ = runner.run(params, work / f"out-fleet-{n}", say=quiet)
                    figures[f"fleet-{n}"].setdefault("exit_codes", []).append(code)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if passive is not None:
            passive.unlink(missing_ok=True)

    def med(key, what):
        return statistics.median(figures[key][what])

    rows = [("runbook (demo, 4 sections, 3 targets)", "runbook")] if "runbook" in figures else []
    rows += [("runbook, passive (no active probes, no drills)", "passive"),
             (f"floor ({len(sections)} trivial notebooks)", "floor")]
    rows += [(f"fleet of {n} agent(s)", f"fleet-{n}") for n in fleets]
    print(f"\nasap-runbook benchmark: median of {args.repeat} run(s); {os.cpu_count()} CPU(s); "
          f"Python {sys.version.split()[0]}\n")
    print("| measurement | wall time (s) | runs (s) | CPU, runbook + kernels (s) | peak RSS, bench process + kernels, median (MiB) |")
    print("|---|---:|---|---:|---:|")
    for label, key in rows:
        runs = ", ".join(f"{w:.2f}" for w in figures[key]["wall"])
        print(f"| {label} | {med(key, 'wall'):.2f} | {runs} | {med(key, 'cpu'):.2f} | "
              f"{statistics.median(figures[key]['peak_rss']) / 2**20:.0f} |")
    ratio = med("runbook", "wall") / med("floor", "wall") if "runbook" in figures else None
    if ratio is not None:
        print(f"\nrunbook / floor = {ratio:.2f} (target <= 1.3); in CPU seconds: "
              f"{med('runbook', 'cpu') / med('floor', 'cpu'):.2f}")
    passive_ratio = med("passive", "wall") / med("floor", "wall")
    print(f"passive runbook / floor = {passive_ratio:.2f}; in CPU seconds: "
          f"{med('passive', 'cpu') / med('floor', 'cpu'):.2f}")
    out = {"repeat": args.repeat, "cpus": os.cpu_count(), "figures": figures, "startup_seconds": startup,
           "ratio_runbook_floor": ratio, "ratio_passive_floor": passive_ratio}
    if 1 in fleets and 20 in fleets:
        fr = med("fleet-20", "wall") / med("fleet-1", "wall")
        out["ratio_fleet20_fleet1"] = fr
        print(f"fleet(20) / fleet(1) = {fr:.2f} (target <= 2)")
    print("deployment start-up, not counted: " + ", ".join(f"{k} {v:.1f} s" for k, v in startup.items()))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
