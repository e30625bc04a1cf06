"""Running an operator's shell command from the parameters (`log_command`, drill commands): one way,
bounded in time and output, never raising for a command that fails (the caller judges the result)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass

MAX_OUTPUT_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class CommandResult:
    command: str
    exit_code: int | None  # None: killed at the timeout
    stdout: str
    stderr: str
    seconds: float
    timeout: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def failure(self, what: str = "the command") -> str | None:
        """One sentence saying why the command failed, or None when it succeeded."""
        if self.exit_code is None:
            return f"{what} did not finish within {self.timeout:g} s"
        if self.exit_code != 0:
            first = (self.stderr.strip() or self.stdout.strip()).splitlines()[:1]
            return f"{what} exited with {self.exit_code}" + (f": {first[0][:200]}" if first else "")
        return None

    def brief(self) -> dict:
        """What the evidence keeps: the command, its exit and the end of its output."""
        out = (self.stdout + ("\n" + self.stderr if self.stderr else "")).strip()
        return {"command": self.command, "exit_code": self.exit_code, "seconds": round(self.seconds, 2),
                "output": out[-300:]}


async def run_command(cmd: str, timeout: float, *, max_output: int = MAX_OUTPUT_BYTES) -> CommandResult:
    """Run `cmd` through the shell in its own session; at the timeout the whole process group is killed
    (a `kubectl logs -f` or a pipeline must not outlive the check)."""
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_shell(cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                 stdin=asyncio.subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    except asyncio.TimeoutError:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await proc.wait()
        return CommandResult(cmd, None, "", "", time.monotonic() - t0, timeout)
    return CommandResult(cmd, proc.returncode, out[-max_output:].decode("utf-8", "replace"),
                         err[-64 * 1024:].decode("utf-8", "replace"), time.monotonic() - t0, timeout)
