"""How the hardened example agent calls its downstream (inventory) agent."""

import os

from asap.transport import ASAPClient, RetryConfig

INVENTORY_URL = os.environ["INVENTORY_AGENT_URL"]


def inventory_client() -> ASAPClient:
    return ASAPClient(
        INVENTORY_URL,
        timeout=10.0,
        auth_token=os.environ["INVENTORY_AGENT_TOKEN"],
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
