"""httpx's client over aiohttp's connections: the probe's default transport.

Why: a fleet run sends ~35 requests per target, and httpx's own connection layer (httpcore on
anyio, TLS through a Python memory BIO) cost 2.7-3.5 ms of client CPU per kept-alive request on
the reference machine, and 7-9 ms per new TLS connection; over aiohttp's connections (a C parser,
asyncio's TLS) 1.9-2.5 ms and 5.8-7.3 ms (bench/http_client.py, BENCHMARKS.md). httpx stays the client
and the seam: checks, evidence, redirects (never followed), decoding and the tests'
``httpx.MockTransport`` are unchanged.

Why not the ``httpx-aiohttp`` package: it maps a dropped connection (aiohttp's
``ClientConnectionError``) to ``ConnectTimeout``, which the probe reports as "did not complete
within N s", and it keeps aiohttp's cookie jar, which would carry a cookie from one request to
the next behind httpx's back.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import aiohttp
import httpx

# h11 (httpx's own parser) takes header lines of up to 100 KiB; aiohttp's default is 8 KiB, and a
# long Content-Security-Policy or cookie must not turn into "could not look"
_MAX_HEADER_BYTES = 100 * 1024


def _mapped(exc: BaseException) -> Exception:
    """The httpx exception that says what happened (the probe turns httpx's into ProbeError's)."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):  # OpenSSL's own words, as httpx gives them
        return httpx.ConnectError(str(exc.certificate_error))
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(text)
    if isinstance(exc, (aiohttp.SocketTimeoutError, asyncio.TimeoutError)):
        return httpx.ReadTimeout(text)
    if isinstance(exc, aiohttp.ClientConnectorError):  # refused, unresolvable, TLS handshake or certificate
        return httpx.ConnectError(text)
    if isinstance(exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientResponseError)):
        return httpx.RemoteProtocolError(text)  # closed before a whole response, or not HTTP
    if isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ClientOSError)):
        return httpx.ReadError(text)
    return httpx.TransportError(text)


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse):
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except aiohttp.ClientError as e:
            raise _mapped(e) from e

    async def aclose(self) -> None:
        # a body read to its end gives the connection back; one cut short (the probe's read bound) drops it
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp session (its own connection pool, no cookie jar, no decompression, no redirects)."""

    def __init__(self, ssl_context: ssl.SSLContext):
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:  # inside the running loop, as aiohttp wants
            self._session = aiohttp.ClientSession(
                # httpx's own pool limits: 100 connections, an idle one kept 5 s (a bare uvicorn closes idle
                # connections after 5 s; reusing one it is closing would fail a POST)
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=100, keepalive_timeout=5.0),
                cookie_jar=aiohttp.DummyCookieJar(),  # httpx keeps the client's cookies
                auto_decompress=False,  # httpx decodes, within the probe's read bound
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),  # httpx sends its own
                max_line_size=_MAX_HEADER_BYTES, max_field_size=_MAX_HEADER_BYTES,
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout", {})
        try:
            data = request.content or None
        except httpx.RequestNotRead:
            data = request.stream
            request.headers.pop("transfer-encoding", None)  # aiohttp chunks a stream itself
        try:
            response = await self._open().request(
                request.method, str(request.url), headers=request.headers.multi_items(), data=data,
                allow_redirects=False, compress=None,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout.get("connect"),
                                              sock_read=timeout.get("read")))
        except aiohttp.ClientError as e:
            raise _mapped(e) from e
        except asyncio.TimeoutError as e:
            raise _mapped(e) from e
        return httpx.Response(
            status_code=response.status, headers=response.raw_headers, stream=_Body(response), request=request,
            extensions={"http_version": f"HTTP/{response.version.major}.{response.version.minor}".encode(),
                        "reason_phrase": (response.reason or "").encode()})

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
