"""Misconfigured reference ASAP agent (run ONLY in its own uvicorn subprocess).

Deliberately shipped the way a careless deployment would be: ``create_app(manifest)`` with
defaults, no auth (manifest ``auth: null``), an ``http://`` endpoint, no nonce check, the default
10 MiB body limit, rate limit loosened to ``ASAP_RATE_LIMIT=100000/second`` by the deployment,
console logs, ``ASAP_DEBUG=1`` (``/docs`` exposed), ``--forwarded-allow-ips '*'`` (spoofable
client IP) and no metrics wrapper (its ``/asap/metrics`` content type makes Prometheus mark it
DOWN). It sits behind a weak nginx (TLS 1.0/1.1, expired self-signed certificate, no HSTS,
no redirect, 100m bodies, appended ``X-Forwarded-For``).

Environment: ``ASAP_REF_PUBLIC_URL`` (the http base URL advertised in the manifest),
``ASAP_REF_AGENT_ID`` (URN, default ``urn:asap:agent:misconfigured-ref``).
"""

from __future__ import annotations

import os

from asap.models.entities import Capability, Endpoint, Manifest, Skill
from asap.models.enums import TaskStatus
from asap.models.envelope import Envelope
from asap.models.ids import generate_id
from asap.models.payloads import TaskRequest, TaskResponse
from asap.transport import ASAPClient
from asap.transport.handlers import HandlerRegistry, create_echo_handler
from asap.transport.server import create_app

from . import skills

AGENT_ID = os.environ.get("ASAP_REF_AGENT_ID", "urn:asap:agent:misconfigured-ref")
_PUBLIC_URL = os.environ.get("ASAP_REF_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")

manifest = Manifest(
    id=AGENT_ID,
    name="Misconfigured Reference Agent",
    version="1.0.0",
    description="asap-runbook misconfigured reference agent (defaults, no auth, plain HTTP)",
    capabilities=Capability(skills=[Skill(id="echo", description="echo the input"),
                                    Skill(id="lookup", description="call a loopback downstream agent (drills)"),
                                    Skill(id="checkpoint", description="long task with snapshots (drills)")]),
    endpoints=Endpoint(asap=f"{_PUBLIC_URL}/asap"),
)

# Downstream calls the careless way: a new client per call, retries switched off ("they
# duplicated orders"), no circuit breaker, no fallback.
DOWNSTREAM_POLICY = skills.ClientPolicy(
    make_client=lambda url: ASAPClient(url, require_https=False, max_retries=1),
    fallback=False, long_lived=False)
_echo = create_echo_handler()


async def task_handler(envelope: Envelope, manifest: Manifest) -> Envelope:
    req = TaskRequest.model_validate(envelope.payload_dict)
    if req.skill_id not in ("lookup", "checkpoint"):
        return _echo(envelope, manifest)
    data = req.input if isinstance(req.input, dict) else {}
    if req.skill_id == "lookup":
        ok, result = await skills.lookup(data, manifest.id, DOWNSTREAM_POLICY)
    else:
        ok, result = await skills.checkpoint(data)
    response = TaskResponse(task_id=f"task_{generate_id()}",
                            status=TaskStatus.COMPLETED if ok else TaskStatus.FAILED, result=result)
    return Envelope(asap_version=envelope.asap_version, sender=manifest.id, recipient=envelope.sender,
                    payload_type="task.response", payload=response.model_dump(),
                    correlation_id=envelope.id, trace_id=envelope.trace_id)


registry = HandlerRegistry()
registry.register("task.request", task_handler)
app = create_app(manifest, registry)  # snapshot store: the default InMemorySnapshotStore
skills.STORE = app.state.snapshot_store
