"""Scaling verdicts from recorded observations: source trees written the way teams write them (settings
dicts, **kwargs, factories, lambdas, the gunicorn formula), scanned and judged with no server."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from asap_runbook.checks.scaling import (
    ManifestFetches, judge_compression, judge_connection_pooling, judge_manifest_caching, judge_manifest_ttl,
    judge_multiple_workers, judge_pool_constants, judge_retry_config, judge_timeouts, judge_workers_per_core)
from asap_runbook.k8s import Document, Workload, count_instances
from asap_runbook.results import Status
from asap_runbook.source import UNKNOWN, client_usage, read_process_config

REPO = Path(__file__).resolve().parents[2]


def tree(tmp_path: Path, **files: str) -> Path:
    for name, text in files.items():
        p = tmp_path / name.replace("__", "/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return tmp_path


SETTINGS_DICT = """
    from asap.transport import ASAPClient, RetryConfig

    CLIENT_SETTINGS = {"timeout": 15.0, "pool_maxsize": 40, "pool_connections": 10, "compression": True}
    RETRIES = dict(max_retries=4, circuit_breaker_enabled=True)
    INVENTORY = ASAPClient("https://inventory.internal", retry_config=RetryConfig(**RETRIES), **CLIENT_SETTINGS)
"""

KWARGS_FROM_CONFIG = """
    from asap.transport import ASAPClient
    from .config import settings

    client = ASAPClient(settings.inventory_url, **settings.client_kwargs())
"""

FACTORY_PER_REQUEST = """
    from asap.transport import ASAPClient

    def make_client(url):
        return ASAPClient(url, timeout=5.0)

    async def handle(envelope, url):
        async with make_client(url) as c:
            return await c.send(envelope)
"""

FACTORY_LAZY_GLOBAL = """
    from asap.transport import ASAPClient

    _client = None

    def build():
        c = ASAPClient("https://inventory.internal", timeout=5.0)
        return c

    def get_client():
        global _client
        if _client is None:
            _client = build()
        return _client
"""


def test_settings_dict_and_dict_call_are_read_as_explicit_settings(tmp_path):
    u = client_usage(tree(tmp_path, **{"downstream.py": SETTINGS_DICT}))
    s = u.clients[0]
    assert s.setting("timeout") == (15.0, True) and s.setting("pool_maxsize") == (40, True)
    assert s.setting("circuit_breaker_enabled") == (True, True) and s.long_lived is True
    assert judge_retry_config(u).status is Status.PASS
    assert judge_timeouts(u, 30, "test").status is Status.PASS
    assert judge_pool_constants(u).status is Status.PASS


def test_kwargs_from_a_call_are_unknown_never_defaults(tmp_path):
    (tmp_path / "agent.py").write_text(textwrap.dedent(KWARGS_FROM_CONFIG))
    u = client_usage(tmp_path)
    s = u.clients[0]
    assert s.setting("timeout") == (UNKNOWN, False) and s.unresolved == ["**settings.client_kwargs()"]
    t = judge_timeouts(u, 30, "test")
    assert t.status is Status.MANUAL and "**settings.client_kwargs()" in str(t.evidence[0].data)
    assert judge_retry_config(u).status is Status.MANUAL
    assert judge_compression(u, {"accepted": True}).status is Status.MANUAL


def test_factory_called_per_request_is_per_call(tmp_path):
    (tmp_path / "agent.py").write_text(textwrap.dedent(FACTORY_PER_REQUEST))
    u = client_usage(tmp_path)
    assert u.clients[0].long_lived is False and "handle" in u.clients[0].why
    assert judge_connection_pooling(u).status is Status.FAIL


def test_factory_kept_by_lazy_global_is_long_lived(tmp_path):
    (tmp_path / "agent.py").write_text(textwrap.dedent(FACTORY_LAZY_GLOBAL))
    u = client_usage(tmp_path)
    assert u.clients[0].long_lived is True, u.clients[0].why
    assert judge_connection_pooling(u).status is Status.PASS


@pytest.mark.parametrize("agent", ["hardened", "misconfigured"])
def test_reference_agents_running_source_is_not_inverted(agent):
    """The reference agents build clients through a factory handed to ClientPolicy(make_client=...) and keep
    them only `if policy.long_lived`: the source does not settle it, so neither pass nor fail."""
    u = client_usage(REPO / "asap_runbook" / "reference")
    site = next(s for s in u.clients if s.file == f"{agent}_app.py")
    assert site.long_lived is None and "kept if policy.long_lived" in site.why
    only = type(u)(u.root, clients=[site], files=u.files)
    assert judge_connection_pooling(only).status is Status.MANUAL


def test_example_trees_keep_their_verdicts():
    hard = client_usage(REPO / "examples" / "hardened" / "src")
    bad = client_usage(REPO / "examples" / "misconfigured" / "src")
    assert judge_connection_pooling(hard).status is Status.PASS
    assert judge_connection_pooling(bad).status is Status.FAIL
    assert judge_pool_constants(bad).status is Status.FAIL  # _helpers.DEFAULT_POOL_MAXSIZE = 1000


GUNICORN = {
    "fixed": ("workers = 4\nworker_class = 'uvicorn.workers.UvicornWorker'\n", 4, False),
    "formula": ("import multiprocessing\nworkers = multiprocessing.cpu_count() * 2 + 1\n", None, True),
    "env": ("import os\nworkers = int(os.environ.get('WEB_CONCURRENCY', '4'))\n", None, False),
    "absent": ("bind = '0.0.0.0:8000'\n", None, False),
}


@pytest.mark.parametrize("case", GUNICORN)
def test_gunicorn_workers_are_read_or_unknown(tmp_path, case):
    text, workers, per_cpu = GUNICORN[case]
    p = tmp_path / "gunicorn.conf.py"
    p.write_text(text)
    cfg = read_process_config(p)
    assert (cfg.workers, cfg.per_cpu) == (workers, per_cpu)
    verdict = judge_multiple_workers(cfg, str(p))
    expected = {"fixed": Status.PASS, "formula": Status.PASS, "env": Status.MANUAL, "absent": Status.MANUAL}[case]
    assert verdict.status is expected, verdict.summary
    if case == "formula":
        assert cfg.workers_at(2) == 5 and "at least 3" in verdict.summary


def _workload(cpu: str | None, memory: str = "2Gi", replicas: int | None = 3) -> Workload:
    limits = {"memory": memory} | ({"cpu": cpu} if cpu else {})
    pod = {"containers": [{"name": "agent", "image": "img", "resources": {"limits": limits}}]}
    body = {"kind": "Deployment", "metadata": {"name": "agent"}, "spec": {"replicas": replicas, "template": {"spec": pod}}}
    return Workload(Document(Path("agent.yaml"), 0, body), pod)


def test_formula_on_a_small_cpu_limit_is_over_the_ratio(tmp_path):
    p = tmp_path / "gunicorn.conf.py"
    p.write_text(GUNICORN["formula"][0])
    cfg = read_process_config(p)
    # cpu_count() sees the node: on a 500m limit the formula gives >= 3 workers = 6 per core
    assert judge_workers_per_core(cfg, _workload("500m"), 2, 4, "t").status is Status.FAIL
    # on 2 CPUs it gives >= 5 workers (2.5/core) but more on a bigger node: unknown
    assert judge_workers_per_core(cfg, _workload("2"), 2, 4, "t").status is Status.MANUAL


def test_one_rule_counts_instances(tmp_path):
    """The hardened example: 3 replicas (HPA min 3) x 4 gunicorn workers = 12, in every section."""
    from asap_runbook.k8s import load_manifests
    m = load_manifests([REPO / "examples" / "hardened" / "k8s" / "orders-agent.yaml"])
    cfg = read_process_config(REPO / "examples" / "hardened" / "gunicorn.conf.py")
    n = count_instances(1, m, cfg)
    assert (n.at_least, n.exact) == (12, 12)
    assert count_instances(1, None, None).exact is None  # nothing given: at least 1, not "1"
    assert count_instances(5, None, None).exact == 5      # the operator declared it
    p = tmp_path / "gunicorn.conf.py"
    p.write_text(GUNICORN["formula"][0])
    f = count_instances(1, m, read_process_config(p))
    assert f.exact is None and f.at_least == 9


def test_manifest_ttl_verdicts_and_scope():
    ok = ManifestFetches(200, "public, max-age=300", '"abc"', 304, None)
    r = judge_manifest_ttl(ok, 300, "t")
    assert r.status is Status.PASS and any(e.label == "scope" for e in r.evidence)
    assert judge_manifest_ttl(ManifestFetches(200, None, None, None, None), 300, "t").status is Status.FAIL
    assert judge_manifest_ttl(ManifestFetches(200, "max-age=300", '"a"', 200, None), 300, "t").status is Status.FAIL
    assert judge_manifest_ttl(ManifestFetches(503, None, None, None, None), 300, "t").status is Status.ERROR
    long = ManifestFetches(200, "max-age=300", '"a"', 304, [{"at": "a.py:3", "default_ttl": 172800}])
    assert judge_manifest_ttl(long, 300, "t").status is Status.WARN


def test_manifest_caching_for_unsettled_factory_is_manual():
    u = client_usage(REPO / "asap_runbook" / "reference")
    u.manifest_caches = []
    assert judge_manifest_caching(u).status is Status.MANUAL


def test_a_hard_coded_token_reaches_no_evidence_and_no_observation():
    """The misconfigured example passes auth_token= a literal (SEC-AUTH-3's finding): the scaling checks
    that show the clients and the manifests say it is set, never its value."""
    import json

    from asap_runbook.checks._observe import judged_by
    from asap_runbook.checks.scaling import judge_autoscaling
    from asap_runbook.k8s import load_manifests
    secret = "inv-3f9a7c1e5b2d4a6f8e0c"
    u = client_usage(REPO / "examples" / "misconfigured" / "src")
    assert u.clients[0].kwargs["auth_token"] == secret  # the scan resolves it; the displays must not show it
    m = load_manifests([REPO / "examples" / "misconfigured" / "k8s"])
    for f in (judged_by(judge_manifest_caching, u), judged_by(judge_connection_pooling, u),
              judged_by(judge_autoscaling, m)):
        shown = json.dumps([[e.label, e.data] for e in f.evidence] + [f.details], default=str)
        assert secret not in shown and f.details["observation"], f.summary
    assert u.clients[0].summary()["kwargs"]["auth_token"] == "(set; value not shown)"
