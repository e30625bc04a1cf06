"""`asap-runbook init`: a starter parameters file from what an agent says about itself.

`discover()` reads the agent's manifest (`/.well-known/asap/manifest.json`, through the probe);
`render()` is pure: what the manifest tells (auth scheme, TLS or not, skills, endpoints) is
filled in, what it cannot tell is left commented with one line on what it enables.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from .errors import ProbeError, TargetUntrusted, UsageError
from .params import ProbeSettings, Target



def discover(url: str, ca_file: Path | None = None, tls_verify: bool = True, timeout: float = 5.0) -> dict:
    """The agent's manifest; UsageError (one sentence) when the URL is not a reachable ASAP agent."""
    base = url.rstrip("/")
    try:
        target = Target(name="init", base_url=base, ca_file=ca_file, tls_verify=tls_verify)
    except ValueError:
        raise UsageError(f"--url {url!r} is not an http:// or https:// URL.") from None
    from .probe import Probe

    async def fetch() -> dict:
        async with Probe(target, ProbeSettings(timeout_seconds=timeout, max_requests_per_target=2)) as probe:
            return await probe.manifest()
    try:
        return asyncio.run(fetch())
    except TargetUntrusted as e:
        raise UsageError(f"cannot read an ASAP manifest from {base}: {e.message}; pass --ca-file for a private CA, "
                         "or --no-tls-verify to look past it.") from None
    except ProbeError as e:
        raise UsageError(f"cannot read an ASAP manifest from {base}: {e.message}.") from None


def target_name(manifest: dict, url: str) -> str:
    """A target name from the agent's URN (urn:asap:agent:orders -> orders), else from the host."""
    raw = str(manifest.get("id", "")).removeprefix("urn:asap:agent:") or urlsplit(url).hostname or "agent"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", raw).strip("-._")[:63]
    return name if name and name[0].isalnum() else f"agent-{name}"[:63]


def _token_env_for(name: str) -> str:
    return re.sub(r"[^A-Z0-9]+", "_", name.upper()).strip("_") + "_TOKEN"


def render(manifest: dict, url: str, token_env: str | None = None, ca_file: Path | None = None,
           tls_verify: bool = True) -> str:
    """The starter parameters file (YAML with comments) for the agent behind `url`."""
    base = url.rstrip("/")
    name = target_name(manifest, base)
    caps = manifest.get("capabilities") or {}
    skills = [str(s.get("id")) for s in caps.get("skills") or [] if isinstance(s, dict)]
    endpoints = manifest.get("endpoints") or {}
    auth = manifest.get("auth") or {}
    schemes = [str(s) for s in (auth.get("schemes") or [])] if isinstance(auth, dict) else []
    https = base.startswith("https://")
    q = lambda v: yaml.safe_dump(v, default_flow_style=True, width=1000).strip().removesuffix("\n...")  # noqa: E731

    lines = [
        f"# asap-runbook parameters for {manifest.get('name') or name} ({manifest.get('id')}, version "
        f"{manifest.get('version')}), written by `asap-runbook init` from {base}/.well-known/asap/manifest.json.",
        "# Check it with `asap-runbook validate FILE`; run with `asap-runbook run --params FILE`.",
        "# Uncommented lines were discovered; each commented line says what setting it enables.",
        "schema_version: 1",
        "environment: default            # names the confirmations file (confirmations/<environment>.yaml beside this file)",
        "",
        "# prometheus:                    # enables the Monitoring items that need scraped data (error rate, p99, alerts)",
        "#   url: https://prometheus.internal.example.com",
        "",
        "targets:",
        f"  - name: {q(name)}",
        f"    base_url: {q(base)}" + ("" if https else "   # plain HTTP: the TLS items (SEC-TLS-*) will fail"),
    ]
    if https:
        lines.append("    # http_url: http://HOST          # the plain-HTTP listener: enables the redirect check (SEC-TLS-5; SEC-TLS-1 also tries it)")
    if ca_file:
        lines.append(f"    ca_file: {q(str(Path(ca_file).resolve()))}   # the private CA that signs the agent's certificate")
    if not tls_verify:
        lines.append("    tls_verify: false               # its certificate did not verify; SEC-TLS-2 still judges it")
    if "bearer" in schemes:
        env = token_env or _token_env_for(name)
        lines.append(f"    token_env: {q(env)}   # the manifest declares auth {schemes}: the NAME of the variable "
                     "holding a bearer token (set it before running)")
    else:
        declared = f"auth schemes {schemes}, none of them bearer" if schemes else "no auth"
        env = f"    token_env: {q(token_env)}" if token_env else "    # token_env: AGENT_TOKEN"
        lines.append(f"{env}   # the manifest declares {declared}; a bearer token lets the authenticated checks run")
    lines += [
        "    # sender: urn:asap:agent:sre-probe  # the URN your token_validator maps the token to",
        "    # instances: 1                   # replicas x workers: decides whether shared state (Redis) is required",
        "    # prometheus_job: JOB            # the scrape job of this agent: enables the live Monitoring items",
        "    # Static evidence (read, never executed), each enabling the items that inspect it:",
        "    # app: package.module:app        # introspected in a subprocess: limits, auth, storage (Security, Scaling)",
        "    # app_path: ../agent/src         # where `app` is imported from",
        "    # source_dir: ../agent/src       # how ASAPClient is built, hard-coded secrets, unsafe handlers",
        "    # nginx_conf: ../deploy/nginx.conf   # body-size and rate limits in front of the agent",
        "    # k8s_manifests: [../deploy/k8s/deployment.yaml]   # probes, grace period, resources, HPA",
        "    # process_config: ../deploy/gunicorn.conf.py   # workers and timeouts (Scaling)",
        "    # log_file: /var/log/agent.log   # or log_command: \"kubectl logs deploy/agent --tail=500\" (Logging)",
        "    # claims_require_nonce: true     # the team says every envelope carries a nonce (Replay Protection)",
        "    # Active probes send load or act on the agent; off unless you enable them, per target:",
        "    active_probes: {rate_limit_burst: false, oversize_body: false, drills: false}",
    ]
    lines += [  # the drills use the agent's own requests: which ones only the team knows (docs/drills.md)
        "    # drills:                        # staging only; see docs/drills.md",
        "    #   downstream_task: {skill: SKILL, input: {...}}   # a real request that calls a downstream agent",
        "    #   downstream_url: http://HOST:PORT   # that downstream: the fault proxy forwards to it",
        "    #   downstream_env: VAR   # how the agent reads the downstream's URL (with agent_start)",
        "    #   long_task: {skill: SKILL, input: {...}}   # a real long-running task (RES-4)",
    ]
    lines += [
        "",
        "# What the manifest says (for reference; the runbook reads it again on every run):",
        f"#   skills: {', '.join(skills) or '(none)'}",
        f"#   endpoints: asap {endpoints.get('asap')}, events {endpoints.get('events')}",
        f"#   auth: {', '.join(schemes) or 'none declared'}",
    ]
    return "\n".join(lines) + "\n"


def write_starter(url: str, out: Path | None, token_env: str | None = None, ca_file: Path | None = None,
                  tls_verify: bool = True) -> tuple[Path, dict]:
    """Discover the agent and write its starter parameters file (default: <agent>.params.yaml here);
    never overwrite one."""
    if out is not None and Path(out).exists():  # refused before anything is contacted
        raise UsageError(f"{out} already exists; choose another --out or remove it first.")
    if token_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", token_env):
        raise UsageError(f"--token-env {token_env!r} is not an environment variable name (letters, digits, _).")
    if ca_file is not None and not Path(ca_file).is_file():
        raise UsageError(f"--ca-file {ca_file} does not exist.")
    manifest = discover(url, ca_file, tls_verify)
    out = Path(out if out is not None else f"{target_name(manifest, url)}.params.yaml")
    text = render(manifest, url, token_env, ca_file, tls_verify)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with out.open("x") as f:  # "x": a file that appeared meanwhile is not overwritten either
            f.write(text)
    except FileExistsError:
        raise UsageError(f"{out} already exists; choose another --out or remove it first.") from None
    return out, manifest
