"""The HTTP probe: how every black-box check talks to a target.

httpx with explicit timeouts, a total deadline per request (a server that trickles bytes
cannot hold a check past it), bounded reads, and redaction of the token before anything is
kept as evidence. `transport=` is the seam for unit tests of edge cases no real server here
can produce.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import ssl
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx

from . import pacing
from ._aiohttp_transport import AiohttpTransport
from .errors import NotAnAsapAgent, ProbeError, RateLimited, TargetTimeout, TargetUnreachable, TargetUntrusted
from .params import ProbeSettings, Target

REDACTED = "***REDACTED***"
MANIFEST_PATH = "/.well-known/asap/manifest.json"
_EVIDENCE_BODY_CHARS = 2000
_LIMITED_PATHS = ("/asap", "/asap/stream")  # what asap-protocol's rate limiter counts (GETs are not limited)
_KEPT_HEADERS = {
    "content-type", "content-length", "location", "retry-after", "strict-transport-security",
    "cache-control", "etag", "server", "www-authenticate", "asap-version", "content-encoding",
    "x-content-type-options", "allow", "transfer-encoding",
}


def redact(text: str, secrets: list[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, REDACTED)
    return text


def file_version(path: str | None) -> tuple | None:
    """What tells one version of a file from the next (a cache key: an edited CA file is read again)."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None  # loading it will say why
    return st.st_mtime_ns, st.st_size


def ssl_context(ca_file: os.PathLike | None, verify: bool = True) -> ssl.SSLContext:
    """The client TLS context for a target. Shared per (ca_file and its version, verify) in a process: loading the
    system trust store costs ~0.1-0.2 s of CPU, which one context per target turned into seconds
    for a fleet. Shared, so do not mutate it; build your own for TLS-version probes."""
    ca = str(ca_file) if ca_file else None
    return _ssl_context(ca, bool(verify), file_version(ca))


@functools.lru_cache(maxsize=32)
def _ssl_context(ca_file: str | None, verify: bool, _version: tuple | None = None) -> ssl.SSLContext:
    if not verify:  # nothing will be verified: skip loading the trust store
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx = ssl.create_default_context()
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    return ctx


@dataclass
class ProbeResponse:
    status: int
    headers: httpx.Headers
    body: bytes
    truncated: bool
    elapsed: float
    url: str
    http_version: str
    evidence: dict[str, Any] = field(default_factory=dict)
    paced_seconds: float = 0.0  # how long this request waited for the agent's rate limit

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON, or None if it is not JSON (callers decide what that means)."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def rpc_error(self) -> dict | None:
        """The JSON-RPC error object, if any. ASAP answers most failures with HTTP 200 + error."""
        doc = self.json()
        if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
            return doc["error"]
        return None

    def rpc_result(self) -> dict | None:
        doc = self.json()
        if isinstance(doc, dict) and "result" in doc:
            return doc["result"]
        return None


def envelope(sender: str, *, nonce: str | None | bool = True, timestamp: datetime | None | bool = True,
             payload: dict | None = None, **extra: Any) -> dict:
    """A minimal valid `task.request` envelope (reference §0.2), with overridable parts."""
    env: dict[str, Any] = {
        "asap_version": "0.1",
        "sender": sender,
        "recipient": "urn:asap:agent:target",
        "payload_type": "task.request",
        "payload": payload or {"conversation_id": "conv_runbook", "skill_id": "echo", "input": {"msg": "runbook probe"}},
    }
    if timestamp is True:
        env["timestamp"] = datetime.now(UTC).isoformat()
    elif isinstance(timestamp, datetime):
        env["timestamp"] = timestamp.isoformat()
    if nonce is True:
        env["extensions"] = {"nonce": uuid.uuid4().hex}
    elif isinstance(nonce, str):
        env["extensions"] = {"nonce": nonce}
    env.update(extra)
    return env


PROBE_PAYLOAD_TYPE = "runbook.probe"
HANDLER_NOT_FOUND = -32012


def probe_envelope(sender: str, *, payload: dict | None = None, **kw: Any) -> dict:
    """A read-only envelope: no agent registers a handler for its payload_type, so the agent runs every
    gate that comes before a handler (auth, envelope schema, sender, timestamp, nonce) and then answers
    -32012 (no handler) without running anything. -32012 therefore means "passed every gate"."""
    return envelope(sender, payload={"note": "asap-runbook read-only probe"} | (payload or {}),
                    payload_type=PROBE_PAYLOAD_TYPE, **kw)


def passed_gates(resp: "ProbeResponse") -> bool:
    """The agent let a probe_envelope through every check before dispatch (or, worse, ran it)."""
    err = resp.rpc_error()
    return resp.rpc_result() is not None or bool(err and err.get("code") == HANDLER_NOT_FOUND)


def rpc(env: dict | None, *, rpc_id: str | None = None, method: str = "asap.send") -> dict:
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": rpc_id or f"runbook-{uuid.uuid4().hex[:12]}"}
    if env is not None:
        body["params"] = {"envelope": env}
    return body


class Probe:
    """One target's HTTP client. Use as an async context manager."""

    # a paced request that still meets a 429 (another client shares our address, the limit is lower than
    # probe.rate_limit) waits out Retry-After at most this many times, within the wait bound
    MAX_429_RETRIES = 4

    def __init__(self, target: Target, settings: ProbeSettings, transport: httpx.AsyncBaseTransport | None = None):
        self.target = target
        self.settings = settings
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._manifest: dict | None = None
        self.manifest_error: ProbeError | None = None  # set by remember_manifest
        self.requests_sent = 0
        self._shared_gets: dict[str, asyncio.Future] = {}  # get_once: path -> the one GET

    @property
    def secrets(self) -> list[str]:
        return [s for s in [self.target.token] if s]

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            context = ssl_context(self.target.ca_file, self.target.tls_verify)
            self._client = httpx.AsyncClient(
                verify=context,
                timeout=httpx.Timeout(self.settings.timeout_seconds),
                transport=self._transport or AiohttpTransport(context),
                follow_redirects=False,
                trust_env=False,
            )
        return self._client

    async def __aenter__(self) -> "Probe":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for fut in self._shared_gets.values():
            fut.cancel()  # a shared GET nobody waits for any more (its check timed out) ends with the client
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else self.target.base_url + path

    @property
    def rate_limit(self) -> str | None:
        """The agent's limit its POSTs are paced under: targets[].rate_limit, else probe.rate_limit."""
        return self.target.rate_limit or self.settings.rate_limit

    def pacer(self, path: str = "/asap") -> pacing.HostPacer | None:
        """The shared rate-limit budget of the host behind `path` (None when pacing is off: probe.rate_limit null)."""
        return pacing.pacer_for(self.url(path), self.rate_limit, self.settings.max_rate_limit_wait_seconds)

    def auth_headers(self) -> dict[str, str]:
        token = self.target.token
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def request(self, method: str, path: str, *, headers: dict | None = None, content: Any = None,
                      json_body: Any = None, authenticated: bool = False, read_limit: int | None = None,
                      deadline: float | None = None, timeout: float | None = None,
                      paced: bool = True) -> ProbeResponse:
        """Send one request with a total deadline and a bounded read; raise ProbeError subclasses.

        A request the agent's rate limiter counts (POST /asap, /asap/stream) first waits for a slot
        in the host's shared budget (:mod:`.pacing`) and waits out a 429's Retry-After, within
        probe.max_rate_limit_wait_seconds; what does not fit raises RateLimited naming the limit.
        `paced=False` is for a deliberate burst: no waiting, a 429 is returned, accepted requests
        are still logged so that later checks wait for the window."""
        url = self.url(path)
        hdrs = dict(headers or {})
        if authenticated:
            hdrs.update(self.auth_headers())
        if json_body is not None:
            content = json.dumps(json_body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        limit = read_limit or self.settings.max_response_bytes
        deadline = deadline or self.settings.timeout_seconds * 2
        limited = method.upper() == "POST" and urlsplit(url).path.rstrip("/").endswith(_LIMITED_PATHS)
        pacer = self.pacer(url) if limited else None
        resendable = content is None or isinstance(content, (bytes, bytearray, str))
        waited = 0.0
        for attempt in range(self.MAX_429_RETRIES + 1):
            ticket = await pacer.acquire(deadline) if pacer and paced else None
            if ticket:
                waited += ticket.waited
                pacing.note_wait(ticket.waited)
            try:
                pr = await self._once(method, url, hdrs, content, limit, deadline, timeout)
            except BaseException:
                if ticket:
                    pacer.settle(ticket, counted=True)  # it may have reached the agent
                raise
            if limited:
                pacing.note_request()
            if ticket:
                pacer.settle(ticket, counted=pr.status != 429)
            elif pacer and pr.status != 429:
                pacer.record()
            if pr.status != 429 or not limited:
                break
            retry = _retry_after_seconds(pr)
            if pacer:
                pacer.block(retry + pacing.MARGIN_SECONDS)
            if not paced:
                break
            if not resendable or attempt == self.MAX_429_RETRIES:
                raise RateLimited(f"the agent answered HTTP 429 (rate limited) to {method} {url} {attempt + 1} time(s), "
                                  f"after {waited:.0f} s of waiting for its limit "
                                  f"({self.rate_limit or 'pacing off'}, probe.rate_limit / targets[].rate_limit); the check did not judge")
            if pacer is None:  # pacing off: only the agent's Retry-After, within the same bound
                if waited + retry > self.settings.max_rate_limit_wait_seconds:
                    raise RateLimited(f"the agent answered HTTP 429 with Retry-After {retry:g} s, over the "
                                     f"{self.settings.max_rate_limit_wait_seconds:g} s bound "
                                     "(probe.max_rate_limit_wait_seconds); the check did not judge")
                await pacing.sleep(retry)
                waited += retry
                pacing.note_wait(retry)
            else:
                pacer.check_wait(retry, waited)
        pr.paced_seconds = round(waited, 3)
        pr.evidence = self._evidence(method, url, hdrs, content, pr)
        return pr

    async def _once(self, method: str, url: str, hdrs: dict, content: Any, limit: int, deadline: float,
                    timeout: float | None) -> ProbeResponse:
        started = time.monotonic()
        budget = getattr(self.settings, "max_requests_per_target", None)
        if budget is not None and self.requests_sent >= budget:
            raise ProbeError(f"request budget exhausted: {self.requests_sent} requests already sent to "
                             f"{self.target.name} (probe.max_requests_per_target: {budget})")
        self.requests_sent += 1

        async def go() -> ProbeResponse:
            extra = {"timeout": httpx.Timeout(timeout)} if timeout else {}  # drills wait longer than probes
            async with self.client().stream(method, url, headers=hdrs, content=content, **extra) as resp:
                chunks, size, truncated = [], 0, False
                # decoded bytes, bounded: a huge or decompression-bomb body stops at the limit
                async for chunk in resp.aiter_bytes():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > limit:
                        truncated = True
                        break
                body = b"".join(chunks)[:limit]
                return ProbeResponse(resp.status_code, resp.headers, body, truncated, time.monotonic() - started,
                                     url, resp.http_version)

        try:
            return await asyncio.wait_for(go(), timeout=deadline)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            raise TargetTimeout(f"{method} {url} did not complete within {deadline:g} s") from None
        except httpx.ConnectError as e:
            if "CERTIFICATE_VERIFY_FAILED" in str(e):
                raise TargetUntrusted(f"the certificate of {url} does not verify: {_verify_detail(e)}") from None
            raise TargetUnreachable(f"cannot connect to {url}: {_reason(e)}") from None
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as e:
            raise ProbeError(f"{method} {url} failed: {_reason(e)}") from None
        except httpx.HTTPError as e:
            raise ProbeError(f"{method} {url} failed: {_reason(e)}") from None

    def _evidence(self, method, url, headers, content, resp: ProbeResponse) -> dict:
        sec = self.secrets
        req_headers = {k: (f"{v.split(' ', 1)[0]} {REDACTED}" if k.lower() == "authorization" else redact(v, sec))
                       for k, v in headers.items()}
        body_desc = None
        if content is not None:
            raw = content if isinstance(content, (bytes, bytearray)) else None
            if raw is not None and len(raw) <= _EVIDENCE_BODY_CHARS:
                body_desc = redact(raw.decode("utf-8", "replace"), sec)
            elif raw is not None:
                body_desc = f"<{len(raw)} bytes>"
            else:
                body_desc = "<streamed body>"
        text = redact(resp.text[:_EVIDENCE_BODY_CHARS], sec)
        return {
            "request": {"method": method, "url": url, "headers": req_headers, "body": body_desc},
            "response": {
                "status": resp.status, "http_version": resp.http_version,
                "headers": {k: redact(v, sec) for k, v in resp.headers.items() if k.lower() in _KEPT_HEADERS},
                "body": text + ("…" if len(resp.text) > _EVIDENCE_BODY_CHARS or resp.truncated else ""),
                "elapsed_ms": round(resp.elapsed * 1000, 1),
            },
        }

    async def get(self, path: str, **kw) -> ProbeResponse:
        return await self.request("GET", path, **kw)

    async def get_once(self, path: str) -> ProbeResponse:
        """A plain GET of `path` sent once by this probe (one target, one phase) and shared by every check
        that reads the route as it is (the manifest, /health, /docs, /asap/metrics for the families it
        exports): the checks run at the same moment, so one look is their common observation and each one's
        evidence is that exchange. A failure (ProbeError) is shared the same way. Not for a read that must
        follow something the check sent (a second scrape, a conditional GET): use get()."""
        fut = self._shared_gets.get(path)
        if fut is None:
            fut = self._shared_gets[path] = asyncio.ensure_future(self.get(path))
        return await asyncio.shield(fut)

    async def send(self, env: dict | None, *, authenticated: bool = True, headers: dict | None = None,
                   rpc_body: Any = None, paced: bool = True, deadline: float | None = None,
                   timeout: float | None = None) -> ProbeResponse:
        """POST one JSON-RPC request to /asap, paced under the agent's rate limit (see request())."""
        body = rpc_body if rpc_body is not None else rpc(env)
        return await self.request("POST", "/asap", json_body=body, authenticated=authenticated, headers=headers,
                                  deadline=deadline, timeout=timeout, paced=paced)

    async def manifest(self) -> dict:
        """The agent's manifest; raises NotAnAsapAgent if the target does not serve one."""
        if self.manifest_error is not None:
            raise self.manifest_error
        if self._manifest is None:
            resp = await self.get_once(MANIFEST_PATH)  # the preflight's look, shared with the checks that read it
            if resp.truncated:
                raise NotAnAsapAgent(f"{resp.url} answered with more than {self.settings.max_response_bytes} bytes "
                                     "(probe.max_response_bytes); the read was cut there, and that is no ASAP manifest")
            doc = resp.json()
            if resp.status != 200 or not isinstance(doc, dict) or not str(doc.get("id", "")).startswith("urn:asap:agent:"):
                raise NotAnAsapAgent(
                    f"{resp.url} answered HTTP {resp.status} without an ASAP manifest; is this an ASAP agent?")
            self._manifest = doc
        return self._manifest

    def remember_manifest(self, outcome: dict | ProbeError) -> None:
        """The preflight's look at the manifest: later calls reuse it (one request, and one cause
        when it failed, instead of one timeout per check)."""
        if isinstance(outcome, ProbeError):
            self.manifest_error = outcome
        else:
            self._manifest = outcome


def _retry_after_seconds(resp: ProbeResponse) -> float:
    try:
        return max(0.0, float(resp.headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


def _reason(e: Exception) -> str:
    text = str(e) or type(e).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "certificate verification failed (set the target's ca_file for a private CA)"
    cause = e.__cause__ or e.__context__
    while cause is not None:  # httpx says "All connection attempts failed"; the OS says why
        if isinstance(cause, OSError) and cause.errno:
            return os.strerror(cause.errno).lower()
        cause = cause.__cause__ or cause.__context__
    return text.splitlines()[0][:300]


def _verify_detail(e: Exception) -> str:
    """OpenSSL's reason from '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: <reason> (_ssl.c:1000)'."""
    m = re.search(r"certificate verify failed: (.*?)(?: \(_ssl\.c:\d+\))?$", str(e).splitlines()[0])
    return m.group(1).rstrip(".") if m else "certificate verification failed"


def iso_ago(**kw) -> datetime:
    return datetime.now(UTC) - timedelta(**kw)
