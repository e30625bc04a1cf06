"""Monitoring > Metrics (MON-METRICS-1..4): observe `/asap/metrics` and Prometheus's targets, judge purely.

asap-protocol 2.5.10 (reference §2, §7): `/asap/metrics` claims OpenMetrics but serves classic text,
duration buckets are cumulated twice, counters are per worker process.
"""

from __future__ import annotations

import asyncio
import functools
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .. import metrics_text as mt
from .. import monitoring_live as live
from ..probe import probe_envelope
from ..results import Status
from ._observe import judged
from ._registry import AGENT, AGENT_TOKEN, CheckContext, Finding, check

REQUIRED_FAMILIES = ("asap_requests_total", "asap_requests_error_total", "asap_request_duration_seconds")
SKILL_LABELS = ("skill", "skill_id", "skill_name")  # a label that splits a business metric per skill
SECOND_SCRAPE_DELAY = 0.5


@dataclass
class Scrape:
    """One GET /asap/metrics: what came back (the body is parsed by the judges, not here)."""
    status: int
    content_type: str
    text: str
    exchange: dict = field(default_factory=dict)  # the probe's redacted request/response evidence

    def parsed(self) -> mt.Exposition | None:
        return self._exposition  # the first scrape is judged by MON-METRICS-1, -3 and -4: parsed once

    @functools.cached_property
    def _exposition(self) -> mt.Exposition | None:  # not a field: the observation keeps the text, not this
        return mt.parse_exposition(self.text, self.content_type) if self.status == 200 else None


async def _scrape(ctx: CheckContext) -> Scrape:
    resp = await ctx.probe.get("/asap/metrics")
    return Scrape(resp.status, resp.headers.get("content-type", ""), resp.text, resp.evidence)


async def _first_scrape(ctx: CheckContext) -> Scrape:
    """One scrape shared by the metrics checks of a target (they run concurrently)."""
    return await ctx.once("mon.metrics", lambda: _scrape(ctx))


# ------------------------------------------------------------------------------ MON-METRICS-1
@dataclass
class ExpositionObservation:
    scrape: Scrape


async def observe_exposition(ctx: CheckContext) -> ExpositionObservation:
    return ExpositionObservation(await _first_scrape(ctx))


def judge_exposition(obs: ExpositionObservation) -> Finding:
    s = obs.scrape
    ev = [("GET /asap/metrics", s.exchange)]
    if s.status != 200:
        return Finding.failed(f"GET /asap/metrics answered HTTP {s.status}, not 200", ev)
    exp = s.parsed()
    ct = s.content_type or "(none)"
    fmt = {"openmetrics": "OpenMetrics", "prometheus-text": "Prometheus text"}.get(exp.claimed_format, exp.claimed_format)
    ev.append(("parse", {"content_type": ct, "claimed_format": exp.claimed_format, "parse_error": exp.error,
                         "other_parser_accepts": exp.other_format_ok, "families": len(exp.families)}))
    if exp.error:
        hint = ""
        if exp.claimed_format == "openmetrics" and exp.other_format_ok:
            hint = ("; the body is classic Prometheus text, so the content type is wrong and stock Prometheus "
                    "refuses the scrape ('data does not end with # EOF')")
        return Finding.failed(f"/asap/metrics is served as {ct} but does not parse as {fmt}: {exp.error}{hint}", ev)
    asap = sorted(n for n in mt.family_names(exp) if n.startswith("asap_"))
    if not asap:
        return Finding.failed(f"/asap/metrics parses as {fmt} but holds no asap_* metric family", ev)
    return Finding.passed(f"/asap/metrics parses as {fmt} ({ct}): {len(exp.families)} families, {len(asap)} asap_*", ev)


@check("MON-METRICS-1", needs=AGENT)
async def metrics_exposed(ctx: CheckContext) -> Finding:
    """`/asap/metrics` answers and parses as the format its content type claims."""
    obs = await observe_exposition(ctx)
    return judged(judge_exposition(obs), obs)


# ------------------------------------------------------------------------------ MON-METRICS-3
@dataclass
class TrackedObservation:
    first: Scrape
    second: Scrape | None  # SECOND_SCRAPE_DELAY later; None when the first gave nothing to compare
    traffic_sent: dict | None = None  # the one read-only request sent when the histogram was idle


async def observe_tracked(ctx: CheckContext) -> TrackedObservation:
    first = await _first_scrape(ctx)
    exp = first.parsed()
    if exp is None or not exp.families:
        return TrackedObservation(first, None)
    sent = None
    if exp.total("asap_request_duration_seconds_count") == 0:
        # an idle histogram is all zeros and shows nothing: one request gives it an observation. Read-only:
        # refused before any handler (-32012), which asap-protocol still observes (status="error")
        r = await ctx.probe.send(probe_envelope(ctx.target.sender))
        sent = {"why": "the latency histogram had no observation; one read-only request was sent",
                "request": r.evidence.get("request"), "status": r.status}
    await asyncio.sleep(SECOND_SCRAPE_DELAY)
    return TrackedObservation(first, await _scrape(ctx), sent)


def _counter_values(exp: mt.Exposition) -> dict[tuple, float]:
    out = {}
    for fam in exp.families.values():
        if fam.type == "counter":
            for s in fam.samples:
                if s.name.endswith("_total"):
                    out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def judge_tracked(obs: TrackedObservation) -> Finding:
    ev = [("GET /asap/metrics", obs.first.exchange)]
    exp = obs.first.parsed()
    if obs.first.status != 200 or exp is None or not exp.families:
        return Finding.failed(f"no readable metrics at /asap/metrics (HTTP {obs.first.status}"
                              + (f", {exp.error}" if exp and exp.error else "") + ")", ev)
    missing = [n for n in REQUIRED_FAMILIES if n not in mt.family_names(exp)]
    if missing:
        return Finding.failed(f"missing metric families: {', '.join(missing)}", ev)
    if obs.second is None or obs.second.status != 200:
        return Finding.errored("the second scrape of /asap/metrics did not answer 200 "
                               f"(HTTP {obs.second.status if obs.second else 'none'}): no comparison possible", ev)
    exp2 = obs.second.parsed()
    if obs.traffic_sent:
        ev.append(("traffic sent", obs.traffic_sent))
    problems = {}
    for fam in exp2.families.values():
        if fam.type != "histogram":
            continue
        for labels, buckets in mt.histogram_series(exp2, fam.name).items():
            found = mt.histogram_problems(buckets)
            if found and any(v for _, v in buckets):
                problems[f"{fam.name}{dict(labels)}"] = found
    before, after = _counter_values(exp), _counter_values(exp2)
    backwards = [f"{key[0]}{dict(key[1])}: {v:g} -> {after[key]:g}"
                 for key, v in before.items() if key in after and after[key] < v]
    ev.append((f"second scrape ({SECOND_SCRAPE_DELAY:g} s later) checks",
               {"histogram_problems": problems or "none", "counters_backwards": backwards or "none"}))
    if problems:
        first = next(iter(problems.items()))
        return Finding.failed(
            f"{len(problems)} histogram series are broken, e.g. {first[0]}: {first[1][0]}; quantiles computed "
            "from them (histogram_quantile) are wrong (asap-protocol double-cumulates the buckets)", ev)
    if backwards:
        return Finding.failed(
            f"counters went backwards between two scrapes {SECOND_SCRAPE_DELAY:g} s apart ({backwards[0]}): several "
            "worker processes answer on this port, each with its own counters; scrape every process or aggregate them",
            ev)
    return Finding.passed(
        "asap_requests_total, asap_requests_error_total and asap_request_duration_seconds present; "
        "histogram buckets sane (monotonic, none above +Inf); counters steady across two scrapes", ev)


@check("MON-METRICS-3", needs=AGENT_TOKEN)
async def metrics_tracked(ctx: CheckContext) -> Finding:
    """The families the checklist names exist, histograms are sane, counters never go backwards."""
    obs = await observe_tracked(ctx)
    return judged(judge_tracked(obs), obs)


# ------------------------------------------------------------------------------ MON-METRICS-4
@dataclass
class BusinessObservation:
    scrape: Scrape


async def observe_business(ctx: CheckContext) -> BusinessObservation:
    return BusinessObservation(await _first_scrape(ctx))


def judge_business(obs: BusinessObservation) -> Finding:
    """What this verifies is weaker than the item: that families beyond asap-protocol's and the
    runtime's are exported, and whether one is split per skill. Whether they count the business
    (tasks per skill, orders, refusals) is a person's call: manual, with what was found."""
    exp = obs.scrape.parsed()
    if exp is None or not exp.families:
        return Finding.failed(f"no readable metrics at /asap/metrics (HTTP {obs.scrape.status})",
                              [("GET /asap/metrics", obs.scrape.exchange)])
    custom = mt.custom_families(exp)
    per_skill = {}
    for name in custom:
        base = name[:-len("_total")] if name.endswith("_total") and name not in exp.families else name
        fam = exp.families.get(base)
        labels = {k for s in (fam.samples if fam else []) for k in s.labels}
        if hit := sorted(labels & set(SKILL_LABELS)):
            per_skill[name] = hit
        elif fam is not None and re.search(r"\bskills?\b", fam.documentation or "", re.I):
            # a labelled counter has no sample before its first event; its HELP line says how it is split
            per_skill[name] = ["skill (its HELP: " + repr(fam.documentation[:80]) + ")"]
    ev = [("metric families on /asap/metrics", {
        "custom": custom, "split per skill": per_skill or "none",
        "asap_builtin": sorted(n for n in mt.family_names(exp) if n.startswith("asap_"))})]
    if not custom:
        return Finding.warned("/asap/metrics exports only asap-protocol's built-in asap_* and the runtime's metrics: "
                              "nothing there counts tasks per skill or other business events (business metrics on "
                              "another endpoint were not looked at)", ev)
    if per_skill:
        names = ", ".join(f"{n} by {'/'.join(labels)}" for n, labels in per_skill.items())
        return Finding.passed(f"business metrics split per skill next to asap_*: {names}", ev)
    return Finding._make(Status.MANUAL,
        f"custom metrics exported next to asap_* ({', '.join(custom[:6])}), none split per skill (no sample "
        f"carries a {'/'.join(SKILL_LABELS)} label, no HELP line names a skill): confirm they count business "
        "events, e.g. with the dashboard panel or PromQL query that reads them", ev)


@check("MON-METRICS-4", needs=AGENT)
async def business_metrics(ctx: CheckContext) -> Finding:
    """Metric families beyond asap-protocol's own (and the Python runtime's)."""
    obs = await observe_business(ctx)
    return judged(judge_business(obs), obs)


# ------------------------------------------------------------------------------ MON-METRICS-2
@dataclass
class ScrapeTargetsObservation:
    job: str
    targets: list[dict]  # Prometheus's active targets (scrapeUrl, health, lastError, lastScrape, labels)
    waited_for_first_scrape: bool = False
    read_at: str = ""  # when `targets` was read (UTC); the first read is shared by every target of the section run


async def observe_scrape_targets(ctx: CheckContext) -> ScrapeTargetsObservation | Finding:
    inputs = ctx.prometheus_and_job()
    if isinstance(inputs, Finding):
        return inputs
    prom, job = inputs
    # a freshly started Prometheus has not scraped yet ("unknown"): wait a few scrape intervals, bounded
    loop = asyncio.get_running_loop()
    deadline, waited = loop.time() + ctx.params.prometheus.timeout_seconds * 3, False
    shared = await ctx.once_per_run("prom.targets", prom.targets)
    targets, read_at = shared.value, shared.when()
    while any(t.get("health") == "unknown" for t in targets if live.is_of_job(t, job)) and loop.time() <= deadline:
        waited = True
        await asyncio.sleep(0.5)
        read_at, targets = datetime.now(UTC).isoformat(timespec="seconds"), await prom.targets()
    keep = ("scrapeUrl", "health", "lastError", "lastScrape", "labels", "discoveredLabels")
    return ScrapeTargetsObservation(job, [{k: t.get(k) for k in keep if k in t} for t in targets], waited, read_at)


def judge_scrape_targets(obs: ScrapeTargetsObservation) -> Finding:
    job, mine = obs.job, [t for t in obs.targets if live.is_of_job(t, obs.job)]
    evidence = [("Prometheus active targets for job " + job,
                 [{k: t.get(k) for k in ("scrapeUrl", "health", "lastError", "lastScrape")} for t in mine])]
    if not mine:
        jobs = sorted({(t.get("labels") or {}).get("job", "?") for t in obs.targets})
        return Finding.failed(f"Prometheus has no scrape target for job {job!r} (jobs: {', '.join(jobs) or 'none'})",
                              evidence)
    down = [t for t in mine if t.get("health") != "up"]
    if down:
        t = down[0]
        if t.get("health") == "unknown":
            return Finding.errored(f"Prometheus has not scraped {t.get('scrapeUrl')} yet; run again shortly", evidence)
        why = t.get("lastError") or "no error recorded yet"
        return Finding.failed(f"{len(down)} of {len(mine)} scrape target(s) down: {t.get('scrapeUrl')}: {why}", evidence)
    return Finding.passed(f"{len(mine)} scrape target(s) for job {job!r} up ({mine[0].get('scrapeUrl')})", evidence)


@check("MON-METRICS-2", needs=("prometheus",))
async def prometheus_scrapes(ctx: CheckContext) -> Finding:
    """A scrape target for this agent exists in Prometheus and is up; when down, show why."""
    obs = await observe_scrape_targets(ctx)
    if isinstance(obs, Finding):  # a missing input: nothing was observed
        return obs
    return judged(judge_scrape_targets(obs), obs)
