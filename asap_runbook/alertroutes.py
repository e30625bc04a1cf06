"""Where an alert goes: Alertmanager's own routing, asked with `amtool config routes test`.

An alerting rule that fires into a route nobody receives is no alert at all. For the rules
MON-ALERT-1..4 found, this module builds the labels each alert would carry, asks amtool (Alertmanager's
own routing code, so `continue`, nested routes, matchers and regexes mean exactly what they mean to
Alertmanager) which receivers it resolves to, and reads from the same configuration which of those
receivers has an integration (a `*_configs` entry). A receiver with none, like the common `"null"`,
notifies no one.

Which configuration: `alertmanager.config_file` (read here, nothing contacted), else the one loaded by
`alertmanager.url`, else by the first Alertmanager Prometheus sends to (/api/v1/alertmanagers); a
loaded configuration comes from Alertmanager's /api/v2/status, secrets already redacted. The
configuration text is never kept as evidence: only receiver names and their integration kinds.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import re
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from . import _shell, _yaml
from .errors import PrometheusError

AMTOOL = "amtool"
DISCOVERED = "Prometheus /api/v1/alertmanagers"
_ROUTE_LINE = re.compile(r"(\{.*\}|default-route)\s+receiver: (.+?)\s*$")


@dataclass(frozen=True)
class AlertToRoute:
    """One alert as Alertmanager would receive it."""
    rule: str
    labels: dict[str, str]
    labels_from: str  # "a pending or firing alert" (exact) or "rule + target" (built)


def alert_labels(rule: str, rule_labels: dict, series_labels: dict, external: dict,
                 active: dict | None = None) -> AlertToRoute:
    """The labels an alert of `rule` carries when it reaches Alertmanager. From an alert Prometheus
    holds now when there is one (exact); else built the way Prometheus builds them: the series'
    labels (`series_labels`: the target's job and instance, or the proxy counter's pinned labels),
    overridden by the rule's own labels, then alertname. Prometheus adds its external labels to
    every alert that lacks them."""
    if active:
        return AlertToRoute(rule, {**external, **active, "alertname": rule}, "a pending or firing alert")
    labels = {**external, **series_labels, **(rule_labels or {}), "alertname": rule}
    return AlertToRoute(rule, {str(k): str(v) for k, v in labels.items()}, "rule + target")


def integrations(config_text: str) -> dict[str, list[str]]:
    """Receiver name -> the kinds of integration it has (webhook_configs, pagerduty_configs, ...)."""
    conf = _yaml.safe_load(config_text) or {}
    return {str(r.get("name")): sorted(k for k, v in r.items() if k.endswith("_configs") and v)
            for r in conf.get("receivers") or [] if isinstance(r, dict)}


def parse_amtool(output: str) -> tuple[list[str], list[dict]]:
    """(receivers in routing-tree order, matched routes) from `amtool config routes test --tree`."""
    lines = [line for line in output.splitlines() if line.strip()]
    routes = [{"route": m.group(1), "receiver": m.group(2)} for line in lines if (m := _ROUTE_LINE.search(line))]
    receivers = [r.strip() for r in lines[-1].split(",")] if lines else []
    return receivers, routes


def _quoted(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a Go-quoted string, as amtool's matcher parser reads it


async def route(config_file: Path, alert: AlertToRoute, timeout: float) -> dict:
    argv = [AMTOOL, "config", "routes", "test", f"--config.file={config_file}", "--tree",
            *(f"{k}={_quoted(v)}" for k, v in sorted(alert.labels.items()))]
    res = await _shell.run(shlex.join(argv), timeout)
    out = {"rule": alert.rule, "labels": alert.labels, "labels_from": alert.labels_from}
    if res.returncode not in (0, None):  # amtool warns on stderr before it errs: keep the error
        said = [line for line in res.stderr.splitlines() if line.strip() and not line.startswith("Warning:")]
        return out | {"error": f"amtool config routes test exited with {res.returncode}"
                               + (f": {said[0].removeprefix('amtool: error: ')[:200]}" if said else "")}
    if (why := res.failure("amtool config routes test")) is not None:
        return out | {"error": why}
    receivers, routes = parse_amtool(res.output)
    return out | {"receivers": receivers, "routes": routes}


def alertmanager_base(alerts_url: str) -> str:
    """http://h:9093/api/v2/alerts (what /api/v1/alertmanagers lists) -> http://h:9093."""
    return re.sub(r"/api/v[12]/alerts/?$", "", alerts_url).rstrip("/")


async def loaded_config(url: str, timeout: float) -> str:
    """The configuration an Alertmanager has loaded (GET /api/v2/status; secrets come back redacted)."""
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            resp = await client.get(f"{url}/api/v2/status")
            resp.raise_for_status()
            text = ((resp.json() or {}).get("config") or {}).get("original")
    except httpx.HTTPStatusError as e:
        raise LookupError(f"Alertmanager at {url} answered /api/v2/status with HTTP {e.response.status_code}") from None
    except httpx.HTTPError as e:
        why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise LookupError(f"Alertmanager at {url} could not be reached ({why})") from None
    except ValueError:
        raise LookupError(f"Alertmanager at {url} answered /api/v2/status with something that is not JSON") from None
    if not isinstance(text, str) or not text.strip():
        raise LookupError(f"Alertmanager at {url} returned no configuration in /api/v2/status")
    return text


@dataclass
class Routing:
    """What was asked and answered; kept as `routing` in the MON-ALERT observation."""
    source: str = ""  # alertmanager.config_file | alertmanager.url | Prometheus /api/v1/alertmanagers
    alertmanager: str | None = None  # the URL or file the configuration came from; None: none attached
    discovered: list[str] = field(default_factory=list)  # what Prometheus said it sends to
    error: str | None = None  # could not look
    receivers: dict[str, list[str]] = field(default_factory=dict)  # name -> integration kinds
    routes: list[dict] = field(default_factory=list)  # one per alert: rule, labels, receivers, routes | error
    external_labels_unread: str | None = None  # why Prometheus's external labels are missing from the alerts


@dataclass
class AlertmanagerConfig:
    """The configuration alerts are routed through, and where it came from: the same for every target, so a
    section run reads it once. `text` is never kept as evidence (its secrets)."""
    source: str = ""
    alertmanager: str | None = None
    discovered: list[str] = field(default_factory=list)
    error: str | None = None  # could not be read
    receivers: dict[str, list[str]] = field(default_factory=dict)
    text: str | None = field(default=None, repr=False)  # None: none attached, or `error`


async def configuration(settings, prom) -> AlertmanagerConfig:
    """The configuration `settings` (params.Alertmanager or None) points at, read (nothing routed yet)."""
    out = AlertmanagerConfig()
    timeout = settings.timeout_seconds if settings else 5.0
    try:
        if settings is not None and settings.config_file:
            out.source, out.alertmanager = "alertmanager.config_file", str(settings.config_file)
            try:
                text = Path(settings.config_file).read_text()
            except OSError as e:
                raise LookupError(f"alertmanager.config_file {settings.config_file} cannot be read: {e.strerror}") from None
        else:
            if settings is not None and settings.url:
                out.source, url = "alertmanager.url", settings.url
            else:
                try:
                    data = await prom.alertmanagers()
                except PrometheusError as e:
                    raise LookupError(f"{e.message}; name the Alertmanager with alertmanager.url or "
                                      "alertmanager.config_file") from None
                out.discovered = [a.get("url", "") for a in data.get("activeAlertmanagers") or []]
                if not out.discovered:
                    out.source = DISCOVERED
                    return out
                out.source, url = DISCOVERED, alertmanager_base(out.discovered[0])
            out.alertmanager = url
            text = await loaded_config(url, timeout)
        try:
            out.receivers = integrations(text)
        except yaml.YAMLError:
            raise LookupError(f"the Alertmanager configuration from {out.source} is not valid YAML") from None
        out.text = text
    except LookupError as e:
        out.error = str(e)
    return out


# A route is a function of the labels the routing tree's matchers name, and of nothing else (group_by,
# timings and time intervals do not choose the receiver). Alerts that agree on those labels take the same
# route, so amtool (a Go process, ~35 ms of CPU) is asked once per configuration and distinct answer:
# a fleet's targets of one job differ in `instance`, which routes rarely read. Kept for the process;
# the configuration's text is in the key, so an edited configuration is asked again.
_MATCHER_NAME = re.compile(r'(?:^|[{,])\s*("(?:[^"\\]|\\.)*"|[^\s{}=!~,"]+)\s*(?:=~|!~|!=|=)')
_routed: dict[tuple, dict] = {}
_asking: dict[tuple, asyncio.Future] = {}


@functools.lru_cache(maxsize=16)  # one configuration for every target of a run: parsed once, not per target
def routing_label_names(config_text: str) -> frozenset[str] | None:
    """Every label name a route's matcher names (match, match_re, matchers; nested routes too); None when
    some matcher does not read as one, and then no label is left out of the question."""
    try:
        conf = _yaml.safe_load(config_text) or {}
    except yaml.YAMLError:
        return None
    if not isinstance(conf, dict):
        return None
    names: set[str] = set()
    routes = [conf.get("route") or {}]
    while routes:
        r = routes.pop()
        if not isinstance(r, dict):
            return None
        for key in ("match", "match_re"):
            given = r.get(key) or {}
            if not isinstance(given, dict):
                return None
            names.update(str(k) for k in given)
        matchers = r.get("matchers") or []
        for text in matchers if isinstance(matchers, list) else [None]:
            found = _MATCHER_NAME.findall(text) if isinstance(text, str) else []
            if not found:
                return None
            try:
                names.update(json.loads(n) if n.startswith('"') else n for n in found)
            except ValueError:
                return None
        routes.extend(r.get("routes") or [])
    return frozenset(names)


@functools.lru_cache(maxsize=16)
def _digest(config_text: str) -> str:
    return hashlib.sha256(config_text.encode()).hexdigest()


def _routing_key(config_text: str, names: frozenset[str] | None, labels: dict[str, str]) -> tuple:
    read = {k: v for k, v in labels.items() if names is None or k in names}
    return _digest(config_text), tuple(sorted(read.items()))


async def _route_once(config_text: str, names: frozenset[str] | None, config_file: Path, alert: AlertToRoute,
                      timeout: float) -> dict:
    """route(), or the answer amtool gave for an alert that agrees on every label the routes read."""
    key = _routing_key(config_text, names, alert.labels)
    asking = (id(asyncio.get_running_loop()), key)  # a future belongs to its loop
    while key not in _routed and asking in _asking:
        await asyncio.shield(_asking[asking])  # another target is asking the same question right now
    if key in _routed:
        same = _routed[key]
        return {"rule": alert.rule, "labels": alert.labels, "labels_from": alert.labels_from,
                "receivers": same["receivers"], "routes": same["routes"],
                "asked": f"answered as for {dict(key[1])} (the routes read no other label)"}
    _asking[asking] = asyncio.get_running_loop().create_future()
    try:
        answer = await route(config_file, alert, timeout)
        if "error" not in answer:
            _routed[key] = {"receivers": answer["receivers"], "routes": answer["routes"]}
        return answer
    finally:
        _asking.pop(asking).set_result(None)


async def route_all(config: AlertmanagerConfig, settings, alerts: list[AlertToRoute]) -> Routing:
    """Route `alerts` (one target's) through `config` with amtool."""
    out = Routing(source=config.source, alertmanager=config.alertmanager, discovered=list(config.discovered),
                  error=config.error, receivers=dict(config.receivers))
    if config.text is None:
        return out
    try:
        if shutil.which(AMTOOL) is None:
            raise LookupError(f"{AMTOOL} is not installed (Debian package prometheus-alertmanager), so Alertmanager's "
                              "routing could not be asked")
        amtool_timeout = max(settings.timeout_seconds if settings else 5.0, 10.0)  # a Go binary's start on a loaded machine
        names = routing_label_names(config.text)
        if settings is not None and settings.config_file:  # the file itself: its relative paths mean what they mean
            out.routes = [await _route_once(config.text, names, Path(settings.config_file), a, amtool_timeout)
                          for a in alerts]
        else:
            with tempfile.TemporaryDirectory(prefix="asap-am-") as tmp:  # private (0700), removed at once
                config_file = Path(tmp) / "alertmanager.yml"
                config_file.write_text(config.text)
                out.routes = [await _route_once(config.text, names, config_file, a, amtool_timeout) for a in alerts]
    except LookupError as e:
        out.error = str(e)
    return out


async def observe(settings, prom, alerts: list[AlertToRoute]) -> Routing:
    """Route `alerts` through the configuration `settings` (params.Alertmanager or None) points at."""
    return await route_all(await configuration(settings, prom), settings, alerts)


# ------------------------------------------------------------------------------------ verdict
@dataclass(frozen=True)
class RoutingVerdict:
    kind: str  # "reaches" | "nowhere" | "unattached" | "error"
    text: str
    rows: list[dict]


def _route_text(r: dict, receiver: str) -> str:
    leaf = next((x["route"] for x in r.get("routes") or [] if x.get("receiver") == receiver), "")
    return f"route {leaf}" if leaf and leaf != "default-route" else "the default route"


def judge(routing: dict, rules: list[str]) -> RoutingVerdict:
    """Does every alert of `rules` (the rules that cover the concern for this target) reach a receiver with
    an integration? One that is routed nowhere is a finding even when another rule reaches someone: it is
    the page nobody gets (often a muted alert: fix the cause, or waive it). Pure: `routing` is a
    recorded `Routing` as a dict."""
    known = routing.get("receivers") or {}
    rows = [{"rule": r["rule"], "labels": ", ".join(f"{k}={v}" for k, v in sorted(r.get("labels", {}).items())),
             "labels from": r.get("labels_from", ""),
             "receivers": ", ".join(f"{n} ({', '.join(known.get(n) or []) or 'no integrations'})"
                                    for n in r.get("receivers") or []) or r.get("error", ""),
             "matched routes": " > ".join(x["route"] for x in r.get("routes") or [])}
            for r in routing.get("routes") or [] if r.get("rule") in rules]
    if routing.get("error"):
        return RoutingVerdict("error", f"where Alertmanager routes {', '.join(rules)} could not be looked at: "
                                       f"{routing['error']}", rows)
    if not routing.get("alertmanager"):
        return RoutingVerdict("unattached", "Prometheus sends its alerts to no Alertmanager (/api/v1/alertmanagers "
                                            "lists none) and the parameters name none (alertmanager.url or "
                                            "config_file): whether anyone is told is not verified", rows)
    mine = [r for r in routing.get("routes") or [] if r.get("rule") in rules]
    failed = [r for r in mine if r.get("error")]
    if failed or not mine:
        why = failed[0]["error"] if failed else "no alert of these rules was routed"
        return RoutingVerdict("error", f"where Alertmanager routes {', '.join(rules)} could not be looked at: {why}",
                              rows)
    nowhere = [r for r in mine if not any(known.get(n) for n in r.get("receivers") or [])]
    caveat = (" (routed without Prometheus's external labels, which could not be read)"
              if routing.get("external_labels_unread") else "")
    if nowhere:
        r = nowhere[0]
        names = r.get("receivers") or ["(none)"]
        what = (f"receiver {names[0]!r} by {_route_text(r, names[0])}, which has no integrations" if len(names) == 1
                else f"receivers {', '.join(repr(n) for n in names)}, none of which has an integration")
        others = [x["rule"] for x in mine if x not in nowhere]
        return RoutingVerdict("nowhere", f"Alertmanager ({routing['alertmanager']}) routes {r['rule']} to {what}: "
                                         "it notifies no one"
                                         + (f" (only {', '.join(others)} reach(es) a receiver)" if others else "")
                                         + caveat, rows)
    reached = []
    for r in mine:
        names = [n for n in r["receivers"] if known.get(n)]
        kinds = sorted({k.removesuffix("_configs") for n in names for k in known[n]})
        reached.append(f"{r['rule']} to {', '.join(names)} ({', '.join(kinds)})")
    return RoutingVerdict("reaches", f"Alertmanager routes {'; '.join(reached)}{caveat}", rows)
