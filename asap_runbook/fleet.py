"""Fleets: many targets in one parameters file, the targets x items matrix, and a fleet of
reference agents for the demo and the benchmark.

A fleet of reference agents is one hardened agent plus N-1 misconfigured ones (each behind its
own nginx, on free loopback ports), sharing one Redis and one Prometheus: the misconfigured
agents need no Redis of their own, and the hardened agent's rate limit (10/s, 100/min) is keyed by
client, so several hardened agents sharing a Redis would share one budget and turn the fleet
into a queue. `fleet_params()` writes the parameters file for it into the work directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ._paths import shipped
from .catalog import load_catalog
from .report import one_line
from .results import READINESS, RunResults, exit_code

def build_matrix(run: RunResults, groups: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    """The targets x items matrix for the summary page: per-target readiness, one cell per (item, target)."""
    groups = groups or {}
    by_key = {(r.item_id, r.target): r.status.value for r in run.results}
    per_target: dict[str, list] = {name: [] for name in run.targets}  # one pass: a fleet's results x targets is millions
    for r in run.results:
        per_target.setdefault(r.target, []).append(r)
    targets = []
    for name in run.targets:
        code = exit_code(per_target[name], sections_not_run=run.sections_not_run)
        targets.append({"name": name, "groups": groups.get(name, {}), "exit_code": code, "readiness": READINESS[code]})
    group_keys = sorted({k for g in groups.values() for k in g})
    catalog = load_catalog()
    rows = []
    for section in run.sections:
        for n, item in enumerate(catalog.section(section)):
            rows.append({"section": section, "section_start": n == 0, "item_id": item.id, "blocking": item.blocking,
                         "title": one_line(item.text.replace("`", ""), 60), "cells": [by_key.get((item.id, t)) for t in run.targets]})
    return {"targets": targets, "by_name": {t["name"]: t for t in targets}, "group_keys": group_keys, "rows": rows}


def page_context(run: RunResults, run_dir: Path, drift=None, matrix: dict | None = None) -> dict[str, Any]:
    """What the summary page adds for fleets and drift. When the page is rendered again later
    (an after-the-fact sign-off), the drift comes from the run's drift.json and the matrix from
    the results (without groups, which only the parameters know)."""
    from . import drift as drift_mod
    if drift is None:
        drift = drift_mod.read_drift(Path(run_dir))
    ctx: dict[str, Any] = {"matrix": matrix or build_matrix(run),
                           "categories": drift_mod.CATEGORIES, "titles": drift_mod.TITLES}
    if drift is not None:
        ctx["drift"] = drift
    return ctx


def fleet_size_ok(n: int) -> int:
    if n < 1:
        raise ValueError("a fleet has at least one agent")
    return n


def fleet_deployment(workdir: Path, n: int, prometheus: bool = True):
    """A ReferenceDeployment of n agents: one hardened, n-1 misconfigured."""
    from .reference import ReferenceDeployment
    return ReferenceDeployment(workdir, prometheus=prometheus, misconfigured_agents=fleet_size_ok(n) - 1, stock=False)


def fleet_params(dep, path: Path, *, active_probes: bool = True, environment: str = "fleet") -> Path:
    """Write a parameters file naming every agent of a running reference deployment.

    URLs are written literally (a fleet's ports are its own); the token stays in the
    environment (`token_env`), never in the file. Targets carry groups (environment, team,
    role) so the summary can show them.
    """
    examples = shipped("examples")
    agents = [dep.hardened, *dep.misconfigured]
    targets = []
    for i, a in enumerate(agents):
        hardened = a.role == "hardened"
        t: dict[str, Any] = {
            "name": a.name,
            "base_url": a.base_url,
            "http_url": a.http_url,
            "groups": {"environment": environment, "team": "sre" if i % 2 == 0 else "payments", "role": a.role},
            "prometheus_job": "asap-hardened" if hardened else "asap-misconfigured",
            "nginx_conf": str(a.nginx_conf),
            "log_file": str(a.log_file),
        }
        if hardened:
            t |= {"ca_file": str(a.ca_file), "token_env": a.token_env, "claims_require_nonce": True,
                  "process_config": str(examples / "hardened" / "gunicorn.conf.py"),
                  "source_dir": str(examples / "hardened" / "src")}
        else:
            t |= {"tls_verify": False, "process_config": str(examples / "misconfigured" / "uvicorn.cmd"),
                  "source_dir": str(examples / "misconfigured" / "src")}
        if active_probes:
            t["active_probes"] = {"rate_limit_burst": True, "oversize_body": True, "drills": True, "handler_probes": True}
        # drop paths that do not exist (examples/ may be missing)
        for key in ("process_config", "source_dir"):
            if not Path(t[key]).exists():
                del t[key]
        targets.append(t)
    doc: dict[str, Any] = {"schema_version": 1, "environment": environment, "probe": {"timeout_seconds": 3},
                           "targets": targets}
    if dep.prometheus is not None:
        doc["prometheus"] = {"url": dep.prometheus.url, "timeout_seconds": 3, "window": "1m"}
    path = Path(path)
    path.write_text(f"# a fleet of {len(agents)} reference agents, written by asap_runbook.fleet; ports are this run's\n"
                    + yaml.safe_dump(doc, sort_keys=False))
    return path
