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

from .promql import Selector, expand, uses_histogram_quantile_on


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
        "asap_rate_limit_exceeded_total (or a proxy's 429 counter)"),
}


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


def coverage(groups: list[dict], job: str, concern: Concern) -> list[RuleCoverage]:
    """Every loaded alerting rule that reads the concern's metric, with whether it admits `job`."""
    recorded = recorded_exprs(groups)
    out = []
    for group, rule in alerting_rules(groups):
        try:
            sels = expand(rule.get("query", ""), recorded)
        except ValueError:
            continue  # an expression this reader cannot follow is not counted as coverage
        relevant = [s for s in sels if concern.reads(s)]
        if not relevant:
            continue
        selecting = [s for s in relevant if s.selects({"job": job})]
        alerts = [{"state": a.get("state"), "labels": a.get("labels", {}), "activeAt": a.get("activeAt"),
                   "value": a.get("value")}
                  for a in rule.get("alerts") or [] if (a.get("labels") or {}).get("job") == job]
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
