"""Benchmark (not a test): the size of a fleet's pages, pure rendering, no agents.

A synthetic RunResults of N targets x the 61 checklist items, spread over four kinds of agent
(one hardened, three misconfigured in different ways) the way a real fleet repeats a few
deployments, with evidence of a realistic size (an HTTP exchange per result), rendered by the
runner's own `write_index` (summary page, matrix, per-target pages). It reports the summary
page's size, the largest per-target page, the whole folder, and the render time.

    .venv/bin/python bench/pages.py [--targets 1,10,20,1000] [--json /tmp/pages.json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asap_runbook.catalog import load_catalog  # noqa: E402
from asap_runbook.results import (  # noqa: E402
    READINESS, Evidence, Result, RunResults, Status, blockers, counts, coverage, exit_code,
)

T0 = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)
KINDS = ("hardened", "no-tls", "no-auth", "no-metrics")


def _status(kind: str, item, n: int) -> tuple[Status, str]:
    """What a target of this kind shows for this item: mostly the same per kind, a few per target."""
    if item.verification == "manual":
        return Status.MANUAL, "awaiting a person: " + item.text[:60]
    if item.verification == "drill":
        return Status.SKIP, "active probe not enabled: set targets[].active_probes.drills"
    if kind == "hardened":
        return Status.PASS, f"{item.id} holds on this agent"
    bad = {"no-tls": "SEC-TLS", "no-auth": "SEC-AUTH", "no-metrics": "MON-"}[kind]
    if item.id.startswith(bad):
        return Status.FAIL, f"{item.id}: the agent at https://10.0.{n // 250}.{n % 250}:8443 does not comply"
    if n % 97 == 0 and item.verification == "prometheus":
        return Status.ERROR, "Prometheus did not answer: connection refused"
    if item.severity == "low":
        return Status.WARN, f"{item.id}: advisory finding on a {kind} agent"
    return Status.PASS, f"{item.id} holds on this agent"


def synthetic_run(n_targets: int) -> RunResults:
    catalog = load_catalog()
    targets = [f"agent-{i:04d}" for i in range(n_targets)]
    results = []
    for i, t in enumerate(targets):
        kind = KINDS[i % len(KINDS)]
        for item in catalog.items:
            status, summary = _status(kind, item, i)
            exchange = {"request": {"method": "POST", "url": f"https://10.0.{i // 250}.{i % 250}:8443/asap",
                                    "headers": {"content-type": "application/json", "authorization": "[redacted]"},
                                    "body": {"jsonrpc": "2.0", "method": "asap.send", "id": f"{item.id}-{i}"}},
                        "response": {"status": 200, "headers": {"content-type": "application/json",
                                                                "strict-transport-security": "max-age=31536000"},
                                     "body": {"jsonrpc": "2.0", "result": {"status": "completed"}, "id": i}},
                        "elapsed_ms": 12.5}
            results.append(Result(
                item_id=item.id, target=t, section=item.section, subsection=item.subsection, title=item.text,
                status=status, summary=summary, severity=str(item.severity), blocking=item.blocking,
                verification=str(item.verification), evidence=[Evidence(label="exchange", data=exchange)],
                remediation=item.remediation if status in (Status.FAIL, Status.WARN, Status.ERROR) else None,
                started_at=T0, duration_seconds=0.1))
    code = exit_code(results)
    return RunResults(
        run_id=f"20261130T060000Z-f{n_targets}", runbook_version="bench", environment="fleet",
        params_file="fleet.yaml", params_digest="0" * 64, started_at=T0, finished_at=T0 + timedelta(minutes=4),
        sections=list(catalog.sections), targets=targets, results=results, counts=counts(results),
        exit_code=code, readiness=READINESS[code], blockers=blockers(results), coverage=coverage(results, targets))


def groups_of(run: RunResults) -> dict[str, dict[str, str]]:
    return {t: {"kind": KINDS[i % len(KINDS)], "region": ("eu", "us", "ap")[i % 3]} for i, t in enumerate(run.targets)}


def render(run: RunResults, run_dir: Path) -> dict:
    from asap_runbook import fleet, runner
    pages = {s: f"{s}.html" for s in run.sections}
    t = time.perf_counter()
    matrix = fleet.build_matrix(run, groups_of(run))
    runner.write_index(run, run_dir, pages, None, matrix=matrix)
    spans = runner.write_results_json(run, run_dir / "results.json", run.results)  # the target pages read it back
    runner.write_target_pages(run, run_dir, matrix, spans)
    seconds = time.perf_counter() - t
    target_pages = sorted((run_dir / "targets").glob("*.html")) if (run_dir / "targets").is_dir() else []
    return {"targets": len(run.targets), "results": len(run.results),
            "index_bytes": (run_dir / "index.html").stat().st_size,
            "target_pages": len(target_pages),
            "largest_target_page_bytes": max((p.stat().st_size for p in target_pages), default=0),
            "all_pages_bytes": sum(p.stat().st_size for p in run_dir.rglob("*.html")),
            "render_seconds": round(seconds, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="1,10,20,1000")
    ap.add_argument("--json")
    ap.add_argument("--keep", help="keep the rendered pages here (one folder per size)")
    a = ap.parse_args()
    rows = []
    for n in [int(x) for x in a.targets.split(",")]:
        run = synthetic_run(n)
        d = Path(a.keep) / f"fleet-{n}" if a.keep else Path(tempfile.mkdtemp(prefix=f"pages-{n}-"))
        d.mkdir(parents=True, exist_ok=True)
        row = render(run, d)
        rows.append(row)
        print(f"{n:>5} targets: index.html {row['index_bytes'] / 1e6:.2f} MB, {row['target_pages']} target pages "
              f"(largest {row['largest_target_page_bytes'] / 1e3:.0f} kB), all pages {row['all_pages_bytes'] / 1e6:.1f} MB, "
              f"rendered in {row['render_seconds']} s", flush=True)
        if not a.keep:
            shutil.rmtree(d)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
