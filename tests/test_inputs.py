"""coverage_offline: which items a parameters file cannot verify, read from the catalog's inputs
without contacting anything; and `asap-runbook validate` printing it."""

from __future__ import annotations

import pytest

from asap_runbook.cli import main
from asap_runbook.inputs import coverage_offline
from asap_runbook.params import Params

BARE = {"targets": [{"name": "api", "base_url": "https://api.example.com"}]}


def _missing(data: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for target, item, entry in coverage_offline(Params.model_validate(data)):
        out.setdefault(f"{target}/{item}", []).append(entry)
    return out


@pytest.mark.parametrize("target_fields, item, missing", [
    ({}, "SEC-TLS-5", ["targets[].http_url"]),
    ({"http_url": "http://api.example.com"}, "SEC-TLS-5", None),
    ({}, "SEC-RATE-4", ["prometheus.url + targets[].prometheus_job"]),
    ({"prometheus_job": "api"}, "SEC-RATE-4", ["prometheus.url + targets[].prometheus_job"]),  # both are needed
    ({}, "SEC-RATE-1", ["targets[].active_probes.rate_limit_burst"]),
    ({"active_probes": {"rate_limit_burst": True}}, "SEC-RATE-1", None),
    ({}, "SCALE-STATE-2", ["targets[].app | targets[].log_file | targets[].log_command",
                           "targets[].process_config | targets[].k8s_manifests"]),
    ({"log_command": "kubectl logs deploy/api", "k8s_manifests": ["k8s.yaml"]}, "SCALE-STATE-2", None),  # any alternative
    ({}, "MON-HEALTH-2", ["targets[].active_probes.drills", "targets[].drills.dependency_stop + targets[].drills.dependency_start"]),
    ({"active_probes": {"drills": True}, "drills": {"dependency_stop": "x"}}, "MON-HEALTH-2",
     ["targets[].drills.dependency_stop + targets[].drills.dependency_start"]),
    ({}, "SEC-TLS-1", None),        # base_url is always there
    ({}, "SEC-HANDLER-5", None),    # manual items need no parameter
])
def test_missing_inputs(target_fields, item, missing):
    data = {"targets": [{**BARE["targets"][0], **target_fields}]}
    assert _missing(data).get(f"api/{item}") == missing


def test_prometheus_url_with_the_job_covers_every_prometheus_item():
    data = {"prometheus": {"url": "http://prom:9090"},
            "targets": [{**BARE["targets"][0], "prometheus_job": "api"}]}
    missing = _missing(data)
    assert not [k for k in missing if k.split("/")[1] in ("MON-METRICS-2", "MON-ALERT-1", "SEC-RATE-4", "SEC-SIZE-3")]


def test_validate_names_what_each_target_cannot_verify(tmp_path, capsys):
    p = tmp_path / "p.yaml"
    p.write_text("targets:\n  - name: api\n    base_url: https://api.example.com\n"
                 "    http_url: http://api.example.com\n    source_dir: .\n")
    assert main(["validate", str(p)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{p}: valid; 1 target(s): api. Nothing was contacted."
    assert out[1].startswith("api: ") and out[1].endswith(" item(s) cannot be verified with these parameters:")
    assert "  SEC-RATE-4: set prometheus.url and targets[].prometheus_job" in out
    assert "  SCALE-STATE-1: set targets[].app or targets[].log_file or targets[].log_command" in out
    # two inputs, each with alternatives: grouped, so the "and" cannot be misread
    assert ("  SCALE-HSCALE-2: set (targets[].app or targets[].log_file or targets[].log_command) and "
            "(targets[].process_config or targets[].k8s_manifests)") in out
    assert not any(line.startswith(("  SEC-TLS-5:", "  SCALE-CLIENT-1:")) for line in out)  # http_url, source_dir given
