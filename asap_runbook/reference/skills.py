"""Skills the reference agents share for the Scaling/Resilience drills (agent subprocesses only).

Importing this module imports ``asap.transport``: only the reference agents' own processes do.

* ``lookup``: call a downstream ASAP agent ``input.calls`` times (1-10) through an ``ASAPClient``
  and report each call's outcome. The downstream URL comes in ``input.downstream_url`` so a drill
  can point it at its fault-injecting proxy; only loopback ``http://127.0.0.1``/``localhost`` URLs
  are accepted (this is a reference deployment, not a general-purpose relay). How the client is
  built (retries, circuit breaker, fallback) is the caller's :class:`ClientPolicy`.
* ``checkpoint``: a long-running task of ``input.steps`` steps (max 20) of ``input.step_seconds``
  (max 2 s) that saves a ``StateSnapshot`` after every step in ``STORE`` (the app's
  ``app.state.snapshot_store``) and, when started again with the same ``input.task_id``, resumes
  after the last saved step.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Callable
from urllib.parse import urlparse

from asap.errors import ASAPConnectionError, ASAPError, ASAPTimeoutError, CircuitOpenError
from asap.models.entities import StateSnapshot
from asap.models.envelope import Envelope
from asap.models.ids import generate_id
from asap.transport import ASAPClient

MAX_CALLS = 10
MAX_STEPS = 20
MAX_STEP_SECONDS = 2.0
_TASK_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

STORE: Any = None  # set by the app module: app.state.snapshot_store


@dataclass
class ClientPolicy:
    """How an agent builds the client for a downstream URL and whether it has a fallback."""
    make_client: Callable[[str], ASAPClient]
    fallback: bool
    long_lived: bool = True


_clients: dict[str, ASAPClient] = {}
_last_good: dict[str, Any] = {}


def _loopback(url: str) -> bool:
    u = urlparse(url)
    return u.scheme == "http" and u.hostname in ("127.0.0.1", "localhost") and u.port is not None


async def lookup(data: dict, sender: str, policy: ClientPolicy) -> tuple[bool, dict]:
    url = str(data.get("downstream_url", "")).rstrip("/")
    if not _loopback(url):
        return False, {"error": "input.downstream_url must be an http://127.0.0.1:<port> URL on the reference deployment"}
    try:
        calls = max(1, min(int(data.get("calls", 1)), MAX_CALLS))
        pause = max(0.0, min(float(data.get("pause_seconds", 0.0)), 5.0))
    except (TypeError, ValueError):
        return False, {"error": "input.calls and input.pause_seconds must be numbers"}
    client = _clients.get(url) if policy.long_lived else None
    if client is None:
        client = policy.make_client(url)
        await client.__aenter__()
        if policy.long_lived:
            _clients[url] = client
    outcomes, ok = [], True
    try:
        for i in range(calls):
            if i and pause:
                await asyncio.sleep(pause)
            req = Envelope(asap_version="0.1", sender=sender, recipient="urn:asap:agent:downstream",
                           payload_type="task.request",
                           payload={"conversation_id": "conv_lookup", "skill_id": "echo", "input": {"call": i}})
            t0 = time.monotonic()
            try:
                reply = await client.send(req)
                _last_good[url] = reply.payload_dict.get("result")
                outcomes.append({"call": i, "outcome": "ok", "ms": round((time.monotonic() - t0) * 1000)})
            except (CircuitOpenError, ASAPConnectionError, ASAPTimeoutError, ASAPError) as e:
                entry = {"call": i, "error": type(e).__name__, "ms": round((time.monotonic() - t0) * 1000)}
                if policy.fallback:
                    entry |= {"outcome": "fallback", "value": _last_good.get(url, {"stale": True, "value": None})}
                else:
                    entry["outcome"] = "error"
                    ok = False
                outcomes.append(entry)
    finally:
        if not policy.long_lived:
            await client.__aexit__(None, None, None)
    return ok, {"downstream_url": url, "calls": outcomes}


async def checkpoint(data: dict) -> tuple[bool, dict]:
    task_id = str(data.get("task_id", ""))
    if not _TASK_ID.match(task_id):
        return False, {"error": "input.task_id must match [A-Za-z0-9_-]{1,64}"}
    try:
        steps = max(1, min(int(data.get("steps", 5)), MAX_STEPS))
        step_seconds = max(0.0, min(float(data.get("step_seconds", 0.5)), MAX_STEP_SECONDS))
    except (TypeError, ValueError):
        return False, {"error": "input.steps and input.step_seconds must be numbers"}
    if STORE is None:
        return False, {"error": "no snapshot store"}
    last = await asyncio.to_thread(STORE.get, task_id)
    start = int(last.data.get("step", 0)) if last is not None else 0
    for step in range(start, steps):
        await asyncio.sleep(step_seconds)
        snap = StateSnapshot(id=f"snap_{generate_id()}", task_id=task_id, version=step + 1,
                             data={"step": step + 1, "of": steps}, checkpoint=True, created_at=datetime.now(UTC))
        await asyncio.to_thread(STORE.save, snap)
    return True, {"task_id": task_id, "resumed_from_step": start, "completed_steps": steps,
                  "snapshot_store": type(STORE).__name__}
