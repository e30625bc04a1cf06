"""Live numbers from Prometheus for one agent job: error rate, latency (p99 computed so that it
stays right when asap-protocol's buckets are double-cumulated), and the plots the Monitoring
notebook shows. Everything goes through `prom.Prom`, so a Prometheus that does not answer is a
`PrometheusError` (one sentence, result `error`)."""

from __future__ import annotations

import asyncio
import math
import re
from datetime import UTC, datetime, timedelta

from . import metrics_text as mt
from .prom import Prom

_UNITS = {"s": 1, "m": 60, "h": 3600}


def window_seconds(window: str) -> int:
    m = re.fullmatch(r"(\d+)([smh])", window)
    if not m:
        raise ValueError(f"bad window {window!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


def _scalar(result: list[dict]) -> float | None:
    if not result:
        return None
    try:
        v = float(result[0]["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _sel(job: str, *extra: str) -> str:
    return "{" + ", ".join(['job="%s"' % job.replace("\\", "\\\\").replace('"', '\\"'), *extra]) + "}"


async def series_exist(prom: Prom, job: str, metrics: list[str]) -> dict[str, bool]:
    """Does this job export each metric? Yes when Prometheus holds a series of it, or, for a
    labelled counter that has not counted anything yet (no series until the first error), when
    the job's targets declare the family in their scrape (the targets' metadata)."""
    out = {}
    scraped_now = None  # metadata outlives a failing scrape: it counts only while the job is up
    for m in metrics:
        res = await prom.query(f"count({m}{_sel(job)})")
        out[m] = bool(res) and (_scalar(res) or 0) > 0
        if not out[m]:
            if scraped_now is None:
                scraped_now = (_scalar(await prom.query(f"max(up{_sel(job)})")) or 0) >= 1
            out[m] = scraped_now and bool(await prom.target_metadata(job, m))
    return out


async def has_series(prom: Prom, selector: str) -> bool:
    """Does Prometheus hold any series for this selector now?"""
    return (_scalar(await prom.query(f"count({selector})")) or 0) > 0


async def job_targets(prom: Prom, job: str) -> list[dict]:
    """The job's scrape targets, kept small: url, health, last error."""
    return [{k: t.get(k) for k in ("scrapeUrl", "health", "lastError")}
            for t in await prom.targets() if (t.get("labels") or {}).get("job") == job]


# error types a client causes: the JSON-RPC equivalent of 4xx (asap-agent-reference §2)
CLIENT_ERROR_TYPES = ("auth_failed", "sender_mismatch", "invalid_timestamp", "invalid_nonce", "parse_error",
                      "invalid_request", "missing_envelope", "invalid_envelope", "handler_not_found", "invalid_params")


async def error_rate(prom: Prom, job: str, window: str) -> dict:
    """Server-side error ratio over the window (what the shipped alert pages on), and beside it the
    ratio of all errors, client-caused included (the runbook's own negative probes are among them)."""
    sel = _sel(job)
    server_sel = _sel(job, f'error_type!~"{"|".join(CLIENT_ERROR_TYPES)}"')
    server = _scalar(await prom.query(f"sum(increase(asap_requests_error_total{server_sel}[{window}]))"))
    errors = _scalar(await prom.query(f"sum(increase(asap_requests_error_total{sel}[{window}]))"))
    total = _scalar(await prom.query(f"sum(increase(asap_requests_total{sel}[{window}]))"))
    return {"window": window, "server_errors": server, "errors": errors, "requests": total,
            "ratio": (server or 0) / total if total else None,
            "all_errors_ratio": (errors or 0) / total if total else None,
            "query": f"sum(increase(asap_requests_error_total{server_sel}[{window}])) / "
                     f"sum(increase(asap_requests_total{sel}[{window}]))"}


async def latency(prom: Prom, job: str, window: str, q: float = 0.99) -> dict:
    """q-quantile of request latency over the window from increase() of the buckets, de-cumulated
    when they show asap-protocol's double cumulation; plus the exact mean from _sum/_count."""
    res = await prom.query(f"sum by (le) (increase(asap_request_duration_seconds_bucket{_sel(job)}[{window}]))")
    buckets = sorted((mt._le(r["metric"]["le"]), float(r["value"][1])) for r in res if "le" in r.get("metric", {}))
    # double cumulation is a property of the exported counters, judged on their current values
    raw = await prom.query(f"sum by (le) (asap_request_duration_seconds_bucket{_sel(job)})")
    current = sorted((mt._le(r["metric"]["le"]), float(r["value"][1])) for r in raw if "le" in r.get("metric", {}))
    s = _scalar(await prom.query(f"sum(increase(asap_request_duration_seconds_sum{_sel(job)}[{window}]))"))
    c = _scalar(await prom.query(f"sum(increase(asap_request_duration_seconds_count{_sel(job)}[{window}]))"))
    summary = mt.latency_summary(buckets, q, double_cumulated=mt.is_double_cumulated(current))
    return {
        "window": window, "quantile": q,
        "value_seconds": summary["value_seconds"],
        "naive_histogram_quantile_seconds": summary["naive_histogram_quantile_seconds"],
        "double_cumulated": summary["double_cumulated"],
        "method": summary["method"],
        "mean_seconds": (s / c) if c else None,
        "requests": c,
    }


# ------------------------------------------------------------------------------------------ plots
async def timeseries(prom: Prom, job: str, window: str):
    """A DataFrame indexed by time: request rate, error ratio, mean and p99 latency for the job."""
    import pandas as pd

    span = window_seconds(window)
    step = max(span // 60, 2)
    rng = f"{max(4 * step, 30)}s"
    end = datetime.now(UTC)
    start = end - timedelta(seconds=span)
    sel = _sel(job)
    queries = {
        "requests_per_s": f"sum(rate(asap_requests_total{sel}[{rng}]))",
        "errors_per_s": f"sum(rate(asap_requests_error_total{sel}[{rng}]))",
        "latency_sum": f"sum(rate(asap_request_duration_seconds_sum{sel}[{rng}]))",
        "latency_count": f"sum(rate(asap_request_duration_seconds_count{sel}[{rng}]))",
    }
    results = await asyncio.gather(*(prom.query_range(q, start, end, f"{step}s") for q in queries.values()))
    frame = {}
    for name, res in zip(queries, results):
        if res:
            frame[name] = pd.Series({datetime.fromtimestamp(float(t), UTC): float(v) for t, v in res[0]["values"]})
    buckets = await prom.query_range(f"sum by (le) (rate(asap_request_duration_seconds_bucket{sel}[{rng}]))",
                                     start, end, f"{step}s")
    raw = await prom.query(f"sum by (le) (asap_request_duration_seconds_bucket{sel})")
    broken = mt.is_double_cumulated(sorted((mt._le(r["metric"]["le"]), float(r["value"][1])) for r in raw
                                           if "le" in r.get("metric", {})))
    per_time: dict = {}
    for r in buckets:
        le = mt._le(r["metric"].get("le", "+Inf"))
        for t, v in r["values"]:
            per_time.setdefault(float(t), []).append((le, float(v)))
    p99 = {}
    for t, bs in per_time.items():
        bs.sort()
        p99[datetime.fromtimestamp(t, UTC)] = mt.quantile(0.99, mt.decumulate(bs) if broken else bs)
    if p99:
        frame["p99_seconds"] = pd.Series(p99, dtype="float64")
    df = pd.DataFrame(frame).sort_index()
    if "errors_per_s" in df and "requests_per_s" in df:
        df["error_ratio"] = (df["errors_per_s"] / df["requests_per_s"]).where(df["requests_per_s"] > 0)
    if "latency_sum" in df and "latency_count" in df:
        df["mean_seconds"] = (df["latency_sum"] / df["latency_count"]).where(df["latency_count"] > 0)
    df.attrs.update(job=job, window=window, rate_range=rng, step=f"{step}s", double_cumulated=broken)
    return df


def monitoring_plots(section=None, params_path: str | None = None, targets: list[str] | None = None):
    """Request rate, error ratio and latency (p99 + mean) over `prometheus.window` for every target
    with a `prometheus_job`, as one matplotlib figure (a static PNG in the HTML evidence).
    Returns the per-job DataFrames; a Prometheus that does not answer is one sentence, no plot."""
    import concurrent.futures

    import matplotlib.pyplot as plt

    from .errors import RunbookError
    from .notebook import _display, _html
    from .params import load_params

    def say(text: str) -> None:
        _display(_html(f"<p><b>Prometheus plots:</b> {text}</p>"))

    try:
        params = load_params(params_path)
    except RunbookError as e:
        say(e.message)
        return {}
    if params.prometheus is None:
        say("no prometheus.url in the parameters, nothing to plot.")
        return {}
    ran = {r.target for r in section.results} if section is not None and getattr(section, "results", None) else None
    jobs = {t.name: t.prometheus_job for t in params.targets
            if t.prometheus_job and (not targets or t.name in targets) and (ran is None or t.name in ran)}
    if not jobs:
        say("no target has a prometheus_job.")
        return {}
    prom = Prom(params.prometheus)
    window = params.prometheus.window

    async def collect():
        frames = await asyncio.gather(*(timeseries(prom, job, window) for job in jobs.values()))
        return dict(zip(jobs, frames))

    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # works inside Jupyter's running loop too
            frames = pool.submit(asyncio.run, collect()).result()
    except RunbookError as e:
        say(e.message)
        return {}
    fig, axes = plt.subplots(3, 1, figsize=(9, 7.5), sharex=True)
    panels = [("requests_per_s", "requests / s", axes[0]), ("error_ratio", "error ratio", axes[1])]
    for name, df in frames.items():
        label = f"{name} ({jobs[name]})"
        if df.empty:
            axes[0].plot([], [], label=f"{label}: no data (not scraped)")
            continue
        for col, _, ax in panels:
            if col in df:
                ax.plot(df.index, df[col], label=label)
        if "p99_seconds" in df:
            axes[2].plot(df.index, df["p99_seconds"], label=f"{label} p99"
                         + (" (de-cumulated buckets)" if df.attrs.get("double_cumulated") else ""))
        if "mean_seconds" in df:
            axes[2].plot(df.index, df["mean_seconds"], linestyle="--", label=f"{label} mean (_sum/_count)")
    th = params.thresholds
    axes[1].axhline(th.error_rate_ratio.value, color="grey", linewidth=0.8, linestyle=":", label="threshold")
    axes[2].axhline(th.p99_latency_seconds.value, color="grey", linewidth=0.8, linestyle=":", label="p99 threshold")
    for (_, ylabel, ax) in panels + [(None, "latency (s)", axes[2])]:
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    some = next((df for df in frames.values() if not df.empty), None)
    rng = some.attrs.get("rate_range") if some is not None else "?"
    axes[0].set_title(f"Prometheus, last {window} (rate over {rng})")
    fig.autofmt_xdate()
    fig.tight_layout()
    plt.show()
    plt.close(fig)
    return frames
