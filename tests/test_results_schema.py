"""The results file is an output contract (lessons-from-peers: testssl #1994).

A golden copy of its JSON schema lives in tests/data/results.schema.json. Adding an optional
field is compatible: regenerate the golden file with
`ASAP_RUNBOOK_UPDATE_GOLDEN=1 pytest tests/test_results_schema.py`. Removing or renaming a field,
or changing its meaning, also needs a new `schema_version`.
"""

import json
import os
from pathlib import Path

from asap_runbook.results import SCHEMA_VERSION, RunResults

GOLDEN = Path(__file__).parent / "data" / "results.schema.json"


def _fields(schema: dict) -> dict[str, set[str]]:
    defs = {"RunResults": schema, **schema.get("$defs", {})}
    return {name: set(d.get("properties", {})) for name, d in defs.items()}


def test_results_schema_matches_golden():
    schema = RunResults.model_json_schema()
    if os.environ.get("ASAP_RUNBOOK_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    golden = json.loads(GOLDEN.read_text())
    removed = {m: sorted(f - _fields(schema).get(m, set())) for m, f in _fields(golden).items()}
    removed = {m: f for m, f in removed.items() if f}
    assert not removed, f"fields removed from the results contract: {removed}; bump schema_version"
    assert schema == golden, "results schema changed: regenerate the golden file (see module docstring)"


def test_schema_version_is_written():
    assert RunResults.model_fields["schema_version"].default == SCHEMA_VERSION == 1
