"""How the hardened example agent calls its downstream (inventory) agent.

One long-lived client per downstream agent (pool and manifest cache are reused), explicit
timeouts, retries with backoff, a circuit breaker, and a fallback to the last known answer.
"""

import functools
import os

from asap.errors import ASAPConnectionError, ASAPTimeoutError, CircuitOpenError
from asap.models.envelope import Envelope
from asap.transport import ASAPClient, RetryConfig
from asap.transport.cache import ManifestCache

INVENTORY_URL = os.environ["INVENTORY_AGENT_URL"]

# Manifests of downstream agents, shared by every lookup in this process (5 min, like the server's max-age).
MANIFESTS = ManifestCache(default_ttl=300, max_size=100)

_last_known: dict[str, dict] = {}  # fallback: the last good answer per SKU


@functools.cache
def inventory_client() -> ASAPClient:
    return ASAPClient(
        INVENTORY_URL,
        timeout=10.0,
        auth_token=os.environ["INVENTORY_AGENT_TOKEN"],
        pool_connections=20,
        pool_maxsize=50,
        compression=True,
        compression_threshold=1024,
        retry_config=RetryConfig(
            max_retries=4,
            base_delay=0.5,
            max_delay=8.0,
            jitter=True,
            circuit_breaker_enabled=True,
            circuit_breaker_threshold=5,
            circuit_breaker_timeout=30.0,
        ),
    )


async def check_stock(request: Envelope, sku: str) -> dict:
    client = inventory_client()
    try:
        reply = await client.send(request)
    except (CircuitOpenError, ASAPConnectionError, ASAPTimeoutError):
        # degraded but useful: the last answer we had, marked stale
        return {**_last_known.get(sku, {"sku": sku, "in_stock": None}), "stale": True}
    _last_known[sku] = reply.payload_dict
    return reply.payload_dict
