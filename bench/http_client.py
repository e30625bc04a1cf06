"""Client CPU per request (not a test): httpx's own transport vs the probe's (httpx over aiohttp).

Starts one reference deployment (a hardened and a misconfigured agent behind nginx with TLS) and
sends --requests kept-alive GETs of /health and read-only POSTs of a JSON-RPC request to /asap
through each transport, then --connections GETs on a new client each (a TLS handshake each). It
prints this process's CPU milliseconds per request (`resource.getrusage`: the event loop and the
TLS included) and the ratio of the two transports, measured in the same run.

    .venv/bin/python bench/http_client.py [--requests 300] [--connections 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from asap_runbook import fleet, probe  # noqa: E402
from asap_runbook._aiohttp_transport import AiohttpTransport  # noqa: E402
from bench import deployment  # noqa: E402


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def per_request(make, base_url: str, n: int, connections: int) -> dict[str, float]:
    body = json.dumps(probe.rpc(probe.probe_envelope("urn:asap:agent:runbook-bench"))).encode()
    out = {}
    async with make() as client:
        await client.get(base_url + "/health")  # the connection is open before counting
        for kind, method, path, content in (("GET, kept alive", "GET", "/health", None),
                                             ("POST, kept alive", "POST", "/asap", body)):
            c0 = cpu()
            for _ in range(n):
                async with client.stream(method, base_url + path, content=content,
                                         headers={"Content-Type": "application/json"} if content else None) as r:
                    async for _chunk in r.aiter_bytes():
                        pass
            out[kind] = (cpu() - c0) / n * 1000
    c0 = cpu()
    for _ in range(connections):
        async with make() as client:
            await client.get(base_url + "/health")
    out["GET on a new connection"] = (cpu() - c0) / connections * 1000
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--connections", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as work, \
            deployment(lambda: fleet.fleet_deployment(Path(work) / "dep", 2, prometheus=False)) as dep:
        params = fleet.fleet_params(dep, Path(work) / "p.yaml", active_probes=False)
        target = yaml.safe_load(params.read_text())["targets"][1]  # the misconfigured agent, behind nginx
        context = probe.ssl_context(target.get("ca_file"), target.get("tls_verify", True))
        clients = {
            "httpx (httpcore)": lambda: httpx.AsyncClient(verify=context),
            "httpx over aiohttp (the probe's)": lambda: httpx.AsyncClient(transport=AiohttpTransport(context)),
        }
        figures = {name: asyncio.run(per_request(make, target["base_url"], args.requests, args.connections))
                   for name, make in clients.items()}
    names = list(figures)
    print(f"\nclient CPU per request (ms), {args.requests} requests, {args.connections} new connections, "
          f"against {target['base_url']} (misconfigured reference agent behind nginx)\n")
    print(f"| request | {' | '.join(names)} | ratio |")
    print("|---|---:|---:|---:|")
    for kind in figures[names[0]]:
        a, b = figures[names[0]][kind], figures[names[1]][kind]
        print(f"| {kind} | {a:.2f} | {b:.2f} | {a / b:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
