"""One look at a target before its checks run: what can be observed at all.

A check declares what it cannot look without (``@check(..., needs=(...))``). When the
preflight finds one of those missing, the engine ends the item ``error`` with the preflight's
cause and does not run it: no verdict without an observation, and one shared, machine-readable
cause (``Result.details["cause"]``) instead of one timeout and one wording per check.

Needs, in the order a cause is reported (the most basic first):

  reach       the base URL answers: a TCP connection, a TLS handshake (not verified), an HTTP response
  trust       its certificate verifies (https with tls_verify: true)
  agent       it serves an ASAP manifest
  token       the variable named by token_env is set (only when token_env is given)
  prometheus  Prometheus answers (only when the parameters name one and the target its prometheus_job:
              without a job the checks do not ask Prometheus about the target)

When only trust is missing, the checks that do not need it (TLS versions, HSTS, the redirect)
still run, over an unverified connection that never carries the token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .errors import NotAnAsapAgent, PrometheusError, ProbeError, TargetUntrusted
from .params import Params, Target
from .probe import Probe

NEEDS = ("reach", "trust", "agent", "token", "prometheus")
TARGET_NEEDS = {"reach", "trust", "agent"}  # the ones that cost a request to the target


@dataclass
class Preflight:
    target: str
    causes: dict[str, str] = field(default_factory=dict)  # need -> why it is missing
    observed: dict[str, Any] = field(default_factory=dict)  # what was looked at (evidence, kept small)
    manifest: dict | ProbeError | None = None  # the manifest as the checks' probe sees it
    open_manifest: dict | ProbeError | None = None  # ... and over the unverified connection

    def blocking(self, needs: frozenset[str] | set[str]) -> tuple[str, str] | None:
        """(need, cause) of the first unmet need of a check, or None when it can run."""
        return next(((n, self.causes[n]) for n in NEEDS if n in needs and n in self.causes), None)

    @property
    def unverified(self) -> bool:
        """Only trust is missing at the target: trust-free checks run over an unverified connection."""
        return "trust" in self.causes and "reach" not in self.causes

    def record(self) -> dict:
        return {"causes": dict(self.causes), "observed": dict(self.observed)}


def judge(target: Target, verified: dict | ProbeError | None, unverified: dict | ProbeError | None,
          prometheus_error: str | None) -> dict[str, str]:
    """The causes from what was seen (pure, so every combination can be table-tested).

    `verified`: the manifest look through the target's own client (None: not looked);
    `unverified`: the same over an unverified connection, tried only when the first did not verify.
    """
    causes: dict[str, str] = {}
    if verified is not None:
        if isinstance(verified, TargetUntrusted):
            causes["trust"] = (f"{verified.message}; checks that need a trusted connection did not run "
                               f"(SEC-TLS-2 judges the certificate); set targets[{target.name}].tls_verify: false "
                               "to look past it")
            verified = unverified
        if isinstance(verified, NotAnAsapAgent):
            causes["agent"] = verified.message
        elif isinstance(verified, ProbeError):  # no HTTP answer at all: nothing at the target can be seen
            causes["reach"] = causes["agent"] = verified.message
            causes.pop("trust", None)
    if target.token_env and not target.token:
        causes["token"] = (f"the environment variable {target.token_env} (targets[{target.name}].token_env) "
                           "is not set")
    if prometheus_error and target.prometheus_job:
        causes["prometheus"] = prometheus_error
    return causes


async def prometheus_error(params: Params) -> str | None:
    """None when the parameters name no Prometheus or it answers; else its one sentence."""
    if params.prometheus is None:
        return None
    from .prom import Prom
    try:
        await Prom(params.prometheus).build_info()
    except PrometheusError as e:
        return e.message
    return None


async def run(target: Target, params: Params, probe: Probe, needs: set[str],
              prometheus: str | None = None, transport=None) -> Preflight:
    """Look once: the manifest (when a check needs the target), the token variable, Prometheus
    (its outcome `prometheus` is looked up once per section run by the caller)."""
    t0 = time.monotonic()
    verified = unverified = None
    if needs & TARGET_NEEDS:
        verified = await _look(probe)
        if isinstance(verified, TargetUntrusted):
            async with open_probe(target, params, transport) as p:
                unverified = await _look(p)
    pf = Preflight(target.name, judge(target, verified, unverified, prometheus if "prometheus" in needs else None))
    pf.manifest = verified
    pf.open_manifest = unverified
    seen = {"base_url": target.base_url}
    if verified is not None:
        seen["manifest"] = _outcome(verified)
    if unverified is not None:
        seen["manifest over an unverified connection"] = _outcome(unverified)
    if target.token_env:
        seen["token_env"] = f"{target.token_env}: {'set' if target.token else 'not set'}"
    if params.prometheus is not None and "prometheus" in needs and target.prometheus_job:
        seen["prometheus"] = f"{params.prometheus.url}: {prometheus or 'answers'}"
    seen["seconds"] = round(time.monotonic() - t0, 3)
    pf.observed = seen
    return pf


def open_probe(target: Target, params: Params, transport=None) -> Probe:
    """A probe that does not verify the certificate and never sends the token (an unverified
    peer may not be the agent)."""
    return Probe(target.model_copy(update={"tls_verify": False, "token_env": None}), params.probe,
                 transport=transport)


async def _look(probe: Probe) -> dict | ProbeError:
    try:
        return await probe.manifest()
    except ProbeError as e:
        return e


def _outcome(x: dict | ProbeError) -> str:
    return x.message if isinstance(x, ProbeError) else f"ASAP manifest of {x.get('id')}"
