"""Which loaded alerting rule covers which agent job, and what fires now.

Coverage is decided by what a rule's expression *selects* (`promql.expand`: metric names and
label matchers, through recording rules), never by its name. A rule covers a job for a concern
when one of its selectors reads the concern's metric and its label matchers admit
`job="<job>"`. That alone is not enough: a rule whose input series do not exist for the job
(the scrape fails, or the agent does not export the metric) can never fire for it, so the check
also asks Prometheus whether those series exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import proxy_metrics
from .promql import Matcher, Selector, expand, selectors, uses_histogram_quantile_on


def _status_is(sel: Selector, value: str) -> bool:
    return any(m.label in ("status", "code", "status_code") and m.op in ("=", "=~") and m.matches(value)
               for m in sel.matchers)


@dataclass(frozen=True)
class Concern:
    key: str
    item_id: str
    title: str
    reads: Callable[[Selector], bool]
    hint: str


CONCERNS = {
    "error_rate": Concern(
        "error_rate", "MON-ALERT-1", "high error rate",
        lambda s: s.metric == "asap_requests_error_total" or (s.metric == "asap_requests_total" and _status_is(s, "error")),
        "asap_requests_error_total (or asap_requests_total{status=\"error\"})"),
    "latency": Concern(
        "latency", "MON-ALERT-2", "high latency",
        lambda s: bool(s.metric) and s.metric.startswith("asap_request_duration_seconds"),
        "asap_request_duration_seconds_*"),
    "down": Concern(
        "down", "MON-ALERT-3", "agent down", lambda s: s.metric == "up", "up"),
    "rate_limit": Concern(
        "rate_limit", "MON-ALERT-4", "rate-limit hits",
        lambda s: bool(s.metric) and ("rate_limit" in s.metric or _status_is(s, "429")),
        "asap_rate_limit_exceeded_total (or a 429 counter of the agent's job)"),
}
@dataclass(frozen=True)
class ProxyCounter:
    """The proxy's (or ingress's) request counter for one target: `targets[].proxy_requests`, its status
    label `targets[].proxy_status_label`, else the exporter's own (proxy_metrics.KNOWN), else any usual one."""
    selector: str
    every_status: Selector  # the selector as given: every response of this target
    status_labels: tuple[str, ...]

    @property
    def fixed_labels(self) -> dict[str, str]:
        """The label values the selector pins: what a rule must admit to read this target's responses."""
        return {m.label: m.value for m in self.every_status.matchers if m.op == "=" and m.label != "__name__"}

    def of_status(self, status: str) -> str:
        return str(Selector(self.every_status.metric, self.every_status.matchers
                            + (Matcher(self.status_labels[0], "=", status),)))


def proxy_counter(selector: str, status_label: str | None = None) -> ProxyCounter:
    """Read `targets[].proxy_requests`; ValueError when it is not one vector selector with a metric name."""
    sels = selectors(selector)
    if len(sels) != 1 or not sels[0].metric:
        raise ValueError("it is not one PromQL vector selector with a metric name")
    known = proxy_metrics.known_label(selector)
    labels = (status_label,) if status_label else (known,) if known else proxy_metrics.STATUS_LABELS
    return ProxyCounter(selector, sels[0], tuple(labels))


def _proxy_reads(proxy: ProxyCounter, status: str) -> Callable[[Selector], bool]:
    """A rule selector reads the proxy's `status` responses of this target: same metric, its matchers
    admit the pinned labels and the status (a `4..` regex does)."""
    return lambda s: (s.metric == proxy.every_status.metric and s.selects(proxy.fixed_labels)
                      and any(m.label in proxy.status_labels and m.op in ("=", "=~") and m.matches(status)
                              for m in s.matchers))


@dataclass
class RuleCoverage:
    group: str
    name: str
    expr: str
    for_seconds: float
    selectors: list[str]  # the selectors that read the concern's metric
    metrics: list[str]  # their metric names
    selects_job: bool
    quantile_on_raw_buckets: bool
    alerts: list[dict]  # active alerts of this rule for the job: {state, labels, activeAt, value}

    def row(self) -> dict:
        return {"group": self.group, "rule": self.name, "for": f"{self.for_seconds:g}s",
                "reads": ", ".join(self.selectors), "selects this job": self.selects_job,
                "active for this job": ", ".join(sorted({a["state"] for a in self.alerts})) or "no"}


def recorded_exprs(groups: list[dict]) -> dict[str, str]:
    return {r["name"]: r["query"] for g in groups for r in g.get("rules", []) if r.get("type") == "recording"}


def alerting_rules(groups: list[dict]) -> list[tuple[str, dict]]:
    return [(g.get("name", "?"), r) for g in groups for r in g.get("rules", []) if r.get("type") == "alerting"]


def coverage(groups: list[dict], job: str, concern: Concern, proxy: ProxyCounter | None = None,
             ignore_metrics: frozenset[str] = frozenset()) -> list[RuleCoverage]:
    """Every loaded alerting rule that reads the concern's metric, with whether it admits `job`.
    With `proxy`, the rules that read the proxy's counter for this target instead (the proxy's series
    carry the proxy's job, so they are matched on the labels the selector pins, not on `job`).
    `ignore_metrics`: metrics read on the other side (a proxy's counter is not the agent's)."""
    recorded = recorded_exprs(groups)
    if proxy is None:
        reads, admits = concern.reads, (lambda s: s.selects({"job": job}))
        mine = {"job": job}
    else:
        reads, admits = _proxy_reads(proxy, "429"), (lambda s: True)
        mine = proxy.fixed_labels
    out = []
    for group, rule in alerting_rules(groups):
        try:
            sels = expand(rule.get("query", ""), recorded)
        except ValueError:
            continue  # an expression this reader cannot follow is not counted as coverage
        relevant = [s for s in sels if reads(s) and s.metric not in ignore_metrics]
        if not relevant:
            continue
        selecting = [s for s in relevant if admits(s)]
        alerts = [{"state": a.get("state"), "labels": a.get("labels", {}), "activeAt": a.get("activeAt"),
                   "value": a.get("value")}
                  for a in rule.get("alerts") or []
                  if all((a.get("labels") or {}).get(k, v) == v for k, v in mine.items())
                  and (proxy is not None or (a.get("labels") or {}).get("job") == job)]
        out.append(RuleCoverage(
            group=group, name=rule.get("name", "?"), expr=rule.get("query", ""),
            for_seconds=float(rule.get("duration", 0) or 0),
            selectors=sorted({str(s) for s in relevant}),
            metrics=sorted({s.metric for s in selecting if s.metric}),
            selects_job=bool(selecting),
            quantile_on_raw_buckets=uses_histogram_quantile_on(rule.get("query", ""), recorded,
                                                               "asap_request_duration_seconds_bucket"),
            alerts=alerts,
        ))
    return out


def active_alerts(groups: list[dict], job: str) -> list[dict]:
    """All alerts pending or firing now whose labels name this job."""
    out = []
    for _, rule in alerting_rules(groups):
        for a in rule.get("alerts") or []:
            if (a.get("labels") or {}).get("job") == job:
                out.append({"alert": rule.get("name"), "state": a.get("state"), "activeAt": a.get("activeAt"),
                            "labels": a.get("labels")})
    return out


def _of_target(alert: dict, job: str, proxy: ProxyCounter | None) -> bool:
    """An alert coverage() or active_alerts() can count for this target: on its job, or (a proxy rule)
    not contradicting the labels the proxy counter's selector pins."""
    labels = alert.get("labels") or {}
    return labels.get("job") == job or (proxy is not None and all(
        labels.get(k, v) == v for k, v in proxy.fixed_labels.items()))


def relevant_groups(groups: list[dict], job: str, concern: Concern, proxy: ProxyCounter | None = None) -> list[dict]:
    """The part of `groups` that coverage() and active_alerts() read for this job and concern (with or
    without `proxy`): the alerting rules reading the concern's metric or the proxy's counter, and those
    with an alert of this target, each with only this target's alerts, plus the recording rules they
    read. Judged on it, a check reaches the verdict it reaches on every group Prometheus loaded: what a
    target's observation keeps (a fleet's observations all held the same few hundred rules)."""
    recorded = recorded_exprs(groups)
    reads = [concern.reads] + ([_proxy_reads(proxy, "429")] if proxy else [])
    kept_groups, needed = [], set()
    for g in groups:
        kept = []
        for r in g.get("rules", []):
            if r.get("type") != "alerting":
                kept.append(r)  # recording rules: filtered below, once it is known which are read
                continue
            alerts = [a for a in r.get("alerts") or [] if _of_target(a, job, proxy)]
            try:
                sels = expand(r.get("query", ""), recorded)
            except ValueError:
                sels = []
            if alerts or any(read(s) for s in sels for read in reads):
                kept.append({**r, "alerts": alerts} if "alerts" in r else r)
                needed |= _recorded_reads(r.get("query", ""), recorded)
        kept_groups.append({**g, "rules": kept})
    out = []
    for g in kept_groups:
        rules = [r for r in g["rules"] if r.get("type") == "alerting" or r.get("name") in needed]
        if rules:
            out.append({**g, "rules": rules})
    return out


def _recorded_reads(expr: str, recorded: dict[str, str]) -> set[str]:
    """The recorded series `expr` reads, directly or through other recording rules."""
    seen: set[str] = set()
    todo = [expr]
    while todo:
        try:
            names = {s.metric for s in selectors(todo.pop())}
        except ValueError:
            continue  # expand() fails on it the same way with or without the other rules
        for name in names & recorded.keys() - seen:
            seen.add(name)
            todo.append(recorded[name])
    return seen


def rule_counts(groups: list[dict]) -> dict[str, int]:
    """How much was examined: groups, alerting and recording rules loaded."""
    rules = [r for g in groups for r in g.get("rules", [])]
    return {"groups": len(groups), "alerting_rules": sum(r.get("type") == "alerting" for r in rules),
            "recording_rules": sum(r.get("type") == "recording" for r in rules)}
