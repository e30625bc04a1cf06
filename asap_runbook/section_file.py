"""A section's results file, `sections/<section>.json`: a SectionRun document written one result per
line, so that a fleet's results can be written and read back one at a time (nobody has to hold a
section's results at once: a kernel streams them, the runner copies them into results.json).

    {"schema_version":1,"section":"security",...,"preflight":{...},"results":[
    {"item_id":"SEC-TLS-1",...},
    ...
    {"item_id":"SEC-REPLAY-3",...}
    ]}

It stays one JSON document (SectionRun.model_validate_json reads it whole). A file in another layout
(written by an earlier version, or by hand) is read whole instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from .results import Result, SectionRun

_OPEN = ',"results":['
_CLOSE = "]}"


def write(path: Path, run: SectionRun, result_lines: Iterable[str]) -> int:
    """Write `run`'s fields and the results given as JSON lines (`Result.model_dump_json()`, in the order
    given; `run.results` is not written) atomically; return how many results were written."""
    head = run.model_dump_json(exclude={"results"})
    tmp = path.with_suffix(".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(head[:-1] + _OPEN)
        for line in result_lines:
            f.write(("\n" if n == 0 else ",\n") + line.rstrip("\n"))
            n += 1
        f.write("\n" + _CLOSE + "\n")
    os.replace(tmp, path)
    return n


def header(path: Path) -> SectionRun:
    """The section's fields without its results; ValueError when the file is not a section's results."""
    with open(path, encoding="utf-8", newline="\n") as f:
        first = f.readline().rstrip("\n")
    if first.endswith(_OPEN):
        return SectionRun.model_validate_json(first[:-len(_OPEN)] + "}")
    return SectionRun.model_validate_json(path.read_text()).model_copy(update={"results": []})


def result_lines(path: Path) -> Iterator[str]:
    """Each result's JSON, one at a time (a file in another layout: parsed whole, then dumped one by one)."""
    with open(path, encoding="utf-8", newline="\n") as f:  # only "\n" ends a line: JSON escapes it in strings
        if not f.readline().rstrip("\n").endswith(_OPEN):
            for r in SectionRun.model_validate_json(path.read_text()).results:
                yield r.model_dump_json()
            return
        for line in f:
            line = line.rstrip("\n")
            if line == _CLOSE:
                return
            yield line.removesuffix(",")
    raise ValueError(f"{path} ends before its results do")


def results(path: Path) -> Iterator[Result]:
    """Each result, one at a time."""
    for line in result_lines(path):
        yield Result.model_validate_json(line)


def load(path: Path) -> SectionRun:
    """The whole section, results included (for a section small enough to hold: a walk's, a test's)."""
    return header(path).model_copy(update={"results": list(results(path))})
