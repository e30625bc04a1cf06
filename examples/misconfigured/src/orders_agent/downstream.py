"""How the misconfigured example agent calls its downstream (inventory) agent."""

from asap.models.envelope import Envelope
from asap.transport import ASAPClient
from asap.transport.client import _helpers

INVENTORY_TOKEN = "inv-3f9a7c1e5b2d4a6f8e0c"  # hard-coded: exactly what the checklist forbids

# "Set DEFAULT_POOL_MAXSIZE for high concurrency", taken literally: a private constant, and
# ASAPClient has already imported its own copy, so this assignment changes nothing.
_helpers.DEFAULT_POOL_MAXSIZE = 1000


async def check_stock(request: Envelope, sku: str) -> dict:
    # a new client per call: new connections and an empty manifest cache every time,
    # no timeout (60 s default), compression switched off, no circuit breaker, no fallback
    async with ASAPClient("http://inventory.internal:8000", auth_token=INVENTORY_TOKEN,
                          require_https=False, compression=False) as client:
        await client.get_manifest("http://inventory.internal:8000/.well-known/asap/manifest.json")
        reply = await client.send(request)
    return reply.payload_dict
