"""Handler pieces of the misconfigured reference agent: the mistakes a hurried team makes.

DELIBERATELY INSECURE (the runbook's Security checks must catch each of these):

* ``order_status`` reads ``input["order_id"]`` without validating the input: a request without it
  crashes the handler (JSON-RPC -32603; with ``ASAP_DEBUG`` the traceback goes to the caller).
* the handler logs the raw task input (no ``sanitize_for_logging``): a field named
  ``password`` or ``api_key`` lands in the log in clear.
* :func:`disable_timestamp_validation` patches out the envelope timestamp window, as a team
  might to silence clock-skew errors; envelopes 10 minutes old are then accepted.

Import only in the agent's own uvicorn process (it imports ``asap.transport``).
"""

from __future__ import annotations

import asap.transport._request_handler as _request_handler
from asap.models.payloads import TaskRequest
from asap.observability import get_logger

logger = get_logger("asap_runbook.reference.misconfigured")


def log_raw_input(req: TaskRequest) -> None:
    logger.info("refagent.task.received", skill=req.skill_id, input=req.input)  # raw input: leaks secrets


def order_status(req: TaskRequest) -> dict:
    return {"order_id": req.input["order_id"], "status": "shipped"}  # unvalidated: KeyError -> -32603


def disable_timestamp_validation() -> None:
    """Patch out asap-protocol's envelope timestamp window (deliberately insecure)."""
    _request_handler.validate_envelope_timestamp = lambda envelope: None
