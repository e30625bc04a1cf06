"""docs/items.md is generated from the catalog: the committed file must be what the generator prints."""

from __future__ import annotations

from asap_runbook import docs_table
from asap_runbook.catalog import load_catalog


def test_committed_table_is_current():
    committed = docs_table.DOCS_FILE.read_text()
    assert committed == docs_table.render(), "docs/items.md is stale: run `python -m asap_runbook.docs_table --write`"


def test_automated_means_a_verdict_on_the_stock_agent():
    catalog = load_catalog()
    automated = docs_table.automated_on_stock()
    assert automated == [i.id for i in catalog if i.expected["stock"] in ("pass", "fail", "warn")]
    # manual items and items whose only truth on stock is a skip are not counted
    assert "SEC-HANDLER-5" not in automated and "MON-HEALTH-2" not in automated
    assert f"**Automated: {len(automated)} of {len(catalog)}**" in docs_table.render()


def test_every_item_has_a_row_with_its_three_expected_statuses():
    text = docs_table.render()
    for item in load_catalog():
        row = next(line for line in text.splitlines() if line.startswith(f"| {item.id} |"))
        assert row.endswith(" | ".join(item.expected[t] for t in ("hardened", "misconfigured", "stock")) + " |"), row
