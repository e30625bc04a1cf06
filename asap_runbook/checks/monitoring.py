"""Monitoring checks (checklist: Monitoring)."""

from __future__ import annotations

import asyncio

from ..prom import prom_for
from ._registry import CheckContext, Finding, check


@check("MON-METRICS-2")
async def prometheus_scrapes(ctx: CheckContext) -> Finding:
    """A scrape target for this agent exists in Prometheus and is up; when down, show why."""
    prom = prom_for(ctx.params)
    if prom is None:
        return Finding.skipped("no prometheus.url in the parameters")
    job = ctx.target.prometheus_job
    if not job:
        return Finding.skipped(f"targets[{ctx.target.name}].prometheus_job is not set")
    # a freshly started Prometheus has not scraped yet ("unknown"): wait a few scrape intervals, bounded
    deadline = asyncio.get_running_loop().time() + ctx.params.prometheus.timeout_seconds * 3
    while True:
        targets = await prom.targets()
        mine = [t for t in targets if t.get("labels", {}).get("job") == job
                or t.get("discoveredLabels", {}).get("job") == job]
        if not any(t.get("health") == "unknown" for t in mine) or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.5)
    evidence = [("Prometheus active targets for job " + job,
                 [{k: t.get(k) for k in ("scrapeUrl", "health", "lastError", "lastScrape")} for t in mine])]
    if not mine:
        jobs = sorted({t.get("labels", {}).get("job", "?") for t in targets})
        return Finding.failed(f"Prometheus has no scrape target for job {job!r} (jobs: {', '.join(jobs) or 'none'})",
                              evidence)
    down = [t for t in mine if t.get("health") != "up"]
    if down:
        t = down[0]
        why = t.get("lastError") or "no error recorded yet"
        if t.get("health") == "unknown":
            return Finding.errored(f"Prometheus has not scraped {t.get('scrapeUrl')} yet; run again shortly", evidence)
        return Finding.failed(f"{len(down)} of {len(mine)} scrape target(s) down: {t.get('scrapeUrl')}: {why}", evidence)
    return Finding.passed(f"{len(mine)} scrape target(s) for job {job!r} up ({mine[0].get('scrapeUrl')})", evidence)
