"""Misconfigured reference ASAP agent (run ONLY in its own uvicorn subprocess).

Deliberately shipped the way a careless deployment would be: ``create_app(manifest, registry)``
with defaults, no auth (manifest ``auth: null``), an ``http://`` endpoint, no nonce check, the default
10 MiB body limit, rate limit loosened to ``ASAP_RATE_LIMIT=100000/second`` by the deployment,
console logs, ``ASAP_DEBUG=1`` (``/docs`` exposed), ``--forwarded-allow-ips '*'`` (spoofable
client IP) and no metrics wrapper (its ``/asap/metrics`` content type makes Prometheus mark it
DOWN); an unvalidated ``order_status`` skill, a handler that logs raw input, and the timestamp
window patched out (see :mod:`.misconfigured_handlers`). It sits behind a weak nginx (TLS 1.0/1.1,
expired self-signed certificate, no HSTS, no redirect, 100m bodies, appended ``X-Forwarded-For``).

Its handler answers skills ``echo``, ``order_status`` (reads ``input.order_id`` unchecked),
``quote`` (asks the inventory agent the careless way: a new client per call, retries off, no
circuit breaker, no fallback) and ``export_report`` (a long task whose snapshots live in the
default ``InMemorySnapshotStore``, lost on restart), and appends each task to a Redis list (``ASAP_REF_REDIS_URL``, best effort: a failure is
logged and ignored). ``/ready`` stays asap-protocol's constant ``{"status":"ok"}``:
the dependency is used but readiness is not wired to it.

Environment: ``ASAP_REF_PUBLIC_URL`` (the http base URL advertised in the manifest),
``ASAP_REF_AGENT_ID`` (URN, default ``urn:asap:agent:misconfigured-ref``), ``ASAP_REF_REDIS_URL``.
"""

from __future__ import annotations

import asyncio
import os

from asap.models.entities import Capability, Endpoint, Manifest, Skill
from asap.models.enums import TaskStatus
from asap.models.envelope import Envelope
from asap.models.ids import generate_id
from asap.models.payloads import TaskRequest, TaskResponse
from asap.observability import get_logger
from asap.transport import ASAPClient
from asap.transport.handlers import HandlerRegistry
from asap.transport.server import create_app

from . import skills
from .misconfigured_handlers import disable_timestamp_validation, log_raw_input, order_status

AGENT_ID = os.environ.get("ASAP_REF_AGENT_ID", "urn:asap:agent:misconfigured-ref")
_PUBLIC_URL = os.environ.get("ASAP_REF_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")
_REDIS_URL = os.environ.get("ASAP_REF_REDIS_URL")

logger = get_logger("asap_runbook.reference.misconfigured")
_redis = None
if _REDIS_URL:
    import redis

    _redis = redis.Redis.from_url(_REDIS_URL, socket_connect_timeout=0.3, socket_timeout=0.3)

# Inventory calls the careless way: a new client per call, retries switched off ("they
# duplicated orders"), no circuit breaker, no fallback.
INVENTORY_POLICY = skills.ClientPolicy(
    make_client=lambda url: ASAPClient(url, require_https=False, max_retries=1),
    fallback=False, long_lived=False)


def _record(skill: str) -> None:
    if _redis is None:
        return
    try:
        _redis.lpush("asap:ref:misconfigured:tasks", skill)
        _redis.ltrim("asap:ref:misconfigured:tasks", 0, 999)
    except Exception as exc:  # noqa: BLE001 - careless on purpose: the failure is only logged
        logger.warning("refagent.task.record_failed", error=type(exc).__name__)


async def task_handler(envelope: Envelope, manifest: Manifest) -> Envelope:
    req = TaskRequest.model_validate(envelope.payload_dict)
    data = req.input if isinstance(req.input, dict) else {}
    log_raw_input(req)
    ok = True
    if req.skill_id == "order_status":
        result = order_status(req)
    elif req.skill_id == "quote":
        ok, result = await skills.quote(data, manifest.id, INVENTORY_POLICY)
    elif req.skill_id == "export_report":
        ok, result = await skills.export_report(data)
    else:
        result = {"echoed": req.input}
    await asyncio.to_thread(_record, req.skill_id[:64])
    response = TaskResponse(task_id=f"task_{generate_id()}",
                            status=TaskStatus.COMPLETED if ok else TaskStatus.FAILED, result=result)
    return Envelope(asap_version=envelope.asap_version, sender=manifest.id, recipient=envelope.sender,
                    payload_type="task.response", payload=response.model_dump(),
                    correlation_id=envelope.id, trace_id=envelope.trace_id)


manifest = Manifest(
    id=AGENT_ID,
    name="Misconfigured Reference Agent",
    version="1.0.0",
    description="asap-runbook misconfigured reference agent (defaults, no auth, plain HTTP)",
    capabilities=Capability(skills=[Skill(id="echo", description="echo the input"),
                                    Skill(id="order_status", description="look up input.order_id"),
                                    Skill(id="quote", description="price quote for input.sku x input.quantity"),
                                    Skill(id="export_report", description="export input.pages pages of a report")]),
    endpoints=Endpoint(asap=f"{_PUBLIC_URL}/asap"),
)
registry = HandlerRegistry()
registry.register("task.request", task_handler)
app = create_app(manifest, registry)  # snapshot store: the default InMemorySnapshotStore
skills.STORE = app.state.snapshot_store
disable_timestamp_validation()
