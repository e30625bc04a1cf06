"""The three reference targets, verdict by verdict: one real `asap-runbook run --params params/demo.yaml`
against the hardened, misconfigured and stock agents, compared with every catalog item's `expected`.

`expected` is what each check should say about each agent (asap_runbook/catalog/*.yaml); a mismatch
is listed with the item, the target, both statuses and the check's summary, all of them at once."""

from __future__ import annotations

from asap_runbook.catalog import REFERENCE_TARGETS, load_catalog
from asap_runbook.results import RunResults


def mismatches(results: RunResults) -> list[str]:
    got = {(r.item_id, r.target): r for r in results.results}
    out = []
    for item in load_catalog():
        for target in REFERENCE_TARGETS:
            r = got.get((item.id, target))
            if r is None:
                out.append(f"{item.id} on {target}: expected {item.expected[target]}, no result")
            elif r.status.value != item.expected[target]:
                out.append(f"{item.id} on {target}: expected {item.expected[target]}, got {r.status.value}: {r.summary}")
    return out


def test_every_item_on_every_reference_target_says_what_the_catalog_expects(demo_run):
    _, run_dir = demo_run
    results = RunResults.model_validate_json((run_dir / "results.json").read_text())
    assert {r.target for r in results.results} == set(REFERENCE_TARGETS)
    wrong = mismatches(results)
    assert not wrong, f"{len(wrong)} (item, target) verdict(s) differ from the catalog:\n" + "\n".join(wrong)
