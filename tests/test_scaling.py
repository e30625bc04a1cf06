"""Scaling checks proven both ways against the real reference deployment and the example files,
plus the edge cases of each kind of evidence (source, manifests, app introspection)."""

from __future__ import annotations

from pathlib import Path

import pytest

from asap_runbook.k8s import ManifestError, cpu_cores, load_manifests, memory_bytes
from asap_runbook.introspect import IntrospectionError, introspect_app
from asap_runbook.results import Status
from conftest import expected, one_target
from asap_runbook.catalog import Verification, load_catalog
from asap_runbook.source import client_usage

REPO = Path(__file__).resolve().parent.parent
# what each reference target must get is the catalog's `expected` (asap_runbook/catalog/scaling.yaml)
AUTOMATED = [i.id for i in load_catalog().section("scaling") if i.verification is not Verification.MANUAL]


@pytest.mark.parametrize("item_id", AUTOMATED)
def test_passes_on_hardened(check, item_id):
    r = check(item_id, "hardened")
    assert r.status is expected(item_id, "hardened"), r.summary
    assert r.evidence


@pytest.mark.parametrize("item_id", AUTOMATED)
def test_fails_on_misconfigured(check, item_id):
    r = check(item_id, "misconfigured")
    assert r.status is expected(item_id, "misconfigured"), r.summary
    assert r.remediation


def test_in_memory_snapshots_fail_with_several_instances(check, demo_params):
    r = check("SCALE-STATE-2", "misconfigured", one_target(demo_params, "misconfigured", instances=3))
    assert r.status is Status.FAIL and "3 instances" in r.summary
    r = check("SCALE-HSCALE-2", "misconfigured", one_target(demo_params, "misconfigured", instances=3))
    assert r.status is Status.FAIL and "rate limits" in r.summary  # says which state splits


def test_one_instance_warning_names_what_is_lost(check):
    r = check("SCALE-STATE-2", "misconfigured")
    assert "restart loses every task snapshot" in r.summary


def test_server3_says_constants_are_client_side(check):
    r = check("SCALE-SERVER-3", "hardened")
    text = " ".join(str(e.data) for e in r.evidence)
    assert "private client-side constants" in text and "not server settings" in text


def test_compression_probe_says_responses_are_not_compressed(check):
    r = check("SCALE-CLIENT-2", "hardened")
    probe = next(e.data for e in r.evidence if "probe" in e.label)
    assert probe["accepted"] is True and probe["response_content_encoding"].startswith("none")


def test_missing_inputs_skip_never_pass(check, demo_params):
    bare = one_target(demo_params, "hardened", source_dir=None, k8s_manifests=[], app=None, process_config=None)
    for item in ("SCALE-CLIENT-1", "SCALE-SERVER-2", "SCALE-STATE-1", "SCALE-HSCALE-3"):
        r = check(item, "hardened", bare)
        assert r.status is Status.SKIP, (item, r.summary)


def test_app_that_does_not_import_is_one_sentence_error(check, demo_params):
    broken = one_target(demo_params, "hardened", app="no_such_agent_module:app")
    r = check("SCALE-STATE-1", "hardened", broken)
    assert r.status is Status.ERROR
    assert "ModuleNotFoundError" in r.summary and "\n" not in r.summary


def test_introspection_runs_in_a_separate_process():
    import sys
    before = set(sys.modules)
    cfg = introspect_app("asap_runbook.reference.misconfigured_app:app")
    assert cfg["snapshot_store"]["class"] == "InMemorySnapshotStore"
    assert not any(m.startswith("asap.transport") for m in set(sys.modules) - before)
    with pytest.raises(IntrospectionError, match="within"):
        introspect_app("time:sleep", timeout=0.01)
    with pytest.raises(IntrospectionError, match="not an ASAP app"):
        introspect_app("json:dumps")


def test_source_scan_edge_cases(tmp_path):
    (tmp_path / "broken.py").write_text("def (:\n")
    (tmp_path / "loop.py").write_text(
        "from asap.transport import ASAPClient\n"
        "async def fan_out(urls):\n"
        "    for u in urls:\n"
        "        async with ASAPClient(u, timeout=5) as c:\n"
        "            await c.discover(u)\n")
    u = client_usage(tmp_path)
    assert u.unparsed and u.clients[0].in_loop and not u.clients[0].long_lived
    assert u.clients[0].setting("timeout") == (5, True)
    assert u.clients[0].setting("circuit_breaker_enabled") == (False, False)


def test_manifest_reader(tmp_path):
    assert cpu_cores("500m") == 0.5 and cpu_cores("2") == 2.0 and memory_bytes("1Gi") == 2**30
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Deployment\n  spec: [\n")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_manifests([bad])
    v1 = tmp_path / "hpa.yaml"
    v1.write_text("apiVersion: autoscaling/v1\nkind: HorizontalPodAutoscaler\nmetadata: {name: a}\n"
                  "spec: {scaleTargetRef: {kind: Deployment, name: a}, maxReplicas: 3, targetCPUUtilizationPercentage: 60}\n")
    m = load_manifests([v1])
    assert m.autoscalers[0].metrics == ["cpu utilization 60%"] and m.autoscalers[0].min_replicas == 1
    m = load_manifests([REPO / "examples" / "hardened" / "k8s"])
    assert m.workloads[0].replicas == 3 and m.hpa_for(m.workloads[0]) is not None


def test_introspection_child_never_sees_the_token(tmp_path, monkeypatch):
    (tmp_path / "tattle_app.py").write_text("import os\nraise RuntimeError('token=' + os.environ.get('MY_TOKEN', 'absent'))\n")
    monkeypatch.setenv("MY_TOKEN", "canary-7f3a9c")
    with pytest.raises(IntrospectionError) as e:
        introspect_app("tattle_app:app", app_path=tmp_path, drop_env=("MY_TOKEN",))
    assert "token=absent" in e.value.message and "canary" not in e.value.message


def test_shared_state_from_manifests_alone(check, demo_params):
    # without the app object only the rate-limit backend is certain: never a pass
    r = check("SCALE-HSCALE-2", "hardened", one_target(demo_params, "hardened", app=None))
    assert r.status is Status.WARN and "set targets[].app" in r.summary
    r = check("SCALE-HSCALE-2", "misconfigured", one_target(demo_params, "misconfigured", app=None, instances=2))
    assert r.status is Status.FAIL and "2 x the configured one" in r.summary
