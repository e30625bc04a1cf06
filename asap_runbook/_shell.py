"""Running an operator's shell command (log_command, drill commands): one way, bounded.

Shell semantics, since operators write pipelines (`kubectl logs deploy/agent --tail=500 | grep -v
healthz`); `{python}` stands for the runbook's own interpreter. The command runs in its own
session with no stdin, so a timeout kills the whole process group (a pipeline or a `kubectl` that
spawned helpers), and its output is bounded (the tail is kept). Failures are one sentence.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass

MAX_OUTPUT_BYTES = 4 * 1024 * 1024


@dataclass
class CommandResult:
    command: str
    returncode: int | None      # None: killed at the timeout
    output: str                 # stdout (with stderr when merged), the last max_bytes, decoded
    stderr: str                 # first lines of stderr when not merged
    seconds: float
    timeout: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def failure(self, what: str) -> str | None:
        """One sentence saying why `what` (e.g. "log_command") failed, or None."""
        if self.returncode is None:
            return f"{what} did not finish within {self.timeout:g} s"
        if self.returncode != 0:
            first = (self.stderr or self.output).strip().splitlines()[:1]
            return f"{what} exited with {self.returncode}" + (f": {first[0][:200]}" if first else "")
        return None


    def evidence(self, what: str, tail: int = 300) -> dict:
        """What a finding keeps of the run: the command, its exit code (None: killed at the timeout), the
        seconds, and the output's tail, or why it did not finish."""
        out = self.output.strip() if self.returncode is not None else self.failure(what)
        return {"command": self.command, "exit_code": self.returncode, "seconds": self.seconds, "output": out[-tail:]}


def expand(command: str) -> str:
    return command.replace("{python}", shlex.quote(sys.executable))


async def run(command: str, timeout: float, *, merge_stderr: bool = False,
              max_bytes: int = MAX_OUTPUT_BYTES) -> CommandResult:
    started = time.monotonic()
    proc = await asyncio.create_subprocess_shell(
        expand(command), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE, start_new_session=True)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout)
        code = proc.returncode
    except asyncio.TimeoutError:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: a pipeline's other members too
        except ProcessLookupError:
            pass
        await proc.wait()
        out, err, code = b"", b"", None
    return CommandResult(command, code, (out or b"")[-max_bytes:].decode("utf-8", "replace"),
                         (err or b"")[:4096].decode("utf-8", "replace"), round(time.monotonic() - started, 3), timeout)
