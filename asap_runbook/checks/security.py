"""Security checks (checklist: Security): TLS, authentication, rate and size limits, handler
security, replay protection.

Most protocol failures of an ASAP agent (authentication included) are HTTP 200 with a JSON-RPC
error, so every probe reads the body (`ProbeResponse.rpc_error()`), not the status. POSTs to
`/asap` are paced under the agent's rate limit by the probe (see pacing.py).

Read-only by default: every envelope sent here is a `probe_envelope` (a payload_type no agent
handles, refused with -32012 after every gate that precedes a handler) unless the operator set
`active_probes.handler_probes`, so "-32012" reads as "got past auth/schema/timestamp/nonce". The
exchanges several checks can read (anonymous, wrong token, Basic, a stale authenticated envelope)
are sent once per target and shared (`ctx.once`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import uuid
from dataclasses import asdict as asdataclass, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from .. import _nginx, _source_scan, _tls, k8s, logs, proxy_metrics
from ..errors import ProbeError, RateLimited
from ..introspect import IntrospectionError, introspect_target
from ..pacing import parse_limits
from ..probe import MANIFEST_PATH, ProbeResponse, envelope, iso_ago, passed_gates, probe_envelope, rpc
from ..results import Status
from ._observe import judged_by
from ._registry import AGENT, AGENT_TOKEN, CheckContext, Finding, check

_TRACEBACK = "Traceback (most recent call last)"


# ================================================================ shared helpers

async def _manifest_id(ctx: CheckContext) -> str:
    return str((await ctx.probe.manifest()).get("id"))


# the startup facts read from the log: asap.server.rate_limit_enabled, asap.server.max_request_size, and
# the rate-limit storage event logged before them (asap.rate_limit.*_storage)
STARTUP_EVENTS = ("asap.server.", "asap.rate_limit.")


def _log_events(ctx: CheckContext) -> list[logs.LogEvent] | None:
    """The agent's startup events from its log, parsed once per target (they do not change during a run)."""
    path = ctx.target.log_file
    if path is None:
        return None
    if "log_events" not in ctx.state:
        ctx.state["log_events"] = logs.events(path, STARTUP_EVENTS) if path.exists() else []
    return ctx.state["log_events"]


async def _startup_fact(ctx: CheckContext, event: str) -> logs.LogEvent | None:
    evs = _log_events(ctx)
    if not evs:
        return None
    return logs.last_for_agent(evs, event, await _manifest_id(ctx))


async def _post(ctx: CheckContext, env: dict | None = None, **kw) -> ProbeResponse:
    return await ctx.probe.send(env, **kw)


def _canary(ctx: CheckContext, key: str) -> str:
    """A per-target canary value (SEC-HANDLER-4 looks for it in the agent's log)."""
    return ctx.state.setdefault(key, key + uuid.uuid4().hex)


# The shared exchanges: one POST each per target, read by every check below that needs that answer.
async def _anonymous(ctx: CheckContext) -> ProbeResponse:
    return await ctx.once("x.anonymous", lambda: _post(ctx, probe_envelope(ctx.target.sender), authenticated=False))


async def _wrong_bearer(ctx: CheckContext) -> ProbeResponse:
    """A wrong bearer token, which is also SEC-HANDLER-4's token canary."""
    token = _canary(ctx, "rbcanaryauth")
    return await ctx.once("x.wrong_bearer", lambda: _post(ctx, probe_envelope(ctx.target.sender), authenticated=False,
                                                          headers={"Authorization": f"Bearer {token}"}))


async def _as_basic(ctx: CheckContext) -> ProbeResponse:
    """Basic credentials: the configured token as the password when there is one, else random ones."""
    secret = ctx.target.token or uuid.uuid4().hex
    basic = base64.b64encode(f"{ctx.target.sender}:{secret}".encode()).decode()
    return await ctx.once("x.basic", lambda: _post(ctx, probe_envelope(ctx.target.sender), authenticated=False,
                                                   headers={"Authorization": f"Basic {basic}"}))


async def _stale_authenticated(ctx: CheckContext) -> ProbeResponse:
    """The configured credentials (if any), an envelope 10 minutes old, SEC-HANDLER-4's payload canary in
    api_key/password: read by SEC-AUTH-5 (auth and sender pass), SEC-REPLAY-1 (refused as too old) and
    SEC-HANDLER-4 (the canary must not reach the log)."""
    canary = _canary(ctx, "rbcanary")
    env = probe_envelope(ctx.target.sender, timestamp=iso_ago(minutes=10),
                         payload={"api_key": canary, "password": canary})
    return await ctx.once("x.stale_authenticated", lambda: _post(ctx, env, authenticated=True))


def _auth_outcome(resp: ProbeResponse) -> str:
    """How authentication treated a request: 'refused' (no or invalid credentials), 'sender' (valid
    credentials of another identity), 'passed' (it got past authentication), 'unknown' (no JSON-RPC answer)."""
    if resp.status in (401, 403):
        return "refused"
    err = resp.rpc_error()
    if resp.rpc_result() is not None:
        return "passed"
    if err is None:
        return "unknown"
    data = err.get("data") if isinstance(err.get("data"), dict) else {}
    if err.get("code") == -32600:  # a probe envelope is well-formed: -32600 is the authentication refusal
        return "refused"
    if data.get("status_code") == 403 or "Sender does not match" in str(data.get("error", "")):
        return "sender"
    return "passed"


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


def _kept(finding: Finding, obs) -> Finding:
    """The observation the verdict was judged from, kept with it (the exchanges are in the evidence already)."""
    finding.details["observation"] = {k: v for k, v in asdataclass(obs).items()
                                      if k not in ("exchanges", "first_exchange", "raw", "timeline")}
    return finding


def _skill(manifest: dict, prefer: str = "echo") -> str:
    skills = [s.get("id") for s in (manifest.get("capabilities") or {}).get("skills") or [] if isinstance(s, dict)]
    return prefer if prefer in skills else (skills[0] if skills else prefer)


# ================================================================ TLS and HTTPS

def _nginx_conf(ctx: CheckContext) -> _nginx.Block:
    """The target's nginx configuration (includes followed), parsed once per target and section and
    read by every check that needs it; raises NginxParseError (each time it is asked)."""
    if "nginx_conf" not in ctx.state:
        try:
            ctx.state["nginx_conf"] = _nginx.load(ctx.target.nginx_conf)
        except _nginx.NginxParseError as e:
            ctx.state["nginx_conf"] = e
    conf = ctx.state["nginx_conf"]
    if isinstance(conf, _nginx.NginxParseError):
        raise conf
    return conf


def _nginx_lines(ctx: CheckContext, directive: str, first_arg: str | None = None) -> list:
    """Where the proxy's configuration (includes followed) sets `directive`: evidence beside what was seen."""
    conf = ctx.target.nginx_conf
    if conf is None:
        return []
    try:
        lines = _nginx.uses(_nginx_conf(ctx), directive, first_arg)
    except _nginx.NginxParseError as e:
        return [(f"nginx configuration {conf}", f"could not parse: {e}")]
    return [(f"nginx: {directive} {first_arg or ''} in {conf} and its includes".replace("  ", " "), lines or "none")]


def judge_https_only(base_url: str, endpoints: dict[str, str], plain_status: int | str | None, http_url: str | None,
                     evidence: list) -> Finding:
    """The target URL, the endpoints its manifest advertises, and what its plain-HTTP listener (if named)
    answered to a manifest GET (an HTTP status, or why it could not answer)."""
    if not base_url.startswith("https://"):
        return Finding.failed(f"the target is served over plain HTTP ({base_url})", evidence)
    problems = [f"the manifest advertises {k} at {v}" for k, v in endpoints.items() if v.startswith(("http://", "ws://"))]
    if http_url and plain_status == 200:
        problems.append(f"{http_url} serves the agent over plain HTTP (HTTP 200)")
    if problems:
        return Finding.failed("; ".join(problems), evidence)
    return Finding.passed(f"served over HTTPS; the manifest advertises only https/wss endpoints ({len(endpoints)})",
                          evidence)


@check("SEC-TLS-1", needs=AGENT)
async def https_only(ctx: CheckContext) -> Finding:
    """HTTPS everywhere: the target URL, the endpoints the manifest advertises, and no plain-HTTP agent."""
    t = ctx.target
    if not t.base_url.startswith("https://"):
        return judged_by(judge_https_only, t.base_url, {}, None, None, [])
    resp = await ctx.probe.get_once("/health")
    evidence = [("GET /health over HTTPS", resp.evidence)]
    manifest = await ctx.probe.manifest()
    endpoints = {k: v for k, v in (manifest.get("endpoints") or {}).items() if isinstance(v, str)}
    evidence.append(("manifest endpoints", endpoints))
    plain_status = None
    if t.http_url:
        try:
            plain_resp = await ctx.probe.get(t.http_url + "/.well-known/asap/manifest.json")
            evidence.append((f"GET {t.http_url} (plain HTTP)", plain_resp.evidence))
            plain_status = plain_resp.status
        except ProbeError as e:
            evidence.append((f"GET {t.http_url} (plain HTTP)", e.message))
            plain_status = e.message
    return judged_by(judge_https_only, t.base_url, endpoints, plain_status, t.http_url, evidence)


@check("SEC-TLS-2", needs=("reach",))
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
    return judged_by(judge_certificate, rep, trust, _tls.host_port(t.base_url)[0], t.base_url,
                     (warn_days.value, warn_days.source), (max_life.value, max_life.source), datetime.now(UTC))


def judge_certificate(rep: "_tls.CertReport", trust: str, host: str, url: str, warn: tuple[float, str],
                      max_life: tuple[float, str], now: datetime) -> Finding:
    """The served certificate as analysed (_tls.certificate), against the expiry and lifetime thresholds."""
    (warn_days, warn_source), (life_days, life_source) = warn, max_life
    evidence = [("certificate of " + url, rep.as_dict()), ("verified against", trust)]
    details = {"expiry_warn_days": warn_days, "expiry_warn_source": warn_source,
               "max_lifetime_days": life_days, "max_lifetime_source": life_source}
    fails, warns = [], []
    # say which kind of bad certificate it is, with what shows it; OpenSSL's reason only when none explains it
    left = rep.days_left(now)
    explained = []
    if left is not None and left < 0:
        fails.append(f"expired: valid {rep.not_before:%Y-%m-%d} to {rep.not_after:%Y-%m-%d %H:%M} UTC, "
                     f"{-left:.0f} days ago")
        explained.append("expired")
    elif left is not None and left < warn_days:
        warns.append(f"the certificate expires in {left:.0f} days (warn below {warn_days:g}: {warn_source})")
    if rep.self_signed:
        fails.append(f"self-signed: issued by itself ({rep.issuer}), so no CA vouches for it")
        explained.append("self")
    if rep.hostname_ok is False:
        fails.append(f"for another host: it names {', '.join(rep.sans) or 'no subject alternative name'}, "
                     f"not {host}")
        explained.append("mismatch")
    if not rep.verified and not any(k in (rep.verify_error or "").lower() for k in explained):
        fails.append(f"from a CA not in {trust}: issued by {rep.issuer} ({rep.verify_error})")
    if rep.lifetime_days and rep.lifetime_days > life_days:
        warns.append(f"the certificate lives {rep.lifetime_days:.0f} days, over {life_days:g} ({life_source})")
    if fails:
        return Finding.failed("the certificate does not verify: " + "; ".join(fails + warns), evidence, **details)
    if warns:
        return Finding.warned("; ".join(warns), evidence, **details)
    return Finding.passed(f"chain verifies against {trust}, issued by {rep.issuer}, names the host, "
                          f"{left:.0f} days left of a {rep.lifetime_days:.0f}-day lifetime", evidence, **details)


@check("SEC-TLS-3", needs=("reach",))
async def tls_versions(ctx: CheckContext) -> Finding:
    """TLS 1.0/1.1 refused, 1.2 accepted, 1.3 preferred; a refusal counts only if this client can speak it."""
    t = ctx.target
    if not t.base_url.startswith("https://"):
        return Finding.failed(f"no TLS at all: the target is plain HTTP ({t.base_url})")
    timeout = ctx.params.probe.timeout_seconds
    caps = await asyncio.to_thread(_tls.client_capabilities)
    host, port = _tls.host_port(t.base_url)
    seen = {v: await asyncio.to_thread(_tls.handshake, host, port, v, timeout) for v in _tls.VERSIONS}
    return judged_by(judge_tls_versions, seen, {v: h.ok for v, h in caps.items()}, f"{host}:{port}")


def judge_tls_versions(seen: dict[str, "_tls.Handshake"], can_speak: dict[str, bool], where: str) -> Finding:
    """One handshake pinned to each version, and whether this machine can complete each at all (self-test)."""
    evidence = [("handshakes pinned to one version each (client ciphers DEFAULT:@SECLEVEL=0)",
                 {v: h.as_dict() for v, h in seen.items()}),
                ("client self-test against a local server (can this machine speak each version?)", can_speak)]
    accepted = [v for v, h in seen.items() if h.ok]
    if not accepted and all(not seen[v].ok and "Errno" in (seen[v].error or "") for v in seen):
        return Finding.errored(f"no TLS handshake completed with {where}: {seen['TLSv1.2'].error}", evidence)
    old_ok = [v for v in ("TLSv1.0", "TLSv1.1") if seen[v].ok]
    if old_ok:
        return Finding.failed(f"the server accepts {' and '.join(old_ok)} (accepted: {', '.join(accepted)})", evidence)
    untestable = [v for v in ("TLSv1.0", "TLSv1.1") if not can_speak[v]]
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


def judge_hsts(header: str | None, need: float, need_source: str, evidence: list) -> Finding:
    """The Strict-Transport-Security header of an HTTPS response (None: absent)."""
    if header is None:
        return Finding.failed("no Strict-Transport-Security header on HTTPS responses "
                              "(asap-protocol never sends one; set it at the proxy)", evidence)
    m = _MAX_AGE.search(header)
    max_age = int(m.group(1)) if m else None
    subdomains = "includesubdomains" in header.lower().replace(" ", "")
    details = {"header": header, "max_age": max_age, "threshold": need, "threshold_source": need_source}
    if max_age is None or max_age < need:
        return Finding.failed(f"HSTS max-age is {max_age} s, below {int(need)} s ({need_source})", evidence, **details)
    if not subdomains:
        return Finding.failed("HSTS lacks includeSubDomains", evidence, **details)
    return Finding.passed(f"HSTS max-age={max_age} with includeSubDomains (threshold {int(need)} s: {need_source})",
                          evidence, **details)


@check("SEC-TLS-4", needs=("reach",))
async def hsts(ctx: CheckContext) -> Finding:
    if not ctx.target.base_url.startswith("https://"):
        return Finding.failed("no HTTPS, so no HSTS: the target is plain HTTP")
    need = ctx.threshold("hsts_max_age_seconds")
    resp = await ctx.probe.get_once(MANIFEST_PATH)
    evidence = [("GET manifest over HTTPS", resp.evidence)] + _nginx_lines(ctx, "add_header", "Strict-Transport-Security")
    return judged_by(judge_hsts, resp.headers.get("strict-transport-security"), need.value, need.source, evidence)


def judge_http_redirect(start: str, hops: list[dict], evidence: list) -> Finding:
    """hops: what each GET along the chain got, {"url", "status", "location"}, from the plain-HTTP URL on."""
    start_host = urlsplit(start).hostname
    for i, hop in enumerate(hops):
        url, status, location = hop["url"], hop["status"], hop.get("location") or ""
        if status not in (301, 302, 303, 307, 308):
            if i == 0:
                return Finding.failed(f"plain HTTP is answered with HTTP {status}, not a redirect to HTTPS", evidence)
            if url.startswith("https://") and status < 400:
                break
            return Finding.failed(f"the redirect chain from {start} ends at {url} with HTTP {status}", evidence)
        nxt = urlsplit(location)
        if not location or not nxt.scheme:
            return Finding.failed(f"HTTP {status} without an absolute Location ({location!r})", evidence)
        if nxt.hostname != start_host:
            return Finding.failed(f"the redirect leaves the host: {url} -> {location}", evidence)
        if nxt.scheme != "https":
            return Finding.failed(f"HTTP redirects to HTTP: {url} -> {location}", evidence)
    else:
        return Finding.failed(f"more than {len(hops) - 1} redirects from {start}", evidence)
    first = hops[0]
    kind = "permanent" if first["status"] in (301, 308) else "temporary (prefer 301/308)"
    return Finding.passed(f"{start} answers {first['status']} ({kind}) to {first.get('location')} "
                          f"on the same host, which answers over HTTPS", evidence)


@check("SEC-TLS-5", needs=("reach",))
async def http_redirect(ctx: CheckContext) -> Finding:
    """Plain HTTP answered by a redirect to HTTPS on the same host (not off-host, not 200, not HTTP->HTTP)."""
    t = ctx.target
    if not t.http_url:
        return Finding.skipped(f"targets[{t.name}].http_url is not set (the proxy's plain-HTTP listener); "
                               "if port 80 is closed, confirm it with the load-balancer listener list")
    start = t.http_url + "/health"
    url, evidence, hops = start, [], []
    for hop in range(4):
        # a hop back to the target's own URL is the route other checks read too (SEC-TLS-1's /health): one GET
        path = url.removeprefix(t.base_url) if url.startswith(t.base_url + "/") else None
        resp = await (ctx.probe.get_once(path) if path else ctx.probe.get(url))
        evidence.append((f"hop {hop + 1}: GET {url}", resp.evidence))
        location = resp.headers.get("location", "")
        hops.append({"url": url, "status": resp.status, "location": location})
        nxt = urlsplit(location)
        if resp.status not in (301, 302, 303, 307, 308) or not location or not nxt.scheme \
                or nxt.hostname != urlsplit(start).hostname or nxt.scheme != "https":
            break  # the judge says why the chain stops here
        url = location
    return judged_by(judge_http_redirect, start, hops, evidence + _nginx_lines(ctx, "return"))


# ================================================================ Authentication

def judge_manifest_auth(auth: dict | None) -> Finding:
    """The manifest's `auth` block as served."""
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


@check("SEC-AUTH-1", needs=AGENT)
async def manifest_auth(ctx: CheckContext) -> Finding:
    return judged_by(judge_manifest_auth, (await ctx.probe.manifest()).get("auth"))


_OPEN_ROUTES = ["/health", "/ready", MANIFEST_PATH, "/.well-known/asap/health", "/asap/metrics",
                "/asap/capability/list", "/audit", "/docs", "/openapi.json"]


@check("SEC-AUTH-2", needs=AGENT)
async def auth_enforced(ctx: CheckContext) -> Finding:
    """No credentials, a wrong token and Basic credentials are all refused (read from the body). Read-only
    envelopes: one that gets past authentication is answered -32012 (no handler), never run."""
    attempts = [("no Authorization header", _anonymous), ("a wrong bearer token", _wrong_bearer),
                ("Basic credentials", _as_basic)]
    evidence, outcomes = [], {}
    for label, exchange in attempts:
        resp = await exchange(ctx)
        evidence.append((f"POST /asap with {label}: {_brief(resp)}", resp.evidence))
        outcomes[label] = {"outcome": _auth_outcome(resp), "brief": _brief(resp)}
    open_routes = {}
    for path in _OPEN_ROUTES:
        try:
            r = await ctx.probe.get_once(path)
            open_routes[path] = r.status
        except ProbeError as e:
            open_routes[path] = e.message
    return judged_by(judge_auth_enforced, outcomes, open_routes, evidence)


def judge_auth_enforced(outcomes: dict[str, dict], open_routes: dict, evidence: list) -> Finding:
    """outcomes: per credential tried, how authentication treated it (_auth_outcome) and what came back."""
    accepted = [label for label, o in outcomes.items() if o["outcome"] == "passed"]
    unclear = [f"{label} ({o['brief']})" for label, o in outcomes.items() if o["outcome"] == "unknown"]
    answered = [p for p, s in open_routes.items() if s == 200]
    evidence = evidence + [("routes that answer HTTP 200 without credentials (GET)", answered)]
    details = {"unauthenticated_routes": open_routes}
    if accepted:
        return Finding.failed(f"POST /asap got past authentication with {', '.join(accepted)}: requests are not "
                              "authenticated", evidence, **details)
    if unclear:
        return Finding.errored(f"no JSON-RPC answer to tell whether authentication refused: {', '.join(unclear)}",
                               evidence, **details)
    return Finding.passed(f"POST /asap refused without credentials, with a wrong token and with Basic "
                          f"(JSON-RPC errors); open without credentials: {', '.join(answered) or 'none'}",
                          evidence, **details)


def judge_no_hardcoded_tokens(scan: _source_scan.ScanResult, roots: list[str]) -> Finding:
    evidence = [("scanned", roots), ("scan", scan.as_dict())]
    if scan.files == 0:
        return Finding.skipped(f"no source or config files under {', '.join(roots)}", evidence)
    if scan.hits:
        return Finding.failed(f"{len(scan.hits)} hard-coded credential(s): "
                              f"{', '.join(h.file + ':' + str(h.line) for h in scan.hits[:5])}", evidence)
    if scan.python_files == 0:
        return Finding.skipped(f"only {scan.files} config file(s) scanned and no Python source: set "
                               "targets[].source_dir to the agent's code (where tokens are read)", evidence)
    reads = f"; credentials read from the environment: {', '.join(r.split(' ', 1)[1] for r in scan.env_reads[:4])}" \
        if scan.env_reads else "; no credential variable read from the environment was found"
    return Finding.passed(f"no hard-coded token, password or key in {scan.python_files} Python and "
                          f"{scan.files - scan.python_files} config file(s) (heuristic scan: literals bound to "
                          f"credential-like names, os.environ.get fallbacks, Bearer literals){reads}", evidence)


@check("SEC-AUTH-3")
async def no_hardcoded_tokens(ctx: CheckContext) -> Finding:
    t = ctx.target
    roots = [p for p in [t.source_dir, t.process_config, *t.k8s_manifests] if p is not None]
    if not roots:
        return Finding.skipped(f"targets[{t.name}].source_dir (or k8s_manifests) is not set: nothing to scan")
    scan = await asyncio.to_thread(_source_scan.hardcoded_credentials, roots)
    return judged_by(judge_no_hardcoded_tokens, scan, [str(r) for r in roots])


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


@check("SEC-AUTH-4", needs=("token",))
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
    shown = {k: claims[k] for k in ("iss", "aud", "iat", "nbf", "exp") if k in claims}  # not sub, email, ...
    return judged_by(judge_token_lifetime, shown, lo.value, hi.value, hi.source, datetime.now(UTC).timestamp())


def judge_token_lifetime(claims: dict, lo: float, hi: float, source: str, now: float) -> Finding:
    """A JWT's claims (signature not checked; the token itself is never shown)."""
    exp, iat = claims.get("exp"), claims.get("iat")
    shown = {k: claims.get(k) for k in ("iss", "aud", "iat", "nbf", "exp") if k in claims}
    evidence = [("JWT claims (no signature check; the token itself is not shown)", shown)]
    details = {"min_minutes": lo, "max_minutes": hi, "source": source}
    if not isinstance(exp, (int, float)):
        return Finding.failed("the JWT has no exp claim: it never expires", evidence, **details)
    start = iat if isinstance(iat, (int, float)) else now
    minutes = (exp - start) / 60
    if minutes > hi:
        return Finding.failed(f"the JWT lives {minutes:.0f} min, over {hi:g} ({source})", evidence, **details)
    if minutes < lo:
        return Finding.warned(f"the JWT lives {minutes:.0f} min, under {lo:g} ({source}); "
                              "expect frequent refreshes", evidence, **details)
    return Finding.passed(f"the JWT lives {minutes:.0f} min (within {lo:g}-{hi:g}: {source})", evidence, **details)


def _client_auth(root) -> list[dict]:
    """How the agent's own ASAPClients authenticate to the agents they call (auth_token= is sent as Bearer)."""
    from ..source import UNKNOWN, client_usage
    rows = []
    for c in client_usage(root).clients:
        value, explicit = c.setting("auth_token")
        state = "set" if explicit and value not in (None, "None", "") else (
            "unknown" if value == UNKNOWN else "absent")
        rows.append({"client": c.where(), "auth_token": state,
                     **({"settings not resolved": c.unresolved} if c.unresolved else {})})
    return rows


def judge_client_auth(t_sender: str, token_env: str, ok_outcome: str, ok_brief: str, basic_outcome: str,
                      exchanges: list, clients: list[dict] | None) -> Finding:
    """SEC-AUTH-5 over both halves of the item: this agent takes Bearer (the wire), and the clients it
    builds send Authorization (the source, when targets[].source_dir is set)."""
    evidence = list(exchanges) + [("the agent's own ASAPClients (auth_token= is sent as Authorization: Bearer)",
                                   clients if clients is not None else "targets[].source_dir not set")]
    if ok_outcome == "sender":
        return Finding.failed(f"the token is valid but maps to another identity than sender {t_sender} "
                              "(-32602 Sender does not match authenticated identity)", evidence)
    if ok_outcome == "refused":
        return Finding.failed(f"the configured token is refused as Bearer: {ok_brief}", evidence)
    if ok_outcome == "unknown":
        return Finding.errored(f"no JSON-RPC answer to the authenticated request ({ok_brief})", evidence)
    bare = [c["client"] for c in clients or [] if c["auth_token"] == "absent"]
    if bare:
        return Finding.failed(f"ASAPClient(s) built without auth_token= at {', '.join(bare)}: the calls this agent "
                              "makes carry no Authorization header", evidence)
    if basic_outcome == "passed":
        return Finding.warned("Bearer works, but the same token is also accepted as Basic", evidence)
    open_ = [c["client"] for c in clients or [] if c["auth_token"] == "unknown"]
    if open_:
        return Finding._make(Status.MANUAL, f"Bearer accepted and Basic refused on the wire, but whether the clients "
                             f"at {', '.join(open_)} pass auth_token= is not resolved from the source (settings "
                             "through **kwargs): confirm they do", evidence)
    clients_note = (f"; all {len(clients)} ASAPClient(s) in the source pass auth_token= (sent as Bearer)" if clients
                    else "; the source builds no ASAPClient" if clients == [] else
                    "; the agent's own clients are not checked (targets[].source_dir is not set)")
    return Finding.passed(f"Authorization: Bearer with sender {t_sender} gets past authentication and the sender "
                          f"check ({ok_brief}); the same token as Basic is refused{clients_note}", evidence)


@check("SEC-AUTH-5", needs=AGENT_TOKEN)
async def client_sends_bearer(ctx: CheckContext) -> Finding:
    """The configured token works as Bearer (with the configured sender) and not as Basic; the agent's own
    clients send Authorization (from the source)."""
    t = ctx.target
    if not t.token_env:
        manifest = await ctx.probe.manifest()
        if manifest.get("auth"):
            return Finding.skipped(f"targets[{t.name}].token_env is not set; cannot present the real credential")
        resp = await _anonymous(ctx)
        evidence = [(f"POST /asap without Authorization: {_brief(resp)}", resp.evidence)]
        if _auth_outcome(resp) == "passed":
            return Finding.failed("the agent lets requests without an Authorization header past authentication, so "
                                  "clients need not send one", evidence)
        return Finding.errored(f"no token_env and the agent refused an anonymous request ({_brief(resp)})", evidence)
    if not t.token:
        return Finding.errored(f"the environment variable {t.token_env} is not set")
    ok = await _stale_authenticated(ctx)
    as_basic = await _as_basic(ctx)
    exchanges = [(f"POST /asap with Authorization: Bearer <token from {t.token_env}> (a read-only envelope, "
                  f"10 min old): {_brief(ok)}", ok.evidence),
                 (f"POST /asap with the same token as Basic: {_brief(as_basic)}", as_basic.evidence)]
    clients = await asyncio.to_thread(_client_auth, t.source_dir) if t.source_dir else None
    return judged_by(judge_client_auth, t.sender, t.token_env, _auth_outcome(ok), _brief(ok), _auth_outcome(as_basic),
                             exchanges, clients)


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
            r = await ctx.probe.send(probe_envelope(ctx.target.sender), paced=False,
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


def _retry_after(header: str | None) -> float | None:
    """A Retry-After header in seconds; None when absent or not a number (an HTTP date is not read)."""
    try:
        return float(header)
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


@dataclass
class RateBurst:
    """SEC-RATE-1's observation: burst A (no X-Forwarded-For) until the first 429, then burst B (a different
    X-Forwarded-For each request) once Retry-After and the window have passed. Statuses are HTTP codes, or the
    exception's name when a request got no answer."""
    configured: str | None               # the agent's logged limit (asap.server.rate_limit_enabled), if any
    max_requests: int
    max_seconds: float
    waited_a: float                      # seconds waited for the window to hold burst A
    statuses_a: list = field(default_factory=list)
    seconds_a: float = 0.0               # sending time of burst A
    retry_after: str | None = None       # the first 429's Retry-After header as sent
    waited_b: float | None = None        # None: no 429, so no burst B
    budget_b: int | None = None
    statuses_b: list | None = None       # None: burst B not sent (no 429, or no budget left)
    seconds_b: float | None = None       # sending time of burst B
    xff_spoof: dict | None = None        # no 429: one spoofed X-Forwarded-For and the log lines naming it
    first_exchange: dict | None = None   # the first 429 (evidence)
    timeline: list = field(default_factory=list)  # every response in time (timelines.burst_figure)

    @property
    def allowed(self) -> int | None:
        """Requests answered before the first 429 of burst A; None: no 429."""
        return self.statuses_a.index(429) if 429 in self.statuses_a else None


async def observe_rate_burst(ctx: CheckContext, configured: str | None, budget_a: int) -> RateBurst:
    ap = ctx.target.active_probes
    obs = RateBurst(configured, ap.max_requests, ap.max_seconds, await _room(ctx, budget_a, None))
    started = time.monotonic()  # active_probes.max_seconds bounds the sending, not the waiting for room
    obs.statuses_a, first = await _burst(ctx, budget_a, started + ap.max_seconds, rotate_xff=False,
                                         timeline=obs.timeline, t0=started)
    obs.seconds_a = round(time.monotonic() - started, 3)
    if first is None:
        obs.xff_spoof = await _xff_spoof(ctx)
        return obs
    obs.first_exchange, obs.retry_after = first.evidence, first.headers.get("retry-after")
    obs.budget_b = min(ap.max_requests - len(obs.statuses_a), obs.allowed + 5)
    obs.waited_b = await _room(ctx, obs.budget_b, _retry_after(obs.retry_after))
    if obs.budget_b > obs.allowed:
        started_b = time.monotonic()
        obs.statuses_b, _ = await _burst(ctx, obs.budget_b, started_b + max(1.0, ap.max_seconds - obs.seconds_a),
                                         rotate_xff=True, timeline=obs.timeline, t0=started)
        obs.seconds_b = round(time.monotonic() - started_b, 3)
    # no need to leave the window clean: the probe logged every accepted request and the 429's Retry-After,
    # so whatever runs next waits for the agent's window (pacing.py)
    return obs


def _must_exceed(configured: str | None, probe_rate_limit: str | None, ceiling: float) -> float:
    """The rate a burst must beat before a missing 429 means anything: the lowest per-second limit known
    (the agent's logged limit, probe.rate_limit, thresholds.rate_limit_max_per_second)."""
    return min([n / w for n, w in parse_limits(configured or "") if w <= 1]
               + [n / w for n, w in parse_limits(probe_rate_limit or "") if w <= 1] + [ceiling])


def _limit_shown(obs: RateBurst) -> tuple[float | None, str]:
    """The per-second rate burst B must beat to be refused: the agent's logged per-second limit, else the rate
    at which burst A met its first 429 (A's own pace, so at least the limit)."""
    per_second = [n / w for n, w in parse_limits(obs.configured or "") if w <= 1]
    if per_second:
        return min(per_second), "the agent's logged limit"
    first = next((e for e in obs.timeline if e.get("burst") == "A" and e.get("status") == 429), None)
    if first is None or not first.get("t") or obs.allowed is None:
        return None, ""
    return round((obs.allowed + 1) / first["t"], 1), "the pace at which burst A met its first 429"


def judge_rate_burst(obs: RateBurst, ceiling: float, probe_rate_limit: str | None) -> Finding:
    """429 with a numeric Retry-After after the limit, and X-Forwarded-For rotation must not bypass it. No 429
    is a fail only when burst A went faster than the lowest limit it had to exceed (else it saw nothing)."""
    configured = obs.configured
    evidence = [("waited before burst A for the window to hold it (what earlier checks and runs sent, "
                 "probe.rate_limit)", f"{obs.waited_a:.1f} s"),
                ("burst A: POST /asap, waves of 5 concurrent until the first 429 (each a read-only envelope "
                 "with a fresh nonce, the bearer token if configured), no X-Forwarded-For; statuses",
                 _tally(obs.statuses_a))]
    details = {"configured_limit_from_log": configured, "max_requests": obs.max_requests,
               "max_seconds": obs.max_seconds, "timeline": obs.timeline}
    log_note = f" (log: {configured})" if configured else ""
    sent, elapsed = len(obs.statuses_a), obs.seconds_a
    if obs.allowed is None:
        answered = [s for s in obs.statuses_a if isinstance(s, int)]
        if not answered:
            return Finding.errored(f"none of the {sent} requests of the burst got an HTTP answer "
                                   f"({_tally(obs.statuses_a) or 'none sent'}): nothing to judge the limit by",
                                   evidence, **details)
        if obs.xff_spoof is not None:
            evidence.append((f"POST /asap with X-Forwarded-For: {obs.xff_spoof['spoof']}, then the agent log",
                             {k: v for k, v in obs.xff_spoof.items() if k != "spoof"}))
        rate = sent / max(elapsed, 0.001)
        # no 429 proves nothing unless the burst went faster than the limit it had to meet: on a busy
        # runbook host the waves can stay under it, and that is no observation of the agent
        must_exceed = _must_exceed(configured, probe_rate_limit, ceiling)
        if rate <= must_exceed:
            return Finding.errored(
                f"the burst reached only ~{rate:.1f}/s ({sent} requests in {elapsed:.1f} s), not above "
                f"{must_exceed:g}/s (the lowest of the agent's logged limit, probe.rate_limit and "
                "thresholds.rate_limit_max_per_second): this host could not send fast enough to judge the limit",
                evidence, **details)
        xff_note = ""
        if obs.xff_spoof and obs.xff_spoof["log lines naming the spoofed address"]:
            xff_note = (f"; the agent also logged the spoofed X-Forwarded-For {obs.xff_spoof['spoof']} as the "
                        "client address, so a per-IP limit would be bypassable")
        return Finding.failed(f"{sent} requests in {elapsed:.1f} s (~{rate:.0f}/s) and no HTTP 429: "
                              f"the limit is above that or absent{log_note}{xff_note}", evidence, **details)
    allowed = obs.allowed
    evidence.append(("first 429", obs.first_exchange))
    evidence.append(("waited out Retry-After and the window before burst B", f"{obs.waited_b or 0:.1f} s"))
    problems = []
    if _retry_after(obs.retry_after) is None:
        problems.append("the 429 carries no numeric Retry-After header")
    if obs.statuses_b is None:
        problems.append(f"not enough request budget left ({obs.budget_b}) to test X-Forwarded-For rotation")
    else:
        evidence.append(("burst B: the same, each request with a different X-Forwarded-For (203.0.113.x)",
                         _tally(obs.statuses_b)))
        rate_b = len(obs.statuses_b) / max(obs.seconds_b, 0.001) if obs.seconds_b is not None else None
        limit_b, limit_source = _limit_shown(obs)
        if 429 not in obs.statuses_b and rate_b is not None and limit_b is not None and rate_b <= limit_b:
            # as for burst A: a burst slower than the limit is refused by no limiter, so its lack of 429
            # says nothing about X-Forwarded-For
            return Finding.errored(
                f"429 after {allowed} requests, but burst B (rotating X-Forwarded-For) reached only ~{rate_b:.1f}/s "
                f"({len(obs.statuses_b)} requests in {obs.seconds_b:.1f} s), not above {limit_b:g}/s ({limit_source}): "
                "this host could not send fast enough to judge whether rotation bypasses the limit",
                evidence, **details)
        if 429 not in obs.statuses_b:
            problems.append(f"rotating X-Forwarded-For bypasses the limit: {len(obs.statuses_b)} requests, no 429 "
                            "(the agent or proxy trusts a client-supplied header)")
    if problems:
        status = Finding.failed if any("bypass" in p for p in problems) else Finding.warned
        return status(f"429 after {allowed} requests, but " + "; ".join(problems), evidence, **details)
    return Finding.passed(f"HTTP 429 with Retry-After: {obs.retry_after} after {allowed} back-to-back "
                          f"requests; rotating X-Forwarded-For did not bypass it (429 after "
                          f"{obs.statuses_b.index(429)}){log_note}", evidence, **details)


@check("SEC-RATE-1", exclusive=True, needs=AGENT_TOKEN)
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
    budget_a = min(ap.max_requests, max(6, (ap.max_requests * 2) // 3))
    per_second = [n / w for n, w in parse_limits(configured or "") if w <= 1]
    ceiling = ctx.threshold("rate_limit_max_per_second").value
    if per_second and budget_a < min(per_second) + 1 <= ceiling + 1:  # a sane limit the budget cannot reach
        return Finding.skipped(f"the configured limit ({configured}) cannot be exceeded within "
                               f"{budget_a} requests: raise targets[{ctx.target.name}].active_probes.max_requests")
    obs = await observe_rate_burst(ctx, configured, budget_a)
    return _kept(judge_rate_burst(obs, ceiling, ctx.probe.rate_limit), obs)


async def _room(ctx: CheckContext, need: int, retry_after: float | None) -> float:
    """Wait until a burst of `need` meets only its own doing: the host's shared budget holds it (earlier
    checks, other sections, an earlier run) and a 429's Retry-After has passed. Returns the seconds waited."""
    pacer = ctx.probe.pacer()
    if pacer is not None:
        return await pacer.reserve(need)
    wait = 1.0 if retry_after is None else min(retry_after, ctx.params.probe.max_rate_limit_wait_seconds)
    await asyncio.sleep(wait + 0.2)  # pacing off: only what the agent said
    return wait + 0.2


async def _xff_spoof(ctx: CheckContext) -> dict | None:
    """One request with a spoofed X-Forwarded-For: does the agent log that address as the client? None
    without a log file to look in."""
    if not ctx.target.log_file:
        return None
    spoof = f"203.0.113.{uuid.uuid4().int % 250 + 1}"
    resp = await _post(ctx, probe_envelope(ctx.target.sender), headers={"X-Forwarded-For": spoof})
    await asyncio.sleep(0.3)
    text = await asyncio.to_thread(logs.read_text, ctx.target.log_file, 256 * 1024)
    return {"spoof": spoof, "response": _brief(resp),
            "log lines naming the spoofed address": [ln.strip()[:200] for ln in text.splitlines() if spoof in ln][-2:]}


@dataclass
class LimiterConfig:
    """SEC-RATE-2/3's observation: the limiter's configured limit and storage, where they were read, the
    process count, and the proxy's limit_req lines."""
    limit: str | None                # "10/second;100/minute" as the agent states it
    storage: str | None              # "redis" / "memory" / another backend name; None: not known
    read_from: str                   # the introspected app, the startup log line, or why neither
    instances: dict                  # k8s.Instances.as_dict()
    proxy_limit_req: list[str] = field(default_factory=list)
    proxy_note: str | None = None    # nginx not set / could not parse
    raw: str | None = None


async def _introspected(ctx: CheckContext) -> dict | str:
    """The app's configuration from introspection, or why there is none (one sentence)."""
    t = ctx.target
    if t.app is None:
        return f"targets[{t.name}].app is not set"

    async def look():
        try:
            return await asyncio.to_thread(introspect_target, t, ctx.params)
        except IntrospectionError as e:
            return f"introspection of {t.app} failed: {e.message}"
    return await ctx.once("introspection", look)


async def observe_limiter(ctx: CheckContext) -> LimiterConfig:
    t = ctx.target
    inst = (await asyncio.to_thread(k8s.target_instances, t)).as_dict()
    obs = LimiterConfig(None, None, "", inst)
    cfg = await _introspected(ctx)
    if isinstance(cfg, dict):
        storage = str(cfg.get("rate_limit_storage") or "")
        obs.limit = ";".join(cfg.get("rate_limits") or []) or None
        obs.storage = ("memory" if cfg.get("rate_limit_storage_kind") == "memory" else
                       "redis" if "redis" in storage.lower() else storage or None)
        obs.read_from, obs.raw = f"introspected {t.app} (limiter storage {storage or 'none'})", storage
    elif t.log_file and t.log_file.is_file():
        fact = await _startup_fact(ctx, "asap.server.rate_limit_enabled")
        if fact is not None:
            obs.limit = str(fact.fields.get("rate_limit", "")) or None
            storage = logs.storage_backend_before(_log_events(ctx) or [], fact)
            obs.storage = None if storage is None else "redis" if "redis" in storage.event else \
                "memory" if "memory" in storage.event else storage.event
            obs.read_from = f"startup log {t.log_file.name}"
            obs.raw = fact.raw[:400] + (("\n" + storage.raw[:300]) if storage else "")
        else:
            obs.read_from = (f"{t.log_file} has no asap.server.rate_limit_enabled line for "
                             f"{await _manifest_id(ctx)} (is it the agent's log, from its start?)")
    else:
        obs.read_from = (f"{cfg}; targets[{t.name}].log_file is "
                         + ("not set" if t.log_file is None else f"{t.log_file}, which does not exist"))
    if t.nginx_conf:
        try:
            conf = _nginx_conf(ctx)
            obs.proxy_limit_req = _nginx.uses(conf, "limit_req")
            obs.proxy_note = f"{len(conf.files)} nginx file(s) read (includes followed)"
        except _nginx.NginxParseError as e:
            obs.proxy_note = f"could not parse {t.nginx_conf}: {e}"
    return obs


def _limiter_evidence(obs: LimiterConfig) -> list:
    return [("limiter", {"limit": obs.limit, "storage": obs.storage, "read from": obs.read_from}),
            ("as read", obs.raw), ("processes", obs.instances),
            ("nginx limit_req lines", obs.proxy_limit_req or obs.proxy_note or "nginx_conf not set")]


def judge_rate_limit_tuned(obs: LimiterConfig, ceiling: float, source: str) -> Finding:
    evidence = _limiter_evidence(obs)
    if obs.limit is None:
        if obs.read_from.startswith(("introspected", "startup log")):
            return Finding.failed(f"no rate limit configured ({obs.read_from})", evidence)
        return Finding.skipped(f"the configured limit is not known: {obs.read_from} (set targets[].app or "
                               "targets[].log_file)", evidence)
    limits = parse_limits(obs.limit)
    if not limits:
        return Finding.errored(f"could not read the limit {obs.limit!r}", evidence)
    n = obs.instances["at_least"]
    shared = obs.storage == "redis"
    shortest = min(limits, key=lambda lw: lw[1])
    per_second = shortest[0] / shortest[1] * (1 if shared else n)
    details = {"rate_limit": obs.limit, "effective_per_second": per_second, "ceiling": ceiling,
               "ceiling_source": source, "processes": n, "shared_storage": shared}
    mult = "" if shared or n == 1 else f" x {n} processes (per-process storage)"
    if per_second > ceiling:
        return Finding.failed(f"rate_limit={obs.limit}{mult} allows ~{per_second:g} requests/s per client, over "
                              f"{ceiling:g} ({source})", evidence, **details)
    return Finding.passed(f"rate_limit={obs.limit}{mult}: ~{per_second:g} requests/s per client, within "
                          f"{ceiling:g} ({source})", evidence, **details)


@check("SEC-RATE-2")
async def rate_limit_tuned(ctx: CheckContext) -> Finding:
    """The configured limit (introspected, or from the startup log) x processes, against the ceiling."""
    t = ctx.target
    if t.app is None and t.log_file is not None and not t.log_file.is_file():
        return Finding.errored(f"targets[{t.name}].log_file {t.log_file} does not exist")
    ceiling = ctx.threshold("rate_limit_max_per_second")
    obs = await observe_limiter(ctx)
    return _kept(judge_rate_limit_tuned(obs, ceiling.value, ceiling.source), obs)


def judge_rate_limit_shared(obs: LimiterConfig) -> Finding:
    evidence = _limiter_evidence(obs)
    n, exact, how = obs.instances["at_least"], obs.instances["exact"], obs.instances["how"]
    note = "(slowapi is not used by asap-protocol 2.5.10; the knob is ASAP_RATE_LIMIT_BACKEND)"
    if obs.storage == "redis":
        return Finding.passed(f"rate limits are stored in Redis, shared by all {n}{'' if exact else '+'} process(es) "
                              f"{note}", evidence)
    if obs.proxy_limit_req:
        return Finding.passed(f"the proxy enforces limit_req ({', '.join(obs.proxy_limit_req)}), shared by the "
                              f"process(es) behind it", evidence)
    if obs.storage is None:
        return Finding.skipped(f"cannot tell the limiter's storage: {obs.read_from}; set targets[].app (introspection), "
                               "targets[].log_file (the agent logs asap.rate_limit.memory_storage or ...redis_storage "
                               "at startup) or targets[].nginx_conf", evidence)
    if obs.storage != "memory":
        return Finding._make(Status.MANUAL, f"rate-limit storage {obs.storage}: not one the runbook knows to be "
                             "shared; confirm every process uses the same backend", evidence)
    if n > 1:
        return Finding.failed(f"per-process memory:// rate-limit storage with at least {n} processes ({how}): the "
                              f"effective limit is {n}x the configured one {note}", evidence)
    if exact is None:
        return Finding.skipped(f"per-process memory:// rate-limit storage, and the number of processes is not known "
                               f"({how}): set targets[].k8s_manifests and process_config, or targets[].instances",
                               evidence)
    return Finding.warned(f"per-process memory:// rate-limit storage: fine for this single process, but each added "
                          f"worker or replica multiplies the limit {note}", evidence)


@check("SEC-RATE-3")
async def rate_limit_shared(ctx: CheckContext) -> Finding:
    """Memory vs shared storage for the limiter (slowapi is gone; the knob is ASAP_RATE_LIMIT_BACKEND)."""
    obs = await observe_limiter(ctx)
    return _kept(judge_rate_limit_shared(obs), obs)


_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", re.M)


@dataclass
class RejectionCounting:
    """SEC-RATE-4 / SEC-SIZE-3's observation: who counts the agent's 429 (or 413) responses."""
    code: str                                   # "429" / "413"
    agent_exported: list[str]                   # matching families at /asap/metrics
    agent_unreadable: str | None                # why /asap/metrics could not be read
    prometheus: bool                            # a Prometheus and the target's job are named
    agent_in_prometheus: list[str]              # matching series names for the job
    proxy_selector: str | None                  # targets[].proxy_requests
    proxy_label: str | None                     # status label used (set, known, or found on the series)
    proxy_label_combos: list[dict]              # status-like label values on the selector's series
    proxy_error: str | None = None
    candidates: list[str] = field(default_factory=list)  # common exporters' counters found in Prometheus
    candidates_read_at: str | None = None  # when (UTC): read once for every target of the section run
    target: str = ""
    exchanges: list = field(default_factory=list)


async def observe_rejection_counting(ctx: CheckContext, pattern: str, code: str) -> RejectionCounting:
    t = ctx.target
    obs = RejectionCounting(code, [], None, False, [], t.proxy_requests, t.proxy_status_label, [], target=t.name)
    try:
        resp = await ctx.probe.get_once("/asap/metrics")
        obs.agent_exported = sorted({m.group(1) for m in _METRIC_LINE.finditer(resp.text)
                                     if re.search(pattern, m.group(1))}) if resp.status == 200 else []
        obs.exchanges.append((f"GET /asap/metrics: HTTP {resp.status}; families matching /{pattern}/",
                              obs.agent_exported))
    except ProbeError as e:
        obs.agent_unreadable = e.message
    prom, job = ctx.prometheus(), t.prometheus_job
    if prom is None:
        return obs
    obs.prometheus = bool(job)
    if job:
        query = f'{{__name__=~"{pattern}", job="{job}"}}'
        shared = await ctx.job_read(job, f"series matching /{pattern}/", lambda: prom.query(query))
        series = shared.value
        obs.agent_in_prometheus = sorted({s["metric"].get("__name__") for s in series})
        obs.exchanges.append((f"Prometheus: {query} (read at {shared.when()})", [{"metric": s.get("metric"), "value": s.get("value")}
                                                       for s in series][:20]))
    if t.proxy_requests:
        query = proxy_metrics.labels_query(t.proxy_requests)
        try:
            combos = await prom.query(query)
        except Exception as e:  # noqa: BLE001 - a bad selector is the operator's input: say so, no traceback
            obs.proxy_error = f"{type(e).__name__}: {str(e)[:200]}"
        else:
            obs.proxy_label_combos = [{k: v for k, v in c["metric"].items() if v} for c in combos][:50]
            obs.exchanges.append((f"Prometheus: {query}", obs.proxy_label_combos))
        if obs.proxy_label is None:
            obs.proxy_label = proxy_metrics.known_label(t.proxy_requests) or next(
                (lbl for lbl in proxy_metrics.STATUS_LABELS if any(lbl in c for c in obs.proxy_label_combos)), None)
    elif not obs.agent_in_prometheus:  # the common exporters' counters: one query for every target of the run
        found = await ctx.once_per_run("prom.proxy_discovery", lambda: prom.query(proxy_metrics.discovery_query()))
        obs.candidates = sorted({f"{s['metric'].get('__name__')}{{job=\"{s['metric'].get('job', '')}\"}}"
                                 for s in found.value})
        obs.candidates_read_at = found.when()
    return obs


def judge_rejection_counting(obs: RejectionCounting, what: str, stock_note: str) -> Finding:
    evidence = list(obs.exchanges) + [("proxy counter", {"targets[].proxy_requests": obs.proxy_selector,
                                                         "status label": obs.proxy_label,
                                                         "error": obs.proxy_error,
                                                         "exporters' counters found in Prometheus": obs.candidates})]
    param = f"targets[{obs.target}].proxy_requests"
    if obs.agent_in_prometheus:
        return Finding.passed(f"Prometheus holds {', '.join(obs.agent_in_prometheus)} for the agent's job; stock "
                              "asap-protocol 2.5.10 exports no such counter, so it comes from this deployment "
                              "(a wrapper or the proxy)", evidence)
    if obs.proxy_selector:
        if obs.proxy_error:
            return Finding.errored(f"Prometheus refused {param} ({obs.proxy_selector}): {obs.proxy_error}", evidence)
        if not obs.proxy_label_combos:
            return Finding.skipped(f"{param} = {obs.proxy_selector} selects no series in Prometheus (is the proxy's "
                                   "exporter scraped, is the selector right?), and the agent exports no counter of "
                                   f"{what}", evidence)
        label = obs.proxy_label
        if label is None or not any(label in c for c in obs.proxy_label_combos):
            return Finding.failed(f"{obs.proxy_selector} carries no status-code label "
                                  f"({label or ', '.join(proxy_metrics.STATUS_LABELS)}): {what} cannot be told "
                                  f"apart from other responses (set targets[{obs.target}].proxy_status_label if it "
                                  "has another name)", evidence)
        values = sorted({c[label] for c in obs.proxy_label_combos if label in c})
        if all(re.fullmatch(r"\dxx", v) for v in values):
            return Finding.failed(f"{obs.proxy_selector} counts status classes only ({label}: {', '.join(values)}): "
                                  f"{what} are lumped with every other 4xx", evidence)
        seen = f"; {obs.code} seen so far" if obs.code in values else f"; no {obs.code} yet (the series appears " \
                                                                      "with the first one)"
        return Finding.passed(f"{what} are counted at the proxy: {obs.proxy_selector} by {label} "
                              f"({len(values)} status value(s): {', '.join(values[:8])}){seen}", evidence)
    if obs.agent_exported:
        if obs.prometheus:
            return Finding.failed(f"{', '.join(obs.agent_exported)} is exported but Prometheus has no series for the "
                                  "agent's job (is the scrape target up? see MON-METRICS-2)", evidence)
        return Finding.warned(f"{', '.join(obs.agent_exported)} exported at /asap/metrics, but no Prometheus/"
                              "prometheus_job in the parameters to confirm it is scraped", evidence)
    found = f"; Prometheus has {', '.join(obs.candidates[:4])}" if obs.candidates else ""
    unreadable = f" (/asap/metrics could not be read: {obs.agent_unreadable})" if obs.agent_unreadable else ""
    return Finding.skipped(f"the agent counts no {what}{unreadable} ({stock_note}); {param} is not set (the PromQL "
                           f"selector of the proxy's or ingress's request counter for this agent){found}", evidence)


@check("SEC-RATE-4", needs=(*AGENT, "prometheus"))
async def rate_limit_monitored(ctx: CheckContext) -> Finding:
    obs = await observe_rejection_counting(ctx, r".*(rate_limit.*(exceeded|hit|reject)|_429).*", "429")
    return _kept(judge_rejection_counting(
        obs, "HTTP 429 responses", "asap-protocol 2.5.10 has no asap_rate_limit_exceeded_total, only the log event "
                                   "asap.rate_limit.exceeded"), obs)


# ================================================================ Request Size Limits

def _padded_body(ctx: CheckContext, size: int) -> bytes:
    env = probe_envelope(ctx.target.sender, payload={"pad": ""})  # read-only: accepted or not, nothing runs
    doc = rpc(env)
    base = len(json.dumps(doc).encode())
    doc["params"]["envelope"]["payload"]["pad"] = "x" * max(0, size - base)
    return json.dumps(doc).encode()


_AGENT_413 = re.compile(r"exceeds maximum \((\d+) bytes\)")


@check("SEC-SIZE-1", needs=AGENT_TOKEN)
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
    evidence = [("sent", f"POST /asap, a read-only JSON-RPC envelope padded to {len(body)} bytes "
                         f"(intended limit {limit}: {want.source}), once with Content-Length and once chunked")]
    details = {"intended_limit": limit, "intended_limit_source": want.source, "agent_limit_from_log": logged,
               "body_bytes": len(body)}
    outcomes = {}

    async def chunks():
        for i in range(0, len(body), 65536):
            yield body[i:i + 65536]

    for label, content in (("with Content-Length", body), ("chunked, no Content-Length", None)):
        try:
            resp = await ctx.probe.request("POST", "/asap", content=content if content is not None else chunks(),
                                           headers={"Content-Type": "application/json"}, authenticated=True,
                                           read_limit=4096)
            outcomes[label] = resp.status
            evidence.append((f"{label}: HTTP {resp.status}", resp.evidence["response"]))
            m = _AGENT_413.search(resp.text)
            if m:
                details["agent_limit_from_413"] = int(m.group(1))
        except RateLimited:
            raise  # the limiter, not the size limit, answered: no verdict
        except ProbeError as e:
            outcomes[label] = f"connection closed: {e.message}"
            evidence.append((label, e.message))
    return judged_by(judge_request_size, outcomes, len(body), limit, logged, evidence, details)


def judge_request_size(outcomes: dict[str, int | str], body_bytes: int, limit: int, logged: int | None,
                       evidence: list, details: dict) -> Finding:
    """outcomes: per way of sending the oversize body, the HTTP status or how the connection ended."""
    accepted = [k for k, v in outcomes.items() if isinstance(v, int) and v < 400]
    log_note = f"; the agent's own limit is {logged} bytes (startup log)" if logged else ""
    if accepted:
        return Finding.failed(f"a {body_bytes}-byte body (intended limit {limit}) was accepted "
                              f"{' and '.join(accepted)}{log_note}", evidence, **details)
    not_413 = {k: v for k, v in outcomes.items() if v != 413}
    if not_413:
        return Finding.warned(f"oversize bodies were not accepted, but not answered 413 either: {not_413}", evidence,
                              **details)
    return Finding.passed(f"a {body_bytes}-byte body got HTTP 413 with Content-Length and chunked "
                          f"(intended limit {limit}){log_note}", evidence, **details)


def judge_proxy_body_limit(limits: list[_nginx.BodyLimit], files: list[str], agent: int, source: str) -> Finding:
    rows = [{"where": b.where, "client_max_body_size": b.value or "(unset: nginx default 1m)", "bytes": b.bytes,
             "line": b.line} for b in limits]
    evidence = [("nginx files read (includes followed)", files), ("blocks that proxy to the agent", rows),
                ("agent limit", f"{agent} bytes from {source}")]
    if not limits:
        return Finding.errored(f"no server/location in {', '.join(Path(f).name for f in files)} proxies to an "
                               "upstream", evidence)
    too_big = [b for b in limits if b.bytes == 0 or b.bytes > agent]
    if too_big:
        what = ", ".join(f"{b.where}: {b.value or '1m'}{' (unlimited)' if b.bytes == 0 else ''}" for b in too_big)
        return Finding.failed(f"the proxy allows bodies over the agent's {agent}-byte limit ({what}); chunked "
                              "bodies reach the agent, which buffers them whole before its 413", evidence)
    return Finding.passed(f"client_max_body_size <= the agent's {agent} bytes in all {len(limits)} proxying block(s) "
                          f"({', '.join(sorted({b.value or '1m' for b in limits}))}) across {len(files)} file(s)",
                          evidence)


@check("SEC-SIZE-2")
async def proxy_body_limit(ctx: CheckContext) -> Finding:
    """nginx client_max_body_size (default 1m, 0 = unlimited) at most the agent's limit."""
    conf = ctx.target.nginx_conf
    if conf is None:
        return Finding.skipped(f"targets[{ctx.target.name}].nginx_conf is not set")
    try:
        root = _nginx_conf(ctx)
        limits = [b for b in _nginx.body_limits(root) if b.proxies]
    except _nginx.NginxParseError as e:
        return Finding.errored(f"could not read {conf}: {e}")
    fact = await _startup_fact(ctx, "asap.server.max_request_size")
    if fact and str(fact.fields.get("max_request_size", "")).isdigit():
        agent, source = int(fact.fields["max_request_size"]), "the agent's startup log (asap.server.max_request_size)"
    else:
        t = ctx.threshold("max_request_size_bytes")
        agent, source = int(t.value), f"thresholds.max_request_size_bytes ({t.source})"
    return judged_by(judge_proxy_body_limit, limits, root.files, agent, source)


@check("SEC-SIZE-3", needs=(*AGENT, "prometheus"))
async def size_rejections_monitored(ctx: CheckContext) -> Finding:
    obs = await observe_rejection_counting(ctx, r".*(size_exceeded|too_large|_413).*", "413")
    return _kept(judge_rejection_counting(
        obs, "HTTP 413 responses", "asap-protocol 2.5.10 has no metric for 413, only the log event "
                                   "asap.request.size_exceeded"), obs)


# ================================================================ Handler Security

@check("SEC-HANDLER-1", needs=AGENT_TOKEN)
async def payloads_validated(ctx: CheckContext) -> Finding:
    """Malformed envelopes rejected as invalid (-32602/-32600); no skill crashes (-32603) on bad input.
    The malformed envelopes are refused before any handler (and would be answered -32012 or -32002 if the
    schema let them through); sending unexpected input to the skills runs them: handler_probes only."""
    t = ctx.target
    manifest = await ctx.probe.manifest()
    stale = iso_ago(minutes=10)  # a second guard: an envelope the schema wrongly lets through stops at the timestamp
    bad = [
        ("an unknown envelope field", probe_envelope(t.sender, runbook_unknown_field="x")),
        ("a malformed sender URN", probe_envelope("not-a-urn")),
        ("a task.request without skill_id", envelope(t.sender, timestamp=stale,
                                                     payload={"conversation_id": "conv_runbook", "input": {}})),
    ]
    evidence, malformed, skills_seen = [], {}, {}
    for label, env in bad:
        resp = await _post(ctx, env)
        evidence.append((f"{label}: {_brief(resp)}", resp.evidence))
        malformed[label] = _answer(resp)
    skills = [s.get("id") for s in (manifest.get("capabilities") or {}).get("skills") or [] if isinstance(s, dict)][:5]
    skip = ctx.require_active("handler_probes")
    if skip is None and not any(_malformed_problem(label, a) for label, a in malformed.items()):
        for skill in skills:
            env = envelope(t.sender, payload={"conversation_id": "conv_runbook", "skill_id": skill,
                                              "input": {"runbook_unexpected": [1, {"x": None}]}})
            resp = await _post(ctx, env)
            evidence.append((f"skill {skill!r} with unexpected input: {_brief(resp)}", resp.evidence))
            skills_seen[skill] = _answer(resp)
    return judged_by(judge_payloads_validated, malformed, skills_seen, len(skills), skip.summary if skip else None,
                     evidence)


def _answer(resp: ProbeResponse) -> dict:
    return {"brief": _brief(resp), "code": _code(resp), "traceback": _TRACEBACK in resp.text,
            "result": resp.rpc_result() is not None}


def _malformed_problem(label: str, a: dict) -> str | None:
    if a["traceback"]:
        return f"{label} returned a traceback"
    if a["result"]:
        return f"{label} was accepted"
    if a["code"] == -32603:
        return f"{label} crashed the server (-32603)"
    if a["code"] not in (-32602, -32600):
        return f"{label} got {a['brief']}, not -32602/-32600"
    return None


def judge_payloads_validated(malformed: dict[str, dict], skills: dict[str, dict], n_skills: int,
                             handler_skip: str | None, evidence: list) -> Finding:
    """malformed: what each malformed envelope got; skills: what each skill answered to unexpected input
    (empty when handler_probes is off, `handler_skip` then says so)."""
    problems = [p for label, a in malformed.items() if (p := _malformed_problem(label, a))]
    if problems:
        return Finding.failed("; ".join(problems), evidence)
    if handler_skip is not None:
        return Finding.skipped(f"{len(malformed)} malformed envelopes rejected as invalid params, but the {n_skills} "
                               f"skill(s) were not sent unexpected input (that runs their handlers): {handler_skip}",
                               evidence)
    for skill, a in skills.items():
        if a["traceback"]:
            problems.append(f"skill {skill!r} returned a traceback on unexpected input")
        elif a["code"] == -32603:
            problems.append(f"skill {skill!r} crashed on unexpected input (-32603): its handler does not validate")
    if problems:
        return Finding.failed("; ".join(problems), evidence)
    return Finding.passed(f"{len(malformed)} malformed envelopes rejected as invalid params; {len(skills)} skill(s) "
                          "handled unexpected input without crashing", evidence)


def judge_path_traversal(rep: _source_scan.SinkReport, root: str) -> Finding:
    evidence = [("scan", rep.as_dict())]
    if rep.files == 0:
        return Finding.skipped(f"no Python files under {root}")
    if rep.unguarded:
        return Finding.failed(f"{len(rep.unguarded)} file/URI sink(s) take request data without a traversal guard: "
                              f"{', '.join(h.file + ':' + str(h.line) for h in rep.unguarded[:5])}", evidence)
    if not rep.request_functions:
        return Finding.skipped(f"no function under {root} takes request data (a parameter named envelope, payload, "
                               f"input, data, ...) among {rep.functions} in {rep.files} file(s): set "
                               "targets[].source_dir to the handlers' code", evidence)
    guards = f"; guards: {', '.join(h.what for h in rep.guards[:3])}" if rep.guards else ""
    return Finding.passed(f"no unguarded file/URI sink fed from request data in {len(rep.request_functions)} "
                          f"function(s) taking request data ({rep.functions} functions, {rep.files} file(s); "
                          f"heuristic source scan){guards}", evidence)


@check("SEC-HANDLER-2")
async def path_traversal(ctx: CheckContext) -> Finding:
    """Static (source): file/URI sinks fed from request data need FilePart or a resolve()/is_relative_to guard.
    No wire payload of asap-protocol 2.5.10 is a FilePart, so a black-box probe would prove nothing general."""
    root = ctx.target.source_dir
    if root is None:
        return Finding.skipped(f"targets[{ctx.target.name}].source_dir is not set")
    return judged_by(judge_path_traversal, await asyncio.to_thread(_source_scan.file_sinks, root), str(root))


_DEBUG_ENV = re.compile(r"\bASAP_DEBUG(_LOG)?\s*[=:]\s*[\"']?(1|true|yes|on)\b", re.I)


def judge_logs_sanitized(rep: _source_scan.LogReport, debug: list[str], root: str) -> Finding:
    evidence = [("scan", rep.as_dict()), ("ASAP_DEBUG / ASAP_DEBUG_LOG switched on in deployment files", debug)]
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
    if not rep.request_functions or not rep.log_calls:
        what = "no function taking request data" if not rep.request_functions else "no logging call"
        return Finding.skipped(f"{what} under {root} ({rep.functions} functions, {rep.log_calls} log calls in "
                               f"{rep.files} file(s)): set targets[].source_dir to the handlers' code", evidence)
    return Finding.passed(f"{len(rep.sanitized)} log call(s) with request data, all through sanitize_for_logging; "
                          f"no f-string, %-style or argument passes request content ({rep.log_calls} log calls, "
                          f"{len(rep.request_functions)} function(s) taking request data, {rep.files} file(s); "
                          "heuristic source scan)", evidence)


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
    return judged_by(judge_logs_sanitized, rep, debug, str(root))


async def _read_logs(ctx: CheckContext) -> tuple[str | None, str]:
    got = await logs.read_log(ctx.target, ctx.params.probe.timeout_seconds * 3, 4 * 1024 * 1024)
    return (None, "") if got is None else (got[1], got[0])


@dataclass
class CanarySearch:
    """SEC-HANDLER-4's observation: the debug surfaces' statuses, the canaries sent (never a real secret), and
    where in the agent's log each was found."""
    target: str
    surfaces: dict[str, int]             # GET /docs, /redoc, /openapi.json -> HTTP status
    log_named: bool                      # targets[].log_file or log_command is set
    sent: list[dict] = field(default_factory=list)  # {"how", "answer", "canary"} per request that carried one
    handler_skip: str | None = None      # why no skill was sent the canary (handler_probes off); None: one was
    log_source: str | None = None        # where the log was read
    log_error: str | None = None         # why it could not be read (one sentence)
    found: dict[str, list] = field(default_factory=dict)  # what was found -> line numbers


def canary_lines(text: str, needles: list[tuple[str, str]], token: str | None) -> dict[str, list]:
    """Where each (label, needle) occurs in the log text (first 5 line numbers); the configured token only as
    present, never where (a line number next to it would point at the secret)."""
    found, lines = {}, None
    for label, needle in needles:
        if needle not in text:  # the usual case: no need to split megabytes of log into lines
            continue
        lines = lines if lines is not None else text.splitlines()
        found[label] = [n for n, ln in enumerate(lines, 1) if needle in ln][:5]
    if token and len(token) >= 8 and token in text:
        found["the configured bearer token"] = ["(present; line numbers withheld)"]
    return found


async def observe_canaries(ctx: CheckContext) -> CanarySearch:
    t = ctx.target
    surfaces = {}
    for path in ("/docs", "/redoc", "/openapi.json"):
        surfaces[path] = (await ctx.probe.get_once(path)).status
    obs = CanarySearch(t.name, surfaces, bool(t.log_file or t.log_command))
    if not obs.log_named:
        return obs
    r1, r2 = await _stale_authenticated(ctx), await _wrong_bearer(ctx)
    canary, auth_canary = _canary(ctx, "rbcanary"), _canary(ctx, "rbcanaryauth")
    obs.sent = [{"how": "canary in payload fields api_key/password of a read-only envelope", "answer": _brief(r1),
                 "canary": canary},
                {"how": "canary as a bearer token", "answer": _brief(r2), "canary": auth_canary}]
    handler_skip = ctx.require_active("handler_probes")
    obs.handler_skip = handler_skip.summary if handler_skip else None
    if handler_skip is None:
        skill = _skill(await ctx.probe.manifest())
        env = envelope(t.sender, payload={"conversation_id": "conv_runbook", "skill_id": skill,
                                          "input": {"api_key": canary, "password": canary,
                                                    "note": "asap-runbook canary"}})
        r3 = await _post(ctx, env)
        obs.sent.append({"how": f"the same canary sent to skill {skill!r} (its handler runs)", "answer": _brief(r3),
                         "canary": canary})
    await asyncio.sleep(0.5)
    try:
        text, obs.log_source = await _read_logs(ctx)
    except logs.LogSourceError as e:
        obs.log_error = e.message
        return obs
    # asap-protocol logs a bearer token's first 8 characters as token_prefix: look for the rest
    obs.found = canary_lines(text, [("payload canary", canary), ("bearer canary", auth_canary[8:])], t.token)
    return obs


def judge_canaries(obs: CanarySearch) -> Finding:
    evidence, problems = [("debug surfaces (GET, expect 404)", obs.surfaces)], []
    open_ = [p for p, s in obs.surfaces.items() if s == 200]
    if open_:
        problems.append(f"debug surfaces open ({', '.join(open_)}: ASAP_DEBUG is on, which also returns tracebacks "
                        "and stops log redaction)")
    if not obs.log_named:
        if problems:
            return Finding.failed("; ".join(problems), evidence)
        return Finding.skipped(f"debug surfaces closed, but targets[{obs.target}].log_file / log_command is not set, so "
                               "the canary cannot be looked for", evidence)
    evidence += [(f"{s['how']}: {s['answer']}", {"canary": s["canary"]}) for s in obs.sent]
    if obs.log_error is not None:
        return Finding.errored(obs.log_error, evidence)
    where = obs.log_source
    evidence.append((f"searched {where} for the canaries", {"found at lines": obs.found}))
    if obs.found:
        problems.append(f"secrets reached the log ({', '.join(obs.found)} in {where})")
    if problems:
        return Finding.failed("; ".join(problems), evidence)
    if obs.handler_skip is not None:
        return Finding.skipped(f"debug surfaces closed and the canaries of read-only requests do not appear in {where}, "
                               f"but no skill was sent the canary, so what a handler logs is unseen: "
                               f"{obs.handler_skip}", evidence)
    return Finding.passed(f"debug surfaces closed (404); canaries sent as api_key/password (to a skill and on a "
                          f"read-only request) and as a bearer token do not appear in {where}", evidence)


@check("SEC-HANDLER-4", needs=AGENT_TOKEN)
async def no_secrets_in_logs(ctx: CheckContext) -> Finding:
    """Debug surfaces closed; canary secrets sent in requests do not reach the agent's log. By default the
    canaries ride on read-only requests (the transport's own logging sees them); what a skill's handler logs
    is only seen with handler_probes, which sends the canary to a skill."""
    obs = await observe_canaries(ctx)
    return _kept(judge_canaries(obs), obs)


# ================================================================ Replay Protection

def _seen(resp: ProbeResponse) -> dict:
    """What a read-only envelope got: its phrase, its JSON-RPC code, whether it got past every gate (-32012)."""
    return {"brief": _brief(resp), "code": _code(resp), "passed": passed_gates(resp)}


def judge_timestamp_window(seen: dict[str, dict], evidence: list) -> Finding:
    """seen: {"10 minutes old": _seen(...), "5 minutes in the future": _seen(...)}."""
    problems = []
    for label, got in seen.items():
        if got["passed"]:
            problems.append(f"an envelope {label} was accepted")
        elif got["code"] != -32002:
            return Finding.errored(f"an envelope {label} was refused before the timestamp check ({got['brief']}); "
                                   "cannot judge", evidence)
    if problems:
        return Finding.failed("; ".join(problems) + ": timestamp validation is off (asap-protocol's default window "
                              "is 300 s back, 30 s ahead)", evidence)
    return Finding.passed("envelopes 10 min old and 5 min ahead rejected with -32002 (note: an envelope without "
                          "a timestamp is always accepted; clients must send one)", evidence)


@check("SEC-REPLAY-1", needs=AGENT_TOKEN)
async def timestamp_window(ctx: CheckContext) -> Finding:
    """Read-only envelopes 10 min old and 5 min ahead: -32002, not -32012 (which means they got past the check)."""
    future = probe_envelope(ctx.target.sender, timestamp=iso_ago(minutes=-5))
    cases = [("10 minutes old", lambda: _stale_authenticated(ctx)), ("5 minutes in the future", lambda: _post(ctx, future))]
    seen, evidence = {}, []
    for label, exchange in cases:
        resp = await exchange()
        evidence.append((f"timestamp {label}: {_brief(resp)}", resp.evidence))
        seen[label] = _seen(resp)
    return judged_by(judge_timestamp_window, seen, evidence)


def judge_nonce_checked(seen: dict[str, dict], claims_require_nonce: bool, evidence: list) -> Finding:
    """seen: "fresh", "repeated", "empty" and, when the deployment claims to require nonces, "absent"."""
    first, second, empty = seen["fresh"], seen["repeated"], seen["empty"]
    if not first["passed"]:
        return Finding.errored(f"a read-only envelope with a fresh nonce was refused before the nonce check "
                               f"({first['brief']}, expected -32012 no handler); cannot judge", evidence)
    problems = []
    if second["code"] != -32003:
        problems.append(f"a repeated nonce was not rejected ({second['brief']})")
    if empty["code"] != -32003:
        problems.append(f"an empty nonce was not rejected ({empty['brief']})")
    if claims_require_nonce and seen.get("absent", {}).get("passed"):
        problems.append("an envelope without a nonce was accepted although the deployment claims to require "
                        "nonces (asap-protocol's require_nonce=True only checks nonces that are present)")
    if problems:
        if claims_require_nonce or second["code"] == -32003:
            return Finding.failed("; ".join(problems), evidence)
        return Finding.warned("no nonce checking (require_nonce is off): " + "; ".join(problems) +
                              "; a captured envelope can be replayed for 300 s", evidence)
    extra = " and a nonce-less envelope" if claims_require_nonce else ""
    return Finding.passed(f"repeated and empty nonces{extra} rejected with -32003 (read-only envelopes: a "
                          "fresh nonce got past every check to -32012, no handler)", evidence)


@check("SEC-REPLAY-2", needs=AGENT_TOKEN)
async def nonce_checked(ctx: CheckContext) -> Finding:
    t = ctx.target
    nonce = "rb-" + uuid.uuid4().hex
    sends = [("fresh", nonce), ("repeated", nonce), ("empty", "")] + ([("absent", None)] if t.claims_require_nonce else [])
    seen, evidence = {}, []
    for label, value in sends:
        resp = await _post(ctx, probe_envelope(t.sender, nonce=value))
        seen[label] = _seen(resp)
        evidence.append((f"{label} nonce: {_brief(resp)}", resp.evidence))
    return judged_by(judge_nonce_checked, seen, t.claims_require_nonce, evidence)


@dataclass
class NonceReplay:
    """SEC-REPLAY-3's observation: one nonce sent on fresh connections, the process count, the store."""
    sends: int
    outcomes: list[str]                 # one phrase per send
    accepted: int                       # got past the nonce check (read-only: -32012)
    instances: dict                     # k8s.Instances.as_dict()
    store: dict | None                  # {"class", "module", "kind"} from introspection; None: not looked at
    store_note: str                     # how the store was (or was not) read
    first_exchange: dict | None = None


async def observe_nonce_replay(ctx: CheckContext) -> NonceReplay:
    t = ctx.target
    inst = await asyncio.to_thread(k8s.target_instances, t)
    introspection = asyncio.ensure_future(_introspected(ctx))  # a slow import overlaps the sends
    sends = min(2 * inst.at_least, 6) + 1
    nonce = "rb-" + uuid.uuid4().hex
    results = [await _post(ctx, probe_envelope(t.sender, nonce=nonce), headers={"Connection": "close"})
               for _ in range(sends)]
    store, note = None, ""
    cfg = await introspection
    if isinstance(cfg, dict):
        store = dict(cfg.get("nonce_store") or {"class": None}, kind=cfg.get("nonce_store_kind"))
        note = f"introspected {t.app} in a separate process"
    else:
        note = cfg + (" (module:attribute of the agent's app)" if t.app is None else "")
    return NonceReplay(sends, [_brief(r) for r in results], sum(1 for r in results if passed_gates(r)),
                       inst.as_dict(), store, note, results[0].evidence)


def judge_nonce_replay(obs: NonceReplay) -> Finding:
    inst = obs.instances
    n, exact, how = inst["at_least"], inst["exact"], inst["how"]
    evidence = [("processes", inst), (f"one nonce sent {obs.sends} times, each on a new connection "
                                      "(Connection: close)", obs.outcomes),
                ("first response", obs.first_exchange), ("nonce store", obs.store or obs.store_note)]
    several = n > 1
    if obs.accepted == 0:
        return Finding.errored(f"the envelope was never accepted ({obs.outcomes[0]}); cannot judge", evidence)
    if obs.accepted == obs.sends:
        if several:
            return Finding.failed(f"the same nonce was accepted on all {obs.sends} connections across at least {n} "
                                  "processes: no nonce check, or none that is shared", evidence)
        return Finding.warned(f"the same nonce was accepted {obs.sends} times: the agent checks no nonces at all "
                              "(see SEC-REPLAY-2), so there is no store to share", evidence)
    if obs.accepted > 1:
        return Finding.failed(f"the same nonce was accepted {obs.accepted} times over {obs.sends} connections: the "
                              f"nonce store is per process ({how})", evidence)
    kind = (obs.store or {}).get("kind")
    name = (obs.store or {}).get("class")
    if kind == "memory" and several:
        return Finding.failed(f"{name} keeps nonces in process memory with at least {n} processes ({how}): a "
                              "replayed envelope is accepted once per process (this probe was refused only because "
                              "its connections reached the same one)", evidence)
    if kind == "none":
        return Finding.failed("the app has no nonce store, yet a repeated nonce was refused once: check "
                              "SEC-REPLAY-2", evidence) if several else Finding.warned(
            "the app has no nonce store", evidence)
    if kind == "external":
        return Finding.passed(f"the nonce was accepted once and refused on {obs.sends - 1} further connection(s); the "
                              f"store is {name} (backed by {', '.join(obs.store.get('backed_by') or [])}), shared by "
                              f"the {n if exact else f'{n}+'} process(es)", evidence)
    if exact == 1:
        return Finding.passed(f"the nonce was accepted once and refused on {obs.sends - 1} further connection(s); one "
                              f"process ({how}), so any store is shared" + (f" ({name})" if name else ""), evidence)
    if kind is None:
        return Finding.skipped(f"the nonce was refused after its first use, but with "
                               f"{'at least ' + str(n) if exact is None else n} process(es) a per-process store passes "
                               f"this by chance: {obs.store_note}, so the store's kind is unknown", evidence)
    if exact is None:
        return Finding.skipped(f"{name} ({kind}) and the number of processes is not known ({how}): set "
                               "targets[].k8s_manifests and process_config, or targets[].instances", evidence)
    return Finding.warned(f"custom nonce store {name} with {n} processes: the runbook cannot tell whether it is "
                          "shared; confirm it", evidence)


@check("SEC-REPLAY-3", needs=AGENT_TOKEN)
async def nonce_store_shared(ctx: CheckContext) -> Finding:
    """One nonce sent on fresh connections (to reach other workers/replicas): accepted once at most; the
    store's kind from the app's introspection; the process count from the deployment files."""
    obs = await observe_nonce_replay(ctx)
    return _kept(judge_nonce_replay(obs), obs)
