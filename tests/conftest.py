"""Shared fixtures. The reference deployment is real (agents, nginx, Redis, Prometheus) and is
started once per test session; tests that need it take the `deployment` fixture."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEMO_PARAMS = REPO / "params" / "demo.yaml"


@pytest.fixture(scope="session")
def deployment(tmp_path_factory):
    from asap_runbook.reference import ReferenceDeployment
    workdir = tmp_path_factory.mktemp("refdeploy")
    with ReferenceDeployment(workdir, prometheus=True) as dep:
        saved = {k: os.environ.get(k) for k in dep.env()}
        os.environ.update(dep.env())
        dep.wait_prometheus_targets()
        yield dep
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def demo_params(deployment):
    from asap_runbook.params import load_params
    return load_params(DEMO_PARAMS)


@pytest.fixture
def check(demo_params):
    """check(item_id, target) -> Result, run through the engine against the real deployment."""
    from asap_runbook.engine import run_check

    def run(item_id: str, target: str, params=None):
        return run_check(item_id, params or demo_params, target)
    return run
