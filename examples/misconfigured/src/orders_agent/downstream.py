"""How the misconfigured example agent calls its downstream (inventory) agent."""

from asap.transport import ASAPClient

INVENTORY_TOKEN = "inv-3f9a7c1e5b2d4a6f8e0c"  # hard-coded: exactly what the checklist forbids


def inventory_client() -> ASAPClient:
    return ASAPClient("http://inventory.internal:8000", auth_token=INVENTORY_TOKEN, require_https=False)
