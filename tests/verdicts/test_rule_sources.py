"""MON-ALERT verdicts whatever the rules' source: the scraping Prometheus (the recorded observations of
test_monitoring.py), a rules API elsewhere, or rule files read offline. The rule groups are the
observation; the same judge reads them.

rule_files_one_broken.json is promtool's recorded word on the shipped rules and on a copy with one
expression broken (paths made relative when recorded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asap_runbook import rules_source
from asap_runbook.checks import mon_alerting as ma
from asap_runbook.results import Status

DATA = Path(__file__).parent / "data"
SHIPPED_RULES = Path(__file__).resolve().parents[2] / "asap_runbook" / "data" / "prometheus" / "asap-alerts.yml"
FROM_FILES_OK = {"kind": "rule_files", "where": "rules/asap-alerts.yml",
                 "files": [{"path": "rules/asap-alerts.yml", "loads": True, "promtool": "SUCCESS: 10 rules found"}]}
ONE_BROKEN = json.loads((DATA / "rule_files_one_broken.json").read_text())
RULER = {"kind": "rules_api", "where": "https://ruler.example.com/prometheus/api/v1/rules"}
RECORDED = {  # recorded observation -> its status with the live rules (tests/verdicts/test_monitoring.py)
    "alert_error_rate_hardened": Status.PASS, "alert_error_rate_misconfigured": Status.FAIL,
    "alert_down_hardened": Status.PASS, "alert_down_misconfigured": Status.FAIL,
    "alert_rate_limit_hardened": Status.PASS, "alert_rate_limit_misconfigured": Status.FAIL,
}


def recorded(name: str, **changes) -> ma.AlertObservation:
    return ma.AlertObservation(**(json.loads((DATA / f"{name}.json").read_text()) | changes))


def judge(obs: ma.AlertObservation):
    return ma.judge_alert(obs, 0.1 if obs.concern == "error_rate" else None, "default")


def evidence(finding) -> dict:
    return {e.label: e.data for e in finding.evidence}


def rule_names(summary: str) -> str:
    """The rules a summary names first ("ASAPAgentDown, ASAPAgentsAbsent cover(s) ...")."""
    return summary.split(" cover(s) ")[0].split(" select(s) ")[0].split(" pending ")[0].split(" not active yet")[0].split(" firing ")[0]


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_the_shipped_rule_file_judges_like_the_loaded_rules(name):
    live = judge(recorded(name))
    from_files = judge(recorded(name, groups=rules_source.groups_from_file(SHIPPED_RULES), rules_source=FROM_FILES_OK))
    assert live.status == RECORDED[name]
    assert from_files.status == live.status
    assert rule_names(from_files.summary) == rule_names(live.summary)  # the same rules decide
    assert rule_names(live.summary).startswith("ASAP")
    assert evidence(from_files)["alerting rules read from"] == FROM_FILES_OK


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_one_rule_file_that_does_not_load_fails_every_alert_item(name):
    f = judge(recorded(name, groups=rules_source.groups_from_file(SHIPPED_RULES), rules_source=ONE_BROKEN))
    assert f.status == Status.FAIL
    assert f.summary.startswith("rule file rules/asap-alerts-broken.yml does not load (promtool check rules: FAILED: "
                                "rules/asap-alerts-broken.yml: 89:15: group \"asap-agents\", rule 3, \"ASAPAgentDown\": "
                                "could not parse expression")
    assert f.summary.endswith("Prometheus refuses it, so none of its alerts can fire")


def test_a_rules_api_elsewhere_is_judged_like_prometheus_and_keeps_alert_states():
    groups = recorded("alert_down_hardened").groups
    firing = [dict(g, rules=[dict(r, alerts=[{"state": "firing", "labels": {"job": "asap-hardened"}}])
                             if r.get("name") == "ASAPAgentDown" else r for r in g["rules"]]) for g in groups]
    f = judge(recorded("alert_down_hardened", groups=firing, rules_source=RULER))
    assert f.status == Status.FAIL and "ASAPAgentDown firing for job 'asap-hardened' now" in f.summary
    quiet = judge(recorded("alert_down_hardened", rules_source=RULER))
    assert quiet.status == Status.PASS and "; not firing; Alertmanager routes ASAPAgentDown to oncall" in quiet.summary
    assert evidence(quiet)["alerting rules read from"] == RULER


def test_from_files_a_pass_does_not_claim_the_alert_is_quiet():
    f = judge(recorded("alert_down_hardened", groups=rules_source.groups_from_file(SHIPPED_RULES),
                       rules_source=FROM_FILES_OK))
    assert f.status == Status.PASS
    assert "; whether it fires is not known here (rules read from files); Alertmanager routes" in f.summary
    assert "not firing" not in f.summary
    assert evidence(f)["alert states"].startswith("not known: the rules are read from files")
