"""Robustness at scale: targets that hang, trickle, flood or are not ASAP agents end as `error`
with the reason, within the configured timeouts, and leave the other targets' results intact.

Every misbehaving target is a real asyncio server on a free loopback port (tests/badservers.py);
the good target is the real hardened reference agent.
"""

from __future__ import annotations

import json

import pytest

from asap_runbook.catalog import Verification, load_catalog
from asap_runbook.checks._registry import registered
from asap_runbook.engine import run_check, run_section
from asap_runbook.params import ActiveProbes, Params, ProbeSettings, Target
from asap_runbook.results import Status

from badservers import BadServers, hang, huge, not_asap, trickle

REASONS = {
    "hanging": "did not complete within",
    "trickling": "did not complete within",
    "flooding": "more than 65536 bytes",
    "not-asap": "without an ASAP manifest",
}
# An HTTP server answered on these (not an ASAP agent): the checks of the TLS layer, which need
# only an answer, may judge it, and plain http:// is a real finding there.
ANSWERED = {"flooding", "not-asap"}
TLS_LAYER = {"SEC-TLS-2", "SEC-TLS-3", "SEC-TLS-4", "SEC-TLS-5"}


def _needs_the_agent(name: str, item_id: str) -> bool:
    return not (name in ANSWERED and item_id in TLS_LAYER)


@pytest.fixture(scope="module")
def bad():
    with BadServers() as s:
        s.add("hanging", hang)
        s.add("trickling", trickle)
        s.add("flooding", huge)
        s.add("not-asap", not_asap)
        yield s


def _passive(t: Target) -> Target:
    """The demo's hardened target without active probes: a second run must not spend its rate limit."""
    return t.model_copy(update={"active_probes": ActiveProbes()})


@pytest.fixture(scope="module")
def fleet_params(bad, demo_params) -> Params:
    hardened = _passive(demo_params.target("hardened"))
    targets = [Target(name=n, base_url=u) for n, u in bad.url.items()] + [hardened]
    return demo_params.model_copy(update={
        "targets": targets,
        "probe": ProbeSettings(timeout_seconds=1, max_response_bytes=65536),
    })


def _probe_items(section: str) -> set[str]:
    checks = registered()
    return {i.id for i in load_catalog().section(section)
            if i.id in checks and i.verification in (Verification.PROBE, Verification.DRILL)}


@pytest.fixture(scope="module")
def mixed_run(fleet_params):
    return run_section("security", fleet_params)


def test_each_bad_target_ends_in_error_with_its_reason(mixed_run):
    probe_items = _probe_items("security")
    assert probe_items, "the security section has probe checks"
    for name, reason in REASONS.items():
        mine = [r for r in mixed_run.results if r.target == name]
        assert mine, name
        assert not [r for r in mine if r.status is Status.PASS], f"{name}: nothing passes on a target that cannot be looked at"
        probed = [r for r in mine if r.item_id in probe_items and _needs_the_agent(name, r.item_id)]
        assert probed and all(r.status is Status.ERROR for r in probed), [(r.item_id, r.status) for r in probed]
        assert all(reason in r.summary for r in probed), (name, probed[0].summary)
        assert len({r.details["cause"] for r in probed}) == 1, "one cause per target, the preflight's"
        tls = [r for r in mine if r.item_id in TLS_LAYER and not _needs_the_agent(name, r.item_id)]
        assert all(r.status is Status.SKIP or "plain HTTP" in r.summary or "no TLS" in r.summary for r in tls), \
            [(r.item_id, r.status, r.summary) for r in tls]
        assert "Traceback" not in json.dumps([r.summary for r in mine])


def test_bad_targets_leave_the_good_target_intact(mixed_run, fleet_params):
    alone = run_section("security", fleet_params.model_copy(update={"targets": [fleet_params.target("hardened")]}))
    together = {r.item_id: r.status for r in mixed_run.results if r.target == "hardened"}
    assert together == {r.item_id: r.status for r in alone.results}
    assert together["SEC-TLS-1"] is Status.PASS and together["SEC-TLS-4"] is Status.PASS


def test_every_item_of_every_target_has_one_result(mixed_run, fleet_params):
    items = {i.id for i in load_catalog().section("security")}
    for t in fleet_params.targets:
        assert sorted(r.item_id for r in mixed_run.results if r.target == t.name) == sorted(items)


def test_request_budget_per_target(demo_params):
    """probe.max_requests_per_target: the preflight uses the only request, so the check cannot look."""
    params = demo_params.model_copy(update={
        "targets": [_passive(demo_params.target("hardened"))],
        "probe": demo_params.probe.model_copy(update={"max_requests_per_target": 1}),
    })
    r = run_check("SEC-TLS-1", params, "hardened")
    assert r.status is Status.ERROR
    assert "request budget exhausted" in r.summary


@pytest.mark.parametrize("bound", [1, 3])
def test_targets_in_parallel_is_bounded(demo_params, bound):
    """probe.max_targets_in_parallel: never more targets busy at once than the bound (and more than one when allowed)."""
    with BadServers() as s:
        for i in range(4):
            s.add_fake_agent(f"fake-{i}", delay=0.15)
        params = demo_params.model_copy(update={
            "targets": [Target(name=n, base_url=u) for n, u in s.url.items()], "prometheus": None,
            "probe": ProbeSettings(timeout_seconds=2, max_targets_in_parallel=bound),
        })
        run = run_section("security", params)
        assert {r.target for r in run.results} == set(s.url)
        assert s.stats["max_ports_busy"] <= bound
        if bound > 1:
            assert s.stats["max_ports_busy"] > 1


def test_full_run_with_misbehaving_targets(bad, deployment, tmp_path, capsys):
    """The same four through `asap-runbook run` (kernels in other processes reach the servers):
    each ends in error with its reason, the hardened target still passes, no traceback anywhere;
    the terminal says once per target why its checks could not run."""
    import yaml

    from asap_runbook.cli import main
    from asap_runbook.results import RunResults
    env = deployment.env()
    targets = [{"name": n, "base_url": u} for n, u in bad.url.items()]
    targets.append({"name": "hardened", "base_url": env["ASAP_DEMO_HARDENED_URL"], "ca_file": env["ASAP_DEMO_CA_FILE"],
                    "token_env": "ASAP_DEMO_TOKEN"})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"targets": targets, "probe": {"timeout_seconds": 1, "max_response_bytes": 65536}}))
    code = main(["run", "--params", str(params), "--out", str(tmp_path / "out"), "--sections", "security,resilience"])
    assert code in (1, 3)
    run_dir = next(p for p in (tmp_path / "out").iterdir() if p.is_dir())
    run = RunResults.model_validate_json((run_dir / "results.json").read_text())
    probe_items = _probe_items("security") | _probe_items("resilience")
    for name, reason in REASONS.items():
        probed = [r for r in run.results if r.target == name and r.item_id in probe_items
                  and _needs_the_agent(name, r.item_id)]
        assert probed and all(r.status is Status.ERROR and reason in r.summary for r in probed), name
    ok = {r.item_id: r.status for r in run.results if r.target == "hardened"}
    assert ok["SEC-TLS-1"] is Status.PASS and ok["SEC-TLS-4"] is Status.PASS
    out = capsys.readouterr().out
    for name, reason in REASONS.items():
        lines = [ln for ln in out.splitlines() if f"could not run on {name}: " in ln]
        assert len(lines) == 1 and reason in lines[0], (name, lines)
    assert "could not run on hardened" not in out
    for page in run_dir.rglob("*.html"):
        assert "Traceback" not in page.read_text()
