"""Monitoring checks (checklist: Monitoring), one module per subsection, each check an observation and
a pure verdict: mon_metrics (MON-METRICS-*), mon_logging (MON-LOG-*), mon_health (MON-HEALTH-1..3),
mon_alerting (MON-ALERT-*). MON-HEALTH-4, the drain drill (observed by drills.observe_drain), is here.

asap-protocol 2.5.10 (reference §2, §7): `/asap/metrics` claims OpenMetrics but serves classic
text, duration buckets are cumulated twice, counters are per worker, `/ready` is a constant and
`correlation_id` is never logged. Each check looks for the consequence an SRE would meet.
"""

from __future__ import annotations

from .. import k8s
from . import mon_alerting, mon_health, mon_logging, mon_metrics  # noqa: F401  (they register their checks)
from ._registry import CheckContext, Finding, check


def _k8s_grace(ctx: CheckContext) -> tuple[float, str]:
    if ctx.target.k8s_manifests:
        for w in k8s.workloads(k8s.documents(ctx.target.k8s_manifests)):
            g, explicit = w.grace_seconds()
            return float(g), f"terminationGracePeriodSeconds of {w.where}" + ("" if explicit else " (Kubernetes default)")
    return float(k8s.DEFAULT_GRACE_SECONDS), "Kubernetes default terminationGracePeriodSeconds (no manifest given)"


# exclusive: it times a drain, and other probes' load would skew it; it starts its own agent, so needs no target
@check("MON-HEALTH-4", exclusive=True, needs=("token",))
async def graceful_shutdown(ctx: CheckContext) -> Finding:
    """Drill: start the agent, keep a request in flight (its body unfinished), SIGTERM; the request must be
    answered and the process exit within the grace period. No skill is needed: the body is read-only."""
    from ..drills import observe_drain
    grace, grace_from = _k8s_grace(ctx)
    obs = await observe_drain(ctx, grace, grace_from)
    return obs if isinstance(obs, Finding) else judge_drain(obs)


def judge_drain(obs: dict) -> Finding:
    """Completion of the in-flight request and exit time against the grace period (pure)."""
    ev = [("observation", obs)]
    grace, held, status = obs["grace_seconds"], obs["held_seconds"], obs.get("response_status")
    exited = obs.get("exited_after_seconds")
    if status == 429:
        return Finding.errored("the agent's rate limiter refused the drill's request: nothing was in flight when "
                               "SIGTERM came", ev)
    if status is None:
        return Finding.failed(f"the request in flight at SIGTERM was cut without an answer (its body finished "
                              f"{held:g} s after SIGTERM; grace period {grace:g} s, {obs['grace_from']})", ev)
    if exited is None:
        return Finding.failed(f"the in-flight request was answered (HTTP {status}) but the process was still running "
                              f"{obs.get('waited_seconds')} s after SIGTERM (grace {grace:g} s)", ev)
    if exited > grace:
        return Finding.failed(f"the process exited {exited:.1f} s after SIGTERM, beyond the {grace:g} s grace period", ev)
    return Finding.passed(f"the request in flight at SIGTERM (body finished {held:g} s later) was answered "
                          f"(HTTP {status}) and the process exited {exited:.1f} s after SIGTERM, within the "
                          f"{grace:g} s grace period", ev)
