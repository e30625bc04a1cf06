"""Scaling checks (checklist: Scaling).

Three kinds of evidence, each read once per target and run (kept in ``ctx.state``):
the agent's source (``source.client_usage``: how it builds its ASAPClients, parsed, never
imported), its deployment files (``k8s``: Kubernetes manifests, ``source``: process
configuration) and its app object (``introspect``: loaded in a separate process).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import math
import re
from dataclasses import dataclass, field

from .. import k8s
from ..k8s import Instances, Manifests, load_manifests, memory_bytes, target_instances
from ..errors import ProbeError, RateLimited
from ..introspect import introspect_target
from ..probe import envelope, rpc
from ..results import Status
from ..source import CLIENT_DEFAULTS, UNKNOWN, ClientUsage, ProcessConfig, client_usage, read_process_config
from ._observe import judged, judged_by
from ._registry import AGENT, CheckContext, Finding, check

STATE_ENV = ("ASAP_RATE_LIMIT_BACKEND", "ASAP_STORAGE_BACKEND")  # the container settings SCALE-HSCALE-2 reads
IDLE_WORKER_BYTES = 80 * 2**20  # reference §3.2: ~80 MB RSS per idle asap-protocol worker
PRIVATE_CONSTANTS_NOTE = ("DEFAULT_POOL_MAXSIZE, DEFAULT_POOL_CONNECTIONS and MANIFEST_REQUEST_TIMEOUT are private "
                          "client-side constants in asap.transport.client._helpers (asap-protocol 2.5.10): not server "
                          "settings, not exported, no environment variable; the knobs are ASAPClient(pool_maxsize=, "
                          "pool_connections=, timeout=)")


# ------------------------------------------------------------------------------------------ evidence
# each read once per target and run (ctx.once), even when checks ask concurrently
async def usage(ctx: CheckContext) -> ClientUsage | Finding:
    root = ctx.target.source_dir
    if root is None:
        return Finding.skipped(f"targets[{ctx.target.name}].source_dir is not set (the agent's Python source)")
    u = await ctx.once("client_usage", lambda: asyncio.to_thread(client_usage, root))
    if not u.clients:
        return Finding.skipped(f"the source under {root} builds no ASAPClient, so the agent calls no downstream agent",
                               [("files that did not parse", u.unparsed)] if u.unparsed else None)
    return u


async def manifests(ctx: CheckContext) -> Manifests | Finding:
    if not ctx.target.k8s_manifests:
        return Finding.skipped(f"targets[{ctx.target.name}].k8s_manifests is not set (Deployment, HPA, Service files)")
    m = await ctx.once("k8s", lambda: asyncio.to_thread(load_manifests, list(ctx.target.k8s_manifests)))
    if not m.workloads:
        return Finding.errored(f"no Deployment/StatefulSet in {', '.join(m.files)}")
    return m


async def app_config(ctx: CheckContext) -> dict | Finding:
    t = ctx.target
    if t.app is None:
        return Finding.skipped(f"targets[{t.name}].app is not set (module:attribute of the agent's app)")
    return await ctx.once("app_config", lambda: asyncio.to_thread(introspect_target, t, ctx.params))


def process(ctx: CheckContext) -> ProcessConfig | None:
    path = ctx.target.process_config
    return read_process_config(path) if path is not None else None


async def instances(ctx: CheckContext) -> Instances:
    """Processes serving the target, by the one rule (k8s.count_instances)."""
    return await ctx.once("instances", lambda: asyncio.to_thread(target_instances, ctx.target))


def _count(inst: Instances) -> tuple[int, str]:
    """(at least this many processes, how it was counted): a lower bound is enough to say "several"."""
    return inst.at_least, inst.how + ("" if inst.exact is not None else f"; at least {inst.at_least}")


def _manual(summary: str, evidence=None) -> Finding:
    return Finding._make(Status.MANUAL, summary, evidence)


def _unknown(v) -> bool:
    return v == UNKNOWN


def _settings_table(u: ClientUsage, names: list[str]) -> list[dict]:
    rows = []
    for s in u.clients:
        row = {"client": s.where(), "built": s.why}
        for n in names:
            value, explicit = s.setting(n)
            row[n] = ("unknown (settings passed through " + ", ".join(s.unresolved) + ")" if _unknown(value)
                      else f"{value} ({'set' if explicit else 'library default'})")
        rows.append(row)
    return rows


def _scanned(u: ClientUsage) -> str:
    return f"{len(u.clients)} ASAPClient construction(s) in {u.files} file(s) under {u.root}"


# ------------------------------------------------------------------------------------------ client
def judge_connection_pooling(u: ClientUsage) -> Finding:
    ev = [("ASAPClient pooling (default pool_connections=100, pool_maxsize=100 per client)",
           _settings_table(u, ["pool_connections", "pool_maxsize", "pool_timeout"]))]
    per_call = [s for s in u.clients if s.long_lived is False or s.in_loop]
    if per_call:
        return Finding.failed(f"{len(per_call)} of {len(u.clients)} ASAPClient(s) built per call, so their pool is "
                              f"never reused (a TCP/TLS handshake per call): "
                              + "; ".join(f"{s.where()} ({s.why})" for s in per_call), ev)
    open_ = [s for s in u.clients if s.long_lived is None]
    if open_:
        return _manual(f"{len(open_)} of {len(u.clients)} ASAPClient(s) come from a factory whose reuse the source "
                       "does not settle: " + "; ".join(f"{s.where()} ({s.why})" for s in open_)
                       + ". Confirm each client is built once per process (module level, a cache, or start-up) "
                         "and reused for every call", ev)
    return Finding.passed(f"all {len(u.clients)} ASAPClient(s) are long-lived ("
                          + "; ".join(s.why for s in u.clients) + "), so connections are pooled and reused", ev)


@check("SCALE-CLIENT-1")
async def connection_pooling(ctx: CheckContext) -> Finding:
    u = await usage(ctx)
    return u if isinstance(u, Finding) else judged_by(judge_connection_pooling, u)


async def _gzip_probe(ctx: CheckContext) -> dict:
    """Request side: a gzip-encoded >1 KB envelope is accepted. Response side: never compressed in 2.5.10.

    Read-only: the envelope's payload_type has no handler, so the agent decompresses and parses it and
    answers -32012 without running any skill (a corrupt or refused body would be 400/415 or -32700)."""
    env = envelope(ctx.target.sender, payload={"padding": "x" * 2048}, payload_type="runbook.compression_probe")
    plain = json.dumps(rpc(env))
    body = gzip.compress(plain.encode())
    try:
        r = await ctx.probe.request("POST", "/asap", content=body, authenticated=True,
                                    headers={"Content-Type": "application/json", "Content-Encoding": "gzip",
                                             "Accept-Encoding": "gzip, br"})
    except RateLimited:
        raise  # the agent's limit, not its compression support: no verdict
    except ProbeError as e:
        return {"sent": "POST /asap, 2 KB envelope gzip-compressed", "could_not_send": e.message}
    r.evidence["request"]["body"] = f"<{len(body)} bytes: gzip of {plain[:240]}…>"  # not the raw binary
    err = r.rpc_error() or {}
    accepted = r.status == 200 and err.get("code") not in (-32700,)
    return {"sent": f"POST /asap, 2 KB envelope (payload_type with no handler) gzip-compressed to {len(body)} bytes",
            "status": r.status,
            "accepted": accepted, "rpc_error": err.get("message"),
            "response_content_encoding": r.headers.get("content-encoding") or "none (asap-protocol 2.5.10 never "
                                                                              "compresses responses; a proxy can)",
            "exchange": r.evidence}


def judge_compression(u: ClientUsage, probe: dict) -> Finding:
    ev = [("ASAPClient compression (default compression=True, compression_threshold=1024 bytes)",
           _settings_table(u, ["compression", "compression_threshold"])),
          ("server accepts compressed requests (probe)", probe)]
    off = [s for s in u.clients if s.setting("compression")[0] is False]
    if off:
        return Finding.failed(f"compression switched off (compression=False) on {', '.join(s.where() for s in off)}: "
                              "envelopes over 1 KB go out uncompressed", ev)
    if probe.get("accepted") is False:
        return Finding.failed(f"the agent rejected a gzip-encoded request (HTTP {probe['status']}): "
                              "clients that compress cannot talk to it", ev)
    big = [s for s in u.clients if isinstance(s.setting("compression_threshold")[0], int)
           and s.setting("compression_threshold")[0] > 1024]
    if big:
        return Finding.warned(f"compression_threshold above 1 KB on {', '.join(s.where() for s in big)}", ev)
    unknown = [s for s in u.clients if _unknown(s.setting("compression")[0])]
    if unknown:
        return _manual("compression is not set explicitly and the settings come through "
                       + ", ".join(f"{', '.join(s.unresolved)} at {s.where()}" for s in unknown)
                       + ": confirm they do not pass compression=False", ev)
    tail = ("; the agent accepted a gzip request body" if probe.get("accepted") else
            "; the gzip probe could not run (see evidence)")
    return Finding.passed(f"all {len(u.clients)} ASAPClient(s) compress bodies over 1 KB{tail} "
                          "(responses are never compressed by asap-protocol 2.5.10: compress at the proxy)", ev)


@check("SCALE-CLIENT-2")
async def compression(ctx: CheckContext) -> Finding:
    u = await usage(ctx)
    if isinstance(u, Finding):
        return u
    return judged_by(judge_compression, u, await _gzip_probe(ctx))


RETRY_NAMES = ["max_retries", "base_delay", "max_delay", "jitter", "circuit_breaker_enabled",
               "circuit_breaker_threshold", "circuit_breaker_timeout"]


def judge_retry_config(u: ClientUsage) -> Finding:
    ev = [("retry and circuit-breaker settings per ASAPClient", _settings_table(u, RETRY_NAMES)),
          ("library defaults", {n: CLIENT_DEFAULTS[n] for n in RETRY_NAMES} | {
              "note": "without retry_config an ASAPClient still retries (3 attempts, 1 s base backoff, honours "
                      "Retry-After) but its circuit breaker is off; the server ignores idempotency keys, so "
                      "retries are at-least-once"})]
    bad, unknown = [], []
    for s in u.clients:
        retries, cb = s.setting("max_retries")[0], s.setting("circuit_breaker_enabled")[0]
        if isinstance(retries, int) and not isinstance(retries, bool) and retries <= 1:
            bad.append(f"{s.where()}: max_retries={retries} (no retry at all)")
        if _unknown(cb) or _unknown(retries):
            unknown.append(f"{s.where()} (settings through {', '.join(s.unresolved) or 'retry_config **kwargs'})")
        elif cb is not True:
            bad.append(f"{s.where()}: circuit breaker off"
                       + ("" if "retry_config" in s.kwargs else " (no retry_config: default retries only)"))
    if bad:
        return Finding.failed("; ".join(bad), ev)
    if unknown:
        return _manual("retry and circuit-breaker settings not resolved from the source: " + "; ".join(unknown)
                       + ". Confirm retry_config=RetryConfig(max_retries>=2, circuit_breaker_enabled=True)", ev)
    return Finding.passed(f"all {len(u.clients)} ASAPClient(s) retry with backoff and enable the circuit breaker", ev)


@check("SCALE-CLIENT-3")
async def retry_config(ctx: CheckContext) -> Finding:
    u = await usage(ctx)
    return u if isinstance(u, Finding) else judged_by(judge_retry_config, u)


def judge_timeouts(u: ClientUsage, limit: float, limit_source: str) -> Finding:
    rows = _settings_table(u, ["timeout"])
    for row, s in zip(rows, u.clients):
        t = s.setting("timeout")[0]
        row["manifest fetch timeout"] = (f"min(timeout, MANIFEST_REQUEST_TIMEOUT=10) = "
                                         f"{min(t, 10) if isinstance(t, (int, float)) else '?'} s")
    ev = [("timeouts per ASAPClient (default 60 s)", rows),
          ("threshold", f"timeout <= {limit:g} s ({limit_source})"),
          ("MANIFEST_REQUEST_TIMEOUT", PRIVATE_CONSTANTS_NOTE)]
    if u.private_constant_writes:
        ev.append(("assignments to private client constants", u.private_constant_writes))
    missing = [s for s in u.clients if not s.setting("timeout")[1] and not _unknown(s.setting("timeout")[0])]
    if missing:
        return Finding.failed(f"no timeout= on {', '.join(s.where() for s in missing)}: each attempt may wait the "
                              "60 s default (x3 attempts)", ev)
    slow = [s for s in u.clients if isinstance(s.setting("timeout")[0], (int, float))
            and s.setting("timeout")[0] > limit]
    if slow:
        return Finding.warned(f"timeout above {limit:g} s on {', '.join(s.where() for s in slow)}", ev)
    open_ = [s for s in u.clients if not isinstance(s.setting("timeout")[0], (int, float))]
    if open_:
        return _manual("timeout not resolved from the source on "
                       + ", ".join(f"{s.where()} ({s.setting('timeout')[0]})" for s in open_)
                       + f": confirm it is set and at most {limit:g} s", ev)
    mt = [w for w in u.private_constant_writes if w["name"] == "MANIFEST_REQUEST_TIMEOUT"]
    if mt:
        return Finding.warned(f"MANIFEST_REQUEST_TIMEOUT assigned at {mt[0]['at']}: a private constant", ev)
    values = sorted({s.setting("timeout")[0] for s in u.clients}, key=str)
    return Finding.passed(f"every ASAPClient sets timeout= ({', '.join(f'{v:g} s' for v in values)}); manifest "
                          "fetches use min(timeout, 10 s)", ev)


@check("SCALE-CLIENT-4")
async def timeouts(ctx: CheckContext) -> Finding:
    u = await usage(ctx)
    if isinstance(u, Finding):
        return u
    limit = ctx.threshold("client_timeout_max_seconds")
    return judged_by(judge_timeouts, u, limit.value, limit.source)


# ------------------------------------------------------------------------------------------ server
def judge_multiple_workers(cfg: ProcessConfig, file: str) -> Finding:
    evidence = [("process configuration", {"file": file, "server": cfg.server, "workers": cfg.workers,
                                           "workers as written": cfg.workers_expr, "follows the CPU count": cfg.per_cpu,
                                           "worker_class": cfg.worker_class, "read": cfg.source})]
    caveat = ("per-process state (rate limiter, nonce store, metrics) is split across workers "
              "unless it is shared (Redis)")
    if cfg.workers is None:
        low = cfg.workers_at(1)
        if cfg.per_cpu and low and low >= 2:
            return Finding.passed(f"{cfg.describe()} ({cfg.worker_class or 'default worker class'}); {caveat}", evidence)
        return _manual(f"{cfg.describe()}: confirm the worker count the server really starts with (gunicorn -w, "
                       "WEB_CONCURRENCY or GUNICORN_CMD_ARGS in the deployment)", evidence)
    if cfg.workers < 2:
        return Finding.failed(f"one {cfg.server} worker process: a single process serves every request", evidence)
    return Finding.passed(f"{cfg.workers} {cfg.server} workers ({cfg.worker_class or 'default worker class'}); {caveat}",
                          evidence)


@check("SCALE-SERVER-1")
async def multiple_workers(ctx: CheckContext) -> Finding:
    path = ctx.target.process_config
    if path is None:
        return Finding.skipped(f"targets[{ctx.target.name}].process_config is not set (gunicorn.conf.py or the server command line)")
    return judged_by(judge_multiple_workers, read_process_config(path), str(path))


def judge_workers_per_core(cfg: ProcessConfig, w, lo: float, hi: float, source: str) -> Finding:
    cs = w.containers()
    c = cs[0] if cs else None
    res = k8s.resources(c) if c else {"requests": {}, "limits": {}}
    row = {"workload": f"{w.kind} {w.name} ({w.file})", "workers": cfg.describe(),
           "cpu request": res["requests"].get("cpu"), "cpu limit": res["limits"].get("cpu"),
           "memory limit": res["limits"].get("memory"),
           "threshold": f"{lo:g}-{hi:g} workers per core ({source})"}
    ev = [("workers against the container's CPU", row)]
    cores = k8s.cpu(c) if c else None
    if not cores:
        return Finding.failed(f"{cfg.describe()}, but container {c.get('name') if c else '?'} has no CPU limit or "
                              "request: the worker count is not based on CPU", ev)
    if cfg.workers is None:
        # cpu_count() in a container is the node's core count (>= the limit), so the formula gives at least this
        low = cfg.workers_at(max(1, math.ceil(cores)))
        if cfg.per_cpu and low is not None and low / cores > hi:
            return Finding.failed(f"{cfg.describe()}: on a {cores:g}-CPU limit that is at least {low} workers "
                                  f"({low / cores:.2g} per core, over {hi:g}) since cpu_count() sees the node's cores",
                                  ev)
        return _manual(f"{cfg.describe()}: the ratio to the {cores:g}-CPU limit cannot be computed from the files; "
                       f"confirm the started worker count is {lo:g}-{hi:g} per core", ev)
    n = cfg.workers
    ratio = n / cores
    row["workers per core"] = round(ratio, 2)
    mem = memory_bytes(res["limits"].get("memory"))
    if not lo <= ratio <= hi:
        return Finding.failed(f"{n} worker(s) on {cores:g} CPU = {ratio:.2g} per core, outside {lo:g}-{hi:g}", ev)
    if mem is not None and mem < n * IDLE_WORKER_BYTES * 1.5:
        return Finding.warned(f"{ratio:.2g} workers per core, but {n} workers need ~{n * 80} MB idle against a "
                              f"{res['limits']['memory']} memory limit", ev)
    return Finding.passed(f"{n} workers on a {cores:g}-CPU limit = {ratio:.2g} per core "
                          f"(within {lo:g}-{hi:g})", ev)


@check("SCALE-SERVER-2")
async def workers_per_core(ctx: CheckContext) -> Finding:
    if ctx.target.process_config is None:
        return Finding.skipped(f"targets[{ctx.target.name}].process_config is not set")
    m = await manifests(ctx)
    if isinstance(m, Finding):
        return m
    lo, hi = ctx.threshold("workers_per_core_min"), ctx.threshold("workers_per_core_max")
    return judged_by(judge_workers_per_core, process(ctx), m.workloads[0], lo.value, hi.value, lo.source)


SERVER3_MANUAL = ("What this verifies: the source does not assign the private client constants and each ASAPClient's "
                  "pool size as written. What it cannot: that the pool fits the load. Manual part: compare the peak "
                  "concurrent downstream calls per process (e.g. max of in-flight lookups) with pool_maxsize, and "
                  "check for httpx PoolTimeout errors in the logs")


def judge_pool_constants(u: ClientUsage) -> Finding:
    ev = [("what these names are", PRIVATE_CONSTANTS_NOTE),
          ("pool settings per ASAPClient", _settings_table(u, ["pool_connections", "pool_maxsize", "pool_timeout"])),
          ("what this check verifies and what it leaves to you", SERVER3_MANUAL)]
    if u.private_constant_writes:
        ev.append(("assignments to private client constants", u.private_constant_writes))
        pool = [w for w in u.private_constant_writes if w["name"].startswith("DEFAULT_POOL")]
        if pool:
            return Finding.failed(
                f"{pool[0]['code']} at {pool[0]['at']} changes nothing: ASAPClient imported its own copy of the "
                "private constant at import time; pass pool_maxsize=/pool_connections= to ASAPClient instead", ev)
    per_call = [s for s in u.clients if s.long_lived is False]
    if per_call:
        return Finding.warned("pool sizes do not matter for clients built per call: "
                              + ", ".join(s.where() for s in per_call), ev)
    sizes = "; ".join(f"{s.where()}: {s.setting('pool_connections')[0]}/{s.setting('pool_maxsize')[0]}" for s in u.clients)
    unset = [s for s in u.clients if not (s.setting("pool_maxsize")[1] and s.setting("pool_connections")[1])]
    if unset:
        return _manual(f"no private pool constant is assigned, but the pool is not sized on "
                       f"{', '.join(s.where() for s in unset)} (pool_connections/pool_maxsize: {sizes}; unknown = "
                       "passed through **kwargs): " + SERVER3_MANUAL, ev)
    return Finding.passed(f"pools sized on the ASAPClient constructor, the knob that works ({sizes}), no private "
                          "constant assigned; that the size fits the peak load is not verified (evidence: scope)", ev)


@check("SCALE-SERVER-3")
async def pool_constants(ctx: CheckContext) -> Finding:
    u = await usage(ctx)
    return u if isinstance(u, Finding) else judged_by(judge_pool_constants, u)


# ------------------------------------------------------------------------------------------ caching
def judge_manifest_caching(u: ClientUsage) -> Finding:
    ev = [("ASAPClients", [s.summary() for s in u.clients]),
          ("ManifestCache(...)", [{"at": c.where(), "kwargs": c.kwargs} for c in u.manifest_caches]),
          ("get_manifest()/discover() calls", [c.where() for c in u.manifest_lookups]),
          ("manifest URL literals", u.raw_manifest_fetches)]
    per_call = [s for s in u.clients if s.long_lived is False]
    if per_call and (u.manifest_lookups or u.raw_manifest_fetches):
        return Finding.failed("manifests are fetched through clients built per call, whose ManifestCache is thrown away "
                              "each time: " + ", ".join(s.where() for s in per_call), ev)
    if per_call:
        return Finding.warned("clients built per call keep no manifest cache: " + ", ".join(s.where() for s in per_call), ev)
    open_ = [s for s in u.clients if s.long_lived is None]
    if open_ and not u.manifest_caches:
        return _manual("each ASAPClient caches manifests for its own lifetime, and the lifetime of "
                       + ", ".join(f"{s.where()} ({s.why})" for s in open_)
                       + " is not settled by the source: confirm the client is reused (see SCALE-CLIENT-1)", ev)
    how = (f"a shared ManifestCache ({', '.join(c.where() for c in u.manifest_caches)})" if u.manifest_caches
           else "each long-lived client's own ManifestCache")
    return Finding.passed(f"downstream manifests are cached: {how}", ev)


@check("SCALE-CACHE-1")
async def manifest_caching(ctx: CheckContext) -> Finding:
    u = await usage(ctx)
    return u if isinstance(u, Finding) else judged_by(judge_manifest_caching, u)


@dataclass
class ManifestFetches:
    """SCALE-CACHE-2's observation: the agent's own manifest, fetched plainly then conditionally."""
    status: int
    cache_control: str | None
    etag: str | None
    conditional_status: int | None
    source_ttls: list[dict] | None  # ManifestCache(default_ttl=) in the agent's source; None: source not read
    exchanges: list = field(default_factory=list)


async def observe_manifest_ttl(ctx: CheckContext) -> ManifestFetches:
    r1 = await ctx.probe.get("/.well-known/asap/manifest.json")
    obs = ManifestFetches(r1.status, r1.headers.get("cache-control"), r1.headers.get("etag"), None, None,
                          [("manifest fetch", r1.evidence)])
    if obs.etag:
        r2 = await ctx.probe.get("/.well-known/asap/manifest.json", headers={"If-None-Match": obs.etag})
        obs.conditional_status = r2.status
        obs.exchanges.append(("conditional fetch (If-None-Match)", r2.evidence))
    u = ctx.target.source_dir and await usage(ctx)
    if isinstance(u, ClientUsage):
        obs.source_ttls = [{"at": c.where(), "default_ttl": c.kwargs.get("default_ttl", 300)} for c in u.manifest_caches]
    return obs


CACHE2_SCOPE = ("What this verifies: the agent serves its own manifest with Cache-Control max-age, an ETag and 304 "
                "on If-None-Match, so callers can cache it. What it does not: how long this agent's clients cache "
                "the manifests of the agents it calls (ASAPClient.get_manifest() keeps them 300 s; a ManifestCache's "
                "default_ttl is read from the source when one is built). Manual part: confirm with the downstream "
                "agents' owners that their manifest max-age suits how often their capabilities change")


def judge_manifest_ttl(obs: ManifestFetches, ttl: float, ttl_source: str) -> Finding:
    m = re.search(r"max-age=(\d+)", obs.cache_control or "")
    max_age = int(m.group(1)) if m else None
    ev = list(obs.exchanges)
    ev.append(("TTL set in the agent's source",
               "source_dir not set" if obs.source_ttls is None else obs.source_ttls or
               "none: ASAPClient.get_manifest() uses 300 s; discover() follows the server's max-age"))
    ev.append(("recommendation", f"max-age around {ttl:g} s ({ttl_source})"))
    ev.append(("scope", CACHE2_SCOPE))
    if obs.status != 200:
        return Finding.errored(f"the manifest answered HTTP {obs.status}", ev)
    missing = [h for h, v in (("Cache-Control max-age", max_age), ("ETag", obs.etag)) if v is None]
    if missing:
        return Finding.failed(f"the manifest is served without {' and '.join(missing)} (Cache-Control: "
                              f"{obs.cache_control or 'absent'}): callers cannot cache it or revalidate it, so every "
                              "discovery refetches it", ev)
    if obs.conditional_status != 304:
        return Finding.failed(f"a conditional fetch with the ETag answered HTTP {obs.conditional_status}, not 304", ev)
    if max_age == 0 or max_age > 86400:
        return Finding.warned(f"manifest max-age={max_age} s: discover() callers cache it for that long "
                              "(capped at 86400 s)", ev)
    long_ttl = [c for c in obs.source_ttls or []
                if isinstance(c["default_ttl"], (int, float)) and c["default_ttl"] > 86400]
    if long_ttl:
        return Finding.warned(f"ManifestCache default_ttl over a day at {long_ttl[0]['at']}", ev)
    return Finding.passed(f"this agent's manifest is cacheable for {max_age} s (Cache-Control: {obs.cache_control}), "
                          "ETag present, 304 on If-None-Match; how long callers keep it is theirs to set "
                          "(see evidence: scope)", ev)


@check("SCALE-CACHE-2", needs=AGENT)
async def manifest_cache_ttl(ctx: CheckContext) -> Finding:
    ttl = ctx.threshold("manifest_cache_ttl_seconds")
    obs = await observe_manifest_ttl(ctx)
    return judged(judge_manifest_ttl(obs, ttl.value, ttl.source), obs, omit=("exchanges",))


# ------------------------------------------------------------------------------------------ state
def _stores(cfg: dict) -> dict[str, str]:
    """Per-process state the app holds, with what is lost or split."""
    out = {}
    if cfg["snapshot_store_kind"] == "memory":
        out["snapshots"] = (f"{cfg['snapshot_store']['class']}: task snapshots (every StateSnapshot version) live in "
                            "process memory")
    if cfg["rate_limit_storage_kind"] == "memory":
        out["rate limits"] = f"{cfg['rate_limit_storage']}: request counters per process ({', '.join(cfg['rate_limits'])})"
    if cfg["nonce_store_kind"] == "memory":
        out["nonces"] = f"{cfg['nonce_store']['class']}: seen nonces per process"
    return out


def _app_evidence(cfg: dict, n: int, how: str) -> list:
    keys = ("manifest_id", "snapshot_store", "snapshot_store_kind", "rate_limit_storage", "rate_limits",
            "nonce_store", "nonce_store_kind", "auth_enabled", "max_request_size")
    return [("app introspection (separate process)", {k: cfg.get(k) for k in keys}),
            ("instances", f"{n} ({how})")]


def judge_snapshot_store(cfg: dict, n: int, how: str) -> Finding:
    """The introspected app configuration and the process count (at least n)."""
    ev = _app_evidence(cfg, n, how)
    snap, kind = cfg["snapshot_store"], cfg["snapshot_store_kind"]
    name = f"{snap['class']} ({snap['module']})" if snap else "none"
    if kind == "memory":
        return Finding.failed(f"snapshot store is {name}: not persistent; long-running task state dies with the process", ev)
    if kind == "none":
        return Finding.failed("the app has no snapshot store", ev)
    if kind == "sqlite" and n > 1:
        return Finding.warned(f"{name}: a local SQLite file per instance; {n} instances do not share it", ev)
    if kind == "unknown":
        return Finding.warned(f"custom snapshot store {name} holds no client of a known database: confirm it persists", ev)
    backing = f", backed by {', '.join(snap['backed_by'])}" if snap["backed_by"] else ""
    return Finding.passed(f"snapshot store is {name}{backing}", ev)


@check("SCALE-STATE-1")
async def persistent_snapshot_store(ctx: CheckContext) -> Finding:
    cfg = await app_config(ctx)
    return cfg if isinstance(cfg, Finding) else judged_by(judge_snapshot_store, cfg, *_count(await instances(ctx)))


def judge_no_in_memory_snapshots(cfg: dict, n: int, how: str) -> Finding:
    ev = _app_evidence(cfg, n, how)
    if cfg["snapshot_store_kind"] != "memory":
        return Finding.passed(f"snapshot store is {cfg['snapshot_store']['class'] if cfg['snapshot_store'] else 'none'}, "
                              "not InMemorySnapshotStore", ev)
    stores = _stores(cfg)
    lost = "; ".join(stores.values())
    if n > 1:
        return Finding.failed(f"InMemorySnapshotStore with {n} instances: each instance sees only its own snapshots, "
                              f"and a restart loses them ({lost})", ev)
    return Finding.warned(f"InMemorySnapshotStore on one instance: a restart loses every task snapshot ({lost})", ev)


@check("SCALE-STATE-2")
async def no_in_memory_snapshots(ctx: CheckContext) -> Finding:
    cfg = await app_config(ctx)
    if isinstance(cfg, Finding):
        return cfg
    return judged_by(judge_no_in_memory_snapshots, cfg, *_count(await instances(ctx)))


# ------------------------------------------------------------------------------------------ horizontal
@check("SCALE-HSCALE-1")
async def stateless_pods(ctx: CheckContext) -> Finding:
    m = await manifests(ctx)
    if isinstance(m, Finding):
        return m
    cfg = await app_config(ctx)
    if isinstance(cfg, dict):
        return judged_by(judge_stateless_pods, m, cfg, *_count(await instances(ctx)))
    return judged_by(judge_stateless_pods, m, cfg.summary, 0, "")


def judge_stateless_pods(m: Manifests, cfg: dict | str, n: int, how: str) -> Finding:
    """The manifests' workloads, and the introspected app (or why it was not introspected)."""
    ev = []
    problems, warnings = [], []
    for w in m.workloads:
        local = [v.get("name") for v in w.volumes if "emptyDir" in v or "hostPath" in v]
        env = {k: v for c in w.containers() for k, v in k8s.env(c).items()}
        ev.append(("workload", {"kind": w.kind, "name": w.name, "file": w.file, "replicas": w.effective_replicas,
                                "local volumes": local, "ASAP_STORAGE_BACKEND": env.get("ASAP_STORAGE_BACKEND", "unset")}))
        if w.kind == "StatefulSet":
            warnings.append(f"{w.name} is a StatefulSet")
        if env.get("ASAP_STORAGE_BACKEND", "").lower() == "sqlite" and w.effective_replicas > 1:
            problems.append(f"{w.name}: SQLite snapshots on {w.effective_replicas} replicas")
        if local:
            warnings.append(f"{w.name} mounts local volumes {local}")
    if isinstance(cfg, dict):
        ev += _app_evidence(cfg, n, how)
        stores = _stores(cfg)
        if stores:
            problems.append("state held in the process: " + "; ".join(stores.values()))
    else:
        ev.append(("app introspection", cfg))
    if problems:
        return Finding.failed("pods are not stateless: " + " | ".join(problems), ev)
    if warnings:
        return Finding.warned("; ".join(warnings), ev)
    if not isinstance(cfg, dict):
        # volumes are only half of it: snapshots, rate limits and nonces can live in the process
        return _manual(f"the workloads mount no local state, but what the app keeps in its process is unseen "
                       f"({cfg.rstrip('.')}): set targets[].app, or confirm snapshots, rate limits and nonces "
                       "live in a shared store", ev)
    return Finding.passed("stateless pods: no local state volumes, and the app keeps snapshots, rate limits and nonces "
                          "outside the process", ev)


@dataclass
class SharedStateObservation:
    """SCALE-HSCALE-2's observation: the processes serving the target, the session affinity the manifests set,
    and where per-process state lives: the introspected app, or (without targets[].app) the container
    environment of the first workload, where ASAP_RATE_LIMIT_BACKEND is the only knob that settles a store."""
    instances: int                      # at least this many processes
    how: str                            # how they were counted
    sticky: list[str]                   # session affinity found in the manifests
    app: dict | None = None             # introspect.describe() of the app; None: not introspected
    env: dict[str, str] | None = None   # container environment (plain values, "<from ...>" for references)


async def observe_shared_state(ctx: CheckContext) -> SharedStateObservation | Finding:
    if ctx.target.app is None and ctx.target.k8s_manifests:
        m = await manifests(ctx)
        if isinstance(m, Finding):
            return m
        n, how = _count(await instances(ctx))
        env = {k: v for c in m.workloads[0].containers() for k, v in k8s.env(c).items()}
        return SharedStateObservation(n, how, m.sticky(),
                                      env={k: k8s.shown_setting(k, env[k]) for k in STATE_ENV if k in env})
    cfg = await app_config(ctx)
    if isinstance(cfg, Finding):
        return cfg
    n, how = _count(await instances(ctx))
    m = await manifests(ctx) if ctx.target.k8s_manifests else None
    return SharedStateObservation(n, how, m.sticky() if isinstance(m, Manifests) else [], app=cfg)


@check("SCALE-HSCALE-2")
async def shared_state_or_sticky(ctx: CheckContext) -> Finding:
    obs = await observe_shared_state(ctx)
    return obs if isinstance(obs, Finding) else judged(judge_shared_state(obs), obs)


def judge_shared_state(obs: SharedStateObservation) -> Finding:
    """At least n processes, the session affinity, and the per-process state of the introspected app (or,
    from the manifests alone, the rate-limit storage)."""
    if obs.app is None:
        return _judge_shared_state_from_env(obs)
    cfg, n = obs.app, obs.instances
    ev = _app_evidence(cfg, n, obs.how)
    ev.append(("session affinity", obs.sticky or "none"))
    stores = _stores(cfg)
    split = {"rate limits": "the effective limit becomes N x the configured one",
             "nonces": "a replayed envelope is accepted once per instance",
             "snapshots": "a task's snapshots are visible only on the instance that saved them"}
    metrics_note = "metrics are always per process (scrape every pod/worker)"
    if n > 1 and stores:
        what = "; ".join(f"{k}: {split[k]}" for k in stores)
        if obs.sticky:
            return Finding.warned(f"{n} instances with per-process state ({what}); session affinity "
                                  f"({', '.join(obs.sticky)}) keeps sessions on one pod but does not share limits", ev)
        return Finding.failed(f"{n} instances with per-process state and no session affinity: {what}; {metrics_note}", ev)
    if stores:
        return Finding.warned(f"one instance today, but per-process state ({', '.join(stores)}) splits as soon as it "
                              f"runs more workers or replicas", ev)
    return Finding.passed(f"{n} instance(s) share state: rate limits in {cfg['rate_limit_storage']}, nonces in "
                          f"{(cfg['nonce_store'] or {}).get('class', 'none')}, snapshots in "
                          f"{(cfg['snapshot_store'] or {}).get('class', 'none')}; no sticky sessions needed; "
                          f"{metrics_note}", ev)


def _judge_shared_state_from_env(obs: SharedStateObservation) -> Finding:
    """Without the app object only the rate-limit storage is certain (ASAP_RATE_LIMIT_BACKEND is its
    only knob); snapshot and nonce stores can be set in code, so they are reported as unknown."""
    n, sticky, env = obs.instances, obs.sticky, obs.env or {}
    backend = env.get("ASAP_RATE_LIMIT_BACKEND", "")
    ev = [("container environment (plain values)", {k: env.get(k, "unset") for k in STATE_ENV}),
          ("instances", f"{n} ({obs.how})"), ("session affinity", sticky or "none")]
    unknown = "snapshot and nonce stores can be set in code: set targets[].app to see them"
    if backend.startswith("<from"):  # a Secret/ConfigMap reference: its value is not in the files
        return Finding.skipped(f"ASAP_RATE_LIMIT_BACKEND comes {backend.strip('<>')}, whose value the manifests do not "
                               f"show; {unknown}", ev)
    if not backend and n > 1 and not sticky:
        return Finding.failed(f"{n} instances with rate limits in per-process memory (ASAP_RATE_LIMIT_BACKEND "
                              f"unset): the effective limit becomes {n} x the configured one; {unknown}", ev)
    if backend and not backend.startswith(("redis://", "rediss://", "redis+")) and n > 1 and not sticky:
        return Finding.failed(f"{n} instances with rate limits in {backend.split('@')[-1]} (ASAP_RATE_LIMIT_BACKEND), "
                              f"not a shared store; {unknown}", ev)
    return Finding.warned(f"rate limits {'in ' + backend.split('@')[-1] if backend else 'per process'}; {unknown}", ev)


@check("SCALE-HSCALE-3")
async def autoscaling(ctx: CheckContext) -> Finding:
    m = await manifests(ctx)
    return m if isinstance(m, Finding) else judged_by(judge_autoscaling, m)


def judge_autoscaling(m: Manifests) -> Finding:
    """The first workload of the manifests and the HPA that targets it."""
    w = m.workloads[0]
    hpa = m.hpa_for(w)
    requests = {c.get("name"): k8s.resources(c)["requests"] or None for c in w.containers()}
    ev = [("workload", {"kind": w.kind, "name": w.name, "replicas": w.effective_replicas, "requests": requests}),
          ("autoscalers", [vars(a) for a in m.autoscalers] or "none")]
    if hpa is None:
        return Finding.failed(f"no HorizontalPodAutoscaler targets {w.kind} {w.name}: replicas fixed at "
                              f"{w.effective_replicas}", ev)
    resource_metrics = [x for x in hpa.metrics if x.split()[0] in ("cpu", "memory")]
    if resource_metrics and not all(r for r in requests.values()):
        return Finding.failed(f"HPA {hpa.name} scales on {', '.join(resource_metrics)} but containers set no resource "
                              "requests, so utilisation cannot be computed", ev)
    if not hpa.metrics:
        return Finding.failed(f"HPA {hpa.name} has no metrics", ev)
    if hpa.min_replicas < 2:
        return Finding.warned(f"HPA {hpa.name} may scale down to {hpa.min_replicas} replica", ev)
    return Finding.passed(f"HPA {hpa.name}: {hpa.min_replicas}-{hpa.max_replicas} replicas on "
                          f"{', '.join(hpa.metrics)}", ev)
