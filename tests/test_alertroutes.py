"""Alertmanager routing without a deployment: amtool (Debian's prometheus-alertmanager) routes alerts
through the shipped reference configuration and through odd ones written here; the labels an alert
carries; where the configuration comes from; and what cannot be looked at."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace

import pytest

from asap_runbook import alertroutes as ar
from asap_runbook.errors import PrometheusError
from asap_runbook.reference import ALERTMANAGER_CONFIG


def routed(config, **labels) -> dict:
    return asyncio.run(ar.route(config, ar.AlertToRoute(labels["alertname"], labels, "test"), 30))


def observe(settings, prom=None, alerts=()) -> dict:
    import dataclasses
    return dataclasses.asdict(asyncio.run(ar.observe(settings, prom, list(alerts))))


def settings(**kw):
    return SimpleNamespace(**({"url": None, "config_file": None, "timeout_seconds": 3} | kw))


# ------------------------------------------------------------------------ the shipped configuration
@pytest.mark.parametrize("labels, receivers, route", [
    ({"alertname": "ASAPAgentDown", "job": "asap-misconfigured", "severity": "critical"}, ["null"],
     '{alertname="ASAPAgentDown",job="asap-misconfigured"}'),
    ({"alertname": "ASAPAgentDown", "job": "asap-hardened", "severity": "critical"}, ["oncall"], "default-route"),
    ({"alertname": "ASAPHighLatencyP99", "job": "asap-misconfigured", "severity": "warning"}, ["tickets"],
     '{severity="warning"}'),
    # a value with quotes, commas and an equals sign reaches amtool as one label
    ({"alertname": "OrdersServiceDown", "job": "orders-service", "severity": "page", "note": 'a "b", c=d'},
     ["oncall"], "default-route"),
], ids=["misconfigured-down", "hardened-down", "warning", "odd-value"])
def test_amtool_routes_the_shipped_configuration(labels, receivers, route):
    r = routed(ALERTMANAGER_CONFIG, **labels)
    assert r["receivers"] == receivers, r
    assert r["routes"][-1]["route"] == route


def test_shipped_receivers_and_their_integrations():
    assert ar.integrations(ALERTMANAGER_CONFIG.read_text()) == {
        "oncall": ["webhook_configs"], "tickets": ["webhook_configs"], "null": []}


CONTINUE = """
route:
  receiver: oncall
  routes:
    - {receiver: chat, matchers: ['severity="critical"'], continue: true}
    - {receiver: "null", matchers: ['job="batch"']}
    - receiver: team
      matchers: ['severity="critical"']
      routes: [{receiver: team-pager, matchers: ['team="payments"']}]
receivers:
  - {name: oncall, webhook_configs: [{url: "http://127.0.0.1:9/oncall"}]}
  - {name: chat, slack_configs: [{api_url: "<secret>", channel: "#alerts"}]}
  - {name: "null"}
  - {name: team}
  - {name: team-pager, pagerduty_configs: [{routing_key: "<secret>"}]}
"""


def test_continue_resolves_to_several_receivers_in_tree_order(tmp_path):
    """The `<secret>` placeholders are what Alertmanager's /api/v2/status returns; amtool accepts them."""
    config = tmp_path / "am.yml"
    config.write_text(CONTINUE)
    assert routed(config, alertname="X", severity="critical", job="batch")["receivers"] == ["chat", "null"]
    r = routed(config, alertname="X", severity="critical", team="payments")
    assert r["receivers"] == ["chat", "team-pager"]
    assert [x["route"] for x in r["routes"]] == ['{severity="critical"}', '{team="payments"}']
    assert ar.integrations(CONTINUE) == {"oncall": ["webhook_configs"], "chat": ["slack_configs"], "null": [],
                                         "team": [], "team-pager": ["pagerduty_configs"]}


def test_a_configuration_amtool_refuses_is_a_sentence(tmp_path):
    config = tmp_path / "am.yml"
    config.write_text("route: {receiver: missing}\nreceivers: [{name: oncall}]\n")
    r = routed(config, alertname="X")
    assert "receivers" not in r
    assert r["error"].startswith("amtool config routes test exited with 1") and 'undefined receiver "missing"' in r["error"]


def test_parse_amtool_tree_output():
    out = ("Matching routes:\n.\n└── default-route\n    ├── {severity=\"critical\"}  receiver: chat\n"
           "    └── {job=\"x\"}  receiver: null\n\n\nchat,null\n")
    assert ar.parse_amtool(out) == (["chat", "null"], [{"route": '{severity="critical"}', "receiver": "chat"},
                                                       {"route": '{job="x"}', "receiver": "null"}])
    assert ar.parse_amtool("") == ([], [])


# ------------------------------------------------------------------------ the labels of an alert
def test_built_labels_follow_prometheus_precedence():
    a = ar.alert_labels("ASAPAgentDown", {"severity": "critical", "job": "from-rule"},
                        {"job": "asap-x", "instance": "h:1"}, {"cluster": "eu-1", "severity": "external"})
    # the rule's labels override the series', the series' override external labels; alertname last
    assert a.labels == {"cluster": "eu-1", "severity": "critical", "job": "from-rule", "instance": "h:1",
                        "alertname": "ASAPAgentDown"}
    assert a.labels_from == "rule + target"


def test_an_active_alert_is_taken_as_it_is():
    active = {"alertname": "ASAPAgentDown", "job": "asap-x", "instance": "h:1", "agent": "urn:a", "severity": "critical"}
    a = ar.alert_labels("ASAPAgentDown", {"severity": "critical"}, {"job": "asap-x"}, {"cluster": "eu-1"}, active)
    assert a.labels == active | {"cluster": "eu-1"} and a.labels_from == "a pending or firing alert"


def test_alertmanager_base_from_what_prometheus_lists():
    assert ar.alertmanager_base("http://127.0.0.1:9093/api/v2/alerts") == "http://127.0.0.1:9093"
    assert ar.alertmanager_base("https://am.example/prefix/api/v1/alerts") == "https://am.example/prefix"


# ------------------------------------------------------------------------ where the configuration comes from
ALERT = ar.AlertToRoute("ASAPAgentDown", {"alertname": "ASAPAgentDown", "job": "asap-misconfigured"}, "test")


class FakeProm:
    def __init__(self, answer):
        self.answer = answer

    async def alertmanagers(self):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_config_file_is_routed_without_contacting_anything():
    prom = FakeProm(AssertionError("Prometheus must not be asked when config_file is set"))
    o = observe(settings(config_file=ALERTMANAGER_CONFIG, url="http://127.0.0.1:1"), prom, [ALERT])
    assert o["source"] == "alertmanager.config_file" and o["error"] is None
    assert o["routes"][0]["receivers"] == ["null"]


def test_no_alertmanager_attached_is_said_not_guessed():
    o = observe(None, FakeProm({"activeAlertmanagers": [], "droppedAlertmanagers": []}), [ALERT])
    assert o["alertmanager"] is None and o["error"] is None and o["routes"] == []
    assert ar.judge(o, ["ASAPAgentDown"]).kind == "unattached"


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("how", ["url", "discovered"])
def test_an_alertmanager_that_does_not_answer_is_an_error(how):
    url = f"http://127.0.0.1:{_dead_port()}"
    if how == "url":
        o = observe(settings(url=url), None, [ALERT])
    else:
        o = observe(None, FakeProm({"activeAlertmanagers": [{"url": f"{url}/api/v2/alerts"}]}), [ALERT])
    assert o["error"].startswith(f"Alertmanager at {url} could not be reached"), o["error"]
    assert ar.judge(o, ["ASAPAgentDown"]).kind == "error"


def test_prometheus_that_cannot_say_is_an_error():
    o = observe(None, FakeProm(PrometheusError("Prometheus at http://p could not answer the alertmanagers query: 404")),
                [ALERT])
    assert "could not answer the alertmanagers query: 404; name the Alertmanager with alertmanager.url" in o["error"]


def test_an_unreadable_config_file_is_an_error(tmp_path):
    o = observe(settings(config_file=tmp_path / "gone.yml"), None, [ALERT])
    assert o["error"].startswith("alertmanager.config_file") and "cannot be read" in o["error"]


def test_amtool_missing_is_an_error(monkeypatch):
    monkeypatch.setattr(ar, "AMTOOL", "amtool-that-is-not-installed")
    o = observe(settings(config_file=ALERTMANAGER_CONFIG), None, [ALERT])
    assert "is not installed (Debian package prometheus-alertmanager)" in o["error"] and o["routes"] == []


def test_a_secret_in_the_configuration_stays_out_of_the_observation(tmp_path):
    """Routing keeps receiver names and integration kinds, never the configuration: a webhook token does
    not reach results.json."""
    import json
    canary = "CANARY-3f9a1c7e5b2d4f60"
    config = tmp_path / "am.yml"
    config.write_text(CONTINUE.replace('api_url: "<secret>"', f'api_url: "https://hooks.example/{canary}"')
                      .replace("http://127.0.0.1:9/oncall", f"http://127.0.0.1:9/oncall?token={canary}"))
    o = observe(settings(config_file=config), None, [ar.AlertToRoute("X", {"alertname": "X", "severity": "critical"},
                                                                      "test")])
    assert o["routes"][0]["receivers"] == ["chat", "team"] and o["error"] is None, o
    assert canary not in json.dumps(o) and canary not in json.dumps(ar.judge(o, ["X"]).rows)


# ------------------------------------------------------------------- one question per distinct answer
@pytest.mark.parametrize("matchers, names", [
    (['severity="critical"'], {"severity"}),
    (['{team=~"a|b", "ütf name"!="x"}'], {"team", "ütf name"}),
    ([' job = "x"', 'alertname!~"Watch.*"'], {"job", "alertname"}),
    (['foo=~"a,b=c"'], {"foo", "b"}),  # a label read too many leaves nothing out
    (["not a matcher"], None),  # cannot say which labels it reads: every label is asked
    ('severity="x"', None),  # not a list
])
def test_the_labels_a_routing_tree_reads(matchers, names):
    import yaml
    text = yaml.safe_dump({"route": {"receiver": "a", "match": {"service": "x"}, "match_re": {"env": "p.*"},
                                     "routes": [{"receiver": "b", "matchers": matchers}]}})
    got = ar.routing_label_names(text)
    assert got == (None if names is None else frozenset(names | {"service", "env"}))


def test_alerts_that_differ_only_in_labels_no_route_reads_ask_amtool_once(tmp_path, monkeypatch):
    """The shipped routes read alertname, job and severity: a fleet's targets of one job (one instance each)
    take one amtool run per rule; a label a route reads is asked again."""
    monkeypatch.setattr(ar, "_routed", {})
    asked = []
    real = ar.route

    async def counted(config_file, alert, timeout):
        asked.append(alert.labels)
        return await real(config_file, alert, timeout)
    monkeypatch.setattr(ar, "route", counted)
    base = {"alertname": "ASAPAgentDown", "job": "asap-misconfigured", "severity": "critical"}
    alerts = [ar.AlertToRoute("ASAPAgentDown", base | {"instance": f"10.0.0.{i}:443"}, "test") for i in range(5)]
    alerts.append(ar.AlertToRoute("ASAPAgentDown", base | {"job": "asap-hardened"}, "test"))
    o = observe(settings(config_file=ALERTMANAGER_CONFIG), None, alerts)
    assert len(asked) == 2 and asked[1]["job"] == "asap-hardened"
    assert [r["receivers"] for r in o["routes"]] == [["null"]] * 5 + [["oncall"]]
    assert [r["labels"]["instance"] for r in o["routes"][:5]] == [f"10.0.0.{i}:443" for i in range(5)]
    assert "asked" not in o["routes"][0] and "the routes read no other label" in o["routes"][1]["asked"]
