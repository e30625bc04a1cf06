"""Security checks (checklist: Security)."""

from __future__ import annotations

import re

from ..errors import ProbeError
from ._registry import CheckContext, Finding, check


@check("SEC-TLS-1")
async def https_only(ctx: CheckContext) -> Finding:
    """HTTPS everywhere: the target URL, the endpoints the manifest advertises, and no plain-HTTP agent."""
    t = ctx.target
    if not t.base_url.startswith("https://"):
        return Finding.failed(f"the target is served over plain HTTP ({t.base_url})")
    resp = await ctx.probe.get("/health")
    evidence = [("GET /health over HTTPS", resp.evidence)]
    manifest = await ctx.probe.manifest()
    endpoints = {k: v for k, v in (manifest.get("endpoints") or {}).items() if isinstance(v, str)}
    evidence.append(("manifest endpoints", endpoints))
    plain = {k: v for k, v in endpoints.items() if v.startswith(("http://", "ws://"))}
    problems = [f"the manifest advertises {k} at {v}" for k, v in plain.items()]
    if t.http_url:
        try:
            plain_resp = await ctx.probe.get(t.http_url + "/.well-known/asap/manifest.json")
            evidence.append((f"GET {t.http_url} (plain HTTP)", plain_resp.evidence))
            if plain_resp.status == 200:
                problems.append(f"{t.http_url} serves the agent over plain HTTP (HTTP 200)")
        except ProbeError as e:
            evidence.append((f"GET {t.http_url} (plain HTTP)", e.message))
    if problems:
        return Finding.failed("; ".join(problems), evidence)
    return Finding.passed(f"served over HTTPS; the manifest advertises only https/wss endpoints ({len(endpoints)})",
                          evidence)


_MAX_AGE = re.compile(r"max-age\s*=\s*\"?(\d+)\"?", re.I)


@check("SEC-TLS-4")
async def hsts(ctx: CheckContext) -> Finding:
    if not ctx.target.base_url.startswith("https://"):
        return Finding.failed("no HTTPS, so no HSTS: the target is plain HTTP")
    need = ctx.threshold("hsts_max_age_seconds")
    resp = await ctx.probe.get("/.well-known/asap/manifest.json")
    header = resp.headers.get("strict-transport-security")
    evidence = [("GET manifest over HTTPS", resp.evidence)]
    if header is None:
        return Finding.failed("no Strict-Transport-Security header on HTTPS responses "
                              "(asap-protocol never sends one; set it at the proxy)", evidence)
    m = _MAX_AGE.search(header)
    max_age = int(m.group(1)) if m else None
    subdomains = "includesubdomains" in header.lower().replace(" ", "")
    details = {"header": header, "max_age": max_age, "threshold": need.value, "threshold_source": need.source}
    if max_age is None or max_age < need.value:
        return Finding.failed(f"HSTS max-age is {max_age} s, below {int(need.value)} s ({need.source})", evidence, **details)
    if not subdomains:
        return Finding.failed("HSTS lacks includeSubDomains", evidence, **details)
    return Finding.passed(f"HSTS max-age={max_age} with includeSubDomains (threshold {int(need.value)} s: {need.source})",
                          evidence, **details)
