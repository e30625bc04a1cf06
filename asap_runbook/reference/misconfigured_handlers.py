"""Handlers of the misconfigured reference agent: the mistakes a hurried team makes.

DELIBERATELY INSECURE (the runbook's Security checks must catch each of these):

* ``lookup`` reads ``input["order_id"]`` without validating the input: a request without it
  crashes the handler (JSON-RPC -32603; with ``ASAP_DEBUG`` the traceback goes to the caller).
* the handler logs the raw task input (no ``sanitize_for_logging``): a field named
  ``password`` or ``api_key`` lands in the log in clear.
* :func:`disable_timestamp_validation` patches out the envelope timestamp window, as a team
  might to silence clock-skew errors; envelopes 10 minutes old are then accepted.

Import only in the agent's own uvicorn process (it imports ``asap.transport``).
"""

from __future__ import annotations

import asap.transport._request_handler as _request_handler
from asap.models.entities import Manifest
from asap.models.enums import TaskStatus
from asap.models.envelope import Envelope
from asap.models.ids import generate_id
from asap.models.payloads import TaskRequest, TaskResponse
from asap.observability import get_logger
from asap.transport.handlers import HandlerRegistry

logger = get_logger("asap_runbook.reference.misconfigured")


def task_handler(envelope: Envelope, manifest: Manifest) -> Envelope:
    req = TaskRequest.model_validate(envelope.payload_dict)
    logger.info("refagent.task.received", skill=req.skill_id, input=req.input)  # raw input: leaks secrets
    if req.skill_id == "lookup":
        result = {"order_id": req.input["order_id"], "status": "shipped"}  # unvalidated: KeyError -> -32603
    else:
        result = {"echoed": req.input}
    return Envelope(
        asap_version=envelope.asap_version,
        sender=manifest.id,
        recipient=envelope.sender,
        payload_type="task.response",
        payload=TaskResponse(task_id=f"task_{generate_id()}", status=TaskStatus.COMPLETED, result=result).model_dump(),
        correlation_id=envelope.id,
        trace_id=envelope.trace_id,
    )


def registry() -> HandlerRegistry:
    reg = HandlerRegistry()
    reg.register("task.request", task_handler)
    return reg


def disable_timestamp_validation() -> None:
    """Patch out asap-protocol's envelope timestamp window (deliberately insecure)."""
    _request_handler.validate_envelope_timestamp = lambda envelope: None
