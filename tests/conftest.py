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


def expected(item_id: str, target: str):
    """The status the catalog says `item_id` should get on reference target `target` (catalog `expected`)."""
    from asap_runbook.catalog import load_catalog
    from asap_runbook.results import Status
    return Status(load_catalog().get(item_id).expected[target])


def one_target(params, name: str, **changes):
    """`params` with only target `name`, its fields changed by `changes`."""
    return params.model_copy(update={"targets": [params.target(name).model_copy(update=changes)]})


def write_test_params(dest: Path, *, targets=None, active=True, **extra) -> Path:
    """A copy of params/demo.yaml for a test: absolute example paths, records files in `dest`,
    optionally fewer targets and no active probes."""
    import yaml
    data = yaml.safe_load(DEMO_PARAMS.read_text())
    for t in data["targets"]:
        for key in ("process_config", "source_dir", "app_path"):
            if key in t:
                t[key] = str((DEMO_PARAMS.parent / t[key]).resolve())
        if "k8s_manifests" in t:
            t["k8s_manifests"] = [str((DEMO_PARAMS.parent / m).resolve()) for m in t["k8s_manifests"]]
        if not active:
            t["active_probes"] = {}
    if targets:
        data["targets"] = [t for t in data["targets"] if t["name"] in targets]
    data["confirmations_file"] = str(dest / "confirmations.yaml")
    data.update({k: str(v) if isinstance(v, Path) else v for k, v in extra.items()})
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def demo_run(deployment, tmp_path_factory):
    """One real `asap-runbook run --params params/demo.yaml` against the three reference targets,
    shared by tests/test_e2e.py and tests/test_three_ways.py: (completed process, run directory)."""
    import subprocess
    import sys
    out = tmp_path_factory.mktemp("runs")
    proc = subprocess.run([sys.executable, "-m", "asap_runbook", "run", "--params", str(DEMO_PARAMS), "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    run_dirs = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(run_dirs) == 1, proc.stdout + proc.stderr
    return proc, run_dirs[0]


@pytest.fixture(scope="session")
def evidence_run(deployment, tmp_path_factory):
    """One real `asap-runbook run` of every section, shared by the evidence tests: a person's
    confirmation (SCALE-CACHE-3 on hardened), a live waiver (SEC-TLS-4 on misconfigured), an
    expired one (SEC-TLS-1 on misconfigured), a signing key, and a sign-off request that the
    not-ready demo must refuse."""
    import subprocess
    import sys
    from types import SimpleNamespace
    work = tmp_path_factory.mktemp("evidence")
    (work / "waivers.yaml").write_text(
        "schema_version: 1\nwaivers:\n"
        "- {item: SEC-TLS-4, target: misconfigured, approver: Bob Approver, reason: legacy clients until the"
        " proxy migration, ticket: OPS-1234, expires: 2099-12-31}\n"
        "- {item: SEC-TLS-1, target: misconfigured, approver: Carol Approver, reason: old exception,"
        " ticket: OPS-999, expires: 2020-01-01}\n")
    params = write_test_params(work, waivers_file=work / "waivers.yaml")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "asap_runbook", *args], capture_output=True, text=True,
                              timeout=600, cwd=REPO)
    key = work / "keys" / "runbook.pem"
    assert cli("keygen", str(key)).returncode == 0
    confirm = cli("confirm", "SCALE-CACHE-3", "--target", "hardened", "--by", "Alice Operator", "--note",
                  "cache TTLs reviewed with the payments team", "--evidence", "https://wiki.example/ops/42",
                  "--params", str(params))
    assert confirm.returncode == 0, confirm.stderr
    out = work / "runs"
    proc = cli("run", "--params", str(params), "--out", str(out), "--signing-key", str(key),
               "--sign-off-by", "Alice Operator")
    run_dirs = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(run_dirs) == 1, proc.stdout + proc.stderr
    return SimpleNamespace(proc=proc, run_dir=run_dirs[0], key=key, public_key=Path(str(key) + ".pub"),
                           params=params, work=work, cli=cli)


def pytest_collection_modifyitems(config, items):
    """Run the hardened agent's alert checks first, on the fresh shared deployment. Later tests
    run drills whose slow requests keep its p99 above 1 s; after 5 minutes of that the shipped
    ASAPHighLatencyP99 rightly *fires*, and MON-ALERT-2 would warn. Which test ran when must not
    decide a result (test_alert_states_table covers the firing case)."""
    first = [i for i in items if "test_passes_on_hardened[MON-ALERT" in i.nodeid
             or "test_rule_files_judge_like_the_live_rules" in i.nodeid]
    items[:] = first + [i for i in items if i not in first]
