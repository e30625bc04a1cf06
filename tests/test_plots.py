"""Plots that agree with the verdicts: the Monitoring plot draws what MON-ALERT-1/2 judge (the
same queries, the same functions), and the rate-limit burst's timeline is its own evidence.
Also: a real drill's timeline (RES-2) holds what the drill observed. Screenshots (PNG) go to the
test's tmp dir (and /work/screenshots/ when /work exists); their paths are printed."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from asap_runbook import monitoring_live as live
from asap_runbook.engine import run_check, run_section
from asap_runbook.prom import Prom
from asap_runbook.params import Thresholds
from asap_runbook.results import Result, SectionRun, Status

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
    drawn = {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}
    assert drawn[f"hardened ({JOB}): server-side errors / requests"].get_ydata()[-1] == pytest.approx(er["ratio"], abs=1e-12)
    assert drawn[f"hardened ({JOB}) p99"].get_ydata()[-1] == pytest.approx(lat["value_seconds"], rel=1e-9)
    labels = [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]
    assert f"threshold {th.error_rate_ratio.value:.0%}: {th.error_rate_ratio.source}" in labels
    assert f"threshold {th.p99_latency_seconds.value:g} s: {th.p99_latency_seconds.source}" in labels
    judged = live._judged(alerts, "hardened", "MON-ALERT-1", "error rate over")[1]["ratio"]
    assert f"hardened: MON-ALERT-1 judged {judged:.1%}" in labels
    assert "the runbook's own traffic" in labels
    shot = tmp_path / "monitoring-plot.png"
    fig.savefig(shot, dpi=90)
    _keep(shot)


# ------------------------------------------------- the same plot from a recorded Prometheus answer
AT = datetime(2026, 11, 30, 8, 26, 52, tzinfo=UTC)
SEL = '{job="asap-hardened"}'
# What Prometheus answered at AT for the hardened job of a fresh deployment (recorded by the live test
# above, buckets trimmed): every series is new in the 1m window, so each range query holds one point.
# Keyed by the query text: a plot that asked anything else than the verdict functions finds no answer.
RECORDED = {
    f"sum(rate(asap_requests_total{SEL}[30s]))": [({}, "0.471567")],
    f"sum(increase(asap_requests_total{SEL}[1m]))": [({}, "14.147")],
    f"sum(increase(asap_requests_error_total{SEL}[1m]))": [({}, "3.021")],
    'sum(increase(asap_requests_error_total{job="asap-hardened", error_type!~"auth_failed|sender_mismatch|'
    'invalid_timestamp|invalid_nonce|parse_error|invalid_request|missing_envelope|invalid_envelope|'
    'handler_not_found|invalid_params"}[1m]))': [],  # no server-side error series: none happened
    f"sum(increase(asap_request_duration_seconds_sum{SEL}[1m]))": [({}, "0.09214")],
    f"sum(increase(asap_request_duration_seconds_count{SEL}[1m]))": [({}, "14.147")],
    f"sum by (le) (increase(asap_request_duration_seconds_bucket{SEL}[1m]))":
        [({"le": "0.005"}, "3.03"), ({"le": "0.01"}, "11.1"), ({"le": "0.025"}, "14.147"), ({"le": "+Inf"}, "14.147")],
    f"sum by (le) (asap_request_duration_seconds_bucket{SEL})":
        [({"le": "0.005"}, "3"), ({"le": "0.01"}, "11"), ({"le": "0.025"}, "14"), ({"le": "+Inf"}, "14")],
}


class RecordedProm:
    """Answers RECORDED at AT, as Prometheus's HTTP API shapes them; any other query or instant is a test failure."""

    def _answer(self, promql: str, when: datetime) -> list[tuple[dict, str]]:
        assert when == AT, when
        assert promql in RECORDED, f"not recorded: {promql}"
        return RECORDED[promql]

    async def query(self, promql: str, at=None) -> list[dict]:
        return [{"metric": m, "value": [AT.timestamp(), v]} for m, v in self._answer(promql, at)]

    async def query_range(self, promql: str, start, end, step: str) -> list[dict]:
        return [{"metric": m, "values": [[AT.timestamp(), v]]} for m, v in self._answer(promql, end)]


def _alert_result(item_id: str, concern: str, observed: dict) -> Result:
    """MON-ALERT-1/2's result as the engine makes it: the recorded alert observation (the loaded rules)
    with the live number `observed`, judged by the verdict function."""
    from asap_runbook.catalog import load_catalog
    from asap_runbook.checks import mon_alerting as ma
    from asap_runbook.engine import _result
    from asap_runbook.params import Target
    obs = json.loads((Path(__file__).parent / "verdicts" / "data" / "alert_error_rate_hardened.json").read_text())
    # routing left out: the recording routed the error-rate rule only, and the plot is about the numbers
    obs = ma.AlertObservation(**obs | {"concern": concern, "error_rate": None, concern: observed, "routing": None})
    obs.series = {m: True for c in ma._coverage(obs)[0] for m in c.metrics}  # the hardened job exports them all
    th = Thresholds()
    finding = ma.judge_alert(obs, getattr(th, ma.THRESHOLDS[concern]).value)
    target = Target.model_construct(name="hardened")
    return _result(load_catalog().get(item_id), target, finding, AT, 0.0)


def test_the_plot_draws_the_recorded_answer_as_the_verdict_reads_it():
    """Offline: from one recorded Prometheus answer, the verdict functions' numbers, the plot's last
    point and the judged marks are the same numbers, and a series with one point in the window shows."""
    prom, window = RecordedProm(), "1m"
    er = asyncio.run(live.error_rate(prom, JOB, window, AT))
    lat = asyncio.run(live.latency(prom, JOB, window, at=AT))
    df = asyncio.run(live.timeseries(prom, JOB, window, end=AT))
    assert list(df.index) == [AT]
    assert (er["ratio"], er["requests"], er["all_errors_ratio"]) == (0.0, 14.147, pytest.approx(3.021 / 14.147))
    assert lat["value_seconds"] == pytest.approx(0.01 + 0.015 * (0.99 * 14.147 - 11.1) / (14.147 - 11.1))
    assert df["error_ratio"].iloc[-1] == er["ratio"] and df["p99_seconds"].iloc[-1] == lat["value_seconds"]
    assert df["mean_seconds"].iloc[-1] == lat["mean_seconds"]

    alerts = SectionRun(section="monitoring", started_at=AT, results=[
        _alert_result("MON-ALERT-1", "error_rate", er), _alert_result("MON-ALERT-2", "latency", lat)])
    assert [r.status for r in alerts.results] == [Status.PASS, Status.PASS], [r.summary for r in alerts.results]
    th = Thresholds()
    fig = live.figure({"hardened": df}, {"hardened": JOB}, th, alerts, [("security", AT, AT)], window)
    drawn = {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}
    expected = {  # label: (x, y), what each drawn line holds
        "hardened (asap-hardened)": df["requests_per_s"].iloc[-1],
        "hardened (asap-hardened): server-side errors / requests": er["ratio"],
        "hardened: MON-ALERT-1 judged 0.0%": er["ratio"],
        "hardened (asap-hardened) p99": lat["value_seconds"],
        f"hardened: MON-ALERT-2 judged {lat['value_seconds']:.3g} s": lat["value_seconds"],
        "hardened (asap-hardened) mean (_sum/_count)": lat["mean_seconds"],
    }
    for label, y in expected.items():
        line = drawn[label]
        assert list(line.get_xdata()) == [AT] and list(line.get_ydata()) == [y], label
        assert line.get_marker() not in (None, "", " ", "None"), f"{label}: one point and no marker draws nothing"
    labels = [t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()]
    assert f"threshold {th.error_rate_ratio.value:.0%}: {th.error_rate_ratio.source}" in labels
    assert f"threshold {th.p99_latency_seconds.value:g} s: {th.p99_latency_seconds.source}" in labels
    assert "the runbook's own traffic" in labels


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


def test_the_drill_timeline_draws_what_the_breaker_drill_observed(demo_params, tmp_path, monkeypatch):
    """One real drill (RES-2 on the hardened agent: a copy of it started with its downstream behind the
    fault proxy), drawn by the function the evidence page uses (drills.timeline_png, from the result's
    "observation" evidence, as notebook.drill_timelines does); the picture holds what the drill saw."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    from asap_runbook.drills import timeline_png
    from conftest import expected

    r = run_check("RES-2", demo_params, "hardened")
    assert r.status is expected("RES-2", "hardened"), r.summary
    obs = next(e.data for e in r.evidence if e.label == "observation")
    per_call = next(e.data for e in r.evidence if e.label == "attempts at the proxy per call")
    drawn = []
    monkeypatch.setattr(plt, "close", drawn.append)  # keep the figure timeline_png renders, to read it back
    png = timeline_png(r.item_id, r.target, obs)
    assert png.startswith(b"\x89PNG") and len(drawn) == 1
    ax = drawn[0].axes[0]
    assert ax.get_title() == "RES-2 on hardened"

    # what the drill observed, on its clock (the picture starts at the first call)
    origin = min([a["t"] for a in obs["arrivals"]] + [c["t0"] for c in obs["calls"]])
    faults = [a["t"] - origin for a in obs["arrivals"] if a["action"] != "ok"]
    recovered = next(a["t"] - origin for a in obs["arrivals"] if a["action"] == "ok" and a["t"] - origin > max(faults))

    # the outage: shaded from the first fault the proxy injected to the last
    outage = next(p for p in ax.patches if p.get_label() == "outage (faults injected)")
    assert (outage.get_x(), outage.get_x() + outage.get_width()) == pytest.approx((min(faults), max(faults)))
    # every attempt at the proxy, at its time, coloured by what the proxy did (faults red/purple, ok green)
    points = sorted((float(x), to_hex(c)) for pc in ax.collections if len(pc.get_offsets())
                    for (x, _), c in zip(pc.get_offsets(), pc.get_facecolors()))
    ok = "#2e7d32"
    assert [x for x, _ in points] == pytest.approx([a["t"] - origin for a in obs["arrivals"]])
    assert [c == ok for _, c in points] == [a["action"] == "ok" for a in obs["arrivals"]]
    # recovery: the first green attempt after the outage, as long after its end as the drill saw
    first_ok_after = min(x for x, c in points if c == ok and x > outage.get_x() + outage.get_width())
    assert first_ok_after - (outage.get_x() + outage.get_width()) == pytest.approx(recovered - max(faults))

    # the agent's answers: one bar per call; the calls the open circuit kept home have no attempt inside
    bars = [line.get_xdata() for line in ax.get_lines() if list(line.get_ydata()) == [2, 2]]
    assert [(b[0], b[1]) for b in bars] == [pytest.approx((c["t0"] - origin, c["t1"] - origin)) for c in obs["calls"]]
    attempts = [sum(b[0] <= x <= b[1] for x, _ in points) for b in bars]
    assert attempts == [c["attempts"] for c in per_call]
    kept_home = int(r.summary.split("circuit opened: ")[1].split()[0])  # "... opened: N call(s) never reached ..."
    half_open = int(r.summary.split("then call ")[1].split()[0])        # "then call N reached it again"
    assert attempts.count(0) == kept_home and attempts[half_open - 1] > 0
    assert attempts[half_open - 1 - kept_home:half_open - 1] == [0] * kept_home  # kept home right before it

    shot = tmp_path / "drill-timeline-RES-2-hardened.png"
    shot.write_bytes(png)  # the very picture the evidence page shows
    _keep(shot)


def test_a_fleets_plot_draws_each_job_once_and_asks_prometheus_once_per_job(monkeypatch, tmp_path):
    """Targets that name the same job share its series: one set of lines and one set of range queries per
    job, the legend as long as the jobs (a fleet of a thousand names drew a thousand lines and legend rows)."""
    prom, window = RecordedProm(), "1m"
    df = asyncio.run(live.timeseries(prom, JOB, window, end=AT))
    names = [f"agent-{i}" for i in range(5)]
    fig = live.figure({n: df for n in names}, {n: JOB for n in names}, Thresholds(), None, [], window)
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == [f"{JOB} (5 targets)"]

    asked = []

    async def timeseries(prom, job, window, end=None):
        asked.append(job)
        return df

    monkeypatch.setattr(live, "timeseries", timeseries)
    monkeypatch.setattr(live, "figure", lambda *a, **k: plt.figure())
    params = {"prometheus": {"url": "http://127.0.0.1:9"},
              "targets": [{"name": n, "base_url": "https://127.0.0.1:9", "prometheus_job": "a" if i < 4 else "b"}
                          for i, n in enumerate(names)]}
    path = tmp_path / "p.yaml"
    path.write_text(json.dumps(params))
    frames = live.monitoring_plots(None, str(path))
    assert sorted(asked) == ["a", "b"] and set(frames) == set(names)
