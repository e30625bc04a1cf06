"""Scaling checks (checklist: Scaling)."""

from __future__ import annotations

from ..source import read_process_config
from ._registry import CheckContext, Finding, check


@check("SCALE-SERVER-1")
async def multiple_workers(ctx: CheckContext) -> Finding:
    path = ctx.target.process_config
    if path is None:
        return Finding.skipped(f"targets[{ctx.target.name}].process_config is not set (gunicorn.conf.py or the server command line)")
    cfg = read_process_config(path)
    evidence = [("process configuration", {"file": str(path), "server": cfg.server, "workers": cfg.workers,
                                           "worker_class": cfg.worker_class, "read": cfg.source})]
    if cfg.workers is None:
        return Finding.errored(f"could not find a worker count in {path.name}", evidence)
    if cfg.workers < 2:
        return Finding.failed(f"one {cfg.server} worker process: a single process serves every request", evidence)
    caveat = ("per-process state (rate limiter, nonce store, metrics) is split across workers "
              "unless it is shared (Redis)")
    return Finding.passed(f"{cfg.workers} {cfg.server} workers ({cfg.worker_class or 'default worker class'}); {caveat}",
                          evidence)
