"""Stock levels from the inventory agent (another ASAP agent)."""

import logging

from asap.models.envelope import Envelope
from asap.transport import ASAPClient

from . import settings

log = logging.getLogger(__name__)


async def stock_level(sender, sku):
    request = Envelope(
        asap_version="0.1",
        sender=sender,
        recipient="urn:asap:agent:inventory",
        payload_type="task.request",
        payload={"conversation_id": f"stock-{sku}", "skill_id": "stock_level", "input": {"sku": sku}},
    )
    async with ASAPClient(settings.INVENTORY_URL, **settings.INVENTORY_CLIENT) as client:
        reply = await client.send(request)
    log.info("inventory reply for %s: %s", sku, reply.payload)
    return reply.payload_dict.get("result") or {}
