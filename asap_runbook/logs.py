"""Reading an agent's logs: a bounded tail of `target.log_file`, or the output of `target.log_command`
(e.g. `kubectl logs deploy/orders-agent --tail=500`), classified line by line.

asap-protocol logs through structlog to stdout: JSON objects with `ASAP_LOG_FORMAT=json`, coloured
console text otherwise; uvicorn's access lines (`INFO:     1.2.3.4:5 - "POST /asap ..."`) stay
plain text in the same stream either way, so they are counted apart.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import _shell
from .errors import RunbookError

TAIL_BYTES = 512 * 1024  # the sample the logging checks judge
MAX_BYTES = 8 * 1024 * 1024  # head + tail for startup facts
MAX_LINE = 8192  # a handler that logs a 1 MiB payload must not make parsing quadratic
STRUCTURED_KEYS = ("event", "level", "timestamp")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_UVICORN_PLAIN = re.compile(r"^(INFO|WARNING|ERROR|DEBUG|CRITICAL):\s{2,}")
_PY_WARNING = re.compile(r"^\S+\.py:\d+: \w*Warning: ")  # the interpreter's warnings module, not the app's logging
_CONSOLE_EVENT = re.compile(r"^\S+\s+\[\s*(\w+)\s*\]\s+(\S+)")  # 2026-...Z [info     ] asap.request.received ...
# structlog ConsoleRenderer: "<ts> [level    ] event.name    [logger] key=value key='quoted value'"
_CONSOLE = re.compile(r"^\S+\s+\[\s*(?P<level>\w+)\s*\]\s+(?P<event>[\w.\-]+)\s*(?:\[[^\]]*\])?\s*(?P<rest>.*)$")
_KV = re.compile(r"(?<!\S)(\w++)=('(?:[^'\\]|\\.)*+'|\"(?:[^\"\\]|\\.)*+\"|\S++)")


class LogSourceError(RunbookError):
    """The log file or command named in the parameters cannot be read."""


@dataclass
class LogSample:
    source: str
    lines: list[str]
    json_lines: list[dict] = field(default_factory=list)
    console_lines: list[str] = field(default_factory=list)  # structlog console format (not machine-parseable)
    access_lines: list[str] = field(default_factory=list)  # uvicorn's plain access / lifecycle lines
    warning_lines: list[str] = field(default_factory=list)  # Python warnings (stderr), counted apart
    other_lines: list[str] = field(default_factory=list)

    @property
    def agent_lines(self) -> int:
        return len(self.json_lines) + len(self.console_lines) + len(self.other_lines)

    def stats(self) -> dict:
        return {"source": self.source, "lines": len(self.lines), "json": len(self.json_lines),
                "console": len(self.console_lines), "uvicorn_plain": len(self.access_lines),
                "python_warnings": len(self.warning_lines), "other": len(self.other_lines)}

    def asap_events(self) -> list[dict]:
        return [d for d in self.json_lines if str(d.get("event", "")).startswith("asap.")]


def classify(source: str, lines: list[str]) -> LogSample:
    s = LogSample(source, lines)
    in_warning = False
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if in_warning and raw[:1].isspace():  # the source line the warnings module prints under its message
            s.warning_lines.append(line)
            continue
        in_warning = bool(_PY_WARNING.match(line))
        if in_warning:
            s.warning_lines.append(line)
            continue
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                doc = None
            if isinstance(doc, dict):
                s.json_lines.append(doc)
                continue
        plain = _ANSI.sub("", line)
        if _UVICORN_PLAIN.match(plain):
            s.access_lines.append(plain)
        elif _CONSOLE_EVENT.match(plain):
            s.console_lines.append(plain)
        else:
            s.other_lines.append(plain)
    return s


def read_text(path: Path, max_bytes: int = MAX_BYTES) -> str:
    """At most `max_bytes` of a log file: the head (startup configuration lives there) and the tail
    (recent events)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(0)
            if size <= max_bytes:
                return fh.read().decode("utf-8", "replace")
            head = fh.read(max_bytes // 4)
            fh.seek(size - (max_bytes - len(head)))
            tail = fh.read()
    except FileNotFoundError:
        raise LogSourceError(f"log file {path} does not exist") from None
    except OSError as e:
        raise LogSourceError(f"log file {path} cannot be read: {e.strerror}") from None
    # the line cut at the head's end and the one cut at the tail's start are dropped
    return (head.rsplit(b"\n", 1)[0] + b"\n" + tail.split(b"\n", 1)[-1]).decode("utf-8", "replace")


async def read_log(target, timeout: float = 10, max_bytes: int = MAX_BYTES) -> tuple[str, str] | None:
    """(source, text) of the target's log: `log_file` (head and tail), or the output of `log_command`.
    None when the parameters name no log; LogSourceError (one sentence) when it cannot be read, a
    command that exits non-zero or times out included (its partial output is not a log sample)."""
    if target.log_file:
        return str(target.log_file), await asyncio.to_thread(read_text, Path(target.log_file), max_bytes)
    if target.log_command:
        res = await _shell.run(target.log_command, timeout, max_bytes=max_bytes)
        if (why := res.failure("log_command")) is not None:
            raise LogSourceError(why)
        return f"$ {target.log_command}", res.output
    return None


async def read_lines(target, timeout: float = 10, max_lines: int = 2000) -> tuple[str, list[str]] | None:
    """(source, the last lines) of the target's log, as read; None when the parameters name no log."""
    got = await read_log(target, timeout, TAIL_BYTES)
    if got is None:
        return None
    source, text = got
    return source, text.splitlines()[-max_lines:]


async def read_sample(target, timeout: float = 10, max_lines: int = 2000) -> LogSample | None:
    """The last lines of the target's log, classified; None when the parameters name no log."""
    got = await read_lines(target, timeout, max_lines)
    return None if got is None else classify(*got)


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


# ------------------------------------------------------------------ events (startup facts, by name)
@dataclass
class LogEvent:
    line_no: int
    event: str
    fields: dict
    raw: str


def parse_line(line: str, line_no: int = 0) -> LogEvent | None:
    """One structlog event, JSON or console-rendered (key=value fields); None for anything else."""
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


def events(text_or_path: str | Path, prefixes: tuple[str, ...] | None = None) -> list[LogEvent]:
    """Every structlog event of a log text (or of a log file, head and tail); with `prefixes`, only the
    events whose name starts with one of them. A line that does not contain one of them is not parsed:
    a busy agent's 8 MiB of request lines would cost a JSON parse each (~0.3 s of CPU per read), for the
    few startup facts the checks want."""
    text = read_text(text_or_path) if isinstance(text_or_path, Path) else text_or_path
    if prefixes is None:
        return [ev for n, line in enumerate(text.splitlines(), 1) if (ev := parse_line(line, n))]
    return [ev for n, line in enumerate(text.splitlines(), 1)
            if any(p in line for p in prefixes) and (ev := parse_line(line, n)) and ev.event.startswith(prefixes)]


def last_for_agent(evs: list[LogEvent], event: str, manifest_id: str) -> LogEvent | None:
    """The last `event` logged for this agent (not for asap's built-in default app, which every
    process also configures and logs)."""
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
