"""What does not depend on the target is read once for every target of a section run: Prometheus's rules,
its scrape targets, its external labels, the Alertmanager it sends to and that Alertmanager's configuration.
Counted on a recording Prometheus (and Alertmanager) served here. What is about a job's series (its error
rate, its latency, its instances down) is asked once per job for every target naming it, and again once
JOB_READ_FRESH_SECONDS old; each result says when the shared answers were read."""

from __future__ import annotations

import asyncio
import collections
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

import asap_runbook
from asap_runbook import engine, rules_source
from asap_runbook.checks import _registry
from asap_runbook.checks._registry import CheckContext
from asap_runbook.params import Params

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "asap_runbook" / "data" / "prometheus" / "asap-alerts.yml"
TEAM_ROUTES = Path(asap_runbook.__file__).parent / "data" / "alertmanager" / "alertmanager.yml"
JOBS = ("asap-orders", "asap-billing", "asap-search")  # the shipped rules select job=~"asap-.*"
ITEMS = ["MON-ALERT-1", "MON-ALERT-2", "MON-ALERT-3", "MON-ALERT-4", "MON-METRICS-2"]
# labelled counters with no series yet: the checks then ask whether the job is up (once per target)
NO_SERIES = ("count(asap_requests_error_total", "count(asap_rate_limit_exceeded_total")


class RecordingPrometheus(BaseHTTPRequestHandler):
    """The Prometheus API (and Alertmanager's /api/v2/status) with canned answers; every request recorded."""
    seen: list[tuple[str, str]] = []
    lock = threading.Lock()
    port = 0

    def do_GET(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query).get("query", [""])[0]
        with self.lock:
            self.seen.append((url.path, query))
        data = self.answer(url.path, query)
        body = json.dumps(data if url.path.startswith("/api/v2/") else {"status": "success", "data": data}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def answer(self, path: str, query: str):
        if path == "/api/v2/status":  # Alertmanager's: its loaded configuration
            return {"config": {"original": TEAM_ROUTES.read_text()}}
        if path == "/api/v1/rules":
            return {"groups": rules_source.groups_from_file(RULES)}
        if path == "/api/v1/targets":
            return {"activeTargets": [{"labels": {"job": j, "instance": f"{j}:443"}, "scrapeUrl": f"https://{j}/m",
                                       "health": "up", "lastError": ""} for j in JOBS]}
        if path == "/api/v1/alertmanagers":
            return {"activeAlertmanagers": [{"url": f"http://127.0.0.1:{self.port}/api/v2/alerts"}],
                    "droppedAlertmanagers": []}
        if path == "/api/v1/status/config":
            return {"yaml": "global:\n  external_labels:\n    cluster: c1\n"}
        if path == "/api/v1/query":
            if query.startswith(NO_SERIES) or query.endswith("== 0"):
                return {"resultType": "vector", "result": []}
            return {"resultType": "vector", "result": [{"metric": {}, "value": [0, "1"]}]}
        return [] if path == "/api/v1/targets/metadata" else {"version": "recording"}

    def log_message(self, *args):
        pass


@pytest.fixture
def prometheus():
    RecordingPrometheus.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), RecordingPrometheus)
    RecordingPrometheus.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", RecordingPrometheus.seen
    server.shutdown()
    server.server_close()


def fleet(url: str, per_job: int = 1) -> Params:
    return Params.model_validate({
        "prometheus": {"url": url},
        "targets": [{"name": f"agent-{j}-{i}", "base_url": "https://127.0.0.1:9", "prometheus_job": j}
                    for j in JOBS for i in range(per_job)]})


def test_target_independent_reads_are_asked_once_for_the_whole_fleet(prometheus):
    url, seen = prometheus
    run = engine.run_section("monitoring", fleet(url), items=ITEMS)
    asked = collections.Counter(path for path, _ in seen)
    # one read each for three targets (and MON-ALERT-1..4, MON-METRICS-2 of each)
    for path in ("/api/v1/rules", "/api/v1/targets", "/api/v1/alertmanagers", "/api/v1/status/config",
                 "/api/v2/status"):
        assert asked[path] == 1, (path, asked)
    queries = collections.Counter(q for path, q in seen if path == "/api/v1/query")
    for job in JOBS:  # about one job: asked for each job, once however many of its checks ask
        assert queries[f'up{{job="{job}"}} == 0'] == 1
        assert queries[f'max(up{{job="{job}"}})'] == 1
    # every result says when the shared answers were read: the same instant for every target
    alerts = [r for r in run.results if r.item_id.startswith("MON-ALERT")]
    assert len(alerts) == 4 * len(JOBS) and all(r.status.value != "error" for r in alerts), \
        [(r.item_id, r.target, r.summary) for r in alerts if r.status.value == "error"]
    read = {r.details["observation"]["shared_reads"]["alerting rules"] for r in alerts}
    assert len(read) == 1
    routed = [r for r in alerts if r.details["observation"]["routing"]]
    assert routed and all("Alertmanager configuration" in r.details["observation"]["shared_reads"] for r in routed)
    scrapes = [r for r in run.results if r.item_id == "MON-METRICS-2"]
    assert [r.status.value for r in scrapes] == ["pass"] * len(JOBS)
    assert len({r.details["observation"]["read_at"] for r in scrapes}) == 1  # the one shared read


def _ctx(run_state: dict) -> CheckContext:
    return CheckContext(item=None, target=None, params=None, probe=None, run_state=run_state)


def _counting_read():
    """A read whose answer is how many times it was asked."""
    calls = []

    async def read():
        calls.append(1)
        return len(calls)
    return read


def test_a_shared_read_is_read_again_once_it_is_old(monkeypatch):
    read = _counting_read()

    async def go():
        run_state = {}
        first = await asyncio.gather(*(_ctx(run_state).once_per_run("k", read) for _ in range(3)))
        monkeypatch.setattr(_registry, "SHARED_READ_FRESH_SECONDS", -1.0)
        later = await _ctx(run_state).once_per_run("k", read)
        return first, later
    first, later = asyncio.run(go())
    assert [r.value for r in first] == [1, 1, 1] and len({r.read_at for r in first}) == 1
    assert later.value == 2 and later.read_at >= first[0].read_at


def test_a_failed_shared_read_is_shared_by_its_waiters_and_asked_again_later():
    calls = []

    async def read():
        calls.append(1)
        await asyncio.sleep(0)
        if len(calls) == 1:
            raise RuntimeError("Prometheus blinked")
        return "answer"

    async def go():
        run_state = {}
        failed = await asyncio.gather(*(_ctx(run_state).once_per_run("k", read) for _ in range(2)),
                                      return_exceptions=True)
        return failed, await _ctx(run_state).once_per_run("k", read)
    failed, later = asyncio.run(go())
    assert all(isinstance(f, RuntimeError) for f in failed) and later.value == "answer" and len(calls) == 2


def test_a_jobs_series_are_asked_once_for_every_target_of_the_job(prometheus):
    url, seen = prometheus
    params = fleet(url, per_job=3)
    window = params.prometheus.window
    run = engine.run_section("monitoring", params, items=["MON-ALERT-1", "MON-ALERT-2", "MON-ALERT-3"])
    queries = collections.Counter(q for path, q in seen if path == "/api/v1/query")
    for job in JOBS:  # three targets name each job: one question per job and query
        sel = f'{{job="{job}"}}'
        assert queries[f"up{sel} == 0"] == 1, queries
        assert queries[f"sum(increase(asap_requests_total{sel}[{window}]))"] == 1, queries
        assert queries[f"sum(increase(asap_request_duration_seconds_count{sel}[{window}]))"] == 1, queries
    by_target = {(r.item_id, r.target): r for r in run.results}
    for job in JOBS:  # the targets of a job were judged on the same read, and say when it was made
        first, second = (by_target[("MON-ALERT-1", f"agent-{job}-{i}")].details["observation"] for i in (0, 1))
        assert first["error_rate"] == second["error_rate"] and first["error_rate"]["requests"] == 1.0
        key = f"job {job}: error rate over {window}"
        assert first["shared_reads"][key] == second["shared_reads"][key]


def test_a_jobs_read_is_asked_again_once_it_is_older_than_its_freshness(monkeypatch):
    read = _counting_read()

    async def go():
        run_state = {}
        first = await asyncio.gather(*(_ctx(run_state).job_read("j", "q", read) for _ in range(3)))
        other = await _ctx(run_state).job_read("k", "q", read)  # another job: its own read
        monkeypatch.setattr(_registry, "JOB_READ_FRESH_SECONDS", -1.0)
        later = await _ctx(run_state).job_read("j", "q", read)
        return first, other, later
    first, other, later = asyncio.run(go())
    assert [r.value for r in first] == [1, 1, 1] and other.value == 2 and later.value == 3
