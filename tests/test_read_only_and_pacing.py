"""Read-only by default (issue 11 §5) and pacing under the target's rate limit (§6), against a real
asap-protocol agent whose handler records every call (tests/recording_agent.py) and which keeps
asap-protocol's default rate limit (10/second;100/minute per client address)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from asap_runbook.engine import run_section
from asap_runbook.metrics_text import parse_exposition
from asap_runbook.params import load_params
from asap_runbook.results import Status

TESTS = Path(__file__).resolve().parent
SECTIONS = ("security", "monitoring", "scaling", "resilience")
HANDLER_SWITCH = "active_probes.handler_probes"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def agent(tmp_path, request):
    """A fresh recording agent per test: its limiter starts empty, its calls file too. Its rate limit is
    asap-protocol's default unless the test is parametrized indirectly with another."""
    port = _free_port()
    calls, log = tmp_path / "calls.jsonl", tmp_path / "agent.log"
    env = os.environ | {"RECORDING_AGENT_FILE": str(calls), "RECORDING_AGENT_PORT": str(port),
                        "ASAP_LOG_FORMAT": "json", "RECORDING_AGENT_RATE_LIMIT": getattr(request, "param", "")}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "recording_agent:app", "--app-dir", str(TESTS),
                                 "--host", "127.0.0.1", "--port", str(port), "--no-proxy-headers"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        yield type("Agent", (), {"base": base, "calls": calls, "log": log})
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _params(tmp_path: Path, agent, **active) -> Path:
    doc = {"schema_version": 1, "environment": "readonly", "probe": {"timeout_seconds": 3},
           "confirmations_file": str(tmp_path / "confirmations.yaml"),
           "targets": [{"name": "rec", "base_url": agent.base, "log_file": str(agent.log),
                        "active_probes": active}]}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _handler_calls(agent) -> list[dict]:
    return [json.loads(line) for line in agent.calls.read_text().splitlines()] if agent.calls.exists() else []


def _requests_seen(agent) -> float:
    resp = httpx.get(agent.base + "/asap/metrics")
    return parse_exposition(resp.text, resp.headers.get("content-type", "")).total("asap_requests_total")


def test_every_section_with_every_switch_off_runs_no_handler(agent, tmp_path):
    params = load_params(_params(tmp_path, agent))
    results = [r for s in SECTIONS for r in run_section(s, params).results]
    assert _requests_seen(agent) >= 10  # the probes reached the agent's pipeline...
    assert _handler_calls(agent) == []  # ...and not one of them ran its handler
    by_id = {r.item_id: r for r in results}
    for item in ("SEC-HANDLER-1", "SEC-HANDLER-4", "MON-LOG-3"):  # what needs a handler says which switch
        assert by_id[item].status is Status.SKIP and HANDLER_SWITCH in by_id[item].summary, by_id[item].summary
    # the read-only envelopes still judge: no auth, no nonce check on this agent
    assert by_id["SEC-AUTH-2"].status is Status.FAIL
    assert by_id["SEC-REPLAY-2"].status is Status.WARN
    assert by_id["SEC-REPLAY-1"].status is Status.PASS


def test_handler_probes_do_run_handlers(agent, tmp_path):
    params = load_params(_params(tmp_path, agent, handler_probes=True))
    results = {r.item_id: r for s in ("security", "monitoring") for r in run_section(s, params).results}
    calls = _handler_calls(agent)
    skills = {c["payload"].get("skill_id") for c in calls}
    assert {"echo", "transfer_funds"} <= skills, calls
    assert results["SEC-HANDLER-1"].status is Status.PASS
    assert results["MON-LOG-3"].status is not Status.SKIP


_SECTION_WORKER = """
import sys
from pathlib import Path
from asap_runbook.engine import run_section
from asap_runbook.params import load_params
run_section(sys.argv[2], load_params(sys.argv[1]), run_dir=Path(sys.argv[3]))
"""


def _run_concurrently(params: Path, run_dir: Path, sections: tuple[str, ...]) -> list:
    """The sections of one run, each in its own process (as the notebook kernels are)."""
    procs = [subprocess.Popen([sys.executable, "-c", _SECTION_WORKER, str(params), s, str(run_dir)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for s in sections]
    for p in procs:
        out = p.communicate(timeout=600)[0]
        assert p.returncode == 0, out
    from asap_runbook.results import SectionRun
    return [r for s in sections
            for r in SectionRun.model_validate_json((run_dir / "sections" / f"{s}.json").read_text()).results]


def test_runs_back_to_back_at_the_default_limit_are_judged_without_rate_limit_errors(agent, tmp_path):
    """Security (with the burst, the oversize body and the handler probes) and scaling in two processes at
    once, three runs in a row. The agent counts ~40 POSTs a run, so the third run only fits its 100/minute
    by waiting for the first run's requests to leave the window."""
    params = _params(tmp_path, agent, rate_limit_burst=True, oversize_body=True, handler_probes=True)
    runs = [_run_concurrently(params, tmp_path / f"run{n}", ("security", "scaling")) for n in (1, 2, 3)]
    for results in runs:
        errors = [f"{r.item_id}: {r.summary}" for r in results if r.status is Status.ERROR]
        assert errors == []  # none at all, so none caused by the runbook's own traffic
        rate1 = [r for r in results if r.item_id == "SEC-RATE-1"][0]
        assert rate1.status is Status.PASS and "429" in rate1.summary  # the burst really met the limit
        paced = [r.details["paced_seconds"] for r in results if "paced_seconds" in r.details]
        assert paced  # the waiting is in the results
    waited = [sum(r.details.get("paced_seconds", 0) for r in results) for results in runs]
    assert waited[2] > waited[0], waited  # the third run waited for the minute window


def _probe_posts(agent, n: int, rate_limit: str | None):
    """n read-only POSTs at once through one Probe; what came back (ProbeResponse or the exception)."""
    import asyncio

    from asap_runbook.params import ProbeSettings, Target
    from asap_runbook.probe import Probe, probe_envelope

    async def go():
        settings = ProbeSettings(timeout_seconds=3, rate_limit=rate_limit, max_rate_limit_wait_seconds=10)
        async with Probe(Target(name="rec", base_url=agent.base), settings) as p:
            return await asyncio.gather(*(p.send(probe_envelope(p.target.sender)) for _ in range(n)),
                                        return_exceptions=True)
    return asyncio.run(go())


@pytest.mark.parametrize("agent", ["3/second"], indirect=True)
def test_a_429_the_pacer_did_not_foresee_is_waited_out(agent):
    """The agent's limit (3/s) is below probe.rate_limit (10/s): the probe meets 429s and honours Retry-After."""
    got = _probe_posts(agent, 8, "10/second;100/minute")
    assert all(not isinstance(r, Exception) and r.status == 200 for r in got), got
    assert any(r.paced_seconds > 0 for r in got)


@pytest.mark.parametrize("agent", ["2/hour"], indirect=True)
def test_what_the_bound_cannot_fit_is_an_error_naming_the_limit_and_the_wait(agent):
    from asap_runbook.errors import RateLimited
    # pacing at the agent's real limit: the third request is not even sent
    got = _probe_posts(agent, 3, "2/hour")
    refused = [r for r in got if isinstance(r, RateLimited)]
    assert len(refused) == 1 and "2/hour" in refused[0].message and "would need a wait of" in refused[0].message
    assert _requests_seen(agent) == 2
    # pacing off: the agent's own Retry-After (about an hour) is over the 10 s bound
    got = _probe_posts(agent, 1, None)
    assert isinstance(got[0], RateLimited) and "Retry-After" in got[0].message and "10 s bound" in got[0].message
