"""Misconfigured reference ASAP agent (run ONLY in its own uvicorn subprocess).

Deliberately shipped the way a careless deployment would be: ``create_app(manifest)`` with
defaults, no auth (manifest ``auth: null``), an ``http://`` endpoint, no nonce check, the default
10 MiB body limit, rate limit loosened to ``ASAP_RATE_LIMIT=100000/second`` by the deployment,
console logs, ``ASAP_DEBUG=1`` (``/docs`` exposed), ``--forwarded-allow-ips '*'`` (spoofable
client IP) and no metrics wrapper (its ``/asap/metrics`` content type makes Prometheus mark it
DOWN); an unvalidated ``lookup`` skill whose handler logs raw input, and the timestamp window
patched out (see :mod:`.misconfigured_handlers`). It sits behind a weak nginx (TLS 1.0/1.1, expired self-signed certificate, no HSTS,
no redirect, 100m bodies, appended ``X-Forwarded-For``).

Environment: ``ASAP_REF_PUBLIC_URL`` (the http base URL advertised in the manifest),
``ASAP_REF_AGENT_ID`` (URN, default ``urn:asap:agent:misconfigured-ref``).
"""

from __future__ import annotations

import os

from asap.models.entities import Capability, Endpoint, Manifest, Skill
from asap.transport.server import create_app

from .misconfigured_handlers import disable_timestamp_validation, registry

AGENT_ID = os.environ.get("ASAP_REF_AGENT_ID", "urn:asap:agent:misconfigured-ref")
_PUBLIC_URL = os.environ.get("ASAP_REF_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")

manifest = Manifest(
    id=AGENT_ID,
    name="Misconfigured Reference Agent",
    version="1.0.0",
    description="asap-runbook misconfigured reference agent (defaults, no auth, plain HTTP)",
    capabilities=Capability(skills=[Skill(id="echo", description="echo the input"),
                              Skill(id="lookup", description="look up input.order_id")]),
    endpoints=Endpoint(asap=f"{_PUBLIC_URL}/asap"),
)

app = create_app(manifest, registry())
disable_timestamp_validation()
