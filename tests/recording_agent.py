"""A minimal asap-protocol agent for tests: every handler call is appended to a file.

Run ONLY under uvicorn in its own process (importing asap.transport takes over the process):
``RECORDING_AGENT_FILE=calls.txt python -m uvicorn tests.recording_agent:app``. Its handler
ignores ``skill_id`` (any task.request runs it), the worst case for a runbook that claims to be
read-only. The rate limit is asap-protocol's default unless ``RECORDING_AGENT_RATE_LIMIT`` says
otherwise.
"""

from __future__ import annotations

import json
import os

from asap.models.entities import Capability, Endpoint, Manifest, Skill
from asap.models.envelope import Envelope
from asap.models.ids import generate_id
from asap.models.enums import TaskStatus
from asap.models.payloads import TaskResponse
from asap.transport.handlers import HandlerRegistry
from asap.transport.server import create_app

CALLS = os.environ["RECORDING_AGENT_FILE"]
PORT = os.environ.get("RECORDING_AGENT_PORT", "8000")


def task_handler(envelope: Envelope, manifest: Manifest) -> Envelope:
    with open(CALLS, "a") as f:  # the side effect a read-only runbook must never cause
        f.write(json.dumps({"envelope_id": envelope.id, "payload": envelope.payload_dict}) + "\n")
    response = TaskResponse(task_id=f"task_{generate_id()}", status=TaskStatus.COMPLETED, result={"ok": True})
    return Envelope(asap_version=envelope.asap_version, sender=manifest.id, recipient=envelope.sender,
                    payload_type="task.response", payload=response.model_dump(),
                    correlation_id=envelope.id, trace_id=envelope.trace_id)


manifest = Manifest(
    id="urn:asap:agent:recording", name="Recording Agent", version="1.0.0",
    description="records every handler call",
    capabilities=Capability(skills=[Skill(id="echo", description="echo"),
                                    Skill(id="transfer_funds", description="a skill with side effects")]),
    endpoints=Endpoint(asap=f"http://127.0.0.1:{PORT}/asap"),
)
registry = HandlerRegistry()
registry.register("task.request", task_handler)
app = create_app(manifest, registry, rate_limit=os.environ.get("RECORDING_AGENT_RATE_LIMIT") or None)
