"""Reading an ASAP agent's log file: structlog JSON lines, structlog console lines, uvicorn lines.

asap-protocol logs its startup configuration (`asap.server.rate_limit_enabled`,
`asap.server.max_request_size`, `asap.rate_limit.memory_storage`, ...) once for the built-in
default app and once for the real one, so events are tied to a `manifest_id` where they carry
one. Bounded: only the last `max_bytes` of the file are read (head and tail).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# structlog ConsoleRenderer: "<ts> [level    ] event.name    [logger] key=value key='quoted value'"
_CONSOLE = re.compile(r"^\S+\s+\[\s*(?P<level>\w+)\s*\]\s+(?P<event>[\w.\-]+)\s*(?:\[[^\]]*\])?\s*(?P<rest>.*)$")
_KV = re.compile(r"(?<!\S)(\w++)=('(?:[^'\\]|\\.)*+'|\"(?:[^\"\\]|\\.)*+\"|\S++)")
MAX_LINE = 8192  # a handler that logs a 1 MiB payload must not make parsing quadratic
MAX_BYTES = 8 * 1024 * 1024


@dataclass
class LogEvent:
    line_no: int
    event: str
    fields: dict
    raw: str


def read_text(path: Path, max_bytes: int = MAX_BYTES) -> str:
    """At most `max_bytes`: the head (startup configuration lives there) and the tail (recent events)."""
    with open(path, "rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(0)
        if size <= max_bytes:
            return fh.read().decode("utf-8", "replace")
        head = fh.read(max_bytes // 4)
        fh.seek(size - (max_bytes - len(head)))
        tail = fh.read()
    return (head + b"\n" + tail).decode("utf-8", "replace")


def parse_line(line: str, line_no: int = 0) -> LogEvent | None:
    line = _ANSI.sub("", line[:MAX_LINE]).strip()
    if line.startswith("{"):
        try:
            doc = json.loads(line)
        except ValueError:
            return None
        if isinstance(doc, dict) and isinstance(doc.get("event"), str):
            return LogEvent(line_no, doc["event"], doc, line)
        return None
    m = _CONSOLE.match(line)
    if not m:
        return None
    fields = {}
    for k, v in _KV.findall(m.group("rest")):
        if len(v) >= 2 and v[0] == v[-1] and v[0] in "'\"":
            v = v[1:-1]
        fields[k] = v
    fields["level"] = m.group("level")
    return LogEvent(line_no, m.group("event"), fields, line)


def events(path: Path) -> list[LogEvent]:
    out = []
    for n, line in enumerate(read_text(path).splitlines(), 1):
        ev = parse_line(line, n)
        if ev:
            out.append(ev)
    return out


def last_for_agent(evs: list[LogEvent], event: str, manifest_id: str) -> LogEvent | None:
    """The last `event` logged for this agent (not for asap's built-in default app)."""
    hits = [e for e in evs if e.event == event and e.fields.get("manifest_id") == manifest_id]
    return hits[-1] if hits else None


def storage_backend_before(evs: list[LogEvent], anchor: LogEvent | None) -> LogEvent | None:
    """The rate-limit storage event (`asap.rate_limit.memory_storage` / `...redis_storage`)
    logged last before the agent's own `asap.server.rate_limit_enabled` line."""
    if anchor is None:
        return None
    found = None
    for e in evs:
        if e.line_no >= anchor.line_no:
            break
        if e.event.startswith("asap.rate_limit.") and e.event.endswith("_storage"):
            found = e
    return found
