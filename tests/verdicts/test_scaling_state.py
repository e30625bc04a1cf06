"""Scaling verdicts on the introspected app and the manifests: recorded observations, no server."""

from __future__ import annotations

from pathlib import Path

import pytest

from asap_runbook.checks.scaling import judge_autoscaling, judge_no_in_memory_snapshots, judge_snapshot_store
from asap_runbook import k8s
from asap_runbook.checks.scaling import STATE_ENV
from asap_runbook.k8s import count_instances, load_manifests
from asap_runbook.results import Status
from asap_runbook.source import read_process_config

DATA = Path(__file__).parent / "data"
STOCK = DATA / "k8s" / "stock-agent.yaml"

# what introspect.describe() returns, trimmed to what the judges read
STOCK_APP = {"manifest_id": "urn:asap:agent:stock", "snapshot_store": {"class": "InMemorySnapshotStore",
             "module": "asap.state.stores.memory", "backed_by": []}, "snapshot_store_kind": "memory",
             "rate_limit_storage": "MemoryStorage", "rate_limits": ["10 per 1 second", "100 per 1 minute"],
             "rate_limit_storage_kind": "memory", "nonce_store": None, "nonce_store_kind": "none",
             "auth_enabled": True, "max_request_size": 10485760}
REDIS_APP = STOCK_APP | {"snapshot_store": {"class": "RedisSnapshotStore", "module": "app.stores",
                                            "backed_by": ["redis"]}, "snapshot_store_kind": "external"}
SQLITE_APP = STOCK_APP | {"snapshot_store": {"class": "SQLiteSnapshotStore", "module": "asap.state.stores.sqlite",
                                             "backed_by": ["aiosqlite"]}, "snapshot_store_kind": "sqlite"}
CUSTOM_APP = STOCK_APP | {"snapshot_store": {"class": "OurStore", "module": "app.stores", "backed_by": []},
                          "snapshot_store_kind": "unknown"}


@pytest.mark.parametrize("cfg,n,expected", [
    (STOCK_APP, 2, Status.FAIL), (REDIS_APP, 6, Status.PASS), (SQLITE_APP, 1, Status.PASS),
    (SQLITE_APP, 3, Status.WARN), (CUSTOM_APP, 1, Status.WARN),
    (STOCK_APP | {"snapshot_store": None, "snapshot_store_kind": "none"}, 1, Status.FAIL),
])
def test_snapshot_store(cfg, n, expected):
    assert judge_snapshot_store(cfg, n, "test").status is expected


@pytest.mark.parametrize("cfg,n,expected", [(STOCK_APP, 2, Status.FAIL), (STOCK_APP, 1, Status.WARN),
                                            (REDIS_APP, 6, Status.PASS)])
def test_no_in_memory_snapshots(cfg, n, expected):
    assert judge_no_in_memory_snapshots(cfg, n, "test").status is expected


def test_stock_manifest_cpu_hpa_and_instances(tmp_path):
    m = load_manifests([STOCK])
    r = judge_autoscaling(m)
    assert r.status is Status.PASS and "cpu utilization 70%" in r.summary
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text("import multiprocessing\nbind = '0.0.0.0:8000'\nworkers = multiprocessing.cpu_count() * 2 + 1\n")
    n = count_instances(1, m, read_process_config(conf))
    assert (n.at_least, n.exact) == (6, None) and "HPA 2-6" in n.how  # 2 replicas x at least 3 workers


def test_hpa_without_requests_and_no_hpa(tmp_path):
    text = STOCK.read_text()
    no_req = tmp_path / "a.yaml"
    no_req.write_text(text.replace("requests: {cpu: 500m, memory: 512Mi}\n", ""))
    assert judge_autoscaling(load_manifests([no_req])).status is Status.FAIL
    no_hpa = tmp_path / "b.yaml"
    no_hpa.write_text(text.split("---\napiVersion: autoscaling/v2")[0])
    r = judge_autoscaling(load_manifests([no_hpa]))
    assert r.status is Status.FAIL and "replicas fixed at 2" in r.summary


from asap_runbook.checks.scaling import SharedStateObservation, judge_shared_state  # noqa: E402

REDIS_ALL = REDIS_APP | {"rate_limit_storage": "RedisStorage", "rate_limit_storage_kind": "external",
                         "nonce_store": {"class": "RedisNonceStore", "module": "app", "backed_by": ["redis"]},
                         "nonce_store_kind": "external"}
AFFINITY = ["Service stock-agent: sessionAffinity ClientIP"]


@pytest.mark.parametrize("cfg,n,sticky,expected", [
    (STOCK_APP, 6, [], Status.FAIL),
    (STOCK_APP, 6, AFFINITY, Status.WARN),
    (STOCK_APP, 1, [], Status.WARN),
    (REDIS_ALL, 12, [], Status.PASS),
])
def test_shared_state(cfg, n, sticky, expected):
    assert judge_shared_state(SharedStateObservation(n, "test", sticky, app=cfg)).status is expected


# without targets[].app: the manifests' container environment, where only the rate-limit storage is settled
@pytest.mark.parametrize("env,n,sticky,expected,needle", [
    ({}, 6, [], Status.FAIL, "ASAP_RATE_LIMIT_BACKEND unset"),
    ({"ASAP_RATE_LIMIT_BACKEND": "memory://"}, 3, [], Status.FAIL, "rate limits in memory://"),
    ({"ASAP_RATE_LIMIT_BACKEND": "redis://:pw@redis:6379/0"}, 6, [], Status.WARN, "rate limits in redis:6379/0"),
    ({}, 6, AFFINITY, Status.WARN, "rate limits per process"),
    ({}, 1, [], Status.WARN, "rate limits per process"),
    ({"ASAP_RATE_LIMIT_BACKEND": "<from secret agent-redis>"}, 6, [], Status.SKIP, "whose value the manifests do not"),
])
def test_shared_state_from_the_manifests_alone(env, n, sticky, expected, needle):
    r = judge_shared_state(SharedStateObservation(n, "test", sticky, env=env))
    assert r.status is expected and needle in r.summary, r.summary
    assert "set targets[].app" in r.summary
    assert ":pw@" not in r.summary  # the credentials in a backend URL stay out of the summary


def test_shared_state_from_the_stock_manifest():
    """The stock Deployment sets no ASAP_RATE_LIMIT_BACKEND; 2 replicas x 1 worker, no affinity."""
    m = load_manifests([STOCK])
    env = {k: v for c in m.workloads[0].containers() for k, v in k8s.env(c).items()}
    r = judge_shared_state(SharedStateObservation(2, "2 replicas x 1 worker", m.sticky(),
                                                  env={k: env[k] for k in STATE_ENV if k in env}))
    assert r.status is Status.FAIL and "2 instances with rate limits in per-process memory" in r.summary, r.summary


from asap_runbook.checks.scaling import judge_stateless_pods  # noqa: E402


def test_stateless_pods_from_manifest_and_app():
    m = load_manifests([STOCK])
    assert judge_stateless_pods(m, STOCK_APP, 2, "t").status is Status.FAIL       # in-memory stores
    assert judge_stateless_pods(m, REDIS_ALL, 2, "t").status is Status.PASS
    # without introspection the volumes alone are not a pass
    r = judge_stateless_pods(m, "targets[stock].app is not set", 0, "")
    assert r.status is Status.MANUAL and "targets[].app" in r.summary
