"""Where the alerting rules are read from, as Prometheus's /api/v1/rules groups whatever the source.

* the scraping Prometheus (default): its loaded rules, with their alerts' live states;
* `prometheus.rules_api`: a ruler that serves the same API elsewhere (Thanos ruler, Mimir/Cortex,
  Grafana), with its own credentials;
* `prometheus.rule_files`: files the operator points at, each checked with `promtool check rules`
  (a file promtool refuses is what Prometheus would refuse to load) and read offline. No alert
  state is known then: the rules are not evaluated here.

The checks judge the groups the same way from any source (alerting.coverage); the source is
recorded in the observation.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _shell, _yaml
from .errors import RunbookError
from .params import Params
from .prom import Prom

PROMTOOL_TIMEOUT_SECONDS = 60
_DURATION = re.compile(r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$")
_DURATION_SECONDS = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001)


class RulesUnavailable(RunbookError):
    """The rule files could not be checked (promtool missing or stuck): the alert items end in error."""


@dataclass
class RuleFile:
    path: str
    loads: bool  # promtool check rules exited 0
    promtool: str  # what promtool said (its first lines)


@dataclass
class RuleSource:
    kind: str  # "prometheus" | "rules_api" | "rule_files"
    where: str  # the URL asked, or the files read
    groups: list[dict]  # /api/v1/rules groups
    files: list[RuleFile] = field(default_factory=list)  # rule_files: promtool's word on each

    @property
    def alert_states_known(self) -> bool:
        return self.kind != "rule_files"

    def record(self) -> dict:
        return {"kind": self.kind, "where": self.where,
                "files": [vars(f) for f in self.files]} if self.kind == "rule_files" else \
            {"kind": self.kind, "where": self.where}


async def load(params: Params, prom: Prom) -> RuleSource:
    """The rule groups the parameters point at (`prom`: the scraping Prometheus)."""
    settings = params.prometheus
    if settings.rules_api is not None:
        ruler = Prom(settings.rules_api, "prometheus.rules_api", "The rules API")
        return RuleSource("rules_api", f"{settings.rules_api.url}/api/v1/rules", await ruler.rules())
    if settings.rule_files:
        files = settings.rule_file_paths()
        checked = [await promtool_check(p) for p in files]
        groups = [g for f in checked if f.loads for g in groups_from_file(Path(f.path))]
        return RuleSource("rule_files", ", ".join(str(p) for p in files), groups, checked)
    return RuleSource("prometheus", f"{settings.url}/api/v1/rules", await prom.rules())


def seconds(duration: Any) -> float:
    """A Prometheus duration ("5m", "1h30m", "500ms") in seconds; ValueError when it is not one."""
    text = "0s" if duration in (None, "", 0, "0") else str(duration)
    m = _DURATION.match(text)
    if not m or not any(m.groups()):
        raise ValueError(f"{duration!r} is not a Prometheus duration")
    return sum(int(v) * unit for v, unit in zip(m.groups(), _DURATION_SECONDS) if v)


def groups_from_file(path: Path) -> list[dict]:
    """A rule file (one promtool accepted) as /api/v1/rules groups: no alert state, none evaluated."""
    doc = _yaml.safe_load(path.read_text()) or {}
    out = []
    for g in doc.get("groups") or []:
        rules = []
        for r in g.get("rules") or []:
            if "alert" in r:
                rules.append({"type": "alerting", "name": r["alert"], "query": str(r.get("expr", "")),
                              "duration": seconds(r.get("for")), "labels": r.get("labels") or {},
                              "annotations": r.get("annotations") or {}, "alerts": []})
            elif "record" in r:
                rules.append({"type": "recording", "name": r["record"], "query": str(r.get("expr", ""))})
        out.append({"name": g.get("name", "?"), "file": str(path), "rules": rules})
    return out


# promtool's verdict on an unchanged file does not change: one run per file per process, however
# many targets and items ask (a fleet of 1000 targets asks 4000 times)
_checked: dict[tuple, RuleFile] = {}
_in_flight: dict[tuple, tuple[asyncio.AbstractEventLoop, asyncio.Task]] = {}


async def promtool_check(path: Path) -> RuleFile:
    try:
        st = path.stat()
    except OSError as e:
        raise RulesUnavailable(f"prometheus.rule_files: {path} cannot be read ({e.strerror})") from None
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key in _checked:
        return _checked[key]
    loop = asyncio.get_running_loop()
    running = _in_flight.get(key)
    if running is None or running[0] is not loop:
        running = _in_flight[key] = (loop, loop.create_task(_run_promtool(path)))
    try:
        result = await asyncio.shield(running[1])
    finally:
        if running[1].done():
            _in_flight.pop(key, None)
    _checked[key] = result
    return result


async def _run_promtool(path: Path) -> RuleFile:
    promtool = shutil.which("promtool")
    if promtool is None:
        raise RulesUnavailable("promtool is not installed (Debian package prometheus, or the Prometheus release "
                               "tarball), so prometheus.rule_files cannot be checked")
    res = await _shell.run(f"{shlex.quote(promtool)} check rules {shlex.quote(str(path))}",
                           PROMTOOL_TIMEOUT_SECONDS, merge_stderr=True)
    if res.returncode is None:
        raise RulesUnavailable(res.failure(f"promtool check rules {path}"))
    lines = [ln.strip() for ln in res.output.splitlines() if ln.strip() and not ln.startswith("Checking ")]
    said = ""
    for line in lines[:6]:  # "FAILED:" then one line per error
        said += (" " if not said or said.endswith(":") else "; ") + line
    return RuleFile(str(path), res.ok, said.strip()[:600])
