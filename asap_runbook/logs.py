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

from .errors import RunbookError

TAIL_BYTES = 512 * 1024
COMMAND_OUTPUT_BYTES = 2 * 1024 * 1024
STRUCTURED_KEYS = ("event", "level", "timestamp")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_UVICORN_PLAIN = re.compile(r"^(INFO|WARNING|ERROR|DEBUG|CRITICAL):\s{2,}")
_PY_WARNING = re.compile(r"^\S+\.py:\d+: \w*Warning: ")  # the interpreter's warnings module, not the app's logging
_CONSOLE_EVENT = re.compile(r"^\S+\s+\[\s*(\w+)\s*\]\s+(\S+)")  # 2026-...Z [info     ] asap.request.received ...


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


def _tail(path: Path, max_bytes: int) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except FileNotFoundError:
        raise LogSourceError(f"log file {path} does not exist") from None
    except OSError as e:
        raise LogSourceError(f"log file {path} cannot be read: {e.strerror}") from None
    lines = data.decode("utf-8", "replace").splitlines()
    return lines[1:] if size > max_bytes else lines  # the first line may be cut


async def _command(cmd: str, timeout: float) -> list[str]:
    proc = await asyncio.create_subprocess_shell(cmd, stdout=asyncio.subprocess.PIPE,
                                                 stderr=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise LogSourceError(f"log_command did not finish within {timeout:g} s") from None
    if proc.returncode != 0:
        first = (err or b"").decode("utf-8", "replace").strip().splitlines()[:1]
        raise LogSourceError(f"log_command exited with {proc.returncode}" + (f": {first[0][:200]}" if first else ""))
    return out[-COMMAND_OUTPUT_BYTES:].decode("utf-8", "replace").splitlines()


async def read_sample(target, timeout: float = 10, max_lines: int = 2000) -> LogSample | None:
    """The last lines of the target's log, classified; None when the parameters name no log."""
    if target.log_file:
        lines = await asyncio.to_thread(_tail, Path(target.log_file), TAIL_BYTES)
        source = str(target.log_file)
    elif target.log_command:
        lines = await _command(target.log_command, timeout)
        source = f"$ {target.log_command}"
    else:
        return None
    return classify(source, lines[-max_lines:])


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def lines_with(sample: LogSample, needle: str) -> tuple[list[dict], list[str]]:
    """(JSON events, unparsed lines) that mention `needle`."""
    events = [d for d in sample.json_lines if needle in json.dumps(d)]
    text = [line for line in sample.console_lines + sample.other_lines if needle in line]
    return events, text
