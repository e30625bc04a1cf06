"""The one way of running an operator's command (_shell.run): output, exit status, timeout kills the group."""

from __future__ import annotations

import asyncio
import sys

from asap_runbook import _shell


def run(cmd: str, timeout: float = 10, **kw) -> _shell.CommandResult:
    return asyncio.run(_shell.run(cmd, timeout, **kw))


def test_pipeline_output_and_python_placeholder():
    r = run("{python} -c 'print(1); print(2)' | tail -n 1")
    assert r.ok and r.output.strip() == "2" and r.failure("log_command") is None


def test_nonzero_exit_is_one_sentence_with_stderr():
    r = run("echo 'no such deployment' >&2; exit 3")
    assert r.failure("log_command") == "log_command exited with 3: no such deployment"


def test_timeout_kills_the_whole_pipeline():
    r = run(f"{sys.executable} -c 'import time; time.sleep(30)' | cat", timeout=0.5)
    assert r.returncode is None and r.failure("agent_restart") == "agent_restart did not finish within 0.5 s"


def test_output_is_bounded_to_its_tail():
    r = run("{python} -c \"print('a' * 1000 + 'END')\"", max_bytes=10)
    assert r.output == "aaaaaaEND\n"


def test_evidence_keeps_the_tail_or_why_it_did_not_finish():
    ok = run("{python} -c \"print('x' * 500 + 'END')\"", merge_stderr=True).evidence("drills.agent_restart", tail=10)
    assert ok["exit_code"] == 0 and ok["output"] == "xxxxxxxEND" and ok["command"].startswith("{python}")
    slow = run(f"{sys.executable} -c 'import time; time.sleep(30)'", timeout=0.5).evidence("drills.agent_restart")
    assert slow["exit_code"] is None and slow["output"] == "drills.agent_restart did not finish within 0.5 s"
