"""Reference deployment for asap-runbook: real ASAP agents behind nginx, Redis, Prometheus.

``ReferenceDeployment`` starts, on loopback and in its own processes:

* a hardened agent (``hardened_app``: bearer auth, nonce required, 10/s;100/min rate limit in Redis,
  1 MiB body limit, JSON logs, ``/ready`` wired to Redis, scrapeable metrics) behind a hardened
  nginx (TLS 1.2/1.3 with a 90-day leaf from a local CA, HSTS, HTTP->HTTPS 301, 1m bodies,
  X-Forwarded-For overwritten);
* ``misconfigured_agents`` misconfigured agents (``misconfigured_app``: defaults, no auth,
  ``ASAP_DEBUG=1``, spoofable proxy headers) each behind a weak nginx (TLS 1.0/1.1, expired
  self-signed certificate, no HSTS, no redirect, 100m bodies);
* a stock agent (``examples/stock/src``, ``orders_service.app:app``: asap-protocol's ``create_app``
  with bearer auth and library defaults) behind Debian's stock nginx.conf with an included site;
* Redis (rate limits, shared nonce store, readiness) and, optionally, Prometheus scraping
  them with the shipped alert rules (and the stock team's own rules for the stock agent).

This package never imports ``asap.transport`` (only the agent subprocesses do).
"""

from .._lazy import exports

# imported on first use: an agent process (`-m uvicorn asap_runbook.reference.hardened_app:app`) and the
# runbook's introspection child that loads it do not need the deployment's machinery
__getattr__, __dir__, __all__ = exports(__name__, globals(), {".deployment": (
    "ALERTMANAGER_CONFIG", "DEFAULT_ALERT_RULES", "HARDENED_AGENT_ID", "MISCONFIGURED_AGENT_ID", "PROBE_SENDER",
    "STOCK_AGENT_ID", "TOKEN_ENV", "AgentInfo", "AlertmanagerInfo", "PrometheusInfo", "RedisInfo",
    "ReferenceDeployment", "ReferenceDeploymentError",
)})
