"""Security checks (checklist: Security): TLS, authentication, rate and size limits, handler
security, replay protection.

Most protocol failures of an ASAP agent (authentication included) are HTTP 200 with a JSON-RPC
error, so every probe reads the body (`ProbeResponse.rpc_error()`), not the status. POSTs to
`/asap` are paced per target below the agent's own per-second limit (read from its startup log
when given) so that the checks do not trip the limiter they are not testing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit

from .. import _agentlog, _nginx, _source_scan, _tls
from ..errors import ProbeError
from ..probe import ProbeResponse, envelope, iso_ago, rpc
from ..results import Status
from ..source import read_process_config
from ._registry import CheckContext, Finding, check

_TRACEBACK = "Traceback (most recent call last)"


# ================================================================ shared helpers

async def _manifest_id(ctx: CheckContext) -> str:
    return str((await ctx.probe.manifest()).get("id"))


def _log_events(ctx: CheckContext) -> list[_agentlog.LogEvent] | None:
    """The agent's log, parsed once per target (startup facts do not change during a run)."""
    path = ctx.target.log_file
    if path is None:
        return None
    if "log_events" not in ctx.state:
        ctx.state["log_events"] = _agentlog.events(path) if path.exists() else []
    return ctx.state["log_events"]


async def _startup_fact(ctx: CheckContext, event: str) -> _agentlog.LogEvent | None:
    evs = _log_events(ctx)
    if not evs:
        return None
    return _agentlog.last_for_agent(evs, event, await _manifest_id(ctx))


_WINDOW = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_LIMIT = re.compile(r"(\d+)\s*(?:/|per)\s*(\d+)?\s*(second|minute|hour|day)s?", re.I)


def _parse_limits(text: str) -> list[tuple[int, int]]:
    """'5/second;100/minute' or '5 per 1 second' -> [(5, 1), (100, 60)] (count, window seconds)."""
    return [(int(n), int(k or 1) * _WINDOW[w.lower()]) for n, k, w in _LIMIT.findall(text or "")]


async def _pace(ctx: CheckContext) -> None:
    """Space this target's POSTs just below the agent's per-second limit (0.25 s when unknown)."""
    if "pace" not in ctx.state:
        interval = 0.25
        fact = await _startup_fact(ctx, "asap.server.rate_limit_enabled")
        if fact:
            per_second = [n / w for n, w in _parse_limits(str(fact.fields.get("rate_limit", ""))) if w <= 1]
            if per_second:
                interval = 0.0 if min(per_second) > 50 else 1.0 / max(1.0, min(per_second) - 1)
        ctx.state["pace"] = (asyncio.Lock(), interval, [0.0])
    lock, interval, last = ctx.state["pace"]
    async with lock:
        wait = last[0] + interval - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        last[0] = time.monotonic()


async def _post(ctx: CheckContext, env: dict | None = None, **kw) -> ProbeResponse:
    await _pace(ctx)
    resp = await ctx.probe.send(env, **kw)
    if resp.status == 429 and kw.get("retry_on_429", True):
        raise ProbeError("the agent kept answering HTTP 429 (rate limited), so this check could not judge; run it again")
    return resp


def _code(resp: ProbeResponse) -> int | None:
    err = resp.rpc_error()
    return err.get("code") if err else None


def _brief(resp: ProbeResponse) -> str:
    """One phrase for what came back: 'HTTP 200 result', 'HTTP 200 error -32602 Invalid params'."""
    err = resp.rpc_error()
    if err:
        data = err.get("data") if isinstance(err.get("data"), dict) else {}
        extra = f" ({data['error']})" if isinstance(data.get("error"), str) else ""
        return f"HTTP {resp.status} JSON-RPC error {err.get('code')} {err.get('message')}{extra}"
    if resp.rpc_result() is not None:
        return f"HTTP {resp.status} result"
    return f"HTTP {resp.status}"


def _instances(ctx: CheckContext) -> tuple[int, str]:
    """Processes sharing this target: max(targets[].instances, workers in process_config)."""
    n, why = ctx.target.instances, f"targets[{ctx.target.name}].instances = {ctx.target.instances}"
    if ctx.target.process_config and ctx.target.process_config.exists():
        try:
            cfg = read_process_config(ctx.target.process_config)
        except (OSError, SyntaxError, ValueError):
            cfg = None
        if cfg and cfg.workers and cfg.workers > n:
            n, why = cfg.workers, f"{ctx.target.process_config.name}: {cfg.workers} {cfg.server} workers"
    return n, why


def _skill(manifest: dict, prefer: str = "echo") -> str:
    skills = [s.get("id") for s in (manifest.get("capabilities") or {}).get("skills") or [] if isinstance(s, dict)]
    return prefer if prefer in skills else (skills[0] if skills else prefer)


# ================================================================ TLS and HTTPS

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


@check("SEC-TLS-2")
async def certificate(ctx: CheckContext) -> Finding:
    """The chain verifies (trust store or ca_file), not self-signed, not expired, matches the host."""
    t = ctx.target
    if not t.base_url.startswith("https://"):
        return Finding.failed(f"no certificate to judge: the target is plain HTTP ({t.base_url})")
    try:
        rep = await asyncio.to_thread(_tls.certificate, t.base_url, t.ca_file, ctx.params.probe.timeout_seconds)
    except (OSError, ValueError) as e:
        return Finding.errored(f"could not fetch the certificate from {t.base_url}: {e}")
    warn_days = ctx.threshold("cert_expiry_warn_days")
    max_life = ctx.threshold("cert_max_lifetime_days")
    trust = f"the CA file {t.ca_file}" if t.ca_file else "the system trust store"
    evidence = [("certificate of " + t.base_url, rep.as_dict()),
                ("verified against", trust)]
    details = {"expiry_warn_days": warn_days.value, "expiry_warn_source": warn_days.source,
               "max_lifetime_days": max_life.value, "max_lifetime_source": max_life.source}
    fails, warns = [], []
    if rep.self_signed:
        fails.append("the certificate is self-signed")
    if not rep.verified:
        fails.append(f"the chain does not verify against {trust}: {rep.verify_error}")
    left = rep.days_left()
    if left is not None and left < 0:
        fails.append(f"the certificate expired {-left:.0f} days ago ({rep.not_after:%Y-%m-%d})")
    elif left is not None and left < warn_days.value:
        warns.append(f"the certificate expires in {left:.0f} days (warn below {warn_days.value:g}: {warn_days.source})")
    if rep.hostname_ok is False:
        fails.append(f"the certificate does not name {_tls.host_port(t.base_url)[0]} (SANs: {', '.join(rep.sans) or 'none'})")
    if rep.lifetime_days and rep.lifetime_days > max_life.value:
        warns.append(f"the certificate lives {rep.lifetime_days:.0f} days, over {max_life.value:g} ({max_life.source})")
    if fails:
        return Finding.failed("; ".join(fails + warns), evidence, **details)
    if warns:
        return Finding.warned("; ".join(warns), evidence, **details)
    return Finding.passed(f"chain verifies against {trust}, issued by {rep.issuer}, names the host, "
                          f"{left:.0f} days left of a {rep.lifetime_days:.0f}-day lifetime", evidence, **details)


@check("SEC-TLS-3")
async def tls_versions(ctx: CheckContext) -> Finding:
    """TLS 1.0/1.1 refused, 1.2 accepted, 1.3 preferred; a refusal counts only if this client can speak it."""
    t = ctx.target
    if not t.base_url.startswith("https://"):
        return Finding.failed(f"no TLS at all: the target is plain HTTP ({t.base_url})")
    timeout = ctx.params.probe.timeout_seconds
    caps = await asyncio.to_thread(_tls.client_capabilities)
    host, port = _tls.host_port(t.base_url)
    seen = {v: await asyncio.to_thread(_tls.handshake, host, port, v, timeout) for v in _tls.VERSIONS}
    evidence = [("handshakes pinned to one version each (client ciphers DEFAULT:@SECLEVEL=0)",
                 {v: h.as_dict() for v, h in seen.items()}),
                ("client self-test against a local server (can this machine speak each version?)",
                 {v: h.ok for v, h in caps.items()})]
    accepted = [v for v, h in seen.items() if h.ok]
    if not accepted and all(not seen[v].ok and "Errno" in (seen[v].error or "") for v in seen):
        return Finding.errored(f"no TLS handshake completed with {host}:{port}: {seen['TLSv1.2'].error}", evidence)
    old_ok = [v for v in ("TLSv1.0", "TLSv1.1") if seen[v].ok]
    if old_ok:
        return Finding.failed(f"the server accepts {' and '.join(old_ok)} (accepted: {', '.join(accepted)})", evidence)
    untestable = [v for v in ("TLSv1.0", "TLSv1.1") if not caps[v].ok]
    if untestable:
        return Finding.errored(f"cannot test {' and '.join(untestable)} from this machine: its OpenSSL cannot "
                               f"complete such a handshake even locally, so a refusal proves nothing", evidence)
    if not (seen["TLSv1.2"].ok or seen["TLSv1.3"].ok):
        return Finding.failed("neither TLS 1.2 nor TLS 1.3 is accepted", evidence)
    if not seen["TLSv1.3"].ok:
        return Finding.warned("TLS 1.0/1.1 refused and TLS 1.2 accepted, but TLS 1.3 (recommended) is not offered",
                              evidence)
    if not seen["TLSv1.2"].ok:
        return Finding.warned("TLS 1.3 only: TLS 1.2 clients cannot connect (the checklist asks for 1.2+)", evidence)
    return Finding.passed(f"TLS 1.0 and 1.1 refused; 1.2 ({seen['TLSv1.2'].cipher}) and 1.3 "
                          f"({seen['TLSv1.3'].cipher}) accepted", evidence)


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


@check("SEC-TLS-5")
async def http_redirect(ctx: CheckContext) -> Finding:
    """Plain HTTP answered by a redirect to HTTPS on the same host (not off-host, not 200, not HTTP->HTTP)."""
    t = ctx.target
    if not t.http_url:
        return Finding.skipped(f"targets[{t.name}].http_url is not set (the proxy's plain-HTTP listener); "
                               "if port 80 is closed, confirm it with the load-balancer listener list")
    start = t.http_url + "/health"
    url, evidence = start, []
    start_host = urlsplit(start).hostname
    for hop in range(4):
        resp = await ctx.probe.get(url)
        evidence.append((f"hop {hop + 1}: GET {url}", resp.evidence))
        if resp.status not in (301, 302, 303, 307, 308):
            if hop == 0:
                return Finding.failed(f"plain HTTP is answered with HTTP {resp.status}, not a redirect to HTTPS", evidence)
            if url.startswith("https://") and resp.status < 400:
                break
            return Finding.failed(f"the redirect chain from {start} ends at {url} with HTTP {resp.status}", evidence)
        location = resp.headers.get("location", "")
        nxt = urlsplit(location)
        if not location or not nxt.scheme:
            return Finding.failed(f"HTTP {resp.status} without an absolute Location ({location!r})", evidence)
        if nxt.hostname != start_host:
            return Finding.failed(f"the redirect leaves the host: {url} -> {location}", evidence)
        if nxt.scheme != "https":
            return Finding.failed(f"HTTP redirects to HTTP: {url} -> {location}", evidence)
        url = location
    else:
        return Finding.failed(f"more than 3 redirects from {start}", evidence)
    first = evidence[0][1]["response"]
    kind = "permanent" if first["status"] in (301, 308) else "temporary (prefer 301/308)"
    return Finding.passed(f"{start} answers {first['status']} ({kind}) to {first['headers'].get('location')} "
                          f"on the same host, which answers over HTTPS", evidence)


# ================================================================ Authentication

@check("SEC-AUTH-1")
async def manifest_auth(ctx: CheckContext) -> Finding:
    manifest = await ctx.probe.manifest()
    auth = manifest.get("auth")
    evidence = [("manifest auth", auth)]
    if not auth:
        return Finding.failed("the manifest declares no authentication (\"auth\": null): anyone may call every skill",
                              evidence)
    schemes = [str(s).lower() for s in auth.get("schemes") or []]
    if auth.get("oauth2") or "bearer" in schemes:
        return Finding.passed(f"the manifest declares {', '.join(schemes) or 'oauth2'}"
                              f"{' + OAuth2' if auth.get('oauth2') else ''}", evidence)
    if schemes == ["basic"]:
        return Finding.failed("the manifest declares only basic, which asap-protocol 2.5.10 never accepts on the wire: "
                              "every client is locked out", evidence)
    return Finding.failed(f"the manifest declares no usable scheme ({schemes})", evidence)


_OPEN_ROUTES = ["/health", "/ready", "/.well-known/asap/manifest.json", "/.well-known/asap/health", "/asap/metrics",
                "/asap/capability/list", "/audit", "/docs", "/openapi.json"]


def _refused(resp: ProbeResponse) -> bool:
    return resp.rpc_result() is None and (resp.status in (401, 403) or resp.rpc_error() is not None)


@check("SEC-AUTH-2")
async def auth_enforced(ctx: CheckContext) -> Finding:
    """No credentials, a wrong token and Basic credentials are all refused (read from the body)."""
    t = ctx.target
    wrong = "runbook-wrong-" + uuid.uuid4().hex
    basic = base64.b64encode(f"runbook:{uuid.uuid4().hex}".encode()).decode()
    attempts = [("no Authorization header", {}), ("a wrong bearer token", {"Authorization": f"Bearer {wrong}"}),
                ("Basic credentials", {"Authorization": f"Basic {basic}"})]
    evidence, accepted = [], []
    for label, headers in attempts:
        resp = await _post(ctx, envelope(t.sender), authenticated=False, headers=headers)
        evidence.append((f"POST /asap with {label}: {_brief(resp)}", resp.evidence))
        if not _refused(resp):
            accepted.append(label)
    open_routes = {}
    for path in _OPEN_ROUTES:
        try:
            r = await ctx.probe.get(path)
            open_routes[path] = r.status
        except ProbeError as e:
            open_routes[path] = e.message
    answered = [p for p, s in open_routes.items() if s == 200]
    evidence.append(("routes that answer HTTP 200 without credentials (GET)", answered))
    details = {"unauthenticated_routes": open_routes}
    if accepted:
        return Finding.failed(f"POST /asap succeeded with {', '.join(accepted)}: requests are not authenticated",
                              evidence, **details)
    return Finding.passed(f"POST /asap refused without credentials, with a wrong token and with Basic "
                          f"(JSON-RPC errors); open without credentials: {', '.join(answered) or 'none'}",
                          evidence, **details)


@check("SEC-AUTH-3")
async def no_hardcoded_tokens(ctx: CheckContext) -> Finding:
    t = ctx.target
    roots = [p for p in [t.source_dir, t.process_config, *t.k8s_manifests] if p is not None]
    if not roots:
        return Finding.skipped(f"targets[{t.name}].source_dir (or k8s_manifests) is not set: nothing to scan")
    scan = await asyncio.to_thread(_source_scan.hardcoded_credentials, roots)
    evidence = [("scanned", [str(r) for r in roots]), ("hard-coded credential candidates (values not shown)",
                                                      [h.as_dict() for h in scan.hits])]
    if scan.broken:
        evidence.append(("files that did not parse", scan.broken))
    if scan.files == 0:
        return Finding.skipped(f"no source or config files under {', '.join(map(str, roots))}", evidence)
    if scan.hits:
        return Finding.failed(f"{len(scan.hits)} hard-coded credential(s): "
                              f"{', '.join(h.file + ':' + str(h.line) for h in scan.hits[:5])}", evidence)
    return Finding.passed(f"no hard-coded token, password or key in {scan.files} file(s) "
                          "(heuristic scan: literals bound to credential-like names, Bearer literals)", evidence)


def _jwt_claims(token: str) -> dict | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        def dec(s):
            return json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
        header, claims = dec(parts[0]), dec(parts[1])
    except ValueError:
        return None
    return claims if isinstance(header, dict) and "alg" in header and isinstance(claims, dict) else None


@check("SEC-AUTH-4")
async def token_lifetime(ctx: CheckContext) -> Finding:
    t = ctx.target
    if not t.token_env:
        manifest = await ctx.probe.manifest()
        if not manifest.get("auth"):
            return Finding.failed("the agent takes no token at all (manifest auth is null), so nothing expires or "
                                  "rotates; see SEC-AUTH-1")
        return Finding.skipped(f"targets[{t.name}].token_env is not set, so there is no token to look at")
    token = t.token
    if not token:
        return Finding.errored(f"the environment variable {t.token_env} is not set")
    lo, hi = ctx.threshold("token_min_lifetime_minutes"), ctx.threshold("token_max_lifetime_minutes")
    claims = _jwt_claims(token)
    if claims is None:
        return Finding(Status.MANUAL, f"the token in {t.token_env} is opaque (not a JWT), so its lifetime cannot be "
                       "read: confirm who rotates it and how often, and attach the rotation policy",
                       details={"token_kind": "opaque", "length": len(token)})
    exp, iat = claims.get("exp"), claims.get("iat")
    shown = {k: claims.get(k) for k in ("iss", "aud", "iat", "nbf", "exp") if k in claims}
    evidence = [("JWT claims (no signature check; the token itself is not shown)", shown)]
    details = {"min_minutes": lo.value, "max_minutes": hi.value, "source": hi.source}
    if not isinstance(exp, (int, float)):
        return Finding.failed("the JWT has no exp claim: it never expires", evidence, **details)
    start = iat if isinstance(iat, (int, float)) else datetime.now(UTC).timestamp()
    minutes = (exp - start) / 60
    if minutes > hi.value:
        return Finding.failed(f"the JWT lives {minutes:.0f} min, over {hi.value:g} ({hi.source})", evidence, **details)
    if minutes < lo.value:
        return Finding.warned(f"the JWT lives {minutes:.0f} min, under {lo.value:g} ({lo.source}); "
                              "expect frequent refreshes", evidence, **details)
    return Finding.passed(f"the JWT lives {minutes:.0f} min (within {lo.value:g}-{hi.value:g}: {hi.source})",
                          evidence, **details)


@check("SEC-AUTH-5")
async def client_sends_bearer(ctx: CheckContext) -> Finding:
    """The configured token works as Bearer (with the configured sender) and not as Basic."""
    t = ctx.target
    if not t.token_env:
        manifest = await ctx.probe.manifest()
        if manifest.get("auth"):
            return Finding.skipped(f"targets[{t.name}].token_env is not set; cannot present the real credential")
        resp = await _post(ctx, envelope(t.sender), authenticated=False)
        evidence = [(f"POST /asap without Authorization: {_brief(resp)}", resp.evidence)]
        if resp.rpc_result() is not None:
            return Finding.failed("the agent answers requests without an Authorization header, so clients need not "
                                  "send one", evidence)
        return Finding.errored(f"no token_env and the agent refused an anonymous request ({_brief(resp)})", evidence)
    token = t.token
    if not token:
        return Finding.errored(f"the environment variable {t.token_env} is not set")
    ok = await _post(ctx, envelope(t.sender), authenticated=True)
    basic = base64.b64encode(f"{t.sender}:{token}".encode()).decode()
    as_basic = await _post(ctx, envelope(t.sender), authenticated=False, headers={"Authorization": f"Basic {basic}"})
    evidence = [(f"POST /asap with Authorization: Bearer <token from {t.token_env}>: {_brief(ok)}", ok.evidence),
                (f"POST /asap with the same token as Basic: {_brief(as_basic)}", as_basic.evidence)]
    err = ok.rpc_error() or {}
    if ok.rpc_result() is None:
        data = err.get("data") if isinstance(err.get("data"), dict) else {}
        if "Sender does not match" in str(data.get("error", "")):
            return Finding.failed(f"the token is valid but maps to another identity than sender {t.sender} "
                                  "(-32602 Sender does not match authenticated identity)", evidence)
        return Finding.failed(f"the configured token is refused as Bearer: {_brief(ok)}", evidence)
    if as_basic.rpc_result() is not None:
        return Finding.warned("Bearer works, but the same token is also accepted as Basic", evidence)
    return Finding.passed(f"Authorization: Bearer with sender {t.sender} succeeds; the same token as Basic is refused "
                          "(asap-protocol 2.5.10 accepts only Bearer on the wire)", evidence)


# ================================================================ Rate Limiting

def _xff(i: int) -> dict:
    return {"X-Forwarded-For": f"203.0.113.{(i % 250) + 1}"}  # TEST-NET-3: never a real client


async def _burst(ctx: CheckContext, budget: int, deadline: float, rotate_xff: bool,
                 timeline: list | None = None, t0: float = 0.0) -> tuple[list, ProbeResponse | None]:
    """Waves of 5 concurrent POSTs until the first 429 or the budget; returns statuses and the first 429.
    `timeline` gets one entry per response: seconds since `t0` (monotonic), status, Retry-After."""
    statuses: list = []
    first_429 = None
    while len(statuses) < budget and time.monotonic() < deadline:
        wave = min(5, budget - len(statuses))
        base = len(statuses)
        async def timed(k: int):
            r = await ctx.probe.send(envelope(ctx.target.sender), retry_on_429=False,
                                     headers=_xff(base + k) if rotate_xff else None)
            return r, time.monotonic()
        got = await asyncio.gather(*(timed(k) for k in range(wave)), return_exceptions=True)
        for item in got:
            r, at = item if isinstance(item, tuple) else (item, time.monotonic())
            if timeline is not None:
                timeline.append({"burst": "B" if rotate_xff else "A", "t": round(at - t0, 3),
                                 "status": r.status if isinstance(r, ProbeResponse) else type(r).__name__,
                                 "retry_after": r.headers.get("retry-after") if isinstance(r, ProbeResponse) else None})
            if isinstance(r, ProbeResponse):
                statuses.append(r.status)
                if r.status == 429 and first_429 is None:
                    first_429 = r
            else:
                statuses.append(type(r).__name__)
        if first_429 is not None:
            break
    return statuses, first_429


def _retry_after(resp: ProbeResponse | None) -> float | None:
    if resp is None:
        return None
    try:
        return float(resp.headers.get("retry-after"))
    except (TypeError, ValueError):
        return None


def _tally(statuses: list) -> str:
    out, prev, n = [], None, 0
    for s in statuses + [None]:
        if s == prev:
            n += 1
            continue
        if prev is not None:
            out.append(f"{prev}x{n}")
        prev, n = s, 1
    return ", ".join(out)


@check("SEC-RATE-1", exclusive=True)
async def rate_limit_enforced(ctx: CheckContext) -> Finding:
    """Opt-in, bounded burst: 429 + Retry-After beyond the limit; rotating X-Forwarded-For must not bypass it."""
    fact = await _startup_fact(ctx, "asap.server.rate_limit_enabled")
    configured = str(fact.fields.get("rate_limit")) if fact else None
    skip = ctx.require_active("rate_limit_burst")
    if skip:
        if configured:
            skip.summary += f" (the agent's log says rate_limit={configured}, not exercised)"
        return skip
    ap = ctx.target.active_probes
    started = time.monotonic()
    deadline = started + ap.max_seconds
    budget_a = min(ap.max_requests, max(6, (ap.max_requests * 2) // 3))
    per_second = [n / w for n, w in _parse_limits(configured or "") if w <= 1]
    ceiling = ctx.threshold("rate_limit_max_per_second").value
    if per_second and budget_a < min(per_second) + 1 <= ceiling + 1:  # a sane limit the budget cannot reach
        return Finding.skipped(f"the configured limit ({configured}) cannot be exceeded within "
                               f"{budget_a} requests: raise targets[{ctx.target.name}].active_probes.max_requests")
    await asyncio.sleep(1.0)  # let the per-second window of earlier checks drain
    timeline: list[dict] = []  # every response in time: the evidence page draws it (plots.burst_timeline)
    statuses, first = await _burst(ctx, budget_a, deadline, rotate_xff=False, timeline=timeline, t0=started)
    evidence = [("burst A: POST /asap, waves of 5 concurrent until the first 429 (each a valid task.request "
                 "envelope with a fresh nonce, the bearer token if configured), no X-Forwarded-For; statuses",
                 _tally(statuses))]
    details = {"configured_limit_from_log": configured, "max_requests": ap.max_requests, "max_seconds": ap.max_seconds,
               "timeline": timeline}
    elapsed = time.monotonic() - started - 1.0
    if first is None:
        rate = len(statuses) / max(elapsed, 0.001)
        xff_note = await _xff_trusted_note(ctx, evidence)
        return Finding.failed(f"{len(statuses)} requests in {elapsed:.1f} s (~{rate:.0f}/s) and no HTTP 429: "
                              f"the limit is above that or absent{' (log: ' + configured + ')' if configured else ''}"
                              f"{xff_note}", evidence, **details)
    evidence.append(("first 429", first.evidence))
    allowed = statuses.index(429)
    retry = _retry_after(first)
    wait = min(retry if retry is not None else 1.0, max(0.0, deadline - time.monotonic()))
    await asyncio.sleep(wait + 0.2)
    evidence.append(("waited out Retry-After before burst B", f"{wait + 0.2:.1f} s"))
    budget_b = min(ap.max_requests - len(statuses), allowed + 5)
    problems = []
    if retry is None:
        problems.append("the 429 carries no numeric Retry-After header")
    if budget_b <= allowed:
        problems.append(f"not enough request budget left ({budget_b}) to test X-Forwarded-For rotation")
        statuses_b, first_b = [], None
    else:
        statuses_b, first_b = await _burst(ctx, budget_b, deadline, rotate_xff=True, timeline=timeline, t0=started)
        evidence.append(("burst B: the same, each request with a different X-Forwarded-For (203.0.113.x)",
                         _tally(statuses_b)))
        if first_b is None:
            problems.append(f"rotating X-Forwarded-For bypasses the limit: {len(statuses_b)} requests, no 429 "
                            "(the agent or proxy trusts a client-supplied header)")
    retry_b = _retry_after(first_b)
    await asyncio.sleep(min(retry_b or retry or 1.0, max(0.0, deadline - time.monotonic())) + 0.2)  # leave the window clean
    if problems:
        status = Finding.failed if any("bypass" in p for p in problems) else Finding.warned
        return status(f"429 after {allowed} requests, but " + "; ".join(problems), evidence, **details)
    return Finding.passed(f"HTTP 429 with Retry-After: {first.headers.get('retry-after')} after {allowed} back-to-back "
                          f"requests; rotating X-Forwarded-For did not bypass it (429 after "
                          f"{statuses_b.index(429)}){' (log: ' + configured + ')' if configured else ''}",
                          evidence, **details)


async def _xff_trusted_note(ctx: CheckContext, evidence: list) -> str:
    """One request with a spoofed X-Forwarded-For; does the agent log that address as the client?"""
    if not ctx.target.log_file:
        return ""
    spoof = f"203.0.113.{uuid.uuid4().int % 250 + 1}"
    resp = await _post(ctx, envelope(ctx.target.sender), headers={"X-Forwarded-For": spoof})
    await asyncio.sleep(0.3)
    text = await asyncio.to_thread(_agentlog.read_text, ctx.target.log_file, 256 * 1024)
    seen = [ln.strip()[:200] for ln in text.splitlines() if spoof in ln][-2:]
    evidence.append((f"POST /asap with X-Forwarded-For: {spoof}, then the agent log", {
        "response": _brief(resp), "log lines naming the spoofed address": seen}))
    return (f"; the agent also logged the spoofed X-Forwarded-For {spoof} as the client address, so a per-IP "
            "limit would be bypassable" if seen else "")


@check("SEC-RATE-2")
async def rate_limit_tuned(ctx: CheckContext) -> Finding:
    """The effective limit (from the agent's startup log) x processes, against the parameters' ceiling."""
    if ctx.target.log_file is None:
        return Finding.skipped(f"targets[{ctx.target.name}].log_file is not set (the agent logs "
                               "asap.server.rate_limit_enabled at startup)")
    if not ctx.target.log_file.is_file():
        return Finding.errored(f"targets[{ctx.target.name}].log_file {ctx.target.log_file} does not exist")
    fact = await _startup_fact(ctx, "asap.server.rate_limit_enabled")
    if fact is None:
        return Finding.errored(f"{ctx.target.log_file} has no asap.server.rate_limit_enabled line for "
                               f"{await _manifest_id(ctx)} (is it the agent's log, from its start?)")
    text = str(fact.fields.get("rate_limit", ""))
    limits = _parse_limits(text)
    storage = _agentlog.storage_backend_before(_log_events(ctx), fact)
    shared = bool(storage and "redis" in storage.event)
    n, why = _instances(ctx)
    ceiling = ctx.threshold("rate_limit_max_per_second")
    evidence = [("startup log line", fact.raw[:400]), ("storage", storage.event if storage else "unknown"),
                ("processes", why)]
    if not limits:
        return Finding.errored(f"could not read the limit {text!r}", evidence)
    shortest = min(limits, key=lambda lw: lw[1])
    per_second = shortest[0] / shortest[1] * (1 if shared else n)
    details = {"rate_limit": text, "effective_per_second": per_second, "ceiling": ceiling.value,
               "ceiling_source": ceiling.source, "processes": n, "shared_storage": shared}
    mult = "" if shared or n == 1 else f" x {n} processes (per-process storage)"
    if per_second > ceiling.value:
        return Finding.failed(f"rate_limit={text}{mult} allows ~{per_second:g} requests/s per client, over "
                              f"{ceiling.value:g} ({ceiling.source})", evidence, **details)
    return Finding.passed(f"rate_limit={text}{mult}: ~{per_second:g} requests/s per client, within "
                          f"{ceiling.value:g} ({ceiling.source})", evidence, **details)


@check("SEC-RATE-3")
async def rate_limit_shared(ctx: CheckContext) -> Finding:
    """Memory vs shared storage for the limiter (slowapi is gone; the knob is ASAP_RATE_LIMIT_BACKEND)."""
    n, why = _instances(ctx)
    evidence = [("processes", why)]
    storage, proxy = None, []
    if ctx.target.log_file and ctx.target.log_file.is_file():
        fact = await _startup_fact(ctx, "asap.server.rate_limit_enabled")
        storage = _agentlog.storage_backend_before(_log_events(ctx) or [], fact)
        evidence.append(("agent log: storage event before its rate_limit_enabled line",
                         storage.raw[:300] if storage else "none found"))
    if ctx.target.nginx_conf:
        try:
            proxy = _nginx.uses(_nginx.load(ctx.target.nginx_conf), "limit_req")
        except _nginx.NginxParseError as e:
            evidence.append(("nginx", f"could not parse {ctx.target.nginx_conf}: {e}"))
        evidence.append(("nginx limit_req lines", proxy))
    if storage is None and not proxy:
        return Finding.skipped("cannot tell the limiter's storage: set log_file (the agent logs "
                               "asap.rate_limit.memory_storage or ...redis_storage at startup) or nginx_conf", evidence)
    note = "(slowapi is not used by asap-protocol 2.5.10; the knob is ASAP_RATE_LIMIT_BACKEND)"
    if storage is not None and "redis" in storage.event:
        return Finding.passed(f"rate limits are stored in Redis, shared by all {n} process(es) {note}", evidence)
    if proxy:
        return Finding.passed(f"the proxy enforces limit_req (nginx lines {proxy}), shared by the {n} process(es) "
                              "behind it", evidence)
    if n > 1:
        return Finding.failed(f"per-process memory:// rate-limit storage with {n} processes ({why}): the effective "
                              f"limit is {n}x the configured one {note}", evidence)
    return Finding.warned(f"per-process memory:// rate-limit storage: fine for this single process, but each added "
                          f"worker or replica multiplies the limit {note}", evidence)


_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", re.M)


async def _counter_monitored(ctx: CheckContext, pattern: str, what: str, stock_note: str) -> Finding:
    """The counter is exported at /asap/metrics and Prometheus holds a series of it for the target's job."""
    from ..prom import prom_for
    evidence, exported = [], []
    try:
        resp = await ctx.probe.get("/asap/metrics")
        exported = sorted({m.group(1) for m in _METRIC_LINE.finditer(resp.text)
                           if re.search(pattern, m.group(1))}) if resp.status == 200 else []
        evidence.append((f"GET /asap/metrics: HTTP {resp.status}; families matching /{pattern}/", exported))
    except ProbeError as e:
        evidence.append(("GET /asap/metrics", e.message))
    prom, job = prom_for(ctx.params), ctx.target.prometheus_job
    if prom is None or not job:
        if exported:
            return Finding.warned(f"{', '.join(exported)} exported at /asap/metrics, but no Prometheus/prometheus_job "
                                  "in the parameters to confirm it is scraped", evidence)
        return Finding.failed(f"no metric counts {what} at /asap/metrics; {stock_note}", evidence)
    query = f'{{__name__=~"{pattern}", job="{job}"}}'
    series = await prom.query(query)
    evidence.append((f"Prometheus: {query}", [{"metric": s.get("metric"), "value": s.get("value")} for s in series]))
    if series:
        names = sorted({s["metric"].get("__name__") for s in series})
        return Finding.passed(f"Prometheus holds {', '.join(names)} for job {job} ({len(series)} series); stock "
                              "asap-protocol 2.5.10 exports no such counter, so it comes from this deployment "
                              "(a wrapper or the proxy)", evidence)
    if exported:
        return Finding.failed(f"{', '.join(exported)} is exported but Prometheus has no series for job {job} "
                              "(is the scrape target up? see MON-METRICS-2)", evidence)
    return Finding.failed(f"nothing counts {what}: no such metric at /asap/metrics nor in Prometheus for job {job}; "
                          f"{stock_note}", evidence)


@check("SEC-RATE-4")
async def rate_limit_monitored(ctx: CheckContext) -> Finding:
    return await _counter_monitored(
        ctx, r".*(rate_limit.*(exceeded|hit|reject)|_429).*", "HTTP 429 responses",
        "asap-protocol 2.5.10 has no asap_rate_limit_exceeded_total (only the log event asap.rate_limit.exceeded); "
        "count 429s at the proxy or export the counter from a wrapper")


# ================================================================ Request Size Limits

def _padded_body(ctx: CheckContext, size: int) -> bytes:
    env = envelope(ctx.target.sender, payload={"conversation_id": "conv_runbook", "skill_id": "echo",
                                               "input": {"pad": ""}})
    doc = rpc(env)
    base = len(json.dumps(doc).encode())
    doc["params"]["envelope"]["payload"]["input"]["pad"] = "x" * max(0, size - base)
    return json.dumps(doc).encode()


_AGENT_413 = re.compile(r"exceeds maximum \((\d+) bytes\)")


@check("SEC-SIZE-1")
async def request_size_limited(ctx: CheckContext) -> Finding:
    """Opt-in: a body just over the intended limit gets 413, with Content-Length and chunked."""
    skip = ctx.require_active("oversize_body")
    if skip:
        return skip
    want = ctx.threshold("max_request_size_bytes")
    limit = int(want.value)
    size = limit + 1024
    if size > 64 * 1024 * 1024:
        return Finding.skipped(f"the intended limit ({limit} bytes) is too large to probe with a bounded request")
    fact = await _startup_fact(ctx, "asap.server.max_request_size")
    logged = int(fact.fields["max_request_size"]) if fact and str(fact.fields.get("max_request_size", "")).isdigit() else None
    body = _padded_body(ctx, size)
    evidence = [("sent", f"POST /asap, a valid JSON-RPC envelope padded to {len(body)} bytes "
                         f"(intended limit {limit}: {want.source}), once with Content-Length and once chunked")]
    details = {"intended_limit": limit, "intended_limit_source": want.source, "agent_limit_from_log": logged,
               "body_bytes": len(body)}
    outcomes = {}

    async def chunks():
        for i in range(0, len(body), 65536):
            yield body[i:i + 65536]

    for label, content in (("with Content-Length", body), ("chunked, no Content-Length", None)):
        await _pace(ctx)
        try:
            resp = await ctx.probe.request("POST", "/asap", content=content if content is not None else chunks(),
                                           headers={"Content-Type": "application/json"}, authenticated=True,
                                           read_limit=4096)
            outcomes[label] = resp.status
            evidence.append((f"{label}: HTTP {resp.status}", resp.evidence["response"]))
            m = _AGENT_413.search(resp.text)
            if m:
                details["agent_limit_from_413"] = int(m.group(1))
        except ProbeError as e:
            outcomes[label] = f"connection closed: {e.message}"
            evidence.append((label, e.message))
    accepted = [k for k, v in outcomes.items() if v == 200 or (isinstance(v, int) and v < 400)]
    log_note = f"; the agent's own limit is {logged} bytes (startup log)" if logged else ""
    if accepted:
        return Finding.failed(f"a {len(body)}-byte body (intended limit {limit}) was accepted "
                              f"{' and '.join(accepted)}{log_note}", evidence, **details)
    not_413 = {k: v for k, v in outcomes.items() if v != 413}
    if not_413:
        return Finding.warned(f"oversize bodies were not accepted, but not answered 413 either: {not_413}", evidence,
                              **details)
    return Finding.passed(f"a {len(body)}-byte body got HTTP 413 with Content-Length and chunked "
                          f"(intended limit {limit}){log_note}", evidence, **details)


@check("SEC-SIZE-2")
async def proxy_body_limit(ctx: CheckContext) -> Finding:
    """nginx client_max_body_size (default 1m, 0 = unlimited) at most the agent's limit."""
    conf = ctx.target.nginx_conf
    if conf is None:
        return Finding.skipped(f"targets[{ctx.target.name}].nginx_conf is not set")
    try:
        limits = [b for b in _nginx.body_limits(_nginx.load(conf)) if b.proxies]
    except (_nginx.NginxParseError, OSError) as e:
        return Finding.errored(f"could not read {conf}: {e}")
    fact = await _startup_fact(ctx, "asap.server.max_request_size")
    if fact and str(fact.fields.get("max_request_size", "")).isdigit():
        agent, source = int(fact.fields["max_request_size"]), "the agent's startup log (asap.server.max_request_size)"
    else:
        t = ctx.threshold("max_request_size_bytes")
        agent, source = int(t.value), f"thresholds.max_request_size_bytes ({t.source})"
    rows = [{"where": b.where, "client_max_body_size": b.value or "(unset: nginx default 1m)", "bytes": b.bytes,
             "line": b.line} for b in limits]
    evidence = [(f"{conf}: blocks that proxy to the agent", rows), ("agent limit", f"{agent} bytes from {source}")]
    if not limits:
        return Finding.errored(f"no server/location in {conf} proxies to an upstream", evidence)
    too_big = [b for b in limits if b.bytes == 0 or b.bytes > agent]
    if too_big:
        what = ", ".join(f"{b.where}: {b.value or '1m'}{' (unlimited)' if b.bytes == 0 else ''}" for b in too_big)
        return Finding.failed(f"the proxy allows bodies over the agent's {agent}-byte limit ({what}); chunked "
                              "bodies reach the agent, which buffers them whole before its 413", evidence)
    return Finding.passed(f"client_max_body_size <= the agent's {agent} bytes in all {len(limits)} proxying block(s) "
                          f"({', '.join(sorted({b.value or '1m' for b in limits}))})", evidence)


@check("SEC-SIZE-3")
async def size_rejections_monitored(ctx: CheckContext) -> Finding:
    return await _counter_monitored(
        ctx, r".*(size_exceeded|too_large|_413).*", "HTTP 413 responses",
        "asap-protocol 2.5.10 has no metric for 413 (only the log event asap.request.size_exceeded); count them "
        "at the proxy or export a counter from a wrapper")


# ================================================================ Handler Security

@check("SEC-HANDLER-1")
async def payloads_validated(ctx: CheckContext) -> Finding:
    """Malformed envelopes rejected as invalid (-32602/-32600); no skill crashes (-32603) on bad input."""
    t = ctx.target
    manifest = await ctx.probe.manifest()
    bad = [
        ("an unknown envelope field", envelope(t.sender, runbook_unknown_field="x")),
        ("a malformed sender URN", envelope("not-a-urn")),
        ("a task.request without skill_id", envelope(t.sender, payload={"conversation_id": "conv_runbook",
                                                                        "input": {}})),
    ]
    evidence, problems = [], []
    for label, env in bad:
        resp = await _post(ctx, env)
        evidence.append((f"{label}: {_brief(resp)}", resp.evidence))
        code = _code(resp)
        if _TRACEBACK in resp.text:
            problems.append(f"{label} returned a traceback")
        elif resp.rpc_result() is not None:
            problems.append(f"{label} was accepted")
        elif code == -32603:
            problems.append(f"{label} crashed the server (-32603)")
        elif code not in (-32602, -32600):
            problems.append(f"{label} got {_brief(resp)}, not -32602/-32600")
    skills = [s.get("id") for s in (manifest.get("capabilities") or {}).get("skills") or [] if isinstance(s, dict)][:5]
    for skill in skills:
        env = envelope(t.sender, payload={"conversation_id": "conv_runbook", "skill_id": skill,
                                          "input": {"runbook_unexpected": [1, {"x": None}]}})
        resp = await _post(ctx, env)
        evidence.append((f"skill {skill!r} with unexpected input: {_brief(resp)}", resp.evidence))
        if _TRACEBACK in resp.text:
            problems.append(f"skill {skill!r} returned a traceback on unexpected input")
        elif _code(resp) == -32603:
            problems.append(f"skill {skill!r} crashed on unexpected input (-32603): its handler does not validate")
    if problems:
        return Finding.failed("; ".join(problems), evidence)
    return Finding.passed(f"3 malformed envelopes rejected as invalid params; {len(skills)} skill(s) handled "
                          "unexpected input without crashing", evidence)


@check("SEC-HANDLER-2")
async def path_traversal(ctx: CheckContext) -> Finding:
    """Static (source): file/URI sinks fed from request data need FilePart or a resolve()/is_relative_to guard.
    No wire payload of asap-protocol 2.5.10 is a FilePart, so a black-box probe would prove nothing general."""
    root = ctx.target.source_dir
    if root is None:
        return Finding.skipped(f"targets[{ctx.target.name}].source_dir is not set")
    rep = await asyncio.to_thread(_source_scan.file_sinks, root)
    evidence = [("unguarded sinks", [h.as_dict() for h in rep.unguarded]),
                ("guarded sinks", [h.as_dict() for h in rep.guarded]),
                ("functions with a traversal guard", [h.as_dict() for h in rep.guards])]
    if rep.broken:
        evidence.append(("files that did not parse", rep.broken))
    if rep.files == 0:
        return Finding.skipped(f"no Python files under {root}")
    if rep.unguarded:
        return Finding.failed(f"{len(rep.unguarded)} file/URI sink(s) take request data without a traversal guard: "
                              f"{', '.join(h.file + ':' + str(h.line) for h in rep.unguarded[:5])}", evidence)
    guards = f"; guards: {', '.join(h.what for h in rep.guards[:3])}" if rep.guards else ""
    return Finding.passed(f"no unguarded file/URI sink fed from request data in {rep.files} file(s) "
                          f"(heuristic source scan){guards}", evidence)


_DEBUG_ENV = re.compile(r"\bASAP_DEBUG(_LOG)?\s*[=:]\s*[\"']?(1|true|yes|on)\b", re.I)


@check("SEC-HANDLER-3")
async def logs_sanitized(ctx: CheckContext) -> Finding:
    root = ctx.target.source_dir
    if root is None:
        return Finding.skipped(f"targets[{ctx.target.name}].source_dir is not set")
    rep = await asyncio.to_thread(_source_scan.unsanitized_logging, root)
    debug = []
    for p in [ctx.target.process_config, *ctx.target.k8s_manifests]:
        if p and p.exists() and p.is_file():
            debug += [f"{p.name}: {m.group(0)}" for m in _DEBUG_ENV.finditer(p.read_text(errors="replace"))]
    evidence = [("log calls passing envelope/payload/input unsanitized", [h.as_dict() for h in rep.unsanitized]),
                ("log calls wrapped in sanitize_for_logging", [h.as_dict() for h in rep.sanitized]),
                ("ASAP_DEBUG / ASAP_DEBUG_LOG switched on in deployment files", debug)]
    if rep.files == 0:
        return Finding.skipped(f"no Python files under {root}")
    problems = []
    if rep.unsanitized:
        problems.append(f"{len(rep.unsanitized)} log call(s) pass request data without sanitize_for_logging: "
                        f"{', '.join(h.file + ':' + str(h.line) for h in rep.unsanitized[:5])}")
    if debug:
        problems.append(f"debug logging switched on ({'; '.join(debug)}): it logs full bodies and stops redaction")
    if problems:
        return Finding.failed("; ".join(problems), evidence)
    return Finding.passed(f"{len(rep.sanitized)} log call(s) with request data, all through sanitize_for_logging "
                          f"({rep.log_calls} log calls in {rep.files} file(s); heuristic source scan)", evidence)


async def _read_logs(ctx: CheckContext) -> tuple[str | None, str]:
    t = ctx.target
    if t.log_file:
        if not t.log_file.is_file():
            raise ProbeError(f"targets[{t.name}].log_file {t.log_file} does not exist")
        return await asyncio.to_thread(_agentlog.read_text, t.log_file, 4 * 1024 * 1024), str(t.log_file)
    if t.log_command:
        proc = await asyncio.create_subprocess_shell(t.log_command, stdout=asyncio.subprocess.PIPE,
                                                     stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout=ctx.params.probe.timeout_seconds * 3)
        except asyncio.TimeoutError:
            proc.kill()
            raise ProbeError(f"log_command did not finish within {ctx.params.probe.timeout_seconds * 3:g} s") from None
        return out[-4 * 1024 * 1024:].decode("utf-8", "replace"), f"output of log_command ({t.log_command[:60]})"
    return None, ""


@check("SEC-HANDLER-4")
async def no_secrets_in_logs(ctx: CheckContext) -> Finding:
    """Debug surfaces closed; a canary secret sent in a request does not reach the agent's log."""
    t = ctx.target
    evidence, problems = [], []
    surfaces = {}
    for path in ("/docs", "/redoc", "/openapi.json"):
        r = await ctx.probe.get(path)
        surfaces[path] = r.status
    evidence.append(("debug surfaces (GET, expect 404)", surfaces))
    open_ = [p for p, s in surfaces.items() if s == 200]
    if open_:
        problems.append(f"debug surfaces open ({', '.join(open_)}: ASAP_DEBUG is on, which also returns tracebacks "
                        "and stops log redaction)")
    if not (t.log_file or t.log_command):
        if problems:
            return Finding.failed("; ".join(problems), evidence)
        return Finding.skipped(f"debug surfaces closed, but targets[{t.name}].log_file / log_command is not set, so "
                               "the canary cannot be looked for", evidence)
    manifest = await ctx.probe.manifest()
    canary = "rbcanary" + uuid.uuid4().hex
    auth_canary = "rbcanaryauth" + uuid.uuid4().hex
    env = envelope(t.sender, payload={"conversation_id": "conv_runbook", "skill_id": _skill(manifest),
                                      "input": {"api_key": canary, "password": canary, "note": "asap-runbook canary"}})
    r1 = await _post(ctx, env)
    evidence.append((f"canary in payload fields api_key/password: {_brief(r1)}", {"canary": canary}))
    sent = [("payload canary", canary, canary)]
    if manifest.get("auth"):
        r2 = await _post(ctx, envelope(t.sender), authenticated=False, headers={"Authorization": f"Bearer {auth_canary}"})
        evidence.append((f"canary as a bearer token: {_brief(r2)}", {"canary": auth_canary}))
        # asap-protocol logs the first 8 characters as token_prefix: look for the rest
        sent.append(("bearer canary", auth_canary[8:], auth_canary))
    await asyncio.sleep(0.5)
    text, where = await _read_logs(ctx)
    found = {}
    for label, needle, _ in sent:
        lines = [n for n, ln in enumerate(text.splitlines(), 1) if needle in ln]
        if lines:
            found[label] = lines[:5]
    token = t.token
    if token and len(token) >= 8 and token in text:
        found["the configured bearer token"] = ["(present; line numbers withheld)"]
    evidence.append((f"searched {where} for the canaries", {"found at lines": found}))
    if found:
        problems.append(f"secrets reached the log ({', '.join(found)} in {where})")
    if problems:
        return Finding.failed("; ".join(problems), evidence)
    return Finding.passed(f"debug surfaces closed (404); canaries sent as api_key/password"
                          f"{' and as a bearer token' if len(sent) > 1 else ''} do not appear in {where}", evidence)


# ================================================================ Replay Protection

@check("SEC-REPLAY-1")
async def timestamp_window(ctx: CheckContext) -> Finding:
    t = ctx.target
    cases = [("10 minutes old", iso_ago(minutes=10)), ("5 minutes in the future", iso_ago(minutes=-5))]
    evidence, problems = [], []
    for label, ts in cases:
        resp = await _post(ctx, envelope(t.sender, timestamp=ts))
        evidence.append((f"timestamp {label}: {_brief(resp)}", resp.evidence))
        code = _code(resp)
        if resp.rpc_result() is not None:
            problems.append(f"an envelope {label} was accepted")
        elif code != -32002:
            return Finding.errored(f"an envelope {label} was refused before the timestamp check ({_brief(resp)}); "
                                   "cannot judge", evidence)
    if problems:
        return Finding.failed("; ".join(problems) + ": timestamp validation is off (asap-protocol's default window "
                              "is 300 s back, 30 s ahead)", evidence)
    return Finding.passed("envelopes 10 min old and 5 min ahead rejected with -32002 (note: an envelope without "
                          "a timestamp is always accepted; clients must send one)", evidence)


@check("SEC-REPLAY-2")
async def nonce_checked(ctx: CheckContext) -> Finding:
    t = ctx.target
    nonce = "rb-" + uuid.uuid4().hex
    first = await _post(ctx, envelope(t.sender, nonce=nonce))
    second = await _post(ctx, envelope(t.sender, nonce=nonce))
    empty = await _post(ctx, envelope(t.sender, nonce=""))
    evidence = [(f"fresh nonce: {_brief(first)}", first.evidence), (f"same nonce again: {_brief(second)}", second.evidence),
                (f"empty nonce: {_brief(empty)}", empty.evidence)]
    if first.rpc_result() is None:
        return Finding.errored(f"a valid envelope with a fresh nonce was refused ({_brief(first)}); cannot judge",
                               evidence)
    problems = []
    if _code(second) != -32003:
        problems.append(f"a repeated nonce was not rejected ({_brief(second)})")
    if _code(empty) != -32003:
        problems.append(f"an empty nonce was not rejected ({_brief(empty)})")
    if t.claims_require_nonce:
        none = await _post(ctx, envelope(t.sender, nonce=None))
        evidence.append((f"no nonce at all: {_brief(none)}", none.evidence))
        if none.rpc_result() is not None:
            problems.append("an envelope without a nonce was accepted although the deployment claims to require "
                            "nonces (asap-protocol's require_nonce=True only checks nonces that are present)")
    if problems:
        if t.claims_require_nonce or _code(second) == -32003:
            return Finding.failed("; ".join(problems), evidence)
        return Finding.warned("no nonce checking (require_nonce is off): " + "; ".join(problems) +
                              "; a captured envelope can be replayed for 300 s", evidence)
    extra = " and a nonce-less envelope" if t.claims_require_nonce else ""
    return Finding.passed(f"repeated and empty nonces{extra} rejected with -32003", evidence)


@check("SEC-REPLAY-3")
async def nonce_store_shared(ctx: CheckContext) -> Finding:
    """One nonce sent on fresh connections (to reach other workers/replicas): accepted once at most.
    Plus log evidence of the store's kind where the deployment logs it."""
    t = ctx.target
    n, why = _instances(ctx)
    sends = min(2 * n, 6) + 1
    nonce = "rb-" + uuid.uuid4().hex
    results = []
    for _ in range(sends):
        resp = await _post(ctx, envelope(t.sender, nonce=nonce), headers={"Connection": "close"})
        results.append(resp)
    accepted = sum(1 for r in results if r.rpc_result() is not None)
    store = None
    for e in reversed(_log_events(ctx) or []):
        if "nonce_store" in e.event and e.fields.get("manifest_id") in (None, await _manifest_id(ctx)):
            store = e
            break
    evidence = [("processes", why),
                (f"one nonce sent {sends} times, each on a new connection (Connection: close)",
                 [_brief(r) for r in results]),
                ("first response", results[0].evidence),
                ("agent log: nonce store", store.raw[:300] if store else "no nonce-store line")]
    if accepted == 0:
        return Finding.errored(f"the envelope was never accepted ({_brief(results[0])}); cannot judge", evidence)
    if accepted == sends:
        if n > 1:
            return Finding.failed(f"the same nonce was accepted on all {sends} connections across {n} processes: "
                                  "no nonce check, or none that is shared", evidence)
        return Finding.warned(f"the same nonce was accepted {sends} times: the agent checks no nonces at all "
                              "(see SEC-REPLAY-2), so there is no store to share", evidence)
    if accepted > 1:
        return Finding.failed(f"the same nonce was accepted {accepted} times over {sends} connections: the nonce "
                              f"store is per process ({why})", evidence)
    kind = (f"; the agent logs its store as {store.fields.get('store') or store.fields.get('backend')}"
            if store else "")
    shared = store is not None and str(store.fields.get("shared", "")).lower() == "true" or (
        store is not None and "redis" in str(store.fields.get("backend", "")).lower())
    if n > 1 and not shared:
        return Finding.warned(f"the nonce was accepted once over {sends} connections, but the store's kind is "
                              f"unknown with {n} processes; a per-process store can pass this by chance{kind}",
                              evidence)
    return Finding.passed(f"the nonce was accepted once and rejected on {sends - 1} further connection(s) "
                          f"({n} process(es)){kind}", evidence)
