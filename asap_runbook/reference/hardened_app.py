"""Hardened reference ASAP agent (run ONLY in its own uvicorn subprocess).

Importing this module imports ``asap.transport`` (which builds a default app, takes over
root logging and instruments httpx process-wide), so the runbook never imports it in a
kernel; :class:`asap_runbook.reference.ReferenceDeployment` runs it as
``python -m uvicorn asap_runbook.reference.hardened_app:app``.

The agent is ``create_app(manifest, registry, token_validator=..., rate_limit="10/second;100/minute",
max_request_size=1048576, require_nonce=True)`` with bearer auth (manifest
``auth.schemes == ["bearer"]``), an ``https://`` endpoint and a ``task.request`` handler with
skills ``echo``, ``quote`` and ``export_report`` (``skills.py``) that logs its input through
``sanitize_for_logging``.

**What the reference wrapper fixes** (asap-protocol 2.5.10 cannot do these through
``create_app``; the wrapper is :class:`RunbookReferenceWrapper`, its list of fixes is also
served at ``GET /.well-known/asap-runbook/reference.json``):

1. ``metrics-content-type``: ``GET /asap/metrics`` is served as
   ``text/plain; version=0.0.4; charset=utf-8`` instead of ``application/openmetrics-text``
   (the body is classic Prometheus text without ``# EOF``, so stock Prometheus marks the raw
   agent DOWN).
   ``metrics-histogram-buckets``: the ``*_seconds_bucket`` series asap-protocol cumulates twice
   (a finite bucket above ``+Inf``) are de-cumulated (real bucket i = scraped[i] - scraped[i-1]),
   so ``histogram_quantile`` gives true latencies.
2. ``metrics-429-413``: the wrapper counts the 429 and 413 responses the app sends and appends
   ``asap_rate_limit_exceeded_total`` and ``asap_request_size_exceeded_total`` to the
   metrics (the package has no such metrics), plus the business counter
   ``refagent_tasks_total{skill="..."}``.
3. ``strict-nonce``: ``require_nonce=True`` only validates a nonce *when present*. The wrapper
   answers an authenticated ``POST /asap`` whose envelope (single or any item of a batch) has no
   ``params.envelope.extensions.nonce`` with HTTP 200 + JSON-RPC ``-32003 "Nonce required"``.
   Requests without a valid bearer token, non-JSON bodies and bodies over the size limit are
   passed through untouched so the package's own errors (-32600, -32700, 413) keep precedence.
   An empty-string nonce is also passed through (the package rejects it with -32003).
4. ``shared-nonce-store``: ``app.state.request_handler.nonce_store`` is replaced by
   :class:`RedisNonceStore` (``SET NX EX`` in Redis), so replay protection holds across
   workers and restarts. Redis unreachable => the request fails (fail closed).
5. ``ready-redis``: ``GET /ready`` (a route inserted at the front of ``app.router.routes``,
   shadowing the constant built-in one) PINGs Redis: 200 ``{"status":"ok","checks":{"redis":"ok"}}``
   or 503 ``{"status":"not ready","failed":["redis"]}``.
6. Rate limits are stored in Redis (``ASAP_RATE_LIMIT_BACKEND=redis://...``, set by the
   deployment), shared by all workers.

Its real jobs (``skills.py``): ``quote`` asks the inventory agent (``INVENTORY_AGENT_URL``) through
one long-lived ``ASAPClient`` with retries, backoff, a circuit breaker and a last-known-level
fallback; ``export_report`` is a long task that snapshots every page and continues after the last
saved one. Snapshots live in :class:`RedisSnapshotStore` (``create_app(snapshot_store=...)``), so
they are shared by workers and survive an agent restart.

Environment read here: ``ASAP_REF_TOKEN`` (the bearer token; secret), ``ASAP_REF_REDIS_URL``,
``ASAP_REF_PUBLIC_URL`` (the https base URL of the nginx in front), plus the package's own
``ASAP_LOG_FORMAT`` / ``ASAP_RATE_LIMIT_BACKEND``.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets
import threading
from collections import defaultdict
from typing import Any

import redis
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from asap.models.entities import AuthScheme, Capability, Endpoint, Manifest, Skill, StateSnapshot
from asap.models.envelope import Envelope
from asap.models.enums import TaskStatus
from asap.models.ids import generate_id
from asap.models.payloads import TaskRequest, TaskResponse
from asap.observability import get_logger, sanitize_for_logging
from asap.transport.handlers import HandlerRegistry
from asap.transport.server import create_app
from asap.transport import ASAPClient, RetryConfig

from . import skills

AGENT_ID = "urn:asap:agent:hardened-ref"
PROBE_ID = "urn:asap:agent:sre-probe"
# asap-protocol's own default: a realistic limit. The runbook paces its POSTs under it (pacing.py);
# nothing here is loosened to suit the runbook.
RATE_LIMIT = "10/second;100/minute"
MAX_REQUEST_SIZE = 1_048_576
NONCE_KEY_PREFIX = "asap:ref:nonce:"

WRAPPER_FIXES = {
    "metrics-content-type": "GET /asap/metrics served as text/plain; version=0.0.4 so stock Prometheus can scrape it",
    "metrics-histogram-buckets": "double-cumulated *_seconds_bucket series de-cumulated (scraped[i] - scraped[i-1])",
    "metrics-429-413": "asap_rate_limit_exceeded_total and asap_request_size_exceeded_total count 429/413 responses",
    "business-metric": "refagent_tasks_total{skill} counts handled tasks",
    "strict-nonce": "authenticated POST /asap envelopes without extensions.nonce get JSON-RPC -32003 'Nonce required'",
    "shared-nonce-store": "request_handler.nonce_store replaced by a Redis SET NX EX store",
    "ready-redis": "GET /ready PINGs Redis: 503 {status: not ready, failed: [redis]} when it fails",
    "rate-limit-redis": "rate limits stored in Redis via ASAP_RATE_LIMIT_BACKEND",
}

logger = get_logger("asap_runbook.reference.hardened")

_TOKEN = os.environ.get("ASAP_REF_TOKEN") or ""
_REDIS_URL = os.environ.get("ASAP_REF_REDIS_URL", "redis://127.0.0.1:6379/0")
_PUBLIC_URL = os.environ.get("ASAP_REF_PUBLIC_URL", "https://127.0.0.1:8443").rstrip("/")
# An unset token must never mean "accept anything": fall back to an unguessable one.
_EFFECTIVE_TOKEN = _TOKEN if len(_TOKEN) >= 32 else secrets.token_urlsafe(48)

_redis = redis.Redis.from_url(
    _REDIS_URL, socket_connect_timeout=0.5, socket_timeout=0.5, retry_on_timeout=False
)


# --- counters the wrapper exports ---------------------------------------------------------
class _Counters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rate_limited = 0
        self.size_exceeded = 0
        self.nonce_required = 0
        self.tasks: dict[str, int] = defaultdict(int)

    def inc(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def task(self, skill: str) -> None:
        with self._lock:
            self.tasks[skill] += 1

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP asap_rate_limit_exceeded_total HTTP 429 responses sent (reference wrapper)",
                "# TYPE asap_rate_limit_exceeded_total counter",
                f"asap_rate_limit_exceeded_total {float(self.rate_limited)}",
                "# HELP asap_request_size_exceeded_total HTTP 413 responses sent (reference wrapper)",
                "# TYPE asap_request_size_exceeded_total counter",
                f"asap_request_size_exceeded_total {float(self.size_exceeded)}",
                "# HELP refagent_nonce_required_total envelopes rejected for a missing nonce (reference wrapper)",
                "# TYPE refagent_nonce_required_total counter",
                f"refagent_nonce_required_total {float(self.nonce_required)}",
                "# HELP refagent_tasks_total task.request envelopes handled, by skill",
                "# TYPE refagent_tasks_total counter",
            ]
            for skill in sorted(self.tasks) or []:
                lines.append(f'refagent_tasks_total{{skill="{_esc(skill)}"}} {float(self.tasks[skill])}')
            return "\n".join(lines) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


COUNTERS = _Counters()


# --- handler -----------------------------------------------------------------------------
async def task_handler(envelope: Envelope, manifest: Manifest) -> Envelope:
    req = TaskRequest.model_validate(envelope.payload_dict)
    skill = req.skill_id
    data = req.input if isinstance(req.input, dict) else {"input": req.input}
    logger.info(
        "refagent.task.received",
        skill=skill,
        envelope_id=envelope.id,
        sender=envelope.sender,
        input=sanitize_for_logging(data),
    )
    if skill == "echo":
        status, result = TaskStatus.COMPLETED, {"echoed": req.input}
    elif skill == "quote":
        ok, result = await skills.quote(data, manifest.id, INVENTORY_POLICY)
        status = TaskStatus.COMPLETED if ok else TaskStatus.FAILED
    elif skill == "export_report":
        ok, result = await skills.export_report(data)
        status = TaskStatus.COMPLETED if ok else TaskStatus.FAILED
    else:
        status, result = TaskStatus.FAILED, {"error": f"unknown skill: {skill[:64]}"}
        skill = "unknown"
    COUNTERS.task(skill)
    response = TaskResponse(task_id=f"task_{generate_id()}", status=status, result=result)
    # the handler binds both keys of MON-LOG-3 (asap-protocol binds neither per request)
    logger.info("refagent.task.completed", skill=skill, status=status.value, envelope_id=envelope.id,
                correlation_id=envelope.id, trace_id=envelope.trace_id)
    return Envelope(
        asap_version=envelope.asap_version,
        sender=manifest.id,
        recipient=envelope.sender,
        payload_type="task.response",
        payload=response.model_dump(),
        correlation_id=envelope.id,
        trace_id=envelope.trace_id,
    )


def validate_token(token: str) -> str | None:
    if token and hmac.compare_digest(token.encode(), _EFFECTIVE_TOKEN.encode()):
        return PROBE_ID
    return None


# --- shared nonce store ---------------------------------------------------------------------
class RedisNonceStore:
    """``NonceStore`` protocol over Redis: ``SET key 1 NX EX ttl``; True = already used."""

    def __init__(self, client: redis.Redis, prefix: str = NONCE_KEY_PREFIX) -> None:
        self.client = client
        self.prefix = prefix

    def check_and_mark(self, nonce: str, ttl_seconds: int) -> bool:
        created = self.client.set(self.prefix + nonce, b"1", nx=True, ex=max(1, int(ttl_seconds)))
        return not bool(created)


# --- shared snapshot store (SCALE-STATE-1/2, RES-4) ---------------------------------------------
class RedisSnapshotStore:
    """``SnapshotStore`` protocol over Redis (asap-protocol ships only memory and SQLite stores):
    one hash per task, field = version, value = the snapshot JSON. Shared by every worker and
    replica and kept across agent restarts."""

    def __init__(self, client: redis.Redis, prefix: str = "asap:ref:snapshot:") -> None:
        self.client = client
        self.prefix = prefix

    def save(self, snapshot: StateSnapshot) -> None:
        self.client.hset(self.prefix + snapshot.task_id, str(snapshot.version), snapshot.model_dump_json())

    def get(self, task_id: str, version: int | None = None) -> StateSnapshot | None:
        if version is None:
            versions = self.list_versions(task_id)
            if not versions:
                return None
            version = versions[-1]
        raw = self.client.hget(self.prefix + task_id, str(version))
        return StateSnapshot.model_validate_json(raw) if raw else None

    def list_versions(self, task_id: str) -> list[int]:
        return sorted(int(v) for v in self.client.hkeys(self.prefix + task_id))

    def delete(self, task_id: str, version: int | None = None) -> bool:
        if version is None:
            return bool(self.client.delete(self.prefix + task_id))
        return bool(self.client.hdel(self.prefix + task_id, str(version)))


# --- downstream calls (SCALE-CLIENT-*, RES-1..3) -------------------------------------------------
def _inventory_client(url: str) -> ASAPClient:
    # short delays and a low threshold: a quote must answer within seconds, so the breaker opens
    # after two failed calls and probes again after 2 s
    return ASAPClient(
        url, timeout=3.0, require_https=False,
        retry_config=RetryConfig(max_retries=3, base_delay=0.5, max_delay=4.0, jitter=True,
                                 circuit_breaker_enabled=True, circuit_breaker_threshold=2,
                                 circuit_breaker_timeout=2.0),
    )


INVENTORY_POLICY = skills.ClientPolicy(make_client=_inventory_client, fallback=True, long_lived=True)


# --- readiness -------------------------------------------------------------------------------
def ready() -> JSONResponse:  # sync: FastAPI runs it in the threadpool
    try:
        _redis.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        logger.warning("refagent.ready.redis_failed", error=type(exc).__name__)
        return JSONResponse({"status": "not ready", "failed": ["redis"]}, status_code=503)
    return JSONResponse({"status": "ok", "checks": {"redis": "ok"}})


def build_inner_app() -> FastAPI:
    manifest = Manifest(
        id=AGENT_ID,
        name="Hardened Reference Agent",
        version="1.0.0",
        description="asap-runbook hardened reference agent (bearer, nonce, limits, behind TLS nginx)",
        capabilities=Capability(
            skills=[
                Skill(id="echo", description="echo the input"),
                Skill(id="quote", description="price quote for input.sku x input.quantity (asks the inventory agent)"),
                Skill(id="export_report", description="export input.pages pages of report input.report_id (long-running)"),
            ]
        ),
        endpoints=Endpoint(asap=f"{_PUBLIC_URL}/asap"),
        auth=AuthScheme(schemes=["bearer"]),
    )
    registry = HandlerRegistry()
    registry.register("task.request", task_handler)
    inner = create_app(
        manifest,
        registry,
        token_validator=validate_token,
        rate_limit=RATE_LIMIT,
        max_request_size=MAX_REQUEST_SIZE,
        require_nonce=True,
        snapshot_store=RedisSnapshotStore(_redis),
    )
    skills.STORE = inner.state.snapshot_store
    inner.state.request_handler.nonce_store = RedisNonceStore(_redis)
    inner.add_api_route("/ready", ready, methods=["GET"], include_in_schema=False)
    new_route = inner.router.routes.pop()
    assert isinstance(new_route, APIRoute) and new_route.path == "/ready"
    inner.router.routes.insert(0, new_route)
    return inner


# --- ASGI wrapper ----------------------------------------------------------------------------
def _jsonrpc_nonce_error(request_id: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id if isinstance(request_id, (str, int)) else None,
        "error": {
            "code": -32003,
            "message": "Nonce required",
            "data": {
                "error": "Nonce required",
                "code": "asap:protocol/invalid_nonce",
                "rpc_code": -32003,
                "recoverable": False,
                "details": {"reason": "params.envelope.extensions.nonce is missing"},
                "enforced_by": "asap-runbook reference wrapper (strict-nonce)",
            },
        },
    }


def _lacks_nonce(item: Any) -> bool:
    """True only for a well-formed request whose envelope has no nonce at all."""
    if not isinstance(item, dict):
        return False
    params = item.get("params")
    env = params.get("envelope") if isinstance(params, dict) else None
    if not isinstance(env, dict):
        return False  # let the package answer -32602 / -32600
    ext = env.get("extensions")
    if not isinstance(ext, dict):
        return True
    return ext.get("nonce") is None


class RunbookReferenceWrapper:
    """ASAP-app wrapper implementing the fixes listed in the module docstring.

    Attribute access falls through to the wrapped FastAPI app, so ``app.state``,
    ``app.router`` and ``app.user_middleware`` can be introspected as usual.
    """

    fixes = WRAPPER_FIXES

    def __init__(self, inner: FastAPI, counters: _Counters = COUNTERS) -> None:
        self.inner_app = inner
        self.counters = counters

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner_app, name)

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001
        if scope["type"] != "http":
            await self.inner_app(scope, receive, send)
            return
        path, method = scope.get("path", ""), scope.get("method", "GET")
        if path == "/asap/metrics" and method == "GET":
            await self._metrics(scope, receive, send)
            return
        if path == "/.well-known/asap-runbook/reference.json" and method == "GET":
            await _send_json(send, 200, {"role": "hardened", "agent_id": AGENT_ID, "wrapper_fixes": WRAPPER_FIXES})
            return
        if path == "/asap" and method == "POST" and self._authenticated(scope):
            receive = await self._nonce_gate(scope, receive, send)
            if receive is None:
                return
        await self.inner_app(scope, receive, self._counting_send(send))

    # -- helpers
    def _counting_send(self, send):  # noqa: ANN001, ANN202
        async def wrapped(message) -> None:  # noqa: ANN001
            if message["type"] == "http.response.start":
                if message["status"] == 429:
                    self.counters.inc("rate_limited")
                elif message["status"] == 413:
                    self.counters.inc("size_exceeded")
            await send(message)

        return wrapped

    @staticmethod
    def _authenticated(scope) -> bool:  # noqa: ANN001
        for key, value in scope.get("headers", []):
            if key.lower() == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                return scheme.lower() == "bearer" and validate_token(token.strip()) is not None
        return False

    async def _nonce_gate(self, scope, receive, send):  # noqa: ANN001, ANN202
        """Return a replaying ``receive`` to continue, or None when a -32003 was sent."""
        for key, value in scope.get("headers", []):
            if key.lower() == b"content-length":
                try:
                    if int(value) > MAX_REQUEST_SIZE:
                        return receive  # the package answers 413 before reading
                except ValueError:
                    return receive
            if key.lower() == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
                return receive  # compressed: leave all checks to the package
        messages: list[dict] = []
        body = bytearray()
        more = True
        while more:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_REQUEST_SIZE:
                break
        replay = _replaying_receive(messages, receive)
        if more or len(body) > MAX_REQUEST_SIZE:
            return replay
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return replay
        if isinstance(doc, dict) and _lacks_nonce(doc):
            self.counters.inc("nonce_required")
            logger.warning("refagent.request.nonce_required", request_id=str(doc.get("id"))[:64])
            await _send_json(send, 200, _jsonrpc_nonce_error(doc.get("id")))
            return None
        if isinstance(doc, list) and doc and any(_lacks_nonce(item) for item in doc):
            self.counters.inc("nonce_required")
            logger.warning("refagent.request.nonce_required", batch_size=len(doc))
            out = []
            for item in doc:
                err = _jsonrpc_nonce_error(item.get("id") if isinstance(item, dict) else None)
                if not _lacks_nonce(item):
                    err["error"]["data"]["details"] = {"reason": "batch rejected: another item has no nonce"}
                out.append(err)
            await _send_json(send, 200, out)
            return None
        return replay

    async def _metrics(self, scope, receive, send) -> None:  # noqa: ANN001
        start: dict | None = None
        chunks: list[bytes] = []

        async def capture(message) -> None:  # noqa: ANN001
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.inner_app(scope, receive, capture)
        assert start is not None
        body = b"".join(chunks)
        if start["status"] == 200:
            text = fix_double_cumulated_buckets(body.decode("utf-8"))
            if text and not text.endswith("\n"):
                text += "\n"
            body = (text + self.counters.render()).encode("utf-8")
        headers = [
            (k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-type", b"content-length")
        ]
        headers.append((b"content-type", b"text/plain; version=0.0.4; charset=utf-8"))
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": start["status"], "headers": headers})
        await send({"type": "http.response.body", "body": body})


_BUCKET_LINE = re.compile(r'^(?P<name>asap_\w+_seconds)_bucket\{(?P<labels>.*)\} (?P<value>\S+)$')
_LE_LABEL = re.compile(r'(?:^|,)le="(?P<le>[^"]*)"')


def fix_double_cumulated_buckets(text: str) -> str:
    """De-cumulate the histogram series asap-protocol 2.5.10 cumulates twice.

    A series is rewritten only if it shows the bug (a finite bucket above its +Inf bucket);
    the real cumulative count of finite bucket i (in exposition order, ascending le) is
    scraped[i] - scraped[i-1]; +Inf is left as is.
    """
    lines = text.split("\n")
    series: dict[str, list[tuple[int, str, float]]] = {}
    for n, line in enumerate(lines):
        m = _BUCKET_LINE.match(line)
        if not m:
            continue
        le = _LE_LABEL.search(m["labels"])
        if not le:
            continue
        key = m["name"] + "{" + _LE_LABEL.sub("", m["labels"]) + "}"
        series.setdefault(key, []).append((n, le["le"], float(m["value"])))
    for points in series.values():
        inf = next((v for _, le, v in points if le == "+Inf"), None)
        if inf is None or not any(v > inf for _, le, v in points if le != "+Inf"):
            continue
        prev = 0.0
        for n, le, v in points:
            if le == "+Inf":
                continue
            head = lines[n].rsplit(" ", 1)[0]
            lines[n] = f"{head} {v - prev}"
            prev = v
    return "\n".join(lines)


def _replaying_receive(messages: list[dict], receive):  # noqa: ANN001, ANN202
    pending = list(messages)

    async def replay():  # noqa: ANN202
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


async def _send_json(send, status: int, doc: Any) -> None:  # noqa: ANN001
    body = json.dumps(doc, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


app = RunbookReferenceWrapper(build_inner_app())
