"""The commands people expect: --version, init, validate, list, explain. Bad input is one
sentence and exit 2, never a traceback. `init` reads real reference agents."""

from __future__ import annotations

import json
import select
import socket
import ssl
import urllib.request
from importlib import metadata

import pytest

from asap_runbook.catalog import load_catalog
from asap_runbook.cli import main
from asap_runbook.errors import ParamsError
from asap_runbook.params import load_params

from conftest import REPO


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().count("\n") == 0, err
    return err


# -- --version ---------------------------------------------------------------------------------

def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"asap-runbook {metadata.version('asap-runbook')}"


# -- list and explain --------------------------------------------------------------------------

def test_list_every_item_aligned(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    catalog = load_catalog()
    assert lines[0].split() == ["ID", "SECTION", "BLOCKING", "VERIFIED", "BY", "ITEM"]
    assert [ln.split()[0] for ln in lines[1:]] == list(catalog.ids)
    # the wording column starts at the same offset on every line
    offset = lines[0].index("ITEM")
    for line, item in zip(lines[1:], catalog):
        assert line[offset:] == item.text
        assert line.split()[1:4] == [item.section, "yes" if item.blocking else "no", str(item.verification)]


def test_list_filters(capsys):
    assert main(["list", "--section", "scaling", "--blocking"]) == 0
    ids = [ln.split()[0] for ln in capsys.readouterr().out.splitlines()[1:]]
    expected = [i.id for i in load_catalog().section("scaling") if i.blocking]
    assert ids == expected and 0 < len(ids) < len(load_catalog().section("scaling"))


def test_list_unknown_section_is_exit_2(capsys):
    assert main(["list", "--section", "securty"]) == 2
    assert "invalid choice: 'securty'" in capsys.readouterr().err


def test_explain_shows_wording_verification_rationale_remediation(capsys):
    item = load_catalog().get("MON-ALERT-3")
    assert main(["explain", "mon-alert-3"]) == 0  # ids are not case-sensitive on the command line
    out = capsys.readouterr().out
    flat = " ".join(out.split())
    assert out.startswith("MON-ALERT-3  Monitoring > Alerting\n")
    for text in (item.text, item.rationale, item.remediation, item.manual_guidance):
        assert " ".join(text.split()) in flat
    assert "Verified by:  prometheus: queries to your Prometheus" in out
    assert "Blocking:     yes (severity critical)" in out


def test_explain_unknown_item_suggests(capsys):
    assert main(["explain", "SEC-TSL-1"]) == 2
    err = one_line_error(capsys)
    assert "unknown checklist item id 'SEC-TSL-1'" in err and "did you mean SEC-TLS-1" in err


# -- validate ----------------------------------------------------------------------------------

THREE_MISTAKES = """\
schema_version: 1
enviroment: staging
targets:
  - name: orders
    base_url: orders.example.com
    nginx_conf: ./no-such-nginx.conf
"""


def test_validate_reports_every_problem_with_position(tmp_path, capsys):
    p = tmp_path / "p.yaml"
    p.write_text(THREE_MISTAKES)
    assert main(["validate", str(p)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{p}:2:1: unknown key enviroment; did you mean 'environment'?",
        f"{p}:5:15: targets[0].base_url: 'orders.example.com' is not an http:// or https:// URL",
        f"{p}:6:17: targets[orders].nginx_conf: {tmp_path / 'no-such-nginx.conf'} does not exist",
        f"3 problem(s) in {p}; nothing was contacted.",
    ]


def test_load_params_lists_the_same_problems(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text(THREE_MISTAKES)
    with pytest.raises(ParamsError) as e:
        load_params(p)
    lines = e.value.message.splitlines()
    assert lines[0] == f"Parameters file {p} has 3 problems:"
    assert [ln.split(":")[0].strip() for ln in lines[1:]] == ["line 2, column 1", "line 5, column 15", "line 6, column 17"]


def test_validate_nested_unknown_key_and_unset_variable(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ASAP_RUNBOOK_TEST_UNSET", raising=False)
    p = tmp_path / "p.yaml"
    p.write_text("targets:\n  - name: a\n    base_url: ${ASAP_RUNBOOK_TEST_UNSET}\n"
                 "    active_probes: {drils: true}\n")
    assert main(["validate", str(p)]) == 2
    out = capsys.readouterr().out.splitlines()
    # the unset variable is one problem, not also a malformed URL
    assert out[:2] == [
        f"{p}:3:15: targets[0].base_url refers to ${{ASAP_RUNBOOK_TEST_UNSET}}, which is not set in the environment",
        f"{p}:4:21: unknown key targets[0].active_probes.drils; did you mean 'drills'?",
    ]
    assert len(out) == 3


def test_did_you_mean_finds_the_longer_name_and_the_right_place(tmp_path, capsys):
    p = tmp_path / "p.yaml"
    p.write_text("targets:\n  - name: a\n    url: https://a.example\n    timout_seconds: 5\n")
    assert main(["validate", str(p)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert f"{p}:3:5: unknown key targets[0].url; did you mean 'base_url'?" in out
    # no such key on a target: the hint names every place the key does live
    hint = next(line for line in out if line.startswith(f"{p}:4:5: unknown key targets[0].timout_seconds; "))
    assert "not a key here (did you mean " in hint
    assert " probe.timeout_seconds" in hint and " prometheus.timeout_seconds" in hint


@pytest.mark.parametrize("text, line", [
    ("targets: [\n", "p.yaml:2:1: is not valid YAML (expected the node content, but found '<stream end>')"),
    ("- a list\n", "p.yaml: must be a mapping with a 'targets' list"),
    ("environment: x\n", "p.yaml:1:1: missing required key targets"),
])
def test_validate_whole_file_problems(tmp_path, capsys, text, line):
    p = tmp_path / "p.yaml"
    p.write_text(text)
    assert main(["validate", str(p)]) == 2
    assert capsys.readouterr().out.splitlines()[0] == f"{tmp_path}/{line}"


def test_validate_missing_file(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().out.splitlines()[0] == f"{tmp_path / 'nope.yaml'}: does not exist"


def test_validate_valid_file_contacts_nothing(tmp_path, capsys):
    """A listening socket named as the target: after validate, no connection is waiting on it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        p = tmp_path / "p.yaml"
        p.write_text(f"targets:\n  - name: a\n    base_url: http://127.0.0.1:{port}\n"
                     f"prometheus: {{url: http://127.0.0.1:{port}}}\n")
        assert main(["validate", str(p)]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0] == f"{p}: valid; 1 target(s): a. Nothing was contacted."
        assert out[1] == "a: 43 item(s) cannot be verified with these parameters:"  # tests/test_inputs.py says which
        assert select.select([listener], [], [], 0)[0] == []


def test_example_params_say_validate():
    text = (REPO / "params" / "example.yaml").read_text()
    assert "asap-runbook validate params/example.yaml" in text
    assert "--sections security" not in text.split("\n", 3)[1]
    assert main(["validate", str(REPO / "params" / "example.yaml")]) == 0


# -- init against the real reference agents ----------------------------------------------------

def manifest_of(url: str, ca_file=None) -> dict:
    ctx = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    with urllib.request.urlopen(url + "/.well-known/asap/manifest.json", context=ctx, timeout=10) as r:
        return json.load(r)


def test_init_hardened_agent(deployment, tmp_path, capsys):
    h = deployment.hardened
    out = tmp_path / "starter.yaml"
    assert main(["init", "--url", h.base_url, "--out", str(out), "--ca-file", str(h.ca_file),
                 "--token-env", h.token_env]) == 0
    assert f"wrote {out} for {h.agent_id}" in capsys.readouterr().out
    params = load_params(out)
    t = params.targets[0]
    assert (t.name, t.base_url, t.token_env, t.ca_file) == ("hardened-ref", h.base_url, h.token_env, h.ca_file.resolve())
    assert not t.active_probes.any_enabled and params.prometheus is None
    text = out.read_text()
    manifest = manifest_of(h.base_url, h.ca_file)
    skills = [s["id"] for s in manifest["capabilities"]["skills"]]
    assert f"#   skills: {', '.join(skills)}" in text
    assert f"#   endpoints: asap {manifest['endpoints']['asap']}," in text
    assert "the manifest declares auth ['bearer']" in text
    assert "# http_url: http://HOST" in text  # what it cannot know is left commented, with what it enables
    assert "#   url: https://prometheus" in text


def test_init_agent_without_auth_over_plain_http(deployment, tmp_path, capsys):
    m = deployment.misconfigured[0]
    out = tmp_path / "weak.yaml"
    assert main(["init", "--url", m.http_url, "--out", str(out)]) == 0
    t = load_params(out).targets[0]
    assert (t.name, t.base_url, t.token_env) == ("misconfigured-ref", m.http_url, None)
    text = out.read_text()
    assert "plain HTTP: the TLS items (SEC-TLS-*) will fail" in text
    assert "# token_env: AGENT_TOKEN   # the manifest declares no auth" in text


def test_init_past_an_unverifiable_certificate(deployment, tmp_path, capsys):
    m = deployment.misconfigured[0]
    out = tmp_path / "weak.yaml"
    assert main(["init", "--url", m.base_url, "--out", str(out)]) == 2  # expired, self-signed
    said = one_line_error(capsys)
    assert "does not verify" in said and "--no-tls-verify" in said
    assert not out.exists()
    assert main(["init", "--url", m.base_url, "--out", str(out), "--no-tls-verify"]) == 0
    assert load_params(out).targets[0].tls_verify is False


def test_init_refuses_to_overwrite(deployment, tmp_path, capsys):
    out = tmp_path / "mine.yaml"
    out.write_text("# mine\n")
    assert main(["init", "--url", deployment.misconfigured[0].http_url, "--out", str(out)]) == 2
    assert "already exists" in one_line_error(capsys)
    assert out.read_text() == "# mine\n"


def test_init_default_name_from_the_manifest(deployment, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["init", "--url", deployment.misconfigured[0].http_url]) == 0
    assert load_params(tmp_path / "misconfigured-ref.params.yaml").targets[0].name == "misconfigured-ref"


def test_init_not_an_asap_agent(deployment, tmp_path, capsys):
    assert main(["init", "--url", deployment.prometheus.url, "--out", str(tmp_path / "x.yaml")]) == 2
    err = one_line_error(capsys)
    assert "without an ASAP manifest" in err and not (tmp_path / "x.yaml").exists()


def test_init_unreachable(tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["init", "--url", f"http://127.0.0.1:{port}", "--out", str(tmp_path / "x.yaml")]) == 2
    assert f"cannot read an ASAP manifest from http://127.0.0.1:{port}: cannot connect" in one_line_error(capsys)


@pytest.mark.parametrize("argv, sentence", [
    (["--url", "orders.example.com"], "is not an http:// or https:// URL"),
    (["--url", "http://127.0.0.1:9", "--token-env", "not a name"], "is not an environment variable name"),
    (["--url", "https://127.0.0.1:9", "--ca-file", "/no/such/ca.pem"], "--ca-file /no/such/ca.pem does not exist"),
])
def test_init_bad_arguments(tmp_path, capsys, argv, sentence):
    assert main(["init", *argv, "--out", str(tmp_path / "x.yaml")]) == 2
    assert sentence in one_line_error(capsys)
