"""`outputs/index.html`: every run in the outputs folder, newest first, from manifests alone.

Old runs are never re-rendered and their results.json never read (Great Expectations #1826:
an index rebuilt from every old run gets slower each time). So each run writes the few fields
the index shows into its own manifest (`summary_fields`), and the index reads only those.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .report import env as jinja_env
from .report import style
from .results import RunResults


def summary_fields(run: RunResults, drift=None, sign_off: dict | None = None) -> dict[str, Any]:
    """Small per-run fields for manifest.json that the outputs index shows."""
    fields: dict[str, Any] = {
        "started_at": run.started_at.isoformat(), "finished_at": run.finished_at.isoformat(),
        "environment": run.environment, "params_file": run.params_file,
        "targets": len(run.targets), "sections": list(run.sections),
        "counts": {k: v for k, v in run.counts.items() if v},
        "sections_not_run": list(run.sections_not_run),
    }
    if "*" in run.coverage:
        fields["coverage"] = run.coverage["*"].model_dump()
    if sign_off and sign_off.get("signed_off"):
        fields["signed_off_by"] = sign_off.get("by")
    if drift is not None:
        fields["drift"] = {"base_run_id": drift.base_run_id, **drift.counts()}
    return fields


def write_outputs_index(out_dir: str | os.PathLike) -> Path:
    """(Re)write <out_dir>/index.html from the runs' manifest.json files only."""
    from .drift import manifests
    out_dir = Path(out_dir)
    runs = []
    for run_dir, doc in manifests(out_dir):
        runs.append({
            "dir": run_dir.name, "run_id": doc.get("run_id"), "started_at": doc.get("started_at") or doc.get("created_at"),
            "environment": doc.get("environment"), "readiness": doc.get("readiness"), "exit_code": doc.get("exit_code"),
            "targets": doc.get("targets"), "counts": doc.get("counts") or {}, "drift": doc.get("drift"),
            "signed_off_by": doc.get("signed_off_by"), "params_file": doc.get("params_file"),
            "params_digest": (doc.get("params_digest") or "")[:12],
        })
    html = jinja_env().get_template("outputs_index.html.j2").render(runs=runs, style=style(), out_dir=str(out_dir))
    path = out_dir / "index.html"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(html)
    os.replace(tmp, path)
    return path
