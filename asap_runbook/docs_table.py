"""docs/items.md: every catalog item with its inputs, what it observes, its verdict rule and the
status it should get on each reference target; and the "automated" count.

"Automated" (issue 12) means: the item gives a pass, fail or warn verdict on the stock agent when
the parameters provide the inputs it declares, i.e. its expected status on `stock` is one of those.

    python -m asap_runbook.docs_table            # print the table
    python -m asap_runbook.docs_table --write    # write docs/items.md (tests check it is current)
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from ._paths import checkout
from .catalog import REFERENCE_TARGETS, SECTION_TITLES, load_catalog

DOCS_FILE = Path(__file__).resolve().parent.parent / "docs" / "items.md"
VERDICTS = ("pass", "fail", "warn")


def automated_on_stock() -> list[str]:
    """Ids of the items that give a verdict on the stock agent when their inputs are provided."""
    return [i.id for i in load_catalog() if i.expected["stock"] in VERDICTS]


def _cell(text: str | None) -> str:
    return (text or "-").replace("|", "\\|").replace("\n", " ")


def render() -> str:
    catalog = load_catalog()
    counts = {t: Counter(i.expected[t] for i in catalog) for t in REFERENCE_TARGETS}
    automated = automated_on_stock()
    lines = [
        "# Checklist items: inputs, observation, verdict rule, expected status",
        "",
        "Generated from `asap_runbook/catalog/*.yaml` by `python -m asap_runbook.docs_table --write`;",
        "do not edit by hand (tests/test_docs_table.py fails when this file is stale).",
        "`expected` is what the check should say on each reference target of `asap-runbook demo`;",
        "tests/test_three_ways.py compares it with a real run. Inputs joined by `+` are all needed,",
        "`|` separates alternatives; `asap-runbook validate` lists the items a parameters file cannot verify.",
        "",
        f"**Automated: {len(automated)} of {len(catalog)}** items give a pass, fail or warn verdict on the",
        "stock agent when the parameters provide their inputs (the rest are manual or skip there).",
        "",
        "| target | " + " | ".join(("pass", "fail", "warn", "skip", "error", "manual")) + " |",
        "|---|" + "---|" * 6,
    ]
    for t in REFERENCE_TARGETS:
        lines.append(f"| {t} | " + " | ".join(str(counts[t][s]) for s in ("pass", "fail", "warn", "skip", "error", "manual")) + " |")
    for section, title in SECTION_TITLES.items():
        lines += ["", f"## {title}", "",
                  "| item | inputs | observes | verdict rule | hardened | misconfigured | stock |",
                  "|---|---|---|---|---|---|---|"]
        for i in catalog.section(section):
            inputs = "<br>".join(f"`{_cell(e)}`" for e in i.inputs) if i.inputs else "-"
            observes = _cell(i.observes) if i.automated else "a person confirms, with evidence"
            lines.append(f"| {i.id} | {inputs} | {observes} | {_cell(i.rule)} | "
                         + " | ".join(i.expected[t] for t in REFERENCE_TARGETS) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if argv == ["--write"]:
        if checkout() is None:
            print("docs/items.md belongs to a source checkout; this is an installed copy (print the table instead)",
                  file=sys.stderr)
            return 2
        DOCS_FILE.write_text(text)
        print(f"wrote {DOCS_FILE}")
    elif not argv:
        sys.stdout.write(text)
    else:
        print("usage: python -m asap_runbook.docs_table [--write]", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
