"""Real misbehaving servers on free loopback ports, for robustness tests.

Each runs on its own asyncio loop in a background thread, so runs in other processes (the
notebook kernels of `asap-runbook run`) can reach them too.
"""

from __future__ import annotations

import asyncio
import json
import threading

MANIFEST_PATH = b"/.well-known/asap/manifest.json"


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return b""


async def hang(reader, writer):
    """Accepts the connection, reads the request, never answers."""
    await _read_head(reader)
    await asyncio.Event().wait()


async def trickle(reader, writer):
    """Answers 200 with a promised 100 kB JSON body, one byte every 0.1 s."""
    await _read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
    body = b'{"id": "urn:asap:agent:trickle", "name": "' + b"x" * 99_000
    for i in range(len(body)):
        writer.write(body[i:i + 1])
        await writer.drain()
        await asyncio.sleep(0.1)


async def huge(reader, writer):
    """Answers 200 with a 64 MiB JSON body that starts like a manifest, as fast as it can."""
    await _read_head(reader)
    size = 64 * 1024 * 1024
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % size)
    writer.write(b'{"id": "urn:asap:agent:huge", "pad": "')
    chunk = b"x" * 65536
    sent = 0
    while sent < size:
        writer.write(chunk)
        await writer.drain()
        sent += len(chunk)


async def not_asap(reader, writer):
    """A plain web server: 200 text/html for every path, keep-alive."""
    while True:
        head = await _read_head(reader)
        if not head:
            break
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if length:
            await reader.readexactly(length)
        body = b"<html><body><h1>It works!</h1></body></html>"
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()


async def fake_agent(reader, writer, delay: float, stats: dict, port: int):
    """A minimal ASAP-looking server (manifest + 200 for anything) that answers after `delay`,
    and records how many of the fake agents have a request in flight at once."""
    while True:
        head = await _read_head(reader)
        if not head:
            break
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if length:
            await reader.readexactly(length)
        stats["active"][port] = stats["active"].get(port, 0) + 1
        busy = sum(1 for n in stats["active"].values() if n)
        stats["max_ports_busy"] = max(stats["max_ports_busy"], busy)
        await asyncio.sleep(delay)
        stats["active"][port] -= 1
        path = head.split(b" ", 2)[1] if b" " in head else b"/"
        doc = {"id": f"urn:asap:agent:fake-{port}", "name": "fake", "endpoints": {}} if path == MANIFEST_PATH else {}
        body = json.dumps(doc).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()


class BadServers:
    """Start handlers on free loopback ports; `.url[name]` is each one's base URL."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.servers: list[asyncio.base_events.Server] = []
        self.url: dict[str, str] = {}
        self.stats = {"active": {}, "max_ports_busy": 0}

    def __enter__(self):
        self.thread.start()
        return self

    def add(self, name: str, handler) -> str:
        async def wrapped(reader, writer):
            try:
                await handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        async def start():
            return await asyncio.start_server(wrapped, "127.0.0.1", 0)

        server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(5)
        self.servers.append(server)
        port = server.sockets[0].getsockname()[1]
        self.url[name] = f"http://127.0.0.1:{port}"
        return self.url[name]

    def add_fake_agent(self, name: str, delay: float) -> str:
        holder = {}

        async def handler(reader, writer):
            await fake_agent(reader, writer, delay, self.stats, holder["port"])

        url = self.add(name, handler)
        holder["port"] = int(url.rsplit(":", 1)[1])
        return url

    def __exit__(self, *exc):
        async def stop():
            for s in self.servers:
                s.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
