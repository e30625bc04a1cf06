"""Settings, read once from the environment (12-factor style, with defaults for local runs)."""

import os

API_TOKEN = os.environ.get("API_TOKEN", "dev-token-change-me")
PUBLIC_URL = os.environ.get("PUBLIC_URL", "https://orders.example.com").rstrip("/")
AGENT_ID = os.environ.get("AGENT_ID", "urn:asap:agent:orders-service")

INVENTORY_URL = os.environ.get("INVENTORY_AGENT_URL", "http://localhost:8001")
INVENTORY_TOKEN = os.environ.get("INVENTORY_AGENT_TOKEN", "")

# Passed as is to ASAPClient(**INVENTORY_CLIENT): retries and backoff are the library's defaults.
INVENTORY_CLIENT = {
    "timeout": float(os.environ.get("INVENTORY_TIMEOUT", "10")),
    "auth_token": INVENTORY_TOKEN or None,
}

LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO")
