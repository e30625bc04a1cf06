"""Plots that agree with the verdicts: the Monitoring plot draws what MON-ALERT-1/2 judge (the
same queries, the same functions), and the rate-limit burst's timeline is its own evidence.
Screenshots (PNG) go to the test's tmp dir; their paths are printed."""

from __future__ import annotations

import asyncio
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from asap_runbook import monitoring_live as live
from asap_runbook.engine import run_check, run_section
from asap_runbook.prom import Prom
from asap_runbook.results import SectionRun, Status

SCREENSHOTS = Path("/work/screenshots")
JOB = "asap-hardened"


def _keep(path: Path) -> None:
    print(f"screenshot: {path}")
    if SCREENSHOTS.parent.is_dir():
        SCREENSHOTS.mkdir(exist_ok=True)
        shutil.copy(path, SCREENSHOTS / path.name)
        print(f"screenshot kept: {SCREENSHOTS / path.name}")


@pytest.fixture(autouse=True)
def _agg():
    import matplotlib
    matplotlib.use("Agg")


# the hardened job's successful task.requests: the series the test's echo requests add to
SUCCESSES = "sum(asap_requests_total%s)" % live._sel(JOB, 'payload_type="task.request"', 'status="success"')


def _echo(params, n: int) -> list:
    """n real echo task.requests to the hardened agent (paced under its limit); their JSON-RPC results."""
    from asap_runbook.probe import Probe, envelope
    t = params.targets[0]

    async def send():
        async with Probe(t, params.probe) as p:
            return [(await p.send(envelope(t.sender))).rpc_result() for _ in range(n)]
    return asyncio.run(send())


def _scraped(prom: Prom, at_least: float) -> tuple[datetime, float]:
    """Wait until Prometheus's raw sample of SUCCESSES, asked at a whole-second instant `at` (the
    instant the plot and the verdict functions are then asked at), reaches `at_least`: (at, sample).
    The bound only keeps a stalled Prometheus from hanging the test."""
    deadline = time.monotonic() + 120
    while True:
        at = datetime.now(UTC).replace(microsecond=0)
        seen = live._scalar(asyncio.run(prom.query(SUCCESSES, at)))
        if seen is not None and seen >= at_least:
            return at, seen
        if time.monotonic() > deadline:
            pytest.fail(f"after 120 s Prometheus held {seen} for {SUCCESSES} at {at}, not {at_least}: no scrape counted "
                        "the requests")
        time.sleep(0.5)


def test_the_monitoring_plot_draws_what_the_verdict_judged(demo_params, tmp_path):
    prom = Prom(demo_params.prometheus)
    window = demo_params.prometheus.window
    # the runbook's own negative probes (client-caused errors) hit the agent, as in a real run
    hardened = demo_params.model_copy(update={"targets": [demo_params.target("hardened")]})
    probes = run_section("security", hardened, items=["SEC-AUTH-1", "SEC-HANDLER-1", "SEC-REPLAY-1"])
    # The default probes are read-only (refused before the agent counts a request): send real ones.
    # A labelled counter has no series until its first request, and increase() never counts a
    # series' first sample: requests that are all in that first scrape never show in the window.
    # So one request first, until Prometheus holds the series (the baseline), then the five.
    assert all(_echo(hardened, 1)), "the hardened agent refused the echo"
    _, baseline = _scraped(prom, 1)
    assert all(_echo(hardened, 5)), "the hardened agent refused an echo"
    at, seen = _scraped(prom, baseline + 5)
    er = asyncio.run(live.error_rate(prom, JOB, window, at))
    lat = asyncio.run(live.latency(prom, JOB, window, at=at))
    df = asyncio.run(live.timeseries(prom, JOB, window, end=at))
    # the baseline sample, scraped before the five, is in the window: the increase counts them all
    assert er["requests"] >= 5, (baseline, seen, er, [(r.item_id, r.status.value, r.summary[:80]) for r in probes.results])
    assert df.index[-1] == at
    assert df["requests"].iloc[-1] == pytest.approx(er["requests"], rel=1e-9)
    assert df["error_ratio"].iloc[-1] == pytest.approx(er["ratio"], rel=1e-9, abs=1e-12)
    assert df["p99_seconds"].iloc[-1] == pytest.approx(lat["value_seconds"], rel=1e-9)
    assert df.attrs["error_query"] == er["query"]  # one query, shared

    alerts = SectionRun(section="monitoring", started_at=probes.started_at, results=[
        run_check("MON-ALERT-1", demo_params, "hardened"), run_check("MON-ALERT-2", demo_params, "hardened")])
    th = demo_params.thresholds
    fig = live.figure({"hardened": df}, {"hardened": JOB}, th, alerts,
                      live.own_traffic(None, probes), window)
    labels = [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]
    assert f"threshold {th.error_rate_ratio.value:.0%}: {th.error_rate_ratio.source}" in labels
    assert f"threshold {th.p99_latency_seconds.value:g} s: {th.p99_latency_seconds.source}" in labels
    judged = live._judged(alerts, "hardened", "MON-ALERT-1", "error rate over")[1]["ratio"]
    assert f"hardened: MON-ALERT-1 judged {judged:.1%}" in labels
    assert "the runbook's own traffic" in labels
    shot = tmp_path / "monitoring-plot.png"
    fig.savefig(shot, dpi=90)
    _keep(shot)


def test_the_burst_timeline_is_the_burst_s_evidence(demo_params, tmp_path):
    from asap_runbook.timelines import burst_figure, burst_series
    r = run_check("SEC-RATE-1", demo_params, "hardened")
    assert r.status is Status.PASS, r.summary
    s = burst_series(r.details["timeline"])
    tally_a = next(e.data for e in r.evidence if e.label.startswith("burst A"))  # "200x5, 429x1": what burst A saw
    a = [st for st, b in zip(s["status"], s["burst"]) if b == "A"]
    assert a.index(429) == int(r.summary.split(" after ")[1].split()[0])  # "429 ... after N back-to-back requests"
    assert sum(int(part.split("x")[1]) for part in tally_a.split(", ")) == len(a)
    burst, t, wait = s["retry_windows"][0]
    assert burst == "A" and wait == float(r.summary.split("Retry-After: ")[1].split()[0])
    fig = burst_figure(r)
    shot = tmp_path / "rate-limit-burst.png"
    fig.savefig(shot, dpi=90)
    _keep(shot)
