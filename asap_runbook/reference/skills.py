"""The reference agents' real jobs that touch their resilience paths (agent subprocesses only).

Importing this module imports ``asap.transport``: only the reference agents' own processes do.
Nothing here exists for the runbook: the drills drive these skills the way a client would.

* ``quote``: a price quote for ``input.sku`` x ``input.quantity``. The stock level comes from the
  inventory agent (``INVENTORY_AGENT_URL``, read at start-up like any downstream setting), asked
  through an ``ASAPClient`` built by the agent's :class:`ClientPolicy` (retries, breaker, fallback).
* ``export_report``: a long-running export of ``input.pages`` pages (max 20, ``PAGE_SECONDS`` each)
  for ``input.report_id``. After every page it saves a ``StateSnapshot`` (task id
  ``report-<report_id>``) in ``STORE`` (the app's ``app.state.snapshot_store``); a request for a
  report that already has saved pages continues after the last one.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Callable

from asap.errors import ASAPError
from asap.models.entities import StateSnapshot
from asap.models.envelope import Envelope
from asap.models.ids import generate_id
from asap.transport import ASAPClient

MAX_PAGES = 20
PAGE_SECONDS = 1.0
UNIT_PRICE_CENTS = 1250
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
INVENTORY_URL = os.environ.get("INVENTORY_AGENT_URL", "").rstrip("/")

STORE: Any = None  # set by the app module: app.state.snapshot_store


@dataclass
class ClientPolicy:
    """How an agent builds its inventory client and whether it answers from the last known level."""
    make_client: Callable[[str], ASAPClient]
    fallback: bool
    long_lived: bool = True


_client: ASAPClient | None = None
_last_level: dict[str, int] = {}


async def _stock_level(sku: str, sender: str, policy: ClientPolicy) -> int:
    global _client
    client = _client if policy.long_lived else None
    if client is None:
        client = policy.make_client(INVENTORY_URL)
        await client.__aenter__()
        if policy.long_lived:
            _client = client
    req = Envelope(asap_version="0.1", sender=sender, recipient="urn:asap:agent:inventory",
                   payload_type="task.request",
                   payload={"conversation_id": f"conv_{generate_id()}", "skill_id": "stock_level", "input": {"sku": sku}})
    try:
        reply = await client.send(req)
    finally:
        if not policy.long_lived:
            await client.__aexit__(None, None, None)
    result = reply.payload_dict.get("result") or {}
    level = result.get("level") if isinstance(result, dict) else None
    return int(level) if isinstance(level, int) else 100  # an inventory that does not count: assume in stock


async def quote(data: dict, sender: str, policy: ClientPolicy) -> tuple[bool, dict]:
    sku = str(data.get("sku", ""))
    if not _ID.match(sku):
        return False, {"error": "input.sku must match [A-Za-z0-9_-]{1,64}"}
    try:
        quantity = max(1, min(int(data.get("quantity", 1)), 10_000))
    except (TypeError, ValueError):
        return False, {"error": "input.quantity must be a number"}
    if not INVENTORY_URL:
        return False, {"error": "no inventory agent configured (INVENTORY_AGENT_URL)"}
    stale = False
    try:
        level = await _stock_level(sku, sender, policy)
        _last_level[sku] = level
    except ASAPError as e:
        if not policy.fallback or sku not in _last_level:
            return False, {"error": f"inventory unavailable: {type(e).__name__}"}
        level, stale = _last_level[sku], True
    return True, {"sku": sku, "quantity": quantity, "available": level >= quantity,
                  "price_cents": quantity * UNIT_PRICE_CENTS, "stock_level_stale": stale}


async def export_report(data: dict) -> tuple[bool, dict]:
    report_id = str(data.get("report_id", ""))
    if not _ID.match(report_id):
        return False, {"error": "input.report_id must match [A-Za-z0-9_-]{1,64}"}
    try:
        pages = max(1, min(int(data.get("pages", 5)), MAX_PAGES))
    except (TypeError, ValueError):
        return False, {"error": "input.pages must be a number"}
    if STORE is None:
        return False, {"error": "no snapshot store"}
    task_id = f"report-{report_id}"
    last = await asyncio.to_thread(STORE.get, task_id)
    done = int(last.data.get("pages_done", 0)) if last is not None else 0
    rows = int(last.data.get("rows", 0)) if last is not None else 0
    for page in range(done, pages):
        await asyncio.sleep(PAGE_SECONDS)  # stands for the query and rendering of one page
        rows += 50 + page
        snap = StateSnapshot(id=f"snap_{generate_id()}", task_id=task_id, version=page + 1,
                             data={"pages_done": page + 1, "of": pages, "rows": rows}, checkpoint=True,
                             created_at=datetime.now(UTC))
        await asyncio.to_thread(STORE.save, snap)
    return True, {"report_id": report_id, "pages": pages, "rows": rows}
