"""The probe's default transport (httpx over aiohttp) on real loopback servers: what httpx's own
transport did must still hold (one decoding, long headers, a dropped connection named as such,
the HTTP version)."""

import asyncio
import gzip

import pytest

from asap_runbook.errors import ProbeError, TargetTimeout, TargetUnreachable
from asap_runbook.params import ProbeSettings, Target
from asap_runbook.probe import Probe
from tests.badservers import BadServers, _read_head

BODY = b'{"ok": true}'


async def gzipped(reader, writer):
    """Answers every request with a gzip-encoded body and a 20 KiB header, keep-alive."""
    while await _read_head(reader):
        packed = gzip.compress(BODY)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                     b"X-Long: " + b"p" * 20_000 + b"\r\nContent-Length: %d\r\n\r\n" % len(packed) + packed)
        await writer.drain()


async def drops(reader, writer):
    """Promises 1000 bytes, sends 10, closes."""
    await _read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
    await writer.drain()


async def slow(reader, writer):
    await _read_head(reader)
    await asyncio.sleep(30)


@pytest.fixture(scope="module")
def servers():
    with BadServers() as s:
        s.add("gzipped", gzipped)
        s.add("drops", drops)
        s.add("slow", slow)
        yield s


def probe(url: str, **settings) -> Probe:
    return Probe(Target(name="t", base_url=url), ProbeSettings(**settings))


def get_twice(url: str):
    async def go():
        async with probe(url) as p:
            return await p.get("/a"), await p.get("/b")
    return asyncio.run(go())


def test_a_gzip_body_is_decoded_once_and_long_headers_are_read(servers):
    first, second = get_twice(servers.url["gzipped"])
    assert first.status == 200 and first.body == BODY
    assert len(first.headers["x-long"]) == 20_000
    assert first.http_version == "HTTP/1.1"
    assert second.body == BODY  # the same connection, kept alive after a whole body


def test_a_dropped_connection_is_named_not_timed_out(servers):
    async def go():
        async with probe(servers.url["drops"]) as p:
            await p.get("/health")
    with pytest.raises(ProbeError) as e:
        asyncio.run(go())
    assert not isinstance(e.value, TargetTimeout)
    assert e.value.message.startswith(f"GET {servers.url['drops']}/health failed: ")


def test_a_silent_server_is_a_timeout(servers):
    async def go():
        async with probe(servers.url["slow"], timeout_seconds=0.5) as p:
            await p.get("/health")
    with pytest.raises(TargetTimeout, match="did not complete within"):
        asyncio.run(go())


def test_a_closed_port_is_unreachable_with_the_os_reason():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused

    async def go():
        async with probe(f"http://127.0.0.1:{port}") as p:
            await p.get("/health")
    with pytest.raises(TargetUnreachable) as e:
        asyncio.run(go())
    assert e.value.message == f"cannot connect to http://127.0.0.1:{port}/health: connection refused"
