"""The checklist as data: every item of the production-deployment checklist, once.

The 61 items live in YAML package data (``asap_runbook/catalog/<section>.yaml``), one file per
checklist ``##`` section, in checklist order. :func:`load_catalog` reads and validates them with
pydantic; ``tests/test_catalog.py`` proves they match the checklist item for item.

Ids are stable (``SEC-TLS-1``, ``MON-ALERT-3``, ``RES-2`` ...): an id never changes meaning.

Note: the data directory ``catalog/`` sits next to this module and has no ``__init__.py``, so
``import asap_runbook.catalog`` always resolves to this module; the YAML is read through
``importlib.resources.files("asap_runbook")``.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterator
from enum import StrEnum
from importlib import resources

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import _yaml

__all__ = [
    "SECTIONS",
    "SECTION_TITLES",
    "SUBSECTION_PREFIXES",
    "Catalog",
    "CatalogError",
    "CatalogItem",
    "REFERENCE_TARGETS",
    "Severity",
    "Verification",
    "load_catalog",
    "parse_checklist",
]


class Verification(StrEnum):
    """How an item is verified."""

    PROBE = "probe"  # black-box HTTP(S) against the running agent / proxy
    PROMETHEUS = "prometheus"  # queries against the operator's Prometheus
    STATIC = "static"  # files the operator points at: nginx, k8s manifests, source, app object
    DRILL = "drill"  # opt-in actions on staging (stop a dependency, SIGTERM ...)
    MANUAL = "manual"  # a person confirms, with evidence

    @property
    def automated(self) -> bool:
        return self is not Verification.MANUAL


class Severity(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


#: section key -> checklist ``##`` heading, in checklist order.
SECTION_TITLES: dict[str, str] = {
    "security": "Security",
    "monitoring": "Monitoring",
    "scaling": "Scaling",
    "resilience": "Resilience",
}
SECTIONS: tuple[str, ...] = tuple(SECTION_TITLES)

#: (section, subsection) -> id prefix. Ids are ``<prefix>-<n>``, n = 1.. in checklist order.
SUBSECTION_PREFIXES: dict[tuple[str, str], str] = {
    ("security", "TLS and HTTPS"): "SEC-TLS",
    ("security", "Authentication"): "SEC-AUTH",
    ("security", "Rate Limiting"): "SEC-RATE",
    ("security", "Request Size Limits"): "SEC-SIZE",
    ("security", "Handler Security"): "SEC-HANDLER",
    ("security", "Replay Protection"): "SEC-REPLAY",
    ("monitoring", "Metrics"): "MON-METRICS",
    ("monitoring", "Logging"): "MON-LOG",
    ("monitoring", "Health and Readiness"): "MON-HEALTH",
    ("monitoring", "Alerting"): "MON-ALERT",
    ("scaling", "Client Configuration"): "SCALE-CLIENT",
    ("scaling", "Server Configuration"): "SCALE-SERVER",
    ("scaling", "Caching"): "SCALE-CACHE",
    ("scaling", "State and Snapshots"): "SCALE-STATE",
    ("scaling", "Horizontal Scaling"): "SCALE-HSCALE",
    ("resilience", "Resilience"): "RES",
}

#: the reference deployment's targets; every item records the status it should get on each
#: (``expected``), which tests/test_three_ways.py compares with a real run.
REFERENCE_TARGETS: tuple[str, ...] = ("hardened", "misconfigured", "stock")
#: statuses a check can end with on its own (confirmed/waived come from people, not checks)
_CHECK_STATUSES = ("pass", "fail", "warn", "skip", "error", "manual")
#: an input names a parameter: ``targets[].<field>[.<field>]`` or ``prometheus.url``; an entry may
#: join inputs with `` + `` (all needed) and give alternatives with `` | `` (any one will do)
_INPUT_RE = re.compile(r"^(targets\[\]\.[a-z0-9_]+(\.[a-z0-9_]+)?|prometheus\.url)$")

_ID_RE = re.compile(r"^(?P<prefix>[A-Z]+(?:-[A-Z]+)?)-(?P<n>[1-9][0-9]*)$")


class CatalogError(ValueError):
    """The packaged catalog data is malformed (a bug in the package, not in user input)."""


class CatalogItem(BaseModel):
    """One checklist item."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    section: str
    section_title: str
    subsection: str
    text: str
    severity: Severity
    blocking: bool
    verification: Verification
    rationale: str
    remediation: str
    manual_guidance: str | None = None
    notes: str | None = None
    confirmation_ttl_days: int = Field(default=90, ge=1, le=3650)
    inputs: tuple[str, ...] = ()
    observes: str | None = None
    rule: str | None = None
    expected: dict[str, str]

    @field_validator("expected")
    @classmethod
    def _expected_everywhere(cls, v: dict[str, str]) -> dict[str, str]:
        if set(v) != set(REFERENCE_TARGETS):
            raise ValueError(f"expected must name exactly the targets {', '.join(REFERENCE_TARGETS)} (got {', '.join(v)})")
        bad = {t: s for t, s in v.items() if s not in _CHECK_STATUSES}
        if bad:
            raise ValueError(f"expected statuses must be one of {', '.join(_CHECK_STATUSES)} (got {bad})")
        return {t: v[t] for t in REFERENCE_TARGETS}

    @field_validator("inputs")
    @classmethod
    def _inputs_well_formed(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for entry in v:
            for name in input_names(entry):
                if not _INPUT_RE.match(name):
                    raise ValueError(f"input {name!r} is not a parameter name like targets[].http_url or prometheus.url")
        return v

    @field_validator("id")
    @classmethod
    def _id_well_formed(cls, v: str) -> str:
        if not _ID_RE.match(v):
            raise ValueError(f"id {v!r} is not of the form PREFIX-N (e.g. SEC-TLS-1)")
        return v

    @field_validator("text", "rationale", "remediation", "subsection", "section_title")
    @classmethod
    def _non_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v

    @field_validator("manual_guidance", "notes")
    @classmethod
    def _optional_non_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must be omitted rather than blank")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> CatalogItem:
        if self.section not in SECTION_TITLES:
            raise ValueError(f"section {self.section!r} is not one of {', '.join(SECTIONS)}")
        if self.section_title != SECTION_TITLES[self.section]:
            raise ValueError(
                f"section_title {self.section_title!r} does not match section {self.section!r}"
                f" (expected {SECTION_TITLES[self.section]!r})"
            )
        prefix = SUBSECTION_PREFIXES.get((self.section, self.subsection))
        if prefix is None:
            raise ValueError(f"unknown subsection {self.subsection!r} in section {self.section!r}")
        if _ID_RE.match(self.id)["prefix"] != prefix:  # type: ignore[index]
            raise ValueError(f"id {self.id!r} should start with {prefix}- for {self.subsection!r}")
        if self.verification is Verification.MANUAL and not self.manual_guidance:
            raise ValueError(f"{self.id}: manual items need manual_guidance")
        if self.verification is not Verification.MANUAL and not (self.observes and self.rule):
            raise ValueError(f"{self.id}: automated items say what they observe and their verdict rule")
        return self

    @property
    def automated(self) -> bool:
        """True unless a person has to confirm the item."""
        return self.verification.automated


def input_names(entry: str) -> list[str]:
    """Every parameter name an ``inputs`` entry mentions (``a + b | c`` -> a, b, c)."""
    return [n.strip() for alt in entry.split("|") for n in alt.split("+")]


def input_alternatives(entry: str) -> list[list[str]]:
    """``a + b | c`` -> [[a, b], [c]]: the entry is met when every name of one alternative is set."""
    return [[n.strip() for n in alt.split("+")] for alt in entry.split("|")]


class Catalog:
    """Immutable, ordered collection of :class:`CatalogItem` (checklist order)."""

    __slots__ = ("_by_id", "_by_section", "_items", "_sections")

    def __init__(self, items: tuple[CatalogItem, ...] | list[CatalogItem]) -> None:
        items = tuple(items)
        by_id: dict[str, CatalogItem] = {}
        for item in items:
            if item.id in by_id:
                raise CatalogError(f"duplicate catalog id {item.id!r}")
            by_id[item.id] = item
        sections = tuple(s for s in SECTIONS if any(i.section == s for i in items))
        object.__setattr__(self, "_items", items)
        object.__setattr__(self, "_by_id", by_id)
        object.__setattr__(self, "_sections", sections)
        object.__setattr__(
            self,
            "_by_section",
            {s: tuple(i for i in items if i.section == s) for s in sections},
        )

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Catalog is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Catalog is immutable")

    @property
    def items(self) -> tuple[CatalogItem, ...]:
        return self._items

    @property
    def sections(self) -> tuple[str, ...]:
        return self._sections

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._by_id)

    def get(self, item_id: str) -> CatalogItem:
        try:
            return self._by_id[item_id]
        except KeyError:
            close = difflib.get_close_matches(str(item_id).upper(), self._by_id, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise KeyError(
                f"unknown checklist item id {item_id!r}: the catalog has {len(self._items)} items"
                f" with ids like SEC-TLS-1 or MON-ALERT-3{hint}"
            ) from None

    def section(self, name: str) -> tuple[CatalogItem, ...]:
        try:
            return self._by_section[name]
        except KeyError:
            raise KeyError(
                f"unknown section {name!r}: expected one of {', '.join(self._sections)}"
            ) from None

    def __iter__(self) -> Iterator[CatalogItem]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._by_id

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={len(self._by_section[s])}" for s in self._sections)
        return f"Catalog({len(self._items)} items: {counts})"


def _load_section(section: str) -> list[CatalogItem]:
    path = resources.files("asap_runbook").joinpath("catalog", f"{section}.yaml")
    where = f"asap_runbook/catalog/{section}.yaml"
    try:
        data = _yaml.safe_load(path.read_text(encoding="utf-8"))  # libyaml when present: ~0.5 s less per kernel
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogError(f"cannot read {where}: {exc}") from exc
    if not isinstance(data, dict) or set(data) != {"section", "section_title", "items"}:
        raise CatalogError(f"{where} must be a mapping with keys section, section_title, items")
    if data["section"] != section or data["section_title"] != SECTION_TITLES[section]:
        raise CatalogError(f"{where} declares section {data['section']!r}/{data['section_title']!r}")
    raw_items = data["items"]
    if not isinstance(raw_items, list) or not raw_items:
        raise CatalogError(f"{where}: items must be a non-empty list")
    items: list[CatalogItem] = []
    for n, raw in enumerate(raw_items, 1):
        if not isinstance(raw, dict):
            raise CatalogError(f"{where}: item #{n} is not a mapping")
        if "section" in raw or "section_title" in raw:
            raise CatalogError(f"{where}: item #{n} must not repeat section/section_title")
        try:
            items.append(
                CatalogItem(section=section, section_title=SECTION_TITLES[section], **raw)
            )
        except (ValidationError, TypeError) as exc:
            raise CatalogError(f"{where}: item #{n} ({raw.get('id', '?')}) is invalid: {exc}") from exc
    _check_numbering(items, where)
    return items


def _check_numbering(items: list[CatalogItem], where: str) -> None:
    """Ids are PREFIX-1..n, contiguous and in order within each subsection."""
    expected: dict[str, int] = {}
    for item in items:
        prefix = SUBSECTION_PREFIXES[(item.section, item.subsection)]
        expected[prefix] = expected.get(prefix, 0) + 1
        want = f"{prefix}-{expected[prefix]}"
        if item.id != want:
            raise CatalogError(f"{where}: expected id {want} in checklist order, found {item.id}")


@functools.cache
def load_catalog() -> Catalog:
    """The packaged catalog (validated once, then cached)."""
    items: list[CatalogItem] = []
    for section in SECTIONS:
        items.extend(_load_section(section))
    return Catalog(tuple(items))


_ITEM_RE = re.compile(r"^\s*- \[[ xX]\] (?P<text>.+?)\s*$")


def parse_checklist(markdown: str) -> list[tuple[str, str, str]]:
    """``(section_title, subsection, text)`` for every ``- [ ]`` item of the checklist.

    Only items under the Security / Monitoring / Scaling / Resilience ``##`` headings count;
    parsing stops at ``## Quick Reference``. Items of a section without a ``###`` heading get
    the section title as subsection (Resilience).
    """
    titles = set(SECTION_TITLES.values())
    out: list[tuple[str, str, str]] = []
    section: str | None = None
    subsection: str | None = None
    for line in markdown.splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
            if heading == "Quick Reference":
                break
            section = heading if heading in titles else None
            subsection = section
            continue
        if line.startswith("### "):
            if section is not None:
                subsection = line[4:].strip()
            continue
        if section is None:
            continue
        m = _ITEM_RE.match(line)
        if m:
            out.append((section, subsection or section, m["text"]))
    return out
