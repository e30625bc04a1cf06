"""A small fault-injecting HTTP/1.1 proxy for the resilience drills (RES-1..3).

It listens on a free loopback port (or the address the operator gives, for a staging agent that
already routes its downstream calls there) in the runbook's own event loop, in front of a real
downstream ASAP agent, and answers each incoming request according to a plan consumed in
arrival order, then a default action:

* ``ok``        forward to the upstream and relay its answer
* ``503``       answer 503 Service Unavailable
* ``429:N``     answer 429 with ``Retry-After: N``
* ``reset``     close the connection with a TCP reset (SO_LINGER 0), no answer
* ``slow:S``    wait S seconds, then forward

Every request is recorded from the proxy's side (arrival time, the action taken, the envelope
id of the ASAP request, so retries of one call can be told from new calls). Bounded: at most
``max_requests`` requests are served (over its life, whatever the plan); beyond that every request is reset and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import struct
import time
from dataclasses import dataclass, field

import httpx

_HOP = {"host", "connection", "keep-alive", "content-length", "transfer-encoding", "proxy-connection", "upgrade",
        "content-encoding"}


@dataclass
class Arrival:
    n: int
    t: float              # seconds since the proxy started
    method: str
    path: str
    action: str
    envelope_id: str | None
    idempotency_key: str | None
    status: int | None = None   # what the caller got (None: connection reset)

    def as_dict(self) -> dict:
        return {"n": self.n, "t": round(self.t, 3), "path": self.path, "action": self.action,
                "envelope_id": self.envelope_id, "status": self.status}


@dataclass
class FaultProxy:
    upstream: str
    plan: list[str] = field(default_factory=list)
    default: str = "ok"
    max_requests: int = 60
    listen: tuple[str, int] = ("127.0.0.1", 0)   # (host, port); port 0: a free one
    arrivals: list[Arrival] = field(default_factory=list)

    def __post_init__(self):
        self.upstream = self.upstream.rstrip("/")
        self._server: asyncio.base_events.Server | None = None
        self._client: httpx.AsyncClient | None = None
        self._t0 = time.monotonic()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port: int | None = None
        self.served = 0  # requests over the proxy's life: the bound

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.listen[0] in ("0.0.0.0", "") else self.listen[0]
        return f"http://{host}:{self.port}"

    def now(self) -> float:
        """Seconds since the proxy started: the clock of its timeline."""
        return round(time.monotonic() - self._t0, 3)

    async def __aenter__(self) -> "FaultProxy":
        self._client = httpx.AsyncClient(timeout=10, trust_env=False)
        self._server = await asyncio.start_server(self._serve, self.listen[0], self.listen[1])
        self.port = self._server.sockets[0].getsockname()[1]
        self._t0 = time.monotonic()
        return self

    async def __aexit__(self, *exc) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        if self._client is not None:
            await self._client.aclose()

    def set_plan(self, plan: list[str], default: str) -> None:
        """A new schedule from the next request on; the timeline starts again (same clock)."""
        self.plan, self.default, self.arrivals = list(plan), default, []

    def _next_action(self) -> str:
        n = len(self.arrivals)
        self.served += 1
        if self.served > self.max_requests:
            return "reset"
        return self.plan[n] if n < len(self.plan) else self.default

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
                headers: dict[str, str] = {}
                for ln in lines[1:]:
                    if ":" in ln:
                        k, v = ln.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length") or 0)
                body = await reader.readexactly(length) if length else b""
                arrival = Arrival(len(self.arrivals) + 1, time.monotonic() - self._t0, method, path,
                                  self._next_action(), _envelope_id(body, headers.get("content-encoding")),
                                  headers.get("x-idempotency-key"))
                self.arrivals.append(arrival)
                action = arrival.action
                if action == "reset":
                    _reset(writer)
                    return
                if action.startswith("slow:"):
                    await asyncio.sleep(float(action.split(":", 1)[1]))
                    action = "ok"
                if action == "503":
                    status, out_headers, out = 503, {"content-type": "text/plain"}, b"fault proxy: service unavailable\n"
                elif action.startswith("429"):
                    retry_after = action.split(":", 1)[1] if ":" in action else "1"
                    status, out_headers = 429, {"content-type": "application/json", "retry-after": retry_after}
                    out = json.dumps({"jsonrpc": "2.0", "id": None, "error": {
                        "code": 429, "message": "Rate limit exceeded", "data": {"retry_after": int(retry_after)}}}).encode()
                else:
                    try:
                        resp = await self._client.request(
                            method, self.upstream + path, content=body,
                            headers={k: v for k, v in headers.items() if k not in _HOP} | (
                                {"content-encoding": headers["content-encoding"]} if "content-encoding" in headers else {}))
                        status, out = resp.status_code, resp.content
                        out_headers = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP}
                    except httpx.HTTPError:
                        status, out_headers, out = 502, {"content-type": "text/plain"}, b"fault proxy: upstream failed\n"
                arrival.status = status
                writer.write(_response(status, out_headers, out))
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    def timeline(self) -> list[dict]:
        return [a.as_dict() for a in self.arrivals]


def _envelope_id(body: bytes, encoding: str | None) -> str | None:
    try:
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "br":
            import brotli  # optional: only if the client compressed with br
            body = brotli.decompress(body)
        doc = json.loads(body)
        return str(doc["params"]["envelope"]["id"])
    except Exception:  # noqa: BLE001 - not an ASAP request: no id
        return None


def _response(status: int, headers: dict[str, str], body: bytes) -> bytes:
    reason = {200: "OK", 429: "Too Many Requests", 502: "Bad Gateway", 503: "Service Unavailable"}.get(status, "Status")
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
