"""Live numbers from Prometheus for one agent job: error rate, latency (p99 computed so that it
stays right when asap-protocol's buckets are double-cumulated), and the plots the Monitoring
notebook shows. Everything goes through `prom.Prom`, so a Prometheus that does not answer is a
`PrometheusError` (one sentence, result `error`)."""

from __future__ import annotations

import asyncio
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Awaitable, Callable

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


async def job_scraped_now(prom: Prom, job: str) -> bool:
    """Is at least one of the job's targets up (scraped successfully) now?"""
    return (_scalar(await prom.query(f"max(up{_sel(job)})")) or 0) >= 1


async def instances_down(prom: Prom, job: str) -> list[str]:
    """The instances of the job whose scrape fails now (up == 0)."""
    return [r.get("metric", {}).get("instance") for r in await prom.query(f"up{_sel(job)} == 0")]


async def series_exist(prom: Prom, job: str, metrics: list[str],
                       scraped_now: Callable[[], Awaitable[bool]] | None = None) -> dict[str, bool]:
    """Does this job export each metric? Yes when Prometheus holds a series of it, or, for a
    labelled counter that has not counted anything yet (no series until the first error), when
    the job's targets declare the family in their scrape (the targets' metadata). `scraped_now`:
    job_scraped_now, as the caller shares it (several checks of a target ask)."""
    out = {}
    up = None  # metadata outlives a failing scrape: it counts only while the job is up
    for m in metrics:
        res = await prom.query(f"count({m}{_sel(job)})")
        out[m] = bool(res) and (_scalar(res) or 0) > 0
        if not out[m]:
            if up is None:
                up = await (scraped_now() if scraped_now else job_scraped_now(prom, job))
            out[m] = up and bool(await prom.target_metadata(job, m))
    return out


async def has_series(prom: Prom, selector: str) -> bool:
    """Does Prometheus hold any series for this selector now?"""
    return (_scalar(await prom.query(f"count({selector})")) or 0) > 0


def is_of_job(target: dict, job: str) -> bool:
    """Is this active target (/api/v1/targets) the job's: its job label, or its scrape config's job name
    when relabelling changed the label."""
    return (target.get("labels") or {}).get("job") == job or (target.get("discoveredLabels") or {}).get("job") == job


def of_job(targets: list[dict], job: str) -> list[dict]:
    """Of Prometheus's active targets, the job's, kept small: url, health, last error, and the instance label
    its alerts carry."""
    return [{k: t.get(k) for k in ("scrapeUrl", "health", "lastError")} | {"instance": (t.get("labels") or {}).get("instance")}
            for t in targets if is_of_job(t, job)]


# error types a client causes: the JSON-RPC equivalent of 4xx (asap-agent-reference §2)
CLIENT_ERROR_TYPES = ("auth_failed", "sender_mismatch", "invalid_timestamp", "invalid_nonce", "parse_error",
                      "invalid_request", "missing_envelope", "invalid_envelope", "handler_not_found", "invalid_params")


def error_exprs(job: str, window: str) -> dict[str, str]:
    """The PromQL the error-rate verdict (MON-ALERT-1) reads, and the plot too: server-side errors
    (what the shipped alert pages on), all errors (client-caused included: the runbook's own negative
    probes are among them) and requests, each an increase over `window`."""
    sel = _sel(job)
    server_sel = _sel(job, f'error_type!~"{"|".join(CLIENT_ERROR_TYPES)}"')
    return {"server_errors": f"sum(increase(asap_requests_error_total{server_sel}[{window}]))",
            "errors": f"sum(increase(asap_requests_error_total{sel}[{window}]))",
            "requests": f"sum(increase(asap_requests_total{sel}[{window}]))"}


def judged_ratio(errors: float | None, requests: float | None) -> float | None:
    """The ratio a verdict judges: no error series is no error; no request is no ratio (not 0 %)."""
    return (errors or 0) / requests if requests else None


async def error_rate(prom: Prom, job: str, window: str, at: datetime | None = None) -> dict:
    """Server-side error ratio over the window (what the shipped alert pages on), and beside it the
    ratio of all errors, client-caused included (the runbook's own negative probes are among them)."""
    q = error_exprs(job, window)
    server, errors, total = [_scalar(await prom.query(q[k], at)) for k in ("server_errors", "errors", "requests")]
    return {"window": window, "server_errors": server, "errors": errors, "requests": total,
            "ratio": judged_ratio(server, total), "all_errors_ratio": judged_ratio(errors, total),
            "query": f"{q['server_errors']} / {q['requests']}"}


def latency_exprs(job: str, window: str) -> dict[str, str]:
    """The PromQL the latency verdict (MON-ALERT-2) reads, and the plot too."""
    sel = _sel(job)
    return {"buckets": f"sum by (le) (increase(asap_request_duration_seconds_bucket{sel}[{window}]))",
            "sum": f"sum(increase(asap_request_duration_seconds_sum{sel}[{window}]))",
            "count": f"sum(increase(asap_request_duration_seconds_count{sel}[{window}]))"}


def _le_pairs(result: list[dict]) -> list[tuple[float, float]]:
    return sorted((mt._le(r["metric"]["le"]), float(r["value"][1])) for r in result if "le" in r.get("metric", {}))


def judged_quantile(q: float, buckets: list[tuple[float, float]], double_cumulated: bool) -> float | None:
    """The quantile a verdict judges: from de-cumulated buckets when the job double-cumulates them."""
    return mt.quantile(q, mt.decumulate(buckets) if double_cumulated else buckets)


async def double_cumulated(prom: Prom, job: str, at: datetime | None = None) -> bool:
    """Double cumulation is a property of the exported counters, judged on their current values."""
    return mt.is_double_cumulated(_le_pairs(await prom.query(f"sum by (le) (asap_request_duration_seconds_bucket{_sel(job)})", at)))


async def latency(prom: Prom, job: str, window: str, q: float = 0.99, at: datetime | None = None) -> dict:
    """q-quantile of request latency over the window from increase() of the buckets, de-cumulated
    when they show asap-protocol's double cumulation; plus the exact mean from _sum/_count."""
    e = latency_exprs(job, window)
    buckets = _le_pairs(await prom.query(e["buckets"], at))
    broken = await double_cumulated(prom, job, at)
    s = _scalar(await prom.query(e["sum"], at))
    c = _scalar(await prom.query(e["count"], at))
    return {
        "window": window, "quantile": q,
        "value_seconds": judged_quantile(q, buckets, broken),
        "naive_histogram_quantile_seconds": mt.quantile(q, mt.prometheus_monotonic(buckets)),
        "double_cumulated": broken,
        "method": ("de-cumulated buckets (scraped[i] - scraped[i-1]): this job's buckets are double-cumulated"
                   if broken else "buckets as scraped (this job's buckets are sane: no finite bucket above +Inf)"),
        "mean_seconds": (s / c) if c else None,
        "requests": c,
    }


# ------------------------------------------------------------------------------------------ plots
async def timeseries(prom: Prom, job: str, window: str, end: datetime | None = None):
    """A DataFrame indexed by time for the job: request rate (traffic, not judged), and what the
    alerting verdicts judge at each instant: the server-side error ratio and the p99 (and mean)
    over the `window` before it, from the same queries and the same functions as the verdicts, so
    the last point is the number a check run at that instant reports."""
    import pandas as pd

    span = window_seconds(window)
    step = max(span // 60, 2)
    rng = f"{max(4 * step, 30)}s"
    end = (end or datetime.now(UTC)).replace(microsecond=0)  # query_range sends whole seconds: so does the last point
    start = end - timedelta(seconds=step * (span // step))  # a whole number of steps: the last point is `end`
    sel = _sel(job)
    errs, lat = error_exprs(job, window), latency_exprs(job, window)
    queries = {"requests_per_s": f"sum(rate(asap_requests_total{sel}[{rng}]))",
               "server_errors": errs["server_errors"], "requests": errs["requests"],
               "latency_sum": lat["sum"], "latency_count": lat["count"]}
    results = await asyncio.gather(*(prom.query_range(q, start, end, f"{step}s") for q in queries.values()))
    frame = {}
    for name, res in zip(queries, results):
        if res:
            frame[name] = pd.Series({datetime.fromtimestamp(float(t), UTC): float(v) for t, v in res[0]["values"]})
    buckets = await prom.query_range(lat["buckets"], start, end, f"{step}s")
    broken = await double_cumulated(prom, job, end)
    per_time: dict = {}
    for r in buckets:
        le = mt._le(r["metric"].get("le", "+Inf"))
        for t, v in r["values"]:
            per_time.setdefault(float(t), []).append((le, float(v)))
    p99 = {datetime.fromtimestamp(t, UTC): judged_quantile(0.99, sorted(bs), broken) for t, bs in per_time.items()}
    if p99:
        frame["p99_seconds"] = pd.Series(p99, dtype="float64")
    df = pd.DataFrame(frame).sort_index()
    if "requests" in df:
        server = df["server_errors"] if "server_errors" in df else pd.Series(float("nan"), index=df.index)
        df["error_ratio"] = [judged_ratio(None if pd.isna(e) else e, None if pd.isna(n) else n)
                             for e, n in zip(server, df["requests"])]
        df["error_ratio"] = df["error_ratio"].astype("float64")
    if "latency_sum" in df and "latency_count" in df:
        df["mean_seconds"] = (df["latency_sum"] / df["latency_count"]).where(df["latency_count"] > 0)
    df.attrs.update(job=job, window=window, rate_range=rng, step=f"{step}s", double_cumulated=broken,
                    error_query=f"{errs['server_errors']} / {errs['requests']}")
    return df


def _judged_all(section, item_id: str, label_prefix: str) -> dict[str, tuple[datetime, dict]]:
    """target -> (when, data) of the evidence the item's verdict recorded for it, to mark it on the plot
    (one pass over the section's results, however many targets)."""
    out: dict[str, tuple[datetime, dict]] = {}
    for r in getattr(section, "results", None) or []:
        if r.item_id == item_id and r.target not in out:
            for e in r.evidence:
                if e.label.startswith(label_prefix) and isinstance(e.data, dict):
                    out[r.target] = (r.started_at, e.data)
                    break
    return out


def _judged(section, target: str, item_id: str, label_prefix: str) -> tuple[datetime, dict] | None:
    """(when, data) of the evidence a verdict recorded for this target, to mark it on the plot."""
    return _judged_all(section, item_id, label_prefix).get(target)


def own_traffic(run_dir, section=None) -> list[tuple[str, datetime, datetime]]:
    """When this run's checks were sending: (section, first start, last end) per section file in the
    run folder (every section's probes count on the agent), or of `section` alone without one."""
    from pathlib import Path

    from . import section_file
    read = []  # (section, its results one at a time): a fleet's section files are not read whole
    if run_dir is not None:
        for path in sorted((Path(run_dir) / "sections").glob("*.json")):
            if path.name.endswith(".progress.json"):
                continue
            try:
                read.append((section_file.header(path).section, section_file.results(path)))
            except ValueError:
                continue  # a section being written right now: the others still mark their traffic
    elif section is not None:
        read = [(section.section, iter(section.results))]
    out = []
    for name, results in read:
        first = last = None
        try:
            for r in results:
                end = r.started_at + timedelta(seconds=r.duration_seconds)
                first = r.started_at if first is None else min(first, r.started_at)
                last = end if last is None else max(last, end)
        except ValueError:
            continue
        if first is not None:
            out.append((name, first, last))
    return out


def figure(frames: dict, jobs: dict[str, str], thresholds, section=None, traffic=(), window: str = ""):
    """The Monitoring figure: traffic, then the two judged quantities with their thresholds (labelled
    with their source), the verdicts' own values marked, and the runbook's own traffic shaded."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    dots = {"marker": ".", "markersize": 4}  # a point between gaps (a series new in the window) draws no line
    # one set of lines per job: the series are the job's, whichever of its targets asked (a fleet's legend
    # stays as long as its jobs, not its targets)
    names_of: dict[str, list[str]] = {}
    for name in frames:
        names_of.setdefault(jobs[name], []).append(name)
    judged_errors = _judged_all(section, "MON-ALERT-1", "error rate over")
    judged_latency = _judged_all(section, "MON-ALERT-2", "latency over")

    def last_judged(judged: dict, names: list[str]) -> tuple[datetime, dict] | None:
        seen = [judged[n] for n in names if n in judged]
        return max(seen, key=lambda s: s[0]) if seen else None

    for job, names in names_of.items():
        df = frames[names[0]]
        who = names[0] if len(names) == 1 else job
        label = f"{names[0]} ({job})" if len(names) == 1 else f"{job} ({len(names)} targets)"
        if df.empty:
            axes[0].plot([], [], label=f"{label}: no data (not scraped)")
            continue
        if "requests_per_s" in df:
            axes[0].plot(df.index, df["requests_per_s"], label=label, **dots)
        if "error_ratio" in df:
            line, = axes[1].plot(df.index, df["error_ratio"], label=f"{label}: server-side errors / requests", **dots)
            seen = last_judged(judged_errors, names)
            if seen and seen[1].get("ratio") is not None:
                axes[1].plot([seen[0]], [seen[1]["ratio"]], "o", color=line.get_color(),
                             label=f"{who}: MON-ALERT-1 judged {seen[1]['ratio']:.1%}")
        if "p99_seconds" in df:
            line, = axes[2].plot(df.index, df["p99_seconds"], label=f"{label} p99"
                                 + (" (de-cumulated buckets)" if df.attrs.get("double_cumulated") else ""), **dots)
            seen = last_judged(judged_latency, names)
            if seen and seen[1].get("value_seconds") is not None:
                axes[2].plot([seen[0]], [seen[1]["value_seconds"]], "o", color=line.get_color(),
                             label=f"{who}: MON-ALERT-2 judged {seen[1]['value_seconds']:.3g} s")
        if "mean_seconds" in df:
            axes[2].plot(df.index, df["mean_seconds"], linestyle="--", label=f"{label} mean (_sum/_count)", **dots)
    er, p99 = thresholds.error_rate_ratio, thresholds.p99_latency_seconds
    axes[1].axhline(er.value, color="#8c0b07", linewidth=0.9, linestyle=":",
                    label=f"threshold {er.value:.0%}: {er.source}")
    axes[2].axhline(p99.value, color="#8c0b07", linewidth=0.9, linestyle=":",
                    label=f"threshold {p99.value:g} s: {p99.source}")
    for n, (sec, first, last) in enumerate(traffic):
        for ax in axes:
            ax.axvspan(first, last, color="#999999", alpha=0.15, label=None if ax is not axes[0] else
                       ("the runbook's own traffic" if n == 0 else None))
        axes[0].annotate(sec, (first, 0.02), xycoords=("data", "axes fraction"), fontsize=7, va="bottom", color="#57606a")
    labels = [("requests / s (traffic)", axes[0]), (f"error ratio over {window}\n(as MON-ALERT-1 judges)", axes[1]),
              (f"latency over {window} (s)\n(as MON-ALERT-2 judges)", axes[2])]
    for ylabel, ax in labels:
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    some = next((df for df in frames.values() if not df.empty), None)
    rng = some.attrs.get("rate_range") if some is not None else "?"
    axes[0].set_title(f"Prometheus, last {window}: traffic (rate over {rng}); each later point is the value "
                      f"over the {window} before it", fontsize=9)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def monitoring_plots(section=None, params_path: str | None = None, targets: list[str] | None = None,
                     run_dir=None, save_to=None):
    """Request rate, error ratio and latency (p99 + mean) over `prometheus.window` for every job a target
    names (`prometheus_job`), as one matplotlib figure (a static PNG in the HTML evidence).
    Returns target -> its job's DataFrame; a Prometheus that does not answer is one sentence, no plot."""
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

    async def collect():  # one set of range queries per job, however many targets name it
        distinct = list(dict.fromkeys(jobs.values()))
        of_job = dict(zip(distinct, await asyncio.gather(*(timeseries(prom, job, window) for job in distinct))))
        return {name: of_job[job] for name, job in jobs.items()}

    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # works inside Jupyter's running loop too
            frames = pool.submit(asyncio.run, collect()).result()
    except RunbookError as e:
        say(e.message)
        return {}
    fig = figure(frames, jobs, params.thresholds, section, own_traffic(run_dir, section), window)
    if save_to is not None:
        fig.savefig(save_to, dpi=90)
    plt.show()
    plt.close(fig)
    return frames
