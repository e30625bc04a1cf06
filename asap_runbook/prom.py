"""Prometheus access through prometheus-api-client, with every failure turned into one sentence.

prometheus-api-client is synchronous (requests); checks call it in a worker thread so a slow
Prometheus does not stall the probes of other targets.
"""

from __future__ import annotations

import asyncio
import json
import re
import warnings
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from requests.adapters import HTTPAdapter, Retry
from urllib3.exceptions import InsecureRequestWarning

from . import _yaml
from .errors import PrometheusError
from .params import HttpEndpoint

POOL_SIZE = 32  # asyncio.to_thread's default executor has at most 32 threads
_STATUS = re.compile(r"HTTP Status Code (\d{3})|^(\d{3}) (?:Client|Server) Error")
_CERT_PROBLEM = re.compile(r"certificate verify failed: ([^(')\]]+)", re.I)


class Prom:
    """One Prometheus-compatible API (`settings`: the parameters at `where`, e.g. "prometheus")."""

    def __init__(self, settings: HttpEndpoint, where: str = "prometheus", name: str = "Prometheus"):
        self.settings, self.where, self.name = settings, where, name
        session = requests.Session()
        session.verify = settings.verify
        if not settings.tls_verify:  # the operator's explicit choice: no warning per request in the report
            warnings.filterwarnings("ignore", category=InsecureRequestWarning)
        # no retries: a down Prometheus must cost one timeout, not several
        no_retry = Retry(total=0, connect=0, read=0, status=0)
        self.client = PrometheusConnect(url=settings.url, timeout=settings.timeout_seconds, session=session,
                                        headers=settings.request_headers() or None,
                                        auth=settings.basic_credentials(), retry=no_retry)
        # one Prom serves every target of a section run from asyncio's worker threads: keep a connection per
        # thread (the default pool of 10 would drop and reopen them)
        session.mount(settings.url, HTTPAdapter(max_retries=no_retry, pool_maxsize=POOL_SIZE))

    def close(self) -> None:
        self.client._session.close()

    def _call(self, what: str, fn, *args, **kw) -> Any:
        unset = self.settings.unset_env(self.where)
        if unset:
            raise PrometheusError(f"{self.name} at {self.settings.url} was not asked {what}: {unset}")
        try:
            return fn(*args, **kw)
        except Exception as e:  # requests / PrometheusApiClientException: both mean "could not look"
            raise PrometheusError(f"{self.name} at {self.settings.url} could not answer {what}: "
                                  f"{self._why(e)}") from None

    def _why(self, e: Exception) -> str:
        """The cause, in words an operator acts on (never a header or a credential: none is in `e`)."""
        text = str(e)
        if isinstance(e, requests.exceptions.SSLError):
            m = _CERT_PROBLEM.search(text)
            if m:
                return (f"its TLS certificate did not verify ({m.group(1).strip()}); set {self.where}.ca_file to "
                        "the CA that signed it")
            return "the TLS handshake failed (is the URL's scheme and port right?)"
        if isinstance(e, requests.exceptions.Timeout):
            return f"no answer within {self.settings.timeout_seconds:g} s ({self.where}.timeout_seconds)"
        if isinstance(e, json.JSONDecodeError):  # requests' own is one too
            return "its answer is not the Prometheus API's JSON (is the URL's path prefix right?)"
        m = _STATUS.search(text)
        code = int(m.group(1) or m.group(2)) if m else getattr(getattr(e, "response", None), "status_code", None)
        sent = self.settings.credentials_hint(self.where)
        if code in (401, 403) and sent is None:
            return (f"{code} {'Unauthorized' if code == 401 else 'Forbidden'}, it wants credentials and none are "
                    f"configured (set {self.where}.basic_auth, bearer_token_env or headers)")
        if code == 401:
            return f"401 Unauthorized, it refused {sent}"
        if code == 403:
            return f"403 Forbidden, {sent} may not read it"
        if code == 404:
            return (f"404 Not Found, nothing answers the API under {self.settings.url} (is the path prefix "
                    f"right, e.g. https://host/prometheus?)")
        first = text.splitlines()[0][:200] if text else type(e).__name__
        if "Connection refused" in first or "Max retries" in first or "NewConnectionError" in first:
            return "connection refused"
        return first

    async def targets(self) -> list[dict]:
        data = await asyncio.to_thread(self._call, "the targets query", self.client.get_targets)
        return data.get("activeTargets", []) if isinstance(data, dict) else []

    async def query(self, promql: str, at=None) -> list[dict]:
        """Instant query, evaluated now or `at` (a datetime): a plot can then ask for the very instant a verdict judged."""
        params = {"time": f"{at.timestamp():.3f}"} if at is not None else None
        return await asyncio.to_thread(self._call, f"the query {promql!r}", self.client.custom_query, promql, params)

    async def query_range(self, promql: str, start, end, step: str) -> list[dict]:
        return await asyncio.to_thread(self._call, f"the range query {promql!r}", self.client.custom_query_range,
                                       promql, start_time=start, end_time=end, step=step)

    async def _api_get(self, what: str, path: str, params: dict | None = None) -> Any:
        """GET an API endpoint prometheus-api-client has no wrapper for; returns its `data`."""
        def get():
            resp = self.client._session.get(f"{self.client.url}{path}", params=params, headers=self.client.headers,
                                            auth=self.client.auth, timeout=self.settings.timeout_seconds,
                                            verify=self.client._session.verify)
            resp.raise_for_status()
            return resp.json()["data"]
        return await asyncio.to_thread(self._call, what, get)

    async def target_metadata(self, job: str, metric: str) -> list[dict]:
        """Metric metadata (HELP/TYPE) the job's targets exposed in their last scrape: a family can
        be declared while it has no series yet."""
        match = '{job="%s"}' % job.replace('"', '\\"')
        return await self._api_get("the targets metadata query", "/api/v1/targets/metadata",
                                   {"match_target": match, "metric": metric}) or []

    async def build_info(self) -> dict:
        """Prometheus's version: the cheapest question that proves it answers."""
        return await self._api_get("the build info query", "/api/v1/status/buildinfo")

    async def rules(self) -> list[dict]:
        """Loaded rule groups."""
        return (await self._api_get("the rules query", "/api/v1/rules"))["groups"]

    async def alertmanagers(self) -> dict:
        """The Alertmanagers Prometheus sends its alerts to: {activeAlertmanagers: [{url}], droppedAlertmanagers}."""
        return await self._api_get("the alertmanagers query", "/api/v1/alertmanagers") or {}

    async def external_labels(self) -> dict[str, str]:
        """global.external_labels of the loaded configuration: Prometheus adds them to every alert it sends."""
        text = (await self._api_get("the configuration query", "/api/v1/status/config") or {}).get("yaml") or ""
        conf = _yaml.safe_load(text) or {}  # Prometheus's own rendering of a configuration it loaded
        return {str(k): str(v) for k, v in ((conf.get("global") or {}).get("external_labels") or {}).items()}


def prom_for(params) -> Prom | None:
    return Prom(params.prometheus) if params.prometheus else None
