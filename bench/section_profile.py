"""Per-target cost of a section (not a test): CPU seconds and requests per target, in one process.

Also the peak resident memory of this process during each section (sampled every 20 ms) and how
much it grew over the section.

Starts one reference deployment of --agents agents (1 hardened + the rest misconfigured), writes the
fleet benchmark's parameters for each of --sizes target names (bench/fleet_bench.py names_params:
every 100th name on the hardened agent, passive probes) and runs each section in this process the way
its kernel does (`notebook.walk` in headless mode: the checks, the results file, the findings tables).
For each (section, size): CPU seconds of this process (`time.process_time`), requests sent per target
(every request through `probe.Probe`, the preflight's included), Prometheus API requests; the
marginal CPU seconds per target between the two largest sizes. `--profile DIR` writes a cProfile (wall time of the main thread; for CPU, run this under `py-spy record -f raw`) of
each (section, size) there (`python -m pstats DIR/security-24.prof`).

CPU seconds are much less disturbed by other load on the machine than wall time.

    .venv/bin/python bench/section_profile.py --sizes 4,24 [--sections security,monitoring] [--profile /tmp/prof]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from asap_runbook import fleet, notebook, probe  # noqa: E402
from asap_runbook.catalog import load_catalog  # noqa: E402
from bench import deployment  # noqa: E402
from fleet_bench import names_params  # noqa: E402


class Counted:
    """Requests sent through the probe (per target name) and to Prometheus (requests' Session)."""

    def __init__(self):
        self.per_target: collections.Counter[str] = collections.Counter()
        self.prometheus = 0

    @contextlib.contextmanager
    def counting(self):
        import requests
        original_once, original_send = probe.Probe._once, requests.Session.send
        counted = self

        async def once(self_, *a, **kw):
            counted.per_target[self_.target.name] += 1
            return await original_once(self_, *a, **kw)

        def send(self_, *a, **kw):
            counted.prometheus += 1
            return original_send(self_, *a, **kw)
        probe.Probe._once, requests.Session.send = once, send
        try:
            yield self
        finally:
            probe.Probe._once, requests.Session.send = original_once, original_send


class PeakRSS:
    """The largest resident set size of this process while the block runs, sampled every 20 ms."""

    def __enter__(self):
        import threading

        import psutil
        self._proc, self._stop = psutil.Process(), threading.Event()
        self.start = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def run_section(section: str, params: Path, run_dir: Path, prof: cProfile.Profile | None) -> None:
    """What a section's kernel runs in a headless run: the walk, each subsection's findings, the overview."""
    with contextlib.redirect_stdout(io.StringIO()):  # IPython's display() prints outside a kernel
        if prof:
            prof.enable()
        walk = notebook.walk(section, str(params), str(run_dir))
        for sub in walk.subsections():
            walk.run(sub)
        walk.overview()
        if prof:
            prof.disable()
    if walk.error:
        raise SystemExit(f"{section}: {walk.error}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--probe", type=yaml.safe_load, default=None,
                    help="probe settings over the benchmark's, as YAML: '{concurrency: 8, max_targets_in_parallel: 16}'")
    ap.add_argument("--sizes", default="4,24")
    ap.add_argument("--agents", type=int, default=9)
    ap.add_argument("--sections", default=",".join(load_catalog().sections))
    ap.add_argument("--profile", type=Path, help="write a cProfile of each (section, size) into this folder")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    sections = args.sections.split(",")
    os.environ["ASAP_RUNBOOK_HEADLESS"] = "1"  # as in the kernels of `asap-runbook run`
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="asap-section-profile-"))
    figures: dict[str, dict] = {}
    try:
        with deployment(lambda: fleet.fleet_deployment(work / "dep", args.agents, prometheus=True)) as dep:
            os.environ.update(dep.env())
            dep.wait_prometheus_targets(timeout=30)
            run_section(sections[0], names_params(dep, 1, work / "warm.yaml"), work / "warm", None)  # imports, caches
            for n in sizes:
                params = names_params(dep, n, work / f"names-{n}.yaml", args.probe)
                for section in sections:
                    prof = cProfile.Profile() if args.profile else None
                    run_dir = work / f"run-{section}-{n}"
                    with Counted().counting() as counted, PeakRSS() as rss:
                        c0, t0 = time.process_time(), time.perf_counter()
                        run_section(section, params, run_dir, prof)
                        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
                    if prof:
                        prof.dump_stats(args.profile / f"{section}-{n}.prof")
                    per = sorted(counted.per_target.values())
                    results = json.loads((run_dir / "sections" / f"{section}.json").read_text())["results"]
                    f = figures[f"{section}-{n}"] = {
                        "section": section, "targets": n, "cpu": cpu, "wall": wall,
                        "requests_per_target": sum(per) / n, "requests_min_max": [per[0], per[-1]] if per else [0, 0],
                        "prometheus_requests": counted.prometheus,
                        "peak_rss_mib": rss.peak / 2**20, "rss_growth_mib": (rss.peak - rss.start) / 2**20,
                        "statuses": dict(collections.Counter(r["status"] for r in results))}
                    print(f"{section} x {n}: {cpu:.2f} CPU-s ({cpu / n:.3f} per target), wall {wall:.1f} s, "
                          f"{f['requests_per_target']:.1f} requests per target (min {f['requests_min_max'][0]}, "
                          f"max {f['requests_min_max'][1]}), {counted.prometheus} Prometheus requests, "
                          f"peak RSS {f['peak_rss_mib']:.0f} MiB (+{f['rss_growth_mib']:.0f} during the section), "
                          f"statuses {f['statuses']}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if len(sizes) >= 2:
        lo, hi = sizes[-2], sizes[-1]
        total = 0.0
        for section in sections:
            m = (figures[f"{section}-{hi}"]["cpu"] - figures[f"{section}-{lo}"]["cpu"]) / (hi - lo)
            total += m
            print(f"{section}: marginal {m:.3f} CPU-s per target ({lo} -> {hi})")
        print(f"all sections: marginal {total:.3f} CPU-s per target")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
