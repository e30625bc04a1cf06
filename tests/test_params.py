"""Bad parameters are one clear sentence and exit code 2, before anything runs."""

import subprocess
import sys
from pathlib import Path

import pytest

from asap_runbook.cli import main
from asap_runbook.errors import ParamsError
from asap_runbook.params import load_params

REPO = Path(__file__).resolve().parent.parent

GOOD = """
targets:
  - name: a
    base_url: https://agent.example.com
    token_env: AGENT_TOKEN
"""


def write(tmp_path, text, name="p.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_minimal_file_loads(tmp_path):
    params = load_params(write(tmp_path, GOOD))
    assert params.targets[0].base_url == "https://agent.example.com"
    assert params.thresholds.hsts_max_age_seconds.value == 31536000
    assert "checklist" in params.thresholds.hsts_max_age_seconds.source


def test_example_params_validate():
    params = load_params(REPO / "params" / "example.yaml")
    assert params.targets[0].token_env == "ORDERS_AGENT_TOKEN"
    assert not any(params.targets[0].active_probes.model_dump(
        include={"rate_limit_burst", "oversize_body", "drills", "handler_probes"}).values())
    assert params.probe.rate_limit == "10/second;100/minute"  # asap-protocol's default, stated


def test_a_rate_limit_that_does_not_parse_is_one_sentence(tmp_path):
    with pytest.raises(ParamsError) as e:
        load_params(write(tmp_path, GOOD + "probe: {rate_limit: fast}\n"))
    assert "probe.rate_limit: 'fast' is not a rate limit" in e.value.message


def test_a_target_can_state_its_own_rate_limit(tmp_path):
    """Agents of a fleet need not share one limit: a target's own is what its POSTs are paced under."""
    from asap_runbook.probe import Probe
    params = load_params(write(tmp_path, GOOD + "    rate_limit: 1000/second\n  - name: other\n"
                                       "    base_url: https://other.example.com\n"))
    own, default = (Probe(t, params.probe).pacer() for t in params.targets)
    assert own.limits == [(1000, 1.0)]
    assert default.limits == [(10, 1.0), (100, 60.0)]  # probe.rate_limit
    with pytest.raises(ParamsError) as e:
        load_params(write(tmp_path, GOOD + "    rate_limit: fast\n"))
    assert "targets[0].rate_limit: 'fast' is not a rate limit" in e.value.message


@pytest.mark.parametrize("text, sentence", [
    (GOOD + "    colour: blue\n", "line 6, column 5: unknown key targets[0].colour"),
    (GOOD.replace("https://agent.example.com", "agent.example.com"), "is not an http:// or https:// URL"),
    (GOOD.replace("https://agent.example.com", "https://agent.example.com:99999"), "port outside"),
    (GOOD + "  - name: a\n    base_url: https://b.example.com\n", "target names must be unique"),
    ("targets: [\n", "is not valid YAML (expected the node content, but found '<stream end>') at line 2, column 1"),
    ("- just\n- a list\n", "must be a mapping"),
    ("environment: x\n", "missing required key targets"),
    (GOOD + "    ca_file: /nonexistent/ca.pem\n", "does not exist"),
    (GOOD.replace("https://agent.example.com", "${ASAP_RUNBOOK_TEST_UNSET_VAR}"), "which is not set in the environment"),
    (GOOD + "    token_env: 'not a name'\n", "token_env"),
    (GOOD + "    readiness_path: readyz\n", "readiness_path"),
    (GOOD + "alertmanager: {url: alertmanager:9093}\n", "alertmanager.url: 'alertmanager:9093' is not an http"),
    (GOOD + "alertmanager: {config_file: /nonexistent/alertmanager.yml}\n",
     "alertmanager.config_file: /nonexistent/alertmanager.yml does not exist"),
    (GOOD + "alertmanager: {urls: http://am:9093}\n", "unknown key alertmanager.urls; did you mean 'url'?"),
])
def test_bad_params_one_sentence(tmp_path, text, sentence):
    with pytest.raises(ParamsError) as e:
        load_params(write(tmp_path, text))
    assert sentence in e.value.message
    assert "\n" not in e.value.message


def test_alertmanager_config_file_is_relative_to_the_params_file(tmp_path):
    (tmp_path / "am").mkdir()
    (tmp_path / "am" / "alertmanager.yml").write_text("route: {receiver: x}\nreceivers: [{name: x}]\n")
    params = load_params(write(tmp_path, GOOD + "alertmanager: {config_file: am/alertmanager.yml}\n"))
    assert params.alertmanager.config_file == tmp_path / "am" / "alertmanager.yml"
    assert params.alertmanager.url is None and params.alertmanager.timeout_seconds == 5


def test_missing_file_is_exit_2(tmp_path, capsys):
    assert main(["run", "--params", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err


def test_cli_bad_params_exit_2_without_traceback(tmp_path):
    p = write(tmp_path, GOOD + "    colour: blue\n")
    proc = subprocess.run([sys.executable, "-m", "asap_runbook", "run", "--params", str(p), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "unknown key" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists(), "nothing runs on bad parameters"


def test_unknown_section_is_exit_2(tmp_path, capsys):
    p = write(tmp_path, GOOD)
    assert main(["run", "--params", str(p), "--sections", "securty", "--out", str(tmp_path / "o")]) == 2
    assert "unknown section 'securty'" in capsys.readouterr().err


def test_bad_cli_usage_is_exit_2(capsys):
    assert main(["run"]) == 2
