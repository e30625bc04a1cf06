"""Fleet benchmark (not a test): 1, 10, 20 ... 1000 target names over a handful of real reference
agents, passive probes; locally, and optionally on a Dask cluster of two workers on loopback.

Target names are spread over one reference deployment of --agents agents (1 hardened + the rest
misconfigured): every 100th name (the first included) points at the hardened agent, the others
round-robin over the misconfigured ones. Why so few on the hardened agent: its rate limit
(asap-protocol's default 10/second;100/minute per client address, asap_runbook/reference/hardened_app.py)
is shared by every name behind it, as a real limiter would be, and the reference deployment is not
loosened for the benchmark; ten names behind it already cost ~160 paced POSTs of its budget. The
misconfigured agents' limit is 100000/second (the deployment's ASAP_RATE_LIMIT for them): their names
state it (`targets[].rate_limit`), as an operator states each agent's limit; under probe.rate_limit's
default (100/minute per host) the ~120 names behind each would queue ~2000 paced POSTs, 20 minutes.

For each fleet size: wall time, CPU seconds of the runbook and its kernels (this process and its
children, reaped, amtool's runs included; with --dask, the workers' CPU too; not the memory sampler's
thread, which is reported apart), peak RSS (summed over this process and its
descendants, sampled every 100 ms, minus the reference deployment's processes), the run folder's
size, the summary page's size, results.json's size.

    .venv/bin/python bench/fleet_bench.py --sizes 1,10,20,1000 [--agents 5] [--dask] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from asap_runbook import fleet, runner  # noqa: E402
from asap_runbook.reference.dask_cluster import LoopbackDaskCluster  # noqa: E402
from asap_runbook.reference.deployment import MISCONFIGURED_RATE_LIMIT  # noqa: E402
from bench import PeakRSS, _cpu, as_installed, deployment, quiet  # noqa: E402

HARDENED_EVERY = 100


def names_params(dep, n: int, path: Path, probe: dict | None = None) -> Path:
    """Parameters naming n targets over the deployment's agents (see the module's docstring); `probe`: settings
    over the benchmark's own (--probe)."""
    base = fleet.fleet_params(dep, path.with_suffix(".agents.yaml"), active_probes=False, environment="bench")
    doc = yaml.safe_load(base.read_text())
    hardened, misconfigured = doc["targets"][0], doc["targets"][1:]
    for t in misconfigured:
        t["rate_limit"] = MISCONFIGURED_RATE_LIMIT  # what they enforce (see the module's docstring)
    targets = []
    for i in range(n):
        t = dict(hardened if i % HARDENED_EVERY == 0 or not misconfigured else misconfigured[i % len(misconfigured)])
        t["name"] = f"agent-{i:04d}"
        t["groups"] = {**t["groups"], "shard": f"s{i // 100}"}
        targets.append(t)
    doc["targets"] = targets
    # a fleet's checks spread over targets, not piled on each (docs/fleet.md): 128 in flight either way, but each
    # check in flight on one target opens its own TLS connection
    doc["probe"] = {"timeout_seconds": 10, "concurrency": 2, "max_targets_in_parallel": 64} | (probe or {})
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class LoopbackCluster(LoopbackDaskCluster):
    """Two workers (`--nworkers 1 --nthreads 1`) on 127.0.0.1, and what they spend."""

    def __init__(self, work: Path):
        super().__init__(work, logs=False)
        for _ in range(2):
            self.add_worker()
        self.wait_workers(2)

    def cpu(self) -> float:
        total = 0.0
        for p in self.procs:
            try:
                for q in [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]:
                    t = q.cpu_times()
                    total += t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                pass
        return total

    def rss(self) -> int:
        total = 0
        for p in self.procs[1:]:  # the workers and their kernels (the scheduler is small and shared)
            try:
                total += sum(q.memory_info().rss for q in [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)])
            except psutil.Error:
                pass
        return total


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _tree_cpu(pids) -> float:
    """CPU seconds of these processes and their children (nginx's workers): the system under test."""
    total = 0.0
    for pid in pids:
        try:
            for q in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
                t = q.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            pass
    return total


def measure(params: Path, out: Path, dep, cluster: LoopbackCluster | None, idle: LoopbackCluster | None = None) -> dict:
    """`cluster`: run on it; `idle`: a cluster that is up but not used (a local run): not counted."""
    excluded = set(dep.pids().values())
    for c in (cluster, idle):
        if c is not None:
            excluded |= {p.pid for p in c.procs}  # a cluster's memory is sampled apart, below
    peak_cluster = 0
    with PeakRSS(excluded) as mem:
        c0, k0, t0 = _cpu(), cluster.cpu() if cluster else 0.0, time.perf_counter()
        a0 = _tree_cpu(dep.pids().values())
        if cluster is None:
            code, run_dir = runner.run(params, out, say=quiet)
        else:
            import threading
            done = threading.Event()

            def sample():
                nonlocal peak_cluster
                while not done.is_set():
                    peak_cluster = max(peak_cluster, cluster.rss())
                    done.wait(0.2)
            th = threading.Thread(target=sample, daemon=True)
            th.start()
            try:
                code, run_dir = runner.run(params, out, say=quiet, executor=f"dask://127.0.0.1:{cluster.port}")
            finally:
                done.set()
                th.join()
        wall = time.perf_counter() - t0
        cpu = _cpu() - c0 + ((cluster.cpu() - k0) if cluster else 0.0)
        agents_cpu = _tree_cpu(dep.pids().values()) - a0
    cpu -= mem.cpu  # the benchmark's own memory sampler (a thread of this process), reported apart
    results = json.loads((run_dir / "results.json").read_text())
    return {"wall": wall, "cpu": cpu, "sampler_cpu": mem.cpu, "agents_cpu": agents_cpu, "peak_rss": mem.peak + peak_cluster, "exit_code": code,
            "run_dir_bytes": _size(run_dir), "index_bytes": (run_dir / "index.html").stat().st_size,
            "results_bytes": (run_dir / "results.json").stat().st_size,
            "statuses": {s: n for s, n in results["counts"].items() if n}, "run_dir": str(run_dir)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probe", type=yaml.safe_load, default=None,
                    help="probe settings over the benchmark's, as YAML: '{concurrency: 8, max_targets_in_parallel: 16}'")
    ap.add_argument("--sizes", default="1,10,20,1000")
    ap.add_argument("--agents", type=int, default=5, help="reference agents behind the names (1 hardened)")
    ap.add_argument("--dask", action="store_true", help="also run each size on two Dask workers on loopback")
    ap.add_argument("--keep", type=Path, help="copy the largest local run folder here (for a screenshot)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    runner.ensure_kernel()
    as_installed()
    work = Path(tempfile.mkdtemp(prefix="asap-fleet-bench-"))
    figures: dict[str, dict] = {}
    cluster = None
    try:
        with deployment(lambda: fleet.fleet_deployment(work / "dep", args.agents, prometheus=True)) as dep:
            os.environ.update(dep.env())
            dep.wait_prometheus_targets(timeout=30)
            if args.dask:
                cluster = LoopbackCluster(work)
            # one uncounted warm-up: first kernel starts pay for cold disk caches
            runner.run(names_params(dep, 1, work / "warm.yaml"), work / "warm", say=quiet)
            for n in sizes:
                params = names_params(dep, n, work / f"names-{n}.yaml", args.probe)
                figures[f"local-{n}"] = measure(params, work / f"local-{n}", dep, None, idle=cluster)
                print(f"local {n}: {json.dumps({k: v for k, v in figures[f'local-{n}'].items() if k != 'run_dir'})}",
                      flush=True)
                if cluster is not None:
                    figures[f"dask-{n}"] = measure(params, work / f"dask-{n}", dep, cluster)
                    print(f"dask {n}: {json.dumps({k: v for k, v in figures[f'dask-{n}'].items() if k != 'run_dir'})}",
                          flush=True)
            if args.keep:
                biggest = Path(figures[f"local-{max(sizes)}"]["run_dir"])
                shutil.copytree(biggest, args.keep / biggest.name)
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nasap-runbook fleet benchmark: {os.cpu_count()} CPU(s), {args.agents} reference agents behind the names\n")
    print("| run | targets | wall (s) | CPU, runbook + kernels (s) | CPU, agents + nginx + Prometheus (s) | peak RSS (MiB) "
          "| run folder (MB) | index.html (MB) | results.json (MB) | exit |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key, f in figures.items():
        kind, n = key.split("-")
        print(f"| {kind} | {n} | {f['wall']:.1f} | {f['cpu']:.1f} | {f['agents_cpu']:.1f} | {f['peak_rss'] / 2**20:.0f} | "
              f"{f['run_dir_bytes'] / 1e6:.1f} | {f['index_bytes'] / 1e6:.2f} | {f['results_bytes'] / 1e6:.1f} | {f['exit_code']} |")
    out = {"sizes": sizes, "agents": args.agents, "figures": figures}
    for kind in ("local", "dask"):
        have = [n for n in sizes if f"{kind}-{n}" in figures]
        if len(have) >= 2:
            lo, hi = have[-2], have[-1]
            a, b = figures[f"{kind}-{lo}"], figures[f"{kind}-{hi}"]
            per = {"cpu_s": (b["cpu"] - a["cpu"]) / (hi - lo), "rss_mib": (b["peak_rss"] - a["peak_rss"]) / 2**20 / (hi - lo)}
            out[f"{kind}_marginal"] = per
            print(f"{kind}: marginal cost of one more target ({lo} -> {hi}): {per['cpu_s']:.3f} CPU-s, "
                  f"{per['rss_mib']:.3f} MiB")
        for x, y in ((1000, 10), (20, 1)):
            if f"{kind}-{x}" in figures and f"{kind}-{y}" in figures:
                r = figures[f"{kind}-{x}"]["wall"] / figures[f"{kind}-{y}"]["wall"]
                out[f"{kind}_ratio_{x}_{y}"] = r
                print(f"{kind}: fleet({x}) / fleet({y}) = {r:.2f} in wall time")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
