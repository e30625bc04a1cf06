"""HTML fragments and pages, rendered from results with jinja2; inline CSS, no script, no CDN.

The summary page is built for the person who has to act (issue 15): what blocks first, then
what could not be verified, what awaits a person, warnings, passes collapsed. Its lists are
built here from structured results (status, blocking, severity, remediation), never by parsing
the blocker lines, and are bounded so that a fleet's summary page stays small (issue 16).

Evidence is kept once in HTML: in the section pages (the rendered notebooks) for runs of up to
INLINE_EVIDENCE_MAX_TARGETS targets; beyond that, in one page per target (targets/NAME.html),
and the section pages list the findings with a link to it.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import jinja2
from markupsafe import Markup

from .results import Result, RunResults, Status, collapse_causes

#: above this many targets, evidence moves from the section pages to per-target pages
INLINE_EVIDENCE_MAX_TARGETS = 10
#: rows per list on the summary page, and targets named per row, before "and N more"
MAX_ROWS = 50
MAX_TARGETS_PER_ROW = 8

# within a subsection, what needs acting on comes first
STATUS_ORDER = {s: n for n, s in enumerate(
    [Status.FAIL, Status.ERROR, Status.WARN, Status.SKIP, Status.MANUAL, Status.WAIVED, Status.CONFIRMED, Status.PASS])}
SEVERITY_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3}
LETTER = {"pass": "P", "fail": "F", "warn": "W", "skip": "S", "error": "E", "manual": "M", "confirmed": "C",
          "waived": "V"}


def _pretty(value: Any) -> Markup:
    """Evidence as text in a <pre>: only <, > and & escaped (quotes are harmless there and
    JSON is full of them; escaping each as &#34; made the evidence ~15% larger)."""
    text = value if isinstance(value, str) else json.dumps(value, indent=1, default=str, ensure_ascii=False)
    return Markup(html.escape(text, quote=False))


def _md_code(text: str) -> Markup:
    """The checklist's `backticks` as <code>, everything else escaped."""
    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text or "")))


@lru_cache
def env() -> jinja2.Environment:
    e = jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: (resources.files("asap_runbook") / "templates" / name).read_text()),
        autoescape=True, trim_blocks=True, lstrip_blocks=True,
    )
    e.filters["pretty"] = _pretty
    e.filters["md_code"] = _md_code
    e.filters["one_line"] = one_line
    e.globals["target_page"] = target_page
    e.globals["letter"] = LETTER
    e.tests["search"] = lambda value, pattern: pattern in value
    return e


def style() -> str:
    return (resources.files("asap_runbook") / "templates" / "_style.css").read_text()


def one_line(text: str | None, limit: int = 0) -> str:
    text = " ".join((text or "").split())
    return text if not limit or len(text) <= limit else text[:limit - 1].rstrip() + "…"


def target_page(target: str) -> str:
    """The per-target page of a fleet run, relative to the run folder (names are [A-Za-z0-9_.-])."""
    return f"targets/{target}.html"


def evidence_inline(results: Iterable[Result]) -> bool:
    return len({r.target for r in results}) <= INLINE_EVIDENCE_MAX_TARGETS


def is_fleet(run: RunResults) -> bool:
    """A run whose evidence lives in per-target pages rather than in its section pages."""
    return len(run.targets) > INLINE_EVIDENCE_MAX_TARGETS


def evidence_href(section: str, item_id: str, target: str, pages: dict[str, str], fleet: bool) -> str:
    """Where the summary page links for one finding's evidence: the target's page in a fleet, the
    section page otherwise, and this page's own copy when the section page was not rendered."""
    anchor = f"#{item_id}--{target}"
    if fleet:
        return target_page(target) + anchor
    return pages.get(section, "") + anchor


def act_first(results: Iterable[Result]) -> list[Result]:
    """Failures before passes (stable: checklist order within a status)."""
    return sorted(results, key=lambda r: STATUS_ORDER[r.status])


@dataclass
class SameFinding:
    """The results of one item that say the same thing (status, finding, fix) on several targets: one row of
    a fleet's section page, naming its targets (each a link to its evidence on the target's page)."""
    first: Result
    targets: list[str]
    generic: str  # the finding with the target's own name as TARGET_MARK: what the targets of the row share

    @property
    def summary(self) -> str:
        return self.first.summary if len(self.targets) == 1 else self.generic


TARGET_MARK = "<target>"  # in a row shared by several targets, where each one's finding names itself


def _generic(summary: str, target: str) -> str:
    """The finding with the target's name, where it stands as a name, as TARGET_MARK: "targets[agent-0007].log_file
    is not set" is the same finding on every target."""
    return re.sub(rf"(?<![\w.-]){re.escape(target)}(?![\w.-])", TARGET_MARK, summary) if target else summary


def same_findings(results: list[Result]) -> list[SameFinding]:
    """`results` as rows of identical findings: failures first, an item's rows together, items in the order
    they first came. A confirmed or waived result keeps a row of its own: who signed it is about that target."""
    rows: dict[tuple, SameFinding] = {}
    for r in results:
        generic = _generic(r.summary, r.target)
        key = ((r.item_id, r.status, generic, r.remediation) if r.confirmation is None and r.waiver is None
               else (r.item_id, r.target))
        if key in rows:
            rows[key].targets.append(r.target)
        else:
            rows[key] = SameFinding(r, [r.target], generic)
    # an item's rows together (results may come target by target), in the order the items first came
    first_seen: dict[str, int] = {}
    for r in results:
        first_seen.setdefault(r.item_id, len(first_seen))
    return sorted(rows.values(), key=lambda g: (STATUS_ORDER[g.first.status], first_seen[g.first.item_id]))


def findings_html(results: list[Result], evidence: bool | None = None, page_prefix: str = "") -> str:
    """One table per subsection, failures first; evidence on demand in <details>. `evidence`:
    inline it (default: when the results span few enough targets); otherwise (a fleet) one row per
    finding that targets share, each target a link to its page (`page_prefix` + targets/NAME.html),
    where the evidence is: the page grows by a link per target, not a table row."""
    if evidence is None:
        evidence = evidence_inline(results)
    by_subsection: dict[str, list[Result]] = {}
    for r in results:  # in order of first appearance, whether the results come item by item or target by target
        by_subsection.setdefault(r.subsection, []).append(r)
    groups = [(k, act_first(v) if evidence else same_findings(v)) for k, v in by_subsection.items()]
    return env().get_template("_findings.html.j2").render(groups=groups, evidence=evidence, page_prefix=page_prefix,
                                                          max_inline=MAX_TARGETS_PER_ROW)


# -- the summary page's lists ------------------------------------------------------------------

def not_looked(results: Iterable[Result]) -> list[tuple[str, str, list[str]]]:
    """Checks that did not look (error or skip), one entry per (target, cause): results.collapse_causes
    for errors that recorded a precondition's cause ("17 checks could not run on api: connection
    refused"), and the rest by their summary, which for a skip says what would verify it."""
    results = [r for r in results if r.status in (Status.ERROR, Status.SKIP)]
    groups = {(t, cause): list(ids) for t, cause, ids in collapse_causes(results)}
    covered = {(i, t) for (t, _), ids in groups.items() for i in ids}
    for r in results:
        if (r.item_id, r.target) not in covered:
            groups.setdefault((r.target, r.summary), []).append(r.item_id)
    return [(t, cause, items) for (t, cause), items in groups.items()]


@dataclass
class Row:
    """One line of a summary list: a finding (or cause) and every target it was seen on."""
    status: str
    severity: str
    text: str
    items: list[str]                        # item ids (one for a finding, several for a collapsed cause)
    targets: list[str] = field(default_factory=list)
    title: str = ""
    fix: str | None = None
    blocking: bool = False
    links: dict[str, str] = field(default_factory=dict)   # target -> evidence link (first item)
    variants: set[str] = field(default_factory=set)       # distinct finding texts behind a per-item row

    @property
    def shown_targets(self) -> list[str]:
        return self.targets[:MAX_TARGETS_PER_ROW]

    @property
    def more_targets(self) -> int:
        return max(0, len(self.targets) - MAX_TARGETS_PER_ROW)


@dataclass
class Listing:
    rows: list[Row]
    total: int            # findings (item, target) behind the rows

    @property
    def shown(self) -> list[Row]:
        return self.rows[:MAX_ROWS]

    @property
    def more(self) -> int:
        return max(0, len(self.rows) - MAX_ROWS)


def _fix(r: Result, catalog) -> str | None:
    if r.remediation:
        return r.remediation
    try:
        return catalog.get(r.item_id).remediation
    except KeyError:
        return None


def _guidance(r: Result, catalog) -> str | None:
    """What a person should look at to confirm an item (the catalog's manual guidance)."""
    try:
        return catalog.get(r.item_id).manual_guidance
    except KeyError:
        return None


def _by_finding(results: list[Result], link, catalog, fix=_fix, per_item: bool = False) -> Listing:
    """One row per (item, finding text): the same finding on many targets is one row. `per_item`
    (fleets): one row per item, whose findings name each target (a URL, a port) and would
    otherwise make a row per target; the row shows the first finding and how many differ."""
    rows: dict[tuple[str, str], Row] = {}
    for r in results:
        key = (r.item_id, "" if per_item else r.summary)
        row = rows.get(key)
        if row is None:
            row = rows[key] = Row(
                status=r.status.value, severity=r.severity, text=one_line(r.summary, 300), items=[r.item_id],
                title=one_line(r.title, 120), fix=fix(r, catalog) if fix else None, blocking=r.blocking)
        row.targets.append(r.target)
        row.links[r.target] = link(r)
        row.variants.add(r.summary)
    ordered = sorted(rows.values(), key=lambda w: (SEVERITY_ORDER.get(w.severity, 9), -len(w.targets), w.items[0]))
    return Listing(ordered, len(results))


def _by_cause(results: list[Result], link, catalog) -> Listing:
    """Checks that could not look (or were not run), one row per cause with the targets it hit
    when they share the same items: "3 checks not verified on a, b: active probe not enabled: set ..."."""
    by_id = {(r.item_id, r.target): r for r in results}
    merged: dict[tuple[str, tuple[str, ...]], Row] = {}
    for target, cause, items in not_looked(results):
        first = by_id[(items[0], target)]
        key = (cause, tuple(items))
        row = merged.get(key)
        if row is None:
            row = merged[key] = Row(
                status=first.status.value, severity=min((by_id[(i, target)].severity for i in items),
                                                        key=lambda s: SEVERITY_ORDER.get(s, 9)),
                text=one_line(cause, 300), items=list(items),
                blocking=any(by_id[(i, target)].blocking for i in items),
                title=one_line(first.title, 120) if len(items) == 1 else "")
        row.targets.append(target)
        row.links[target] = link(first)
    ordered = sorted(merged.values(), key=lambda w: (w.status != "error", not w.blocking,
                                                     -len(w.items) * len(w.targets), w.text))
    return Listing(ordered, len(results))


def summary_lists(run: RunResults, link, fleet: bool = False) -> dict[str, Any]:
    """What the summary page lists, in its order. `link(result)` -> where that result's evidence is.
    `fleet`: findings grouped per item (see _by_finding)."""
    from .catalog import load_catalog
    catalog = load_catalog()
    rs = run.results
    blocking = [r for r in rs if r.status is Status.FAIL and r.blocking]
    unverified = [r for r in rs if r.status is Status.ERROR or (r.status is Status.SKIP)]
    awaiting = [r for r in rs if r.status is Status.MANUAL]
    warnings = [r for r in rs if r.status is Status.WARN or (r.status is Status.FAIL and not r.blocking)]
    done = [r for r in rs if r.status in (Status.PASS, Status.CONFIRMED, Status.WAIVED)]
    passes: dict[str, dict[str, Any]] = {}
    for r in done:
        p = passes.setdefault(r.item_id, {"item": r.item_id, "title": one_line(r.title, 120), "pass": 0,
                                           "confirmed": 0, "waived": 0, "link": link(r)})
        p[r.status.value] += 1
    return {
        "blocking": _by_finding(blocking, link, catalog, per_item=fleet),
        "unverified": _by_cause(unverified, link, catalog),
        "awaiting": _by_finding(awaiting, link, catalog, fix=_guidance, per_item=True),
        "warnings": _by_finding(warnings, link, catalog, per_item=fleet),
        "passes": list(passes.values()),
        "passed": len(done),
    }
