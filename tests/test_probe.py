"""The probe's own contract, on a mock transport (edge cases a real agent does not produce:
a server that echoes the bearer token back, a body larger than the read bound)."""

import asyncio

import httpx
import pytest

from asap_runbook.errors import NotAnAsapAgent, TargetUnreachable
from asap_runbook.params import ProbeSettings, Target
from asap_runbook.probe import REDACTED, Probe

CANARY = "canary-token-7d1f0c2e9b8a4f6e"


def target(monkeypatch):
    monkeypatch.setenv("PROBE_TEST_TOKEN", CANARY)
    return Target(name="t", base_url="https://agent.test", token_env="PROBE_TEST_TOKEN")


def run(coro):
    return asyncio.run(coro)


def test_token_never_reaches_evidence(monkeypatch):
    def echo(request: httpx.Request):
        return httpx.Response(200, headers={"server": f"echo {request.headers['authorization']}"},
                              text=f"you sent {request.headers['authorization']}")

    async def go():
        async with Probe(target(monkeypatch), ProbeSettings(), transport=httpx.MockTransport(echo)) as p:
            return await p.send({"x": 1})
    resp = run(go())
    assert CANARY in resp.text  # the server really echoed it...
    dumped = repr(resp.evidence)
    assert CANARY not in dumped  # ...and the evidence does not carry it
    assert f"Bearer {REDACTED}" in dumped


def test_read_is_bounded(monkeypatch):
    big = b"x" * 200_000

    async def go():
        settings = ProbeSettings(max_response_bytes=4096)
        async with Probe(target(monkeypatch), settings,
                         transport=httpx.MockTransport(lambda r: httpx.Response(200, content=big))) as p:
            return await p.get("/health")
    resp = run(go())
    assert resp.truncated and len(resp.body) == 4096


def test_not_an_asap_agent(monkeypatch):
    async def go():
        async with Probe(target(monkeypatch), ProbeSettings(),
                         transport=httpx.MockTransport(lambda r: httpx.Response(200, text="<html>hello</html>"))) as p:
            await p.manifest()
    with pytest.raises(NotAnAsapAgent, match="without an ASAP manifest"):
        run(go())


def test_connection_refused_is_one_sentence(monkeypatch):
    def refuse(request):
        raise httpx.ConnectError("[Errno 111] Connection refused")

    async def go():
        async with Probe(target(monkeypatch), ProbeSettings(), transport=httpx.MockTransport(refuse)) as p:
            await p.get("/health")
    with pytest.raises(TargetUnreachable) as e:
        run(go())
    assert e.value.message == "cannot connect to https://agent.test/health: [Errno 111] Connection refused"


def test_tls_contexts_are_shared_until_the_ca_file_changes(tmp_path):
    """One context per CA file and process (loading a trust store costs ~50 ms of CPU per target of a
    fleet), read again once the file is edited (a walk in JupyterLab keeps its kernel)."""
    import os
    from asap_runbook import _tls
    from asap_runbook.probe import ssl_context
    ca = tmp_path / "ca.pem"
    ca.write_bytes(_tls._self_signed("first")[0])
    first, first_verify = ssl_context(ca), _tls._verify_context(str(ca), _tls.file_version(str(ca)))
    assert ssl_context(ca) is first
    assert _tls._verify_context(str(ca), _tls.file_version(str(ca))) is first_verify
    ca.write_bytes(_tls._self_signed("second")[0])
    st = ca.stat()
    os.utime(ca, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a new version even within the clock's granularity
    assert ssl_context(ca) is not first
    assert _tls._verify_context(str(ca), _tls.file_version(str(ca))) is not first_verify


MANIFEST = {"id": "urn:asap:agent:t", "name": "t"}


def _recording(seen: list):
    """A transport that records every request it answers: the manifest at its path, 200 elsewhere."""
    async def answer(request: httpx.Request):
        seen.append((request.method, request.url.path))
        await asyncio.sleep(0.01)  # the readers below ask while the first GET is still in flight
        if request.url.path == "/.well-known/asap/manifest.json":
            return httpx.Response(200, json=MANIFEST, headers={"strict-transport-security": "max-age=1"})
        return httpx.Response(200, text="ok")
    return httpx.MockTransport(answer)


def test_get_once_sends_one_get_for_every_reader_of_a_route(monkeypatch):
    """Checks of one target that read a static route at the same moment share one GET, and each sees
    that exchange as its evidence; get() still sends its own."""
    seen = []

    async def go():
        async with Probe(target(monkeypatch), ProbeSettings(), transport=_recording(seen)) as p:
            a, b, c = await asyncio.gather(p.get_once("/health"), p.get_once("/health"), p.get_once("/health"))
            own = await p.get("/health")
            return a, b, c, own, p.requests_sent
    a, b, c, own, sent = run(go())
    assert seen == [("GET", "/health"), ("GET", "/health")] and sent == 2
    assert a is b is c and a.evidence["request"]["url"] == "https://agent.test/health"
    assert own is not a


def test_the_manifest_look_is_the_shared_get_of_its_route(monkeypatch):
    """The preflight's manifest() and a check reading the route's headers (HSTS) are one GET."""
    seen = []

    async def go():
        async with Probe(target(monkeypatch), ProbeSettings(), transport=_recording(seen)) as p:
            doc = await p.manifest()
            resp = await p.get_once("/.well-known/asap/manifest.json")
            return doc, resp
    doc, resp = run(go())
    assert seen == [("GET", "/.well-known/asap/manifest.json")]
    assert doc == MANIFEST and resp.headers["strict-transport-security"] == "max-age=1"


def test_get_once_shares_a_failure(monkeypatch):
    calls = []

    def refuse(request):
        calls.append(request.url.path)
        raise httpx.ConnectError("[Errno 111] Connection refused")

    async def go():
        async with Probe(target(monkeypatch), ProbeSettings(), transport=httpx.MockTransport(refuse)) as p:
            return await asyncio.gather(p.get_once("/docs"), p.get_once("/docs"), return_exceptions=True)
    first, second = run(go())
    assert isinstance(first, TargetUnreachable) and isinstance(second, TargetUnreachable) and calls == ["/docs"]
