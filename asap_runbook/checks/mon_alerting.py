"""Monitoring > Alerting (MON-ALERT-1..4): observe Prometheus's loaded rules, which input series exist,
what fires and the live numbers; judge purely (alerting.coverage reads the rules by what they select).

Each alert a rule covering the concern would send is then routed through Alertmanager's own routing
(alertroutes.py): a rule whose alerts reach no receiver with an integration alerts no one.

429s are often counted at the proxy or ingress, not by the agent (asap-protocol 2.5.10 has no 429
metric): MON-ALERT-4 also reads the counter `targets[].proxy_requests` names (proxy_metrics.py, the
definition SEC-RATE-4 and SEC-SIZE-3 use).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .. import alerting, alertroutes, proxy_metrics, rules_source
from .. import monitoring_live as live
from ..errors import PrometheusError
from ..results import Evidence, Status
from ._observe import judged
from ._registry import CheckContext, Finding, check

AGENT_429_COUNTER = "asap_rate_limit_exceeded_total"  # what an agent-side wrapper exports (the reference one does)
THRESHOLDS = {"error_rate": "error_rate_ratio", "latency": "p99_latency_seconds"}


@dataclass
class AlertObservation:
    concern: str  # alerting.CONCERNS key
    job: str
    window: str
    groups: list[dict]  # Prometheus /api/v1/rules groups: the part read for this target (alerting.relevant_groups)
    series: dict[str, bool] = field(default_factory=dict)  # input metric -> the job has series of it
    scrape_targets: list[dict] = field(default_factory=list)  # the job's targets: scrapeUrl, health, lastError
    proxy: dict | None = None  # rate_limit with targets[].proxy_requests: {selector, status_label, of_status, has_series}
    target: str = ""
    down_now: list[str] | None = None  # down: instances of the job with up == 0 now
    error_rate: dict | None = None  # monitoring_live.error_rate
    latency: dict | None = None  # monitoring_live.latency
    rules_source: dict | None = None  # rules_source.RuleSource.record(); None: the scraping Prometheus
    routing: dict | None = None  # alertroutes.Routing of the rules that can fire; None: none to route
    rules_examined: dict | None = None  # alerting.rule_counts of every group loaded, of which `groups` is the relevant part
    shared_reads: dict[str, str] = field(default_factory=dict)  # read once for every target of the run -> when (UTC)


def _proxy(obs: AlertObservation) -> alerting.ProxyCounter | None:
    if not obs.proxy:
        return None
    return alerting.proxy_counter(obs.proxy["selector"], obs.proxy.get("status_label"))


def _coverage(obs: AlertObservation) -> tuple[list, list]:
    """(rules reading the concern on the agent's job, rules reading the proxy's 429 counter for the target).
    The common proxies' counters carry the proxy's job, never the agent's: they are not agent-side."""
    concern, proxy = alerting.CONCERNS[obs.concern], _proxy(obs)
    not_agent = frozenset(proxy_metrics.KNOWN) | ({proxy.every_status.metric} if proxy else set())
    agent = alerting.coverage(obs.groups, obs.job, concern,
                              ignore_metrics=not_agent if obs.concern == "rate_limit" else frozenset())
    return agent, (alerting.coverage(obs.groups, obs.job, concern, proxy=proxy) if proxy else [])


def _proxy_rules_unmatched(obs: AlertObservation) -> list[str]:
    """Rules on a common proxy's 429s that cannot be tied to this target (no targets[].proxy_requests)."""
    return sorted({c.name for c in alerting.coverage(obs.groups, obs.job, alerting.CONCERNS["rate_limit"])
                   if set(c.metrics) & set(proxy_metrics.KNOWN) or any(
                       sel.split("{")[0] in proxy_metrics.KNOWN for sel in c.selectors)})


async def observe_alert(ctx: CheckContext, key: str) -> AlertObservation | Finding:
    inputs = ctx.prometheus_and_job()
    if isinstance(inputs, Finding):
        return inputs
    prom, job = inputs
    window = ctx.params.prometheus.window
    t = ctx.target
    # what does not depend on the target (the rules wherever they live, the scrape targets, the Alertmanager
    # configuration, the external labels) is read once for every target of the section run, its time kept
    rules = await ctx.once_per_run("rules_source", lambda: rules_source.load(ctx.params, prom))
    source = rules.value
    p = None
    if key == "rate_limit" and t.proxy_requests:
        try:
            p = alerting.proxy_counter(t.proxy_requests, t.proxy_status_label)
        except ValueError as e:
            return Finding.errored(f"targets[{t.name}].proxy_requests {t.proxy_requests!r}: {e}")
    # what the verdict reads for this target, not every rule Prometheus loaded; and how much that was
    obs = AlertObservation(key, job, window, alerting.relevant_groups(source.groups, job, alerting.CONCERNS[key], p),
                           target=t.name, rules_source=source.record(), rules_examined=alerting.rule_counts(source.groups))
    obs.shared_reads["alerting rules"] = rules.when()
    if p is not None:
        obs.proxy = {"selector": t.proxy_requests, "status_label": t.proxy_status_label,
                     "of_status": p.of_status("429"), "has_series": await live.has_series(prom, t.proxy_requests)}
    agent_cov, _ = _coverage(obs)
    metrics = sorted({m for c in agent_cov if c.selects_job for m in c.metrics}
                     | ({AGENT_429_COUNTER} if key == "rate_limit" else set()))

    async def of_job(what: str, make):  # the job's series now: the same answer for every target of the job
        shared = await ctx.job_read(job, what, make)
        obs.shared_reads[f"job {job}: {what}"] = shared.when()
        return shared.value

    async def scraped_now() -> bool:
        return (await ctx.job_read(job, "up now", lambda: live.job_scraped_now(prom, job))).value
    if metrics:
        obs.series = await of_job(f"series of {', '.join(metrics)}",
                                  lambda: live.series_exist(prom, job, metrics, scraped_now))
    scrape = await ctx.once_per_run("prom.targets", prom.targets)
    obs.scrape_targets = live.of_job(scrape.value, job)
    obs.shared_reads["Prometheus scrape targets"] = scrape.when()
    if key == "down":
        obs.down_now = await of_job("instances down now", lambda: live.instances_down(prom, job))
    elif key == "error_rate":
        obs.error_rate = await of_job(f"error rate over {window}", lambda: live.error_rate(prom, job, window))
    elif key == "latency":
        obs.latency = await of_job(f"latency over {window}", lambda: live.latency(prom, job, window))
    if _routable(obs):
        try:  # not every Prometheus-compatible API serves its configuration (Thanos Query does not)
            labels = await ctx.once_per_run("prom.external_labels", prom.external_labels)
            external, unread = labels.value, None
            obs.shared_reads["Prometheus external labels"] = labels.when()
        except PrometheusError as e:
            external, unread = {}, e.message
        config = await ctx.once_per_run("alertmanager.configuration",
                                        lambda: alertroutes.configuration(ctx.params.alertmanager, prom))
        obs.shared_reads["Alertmanager configuration"] = config.when()
        routing = await alertroutes.route_all(config.value, ctx.params.alertmanager, _alerts_to_route(obs, external))
        routing.external_labels_unread = unread
        obs.routing = dataclasses.asdict(routing)
    return obs


def _effective(obs: AlertObservation) -> list:
    """The rules that cover the concern for this target and can fire: their input series exist."""
    return [c for c, _ in _routable(obs)]


def _routable(obs: AlertObservation) -> list[tuple[alerting.RuleCoverage, bool]]:
    """(rule, reads the proxy's counter) for every rule that covers the concern for this target and can
    fire; a rule that can never fire is judged on that alone, so its routing is not asked."""
    agent_cov, proxy_cov = _coverage(obs)
    agent = [(c, False) for c in agent_cov if c.selects_job and all(obs.series.get(m) for m in c.metrics)]
    return agent + ([(c, True) for c in proxy_cov if c.selects_job] if obs.proxy and obs.proxy["has_series"] else [])


def _alerts_to_route(obs: AlertObservation, external: dict) -> list[alertroutes.AlertToRoute]:
    """One alert per rule that can fire, as Alertmanager would receive it for this target: an active alert's
    labels when Prometheus holds one, else the rule's labels on the target's job and instance (a proxy
    rule: the labels the proxy counter's selector pins)."""
    static = {(g.get("name"), r.get("name")): r.get("labels") or {} for g in obs.groups for r in g.get("rules", [])}
    instances = sorted(t.get("instance") or urlsplit(t.get("scrapeUrl") or "").netloc for t in obs.scrape_targets)
    agent_series = {"job": obs.job} | ({"instance": instances[0]} if instances else {})
    out, proxy = [], _proxy(obs)
    for c, is_proxy in _routable(obs):
        series = proxy.fixed_labels if is_proxy and proxy else agent_series
        active = next((a.get("labels") for a in c.alerts if a.get("labels")), None)
        out.append(alertroutes.alert_labels(c.name, static.get((c.group, c.name), {}), series, external, active))
    return out


def _fmt_s(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g} s"


def judge_alert(obs: AlertObservation, threshold: float | None = None, threshold_source: str = "") -> Finding:
    """The rule's verdict (_judge_rule), then where Alertmanager routes the alerts of the rules that can fire:
    routed to a receiver with no integration -> fail (nobody is told); could not look -> error unless the
    rule already fails; Prometheus sends to no Alertmanager and the parameters name none -> warn (routing
    not verified: another ruler may send them; a pass would claim a page nobody checked)."""
    finding = _judge_rule(obs, threshold, threshold_source)
    effective = _effective(obs)
    if any(not f["loads"] for f in (obs.rules_source or {}).get("files", [])):
        return finding  # Prometheus refuses the file: none of its alerts exists to be routed
    if obs.routing is None or not effective or finding.status not in (Status.PASS, Status.WARN, Status.FAIL):
        return finding
    verdict = alertroutes.judge(obs.routing, sorted({c.name for c in effective}))
    finding.evidence.append(Evidence(label=f"Alertmanager routing ({obs.routing.get('source')}: "
                                           f"{obs.routing.get('alertmanager') or 'none'}; amtool config routes test)",
                                     data=verdict.rows or verdict.text))
    if finding.status is Status.FAIL:  # the rule's own failure stands; the routing is said next to it
        return _restated(finding, Status.FAIL, f"{finding.summary}; {verdict.text}")
    if verdict.kind == "nowhere":
        return _restated(finding, Status.FAIL, f"{verdict.text}, though {finding.summary}")
    if verdict.kind == "error":
        return _restated(finding, Status.ERROR, f"{verdict.text} ({finding.summary})")
    if verdict.kind == "unattached":
        return _restated(finding, Status.WARN, f"{finding.summary}; but {verdict.text}")
    return _restated(finding, finding.status, f"{finding.summary}; {verdict.text}")


def _restated(finding: Finding, status: Status, summary: str) -> Finding:
    return Finding(status, summary, finding.evidence, finding.details)


def _judge_rule(obs: AlertObservation, threshold: float | None = None, threshold_source: str = "") -> Finding:
    """Covered when a loaded alerting rule reads the concern's metric for this job (or, for 429s, the
    proxy's counter for this target) and its input series exist; firing is a warn, pending is reported.
    `threshold`: error_rate_ratio or p99_latency_seconds, for the live number the summary gives."""
    concern, job, window = alerting.CONCERNS[obs.concern], obs.job, obs.window
    agent_cov, proxy_cov = _coverage(obs)
    proxy = obs.proxy
    source = obs.rules_source or {"kind": "prometheus"}
    from_files = source["kind"] == "rule_files"
    ev = [(f"loaded alerting rules reading {concern.hint}", [c.row() for c in agent_cov] or "none"),
          (f"alerts pending or firing now for job {job}", alerting.active_alerts(obs.groups, job) or "none")
          if not from_files else ("alert states", "not known: the rules are read from files (prometheus.rule_files), "
                                                  "not from where they are evaluated")]
    if obs.rules_source:
        ev.insert(0, ("alerting rules read from", obs.rules_source))
    broken = [f for f in source.get("files", []) if not f["loads"]]
    if broken:
        return Finding.failed(f"rule file {broken[0]['path']} does not load (promtool check rules: "
                              f"{broken[0]['promtool'] or 'no reason given'})"
                              + (f", nor do {len(broken) - 1} other(s)" if len(broken) > 1 else "")
                              + ": Prometheus refuses it, so none of its alerts can fire", ev)
    if proxy:
        ev.append((f"proxy 429 counter (targets[].proxy_requests): {proxy['of_status']}",
                   {"series for this target": proxy["has_series"], "rules reading it": [c.row() for c in proxy_cov]
                    or "none"}))
    if obs.series:
        ev.append((f"input series present in Prometheus for job {job}", obs.series))
    covering = [c for c in agent_cov if c.selects_job]
    effective = _effective(obs)
    if not effective:
        return _not_covered(obs, agent_cov, covering, proxy_cov, ev)
    rule = effective[0]
    firing = [a for c in effective for a in c.alerts]
    state = ", ".join(sorted({f"{c.name} {a['state']}" for c in effective for a in c.alerts}))
    covered = (f"{', '.join(c.name for c in effective)} cover(s) job {job!r} (reads {rule.selectors[0]}"
               + (", ..." if len(rule.selectors) > 1 else "") + f", for {rule.for_seconds:g}s)")
    quiet = "not firing" if not from_files else "whether it fires is not known here (rules read from files)"
    if obs.concern == "down":
        ev.append((f"targets of job {job} with up == 0 now", obs.down_now or "none"))
        if firing or obs.down_now:
            state = state or f"{rule.name} not active yet (for {rule.for_seconds:g}s), but up == 0"
            why = next((t.get("lastError") for t in obs.scrape_targets if t.get("health") != "up"), "")
            return Finding.failed(f"{state} for job {job!r} now: the agent is down or unscrapeable"
                                  + (f" ({why})" if why else ""), ev)
        return Finding.passed(f"{covered}; {quiet}", ev)
    extra = ""
    if obs.error_rate is not None:
        er = obs.error_rate
        ev.append((f"error rate over {window}", er | {"threshold": threshold, "threshold_source": threshold_source}))
        if er["ratio"] is None:
            extra = f"; no requests in the last {window}"
        elif threshold is not None:
            side = "above" if er["ratio"] > threshold else "below"
            extra = (f"; server-side error rate over {window}: {er['ratio']:.1%} of {er['requests']:.0f} requests, "
                     f"{side} the {threshold:.0%} threshold" + (" (the alert fires if it lasts)" if side == "above" else "")
                     + f"; all errors, client-caused included: {er['all_errors_ratio']:.1%}")
    if obs.latency is not None:
        lat = obs.latency
        ev.append((f"latency over {window}", lat | {"threshold_seconds": threshold, "threshold_source": threshold_source}))
        naive = [c.name for c in effective if c.quantile_on_raw_buckets]
        if naive and lat["double_cumulated"]:
            return Finding.warned(f"{', '.join(naive)} apply histogram_quantile to double-cumulated "
                                  f"asap_request_duration_seconds buckets for job {job!r}: the p99 it alerts on is wrong "
                                  f"(naive {_fmt_s(lat['naive_histogram_quantile_seconds'])}, corrected "
                                  f"{_fmt_s(lat['value_seconds'])})", ev)
        if lat["value_seconds"] is None:
            extra = f"; no requests in the last {window}"
        elif threshold is not None:
            side = "above" if lat["value_seconds"] > threshold else "below"
            extra = (f"; p99 over {window}: {_fmt_s(lat['value_seconds'])} ({side} {threshold:g} s; {lat['method']}), "
                     f"mean {_fmt_s(lat['mean_seconds'])}")
    # firing: the condition has held for the rule's `for`; the agent has a live problem. Pending is
    # only "above the line right now" (the runbook's own drills can do that) and is reported, not judged.
    if any(a.get("state") == "firing" for a in firing):
        return Finding.warned(f"{covered}; {state} now{extra}", ev)
    return Finding.passed(f"{covered}; " + (f"{state} now (not firing)" if firing else quiet) + extra, ev)


def _not_covered(obs: AlertObservation, agent_cov: list, covering: list, proxy_cov: list, ev: list) -> Finding:
    concern, job, proxy = alerting.CONCERNS[obs.concern], obs.job, obs.proxy
    if covering:  # a rule selects the job, but its input series do not exist: it can never fire
        names = ", ".join(c.name for c in covering)
        missing = ", ".join(m for c in covering for m in c.metrics if not obs.series.get(m))
        if proxy and not proxy["has_series"] and [c for c in proxy_cov if c.selects_job]:
            missing += f" (nor {proxy['selector']})"
        why = next((f"its scrape fails: {t.get('lastError')}" for t in obs.scrape_targets if t.get("health") != "up"),
                   "the agent does not export it")
        return Finding.failed(f"{names} select(s) job {job!r} but Prometheus has no {missing} series for it "
                              f"({why}): the rule can never fire for this agent", ev)
    if obs.concern == "rate_limit":  # 429s: the agent, or the proxy in front of it, may be where they are counted
        param = f"targets[{obs.target}].proxy_requests"
        counted = ([f"{AGENT_429_COUNTER} for job {job!r}"] if obs.series.get(AGENT_429_COUNTER) else []) \
            + ([proxy["selector"]] if proxy and proxy["has_series"] else [])
        proxy_rules = [c for c in proxy_cov if c.selects_job]
        if proxy_rules and not proxy["has_series"]:
            return Finding.failed(f"{', '.join(c.name for c in proxy_rules)} read(s) {proxy['of_status']} but "
                                  f"Prometheus has no series of {param} = {proxy['selector']}: the rule can never "
                                  "fire for this agent", ev)
        if counted:
            return Finding.failed(f"429s are counted ({' and '.join(counted)}) but no loaded alerting rule reads "
                                  "them for this agent", ev)
        if proxy:
            return Finding.skipped(f"{param} = {proxy['selector']} selects no series in Prometheus (is the proxy's "
                                   f"exporter scraped, is the selector right?), and the agent's job {job!r} has no "
                                   f"{AGENT_429_COUNTER}: no 429 counter to alert on was found", ev)
        unmatched = _proxy_rules_unmatched(obs)
        rules = f"; {', '.join(unmatched)} read(s) a proxy's 429s, which only that parameter ties to this agent" \
            if unmatched else ""
        return Finding.skipped(f"the agent's job {job!r} has no {AGENT_429_COUNTER} (asap-protocol 2.5.10 counts no "
                               f"429) and {param} is not set (the PromQL selector of the proxy's or ingress's "
                               f"request counter for this agent){rules}", ev)
    others = f" ({', '.join(c.name for c in agent_cov)} read it but their matchers exclude job {job!r})" if agent_cov else ""
    return Finding.failed(f"no loaded alerting rule on {concern.title} selects job {job!r}: none reads "
                          f"{concern.hint} for it{others}", ev)


async def _alert_check(ctx: CheckContext, key: str) -> Finding:
    obs = await observe_alert(ctx, key)
    if isinstance(obs, Finding):
        return obs
    th = ctx.threshold(THRESHOLDS[key]) if key in THRESHOLDS else None
    return judged(judge_alert(obs, th and th.value, th.source if th else ""), obs)


@check("MON-ALERT-1", needs=("prometheus",))
async def alert_error_rate(ctx: CheckContext) -> Finding:
    return await _alert_check(ctx, "error_rate")


@check("MON-ALERT-2", needs=("prometheus",))
async def alert_latency(ctx: CheckContext) -> Finding:
    return await _alert_check(ctx, "latency")


@check("MON-ALERT-3", needs=("prometheus",))
async def alert_agent_down(ctx: CheckContext) -> Finding:
    return await _alert_check(ctx, "down")


@check("MON-ALERT-4", needs=("prometheus",))
async def alert_rate_limit(ctx: CheckContext) -> Finding:
    return await _alert_check(ctx, "rate_limit")
