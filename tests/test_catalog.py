"""The catalog and the checklist agree item for item; catalog invariants hold."""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # plain `pytest` without an installed package
    sys.path.insert(0, str(REPO))

from asap_runbook.catalog import (  # noqa: E402
    SECTION_TITLES,
    SECTIONS,
    Catalog,
    CatalogItem,
    Severity,
    Verification,
    load_catalog,
    parse_checklist,
)

SHARED_CHECKLIST = REPO.parent / "shared" / "checklist" / "production-deployment-checklist.md"
COMMITTED_CHECKLIST = REPO / "tests" / "data" / "production-deployment-checklist.md"


def checklist_path() -> Path:
    env = os.environ.get("ASAP_RUNBOOK_CHECKLIST")
    if env:
        return Path(env)
    if SHARED_CHECKLIST.is_file():
        return SHARED_CHECKLIST
    return COMMITTED_CHECKLIST


@pytest.fixture(scope="module")
def checklist() -> list[tuple[str, str, str]]:
    path = checklist_path()
    assert path.is_file(), f"checklist not found at {path}"
    return parse_checklist(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


EXPECTED_IDS = [
    f"{prefix}-{n}"
    for prefix, count in [
        ("SEC-TLS", 5), ("SEC-AUTH", 5), ("SEC-RATE", 4), ("SEC-SIZE", 3),
        ("SEC-HANDLER", 5), ("SEC-REPLAY", 3),
        ("MON-METRICS", 4), ("MON-LOG", 4), ("MON-HEALTH", 4), ("MON-ALERT", 4),
        ("SCALE-CLIENT", 4), ("SCALE-SERVER", 3), ("SCALE-CACHE", 3), ("SCALE-STATE", 3),
        ("SCALE-HSCALE", 3), ("RES", 4),
    ]
    for n in range(1, count + 1)
]


# ---------------------------------------------------------------- catalog == checklist

def test_committed_checklist_copy_is_byte_identical_to_shared():
    if not SHARED_CHECKLIST.is_file():
        pytest.skip(f"shared checklist not present at {SHARED_CHECKLIST}")
    assert COMMITTED_CHECKLIST.read_bytes() == SHARED_CHECKLIST.read_bytes(), (
        "tests/data/production-deployment-checklist.md drifted from the shared checklist"
    )


def test_checklist_has_61_items(checklist):
    assert len(checklist) == 61
    assert Counter(s for s, _, _ in checklist) == {
        "Security": 25, "Monitoring": 16, "Scaling": 16, "Resilience": 4,
    }


def test_catalog_matches_checklist_item_for_item(catalog, checklist):
    got = [(i.section_title, i.subsection, i.text) for i in catalog.items]
    missing = [c for c in checklist if c not in got]
    invented = [g for g in got if g not in checklist]
    assert not missing, f"checklist items missing from the catalog: {missing}"
    assert not invented, f"catalog items not in the checklist: {invented}"
    assert len(got) == len(checklist) == 61
    for n, (item, expected) in enumerate(zip(catalog.items, checklist, strict=True), 1):
        assert (item.section_title, item.subsection, item.text) == expected, (
            f"position {n} ({item.id}) differs from the checklist"
        )


def test_ids_unique_well_formed_and_in_order(catalog):
    ids = [i.id for i in catalog.items]
    assert len(set(ids)) == len(ids)
    assert ids == EXPECTED_IDS
    for item in catalog.items:
        assert re.fullmatch(r"(SEC|MON|SCALE)-[A-Z]+-[1-9]\d*|RES-[1-9]\d*", item.id)


def test_section_counts(catalog):
    assert catalog.sections == ("security", "monitoring", "scaling", "resilience")
    assert catalog.sections == SECTIONS
    assert {s: len(catalog.section(s)) for s in catalog.sections} == {
        "security": 25, "monitoring": 16, "scaling": 16, "resilience": 4,
    }
    for s in catalog.sections:
        assert all(i.section == s and i.section_title == SECTION_TITLES[s] for i in catalog.section(s))


def test_resilience_subsection_is_section_title(catalog):
    assert {i.subsection for i in catalog.section("resilience")} == {"Resilience"}


# ---------------------------------------------------------------- parser

def test_parse_checklist_scoping():
    md = (
        "# Title\n- [ ] not in a section\n## Intro\n- [ ] ignored\n"
        "## Security\n### TLS and HTTPS\n- [ ] a `b`  \n\n## Resilience\n- [ ] r1\r\n"
        "## Quick Reference\n- [ ] after the end\n## Scaling\n- [ ] also after the end\n"
    )
    assert parse_checklist(md) == [
        ("Security", "TLS and HTTPS", "a `b`"),
        ("Resilience", "Resilience", "r1"),
    ]


# ---------------------------------------------------------------- invariants

def _items():
    return load_catalog().items


@pytest.mark.parametrize("item", _items(), ids=lambda i: i.id)
def test_item_invariants(item: CatalogItem):
    assert item.rationale.strip() and item.remediation.strip()
    assert isinstance(item.severity, Severity) and isinstance(item.verification, Verification)
    assert item.confirmation_ttl_days >= 1
    if item.verification is Verification.MANUAL:
        assert item.manual_guidance and item.manual_guidance.strip()
    for text in (item.rationale, item.remediation, item.manual_guidance or "", item.notes or ""):
        assert text == text.strip() and "\n" not in text


@pytest.mark.parametrize(
    ("sections", "total", "minimum_automated"),
    [
        (("security",), 25, 20),
        (("monitoring",), 16, 14),
        (("scaling", "resilience"), 20, 14),
    ],
)
def test_automated_coverage_targets(catalog, sections, total, minimum_automated):
    items = [i for s in sections for i in catalog.section(s)]
    assert len(items) == total
    automated = [i for i in items if i.verification is not Verification.MANUAL]
    assert len(automated) >= minimum_automated, Counter(i.verification for i in items)


@pytest.mark.parametrize(
    ("item_id", "blocking"),
    [
        ("SEC-TLS-1", True), ("SEC-TLS-4", True), ("SEC-AUTH-2", True),
        ("SEC-SIZE-1", True), ("SEC-REPLAY-1", True), ("MON-HEALTH-1", True),
        ("MON-ALERT-3", True), ("SCALE-STATE-1", True),
        ("SEC-RATE-2", False), ("SEC-REPLAY-2", False), ("SCALE-CLIENT-1", False),
        ("SCALE-CACHE-3", False),
    ],
)
def test_blocking_judgement(catalog, item_id, blocking):
    assert catalog.get(item_id).blocking is blocking


@pytest.mark.parametrize(
    ("item_id", "needle"),
    [
        ("SEC-RATE-3", "slowapi"),
        ("SEC-RATE-4", "asap_rate_limit_exceeded_total"),
        ("SEC-AUTH-1", "basic"),
        ("SEC-AUTH-5", "Basic"),
        ("SCALE-SERVER-3", "private"),
        ("SCALE-STATE-1", "PostgreSQL"),
        ("SEC-TLS-4", "HSTS"),
    ],
)
def test_known_gaps_are_noted(catalog, item_id, needle):
    notes = catalog.get(item_id).notes
    assert notes and needle in notes


def test_confirmation_ttls(catalog):
    assert catalog.get("SEC-AUTH-4").confirmation_ttl_days == 30
    assert all(i.confirmation_ttl_days == 180 for i in catalog.items if i.id.startswith("MON-ALERT-"))
    assert catalog.get("SEC-TLS-1").confirmation_ttl_days == 90


# ---------------------------------------------------------------- API behaviour

def test_get_unknown_id_raises_clear_keyerror(catalog):
    with pytest.raises(KeyError, match="unknown checklist item id 'SEC-TLS-9'"):
        catalog.get("SEC-TLS-9")
    with pytest.raises(KeyError, match="unknown section"):
        catalog.section("security-ish")


def test_catalog_is_immutable_and_cached(catalog):
    assert load_catalog() is catalog
    with pytest.raises(AttributeError):
        catalog.items = ()  # type: ignore[misc]
    with pytest.raises(Exception):
        catalog.items[0].text = "changed"  # type: ignore[misc]
    assert isinstance(catalog.items, tuple)
    assert "RES-4" in catalog and len(catalog) == 61


def test_item_model_rejects_unknown_keys_and_bad_data():
    base = dict(
        id="SEC-TLS-1", section="security", section_title="Security", subsection="TLS and HTTPS",
        text="t", severity="critical", blocking=True, verification="probe",
        rationale="r", remediation="m", observes="o", rule="r",
        expected={"hardened": "pass", "misconfigured": "fail", "stock": "warn"},
    )
    CatalogItem(**base)
    with pytest.raises(Exception, match="extra"):
        CatalogItem(**base, surprise=1)
    with pytest.raises(Exception, match="manual_guidance"):
        CatalogItem(**{**base, "verification": "manual"})
    with pytest.raises(Exception, match="SEC-AUTH-"):
        CatalogItem(**{**base, "subsection": "Authentication"})
    with pytest.raises(Exception, match="section_title"):
        CatalogItem(**{**base, "section_title": "Monitoring"})


def test_module_resolves_despite_data_directory():
    import asap_runbook.catalog as mod

    assert Path(mod.__file__).name == "catalog.py"
    assert not (REPO / "asap_runbook" / "catalog" / "__init__.py").exists()
    assert sorted(p.name for p in (REPO / "asap_runbook" / "catalog").glob("*.yaml")) == [
        "monitoring.yaml", "resilience.yaml", "scaling.yaml", "security.yaml",
    ]


def test_expected_names_every_reference_target_with_a_check_status():
    base = dict(
        id="SEC-TLS-1", section="security", section_title="Security", subsection="TLS and HTTPS",
        text="t", severity="critical", blocking=True, verification="probe", rationale="r", remediation="m",
        observes="o", rule="r", expected={"hardened": "pass", "misconfigured": "fail", "stock": "warn"},
    )
    with pytest.raises(Exception, match="expected must name exactly the targets"):
        CatalogItem(**{**base, "expected": {"hardened": "pass", "misconfigured": "fail"}})
    with pytest.raises(Exception, match="expected statuses must be one of"):
        CatalogItem(**{**base, "expected": {"hardened": "pass", "misconfigured": "fail", "stock": "broken"}})
    with pytest.raises(Exception, match="Field required"):
        CatalogItem(**{k: v for k, v in base.items() if k != "expected"})
    with pytest.raises(Exception, match="observe"):
        CatalogItem(**{**base, "rule": None})
    with pytest.raises(Exception, match="not a parameter name"):
        CatalogItem(**{**base, "inputs": ["targets[].http_url | nginx.conf"]})


def test_every_declared_input_is_a_real_parameter():
    """An input names a field of params.Target (or a nested model) or prometheus.url, so that
    coverage_offline can read it from a parameters file."""
    from pydantic import BaseModel

    from asap_runbook.catalog import input_names
    from asap_runbook.params import Params, Target

    def resolves(name: str) -> bool:
        if name == "prometheus.url":
            return True
        model: type[BaseModel] | None = Target
        for part in name.removeprefix("targets[].").split("."):
            if model is None or part not in model.model_fields:
                return False
            ann = model.model_fields[part].annotation
            model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        return True

    assert "url" in Params.model_fields["prometheus"].annotation.__args__[0].model_fields
    bad = [(i.id, n) for i in load_catalog() for e in i.inputs for n in input_names(e) if not resolves(n)]
    assert not bad, bad


def test_manual_items_expect_manual_and_automated_ones_declare_inputs(catalog):
    for item in catalog:
        if item.verification is Verification.MANUAL:
            assert set(item.expected.values()) == {"manual"}, item.id
            assert not item.inputs, item.id
        else:
            assert item.inputs, f"{item.id} declares no inputs"
