"""Timelines drawn from a check's own evidence (no new observation): what was sent when, and
what came back. The rate-limit burst (SEC-RATE-1) records one entry per response in
``details["timeline"]``; drills may add theirs to FIGURES."""

from __future__ import annotations

from .results import Result


def burst_series(timeline: list[dict]) -> dict[str, list]:
    """The plotted series, kept apart from drawing so a test can compare it with the evidence:
    per burst, the response times, their running count, and where the 429s and Retry-After fall."""
    out: dict[str, list] = {"t": [], "n": [], "status": [], "burst": [], "retry_windows": []}
    for n, e in enumerate(timeline, 1):
        out["t"].append(e["t"])
        out["n"].append(n)
        out["status"].append(e["status"])
        out["burst"].append(e["burst"])
    for burst in dict.fromkeys(e["burst"] for e in timeline):
        first = next((e for e in timeline if e["burst"] == burst and e["status"] == 429), None)
        if first is None:
            continue
        try:
            wait = float(first["retry_after"])
        except (TypeError, ValueError):
            wait = None  # a 429 without a numeric Retry-After: marked, no window
        out["retry_windows"].append((burst, first["t"], wait))
    return out


def burst_figure(result: Result):
    """Requests over time in the rate-limit burst: each response a dot (its running count against
    the seconds since the check began), 429s in red, the Retry-After wait shaded after the first 429."""
    import matplotlib.pyplot as plt

    s = burst_series(result.details.get("timeline") or [])
    fig, ax = plt.subplots(figsize=(9, 3.2))
    colours = {True: "#8c0b07", False: "#0b514d"}
    for burst, marker in (("A", "o"), ("B", "s")):
        idx = [i for i, b in enumerate(s["burst"]) if b == burst]
        for is_429 in (False, True):
            pts = [i for i in idx if (s["status"][i] == 429) is is_429]
            if pts:
                name = "429" if is_429 else "other status" if any(s["status"][i] != 200 for i in pts) else "200"
                ax.scatter([s["t"][i] for i in pts], [s["n"][i] for i in pts], marker=marker, s=18,
                           color=colours[is_429], label=f"burst {burst}{' (rotating X-Forwarded-For)' if burst == 'B' else ''}: {name}")
    for burst, t, wait in s["retry_windows"]:
        if wait is None:
            ax.axvline(t, color="#8c0b07", linestyle=":", linewidth=0.9, label=f"burst {burst}: 429 without Retry-After")
        else:
            ax.axvspan(t, t + wait, color="#8c0b07", alpha=0.08, label=f"burst {burst}: Retry-After {wait:g} s")
    ax.set_xlabel("seconds since the check began")
    ax.set_ylabel("responses so far")
    ax.set_title(f"SEC-RATE-1 on {result.target}: {result.status.value}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


FIGURES = {"SEC-RATE-1": burst_figure}


def show_for(results: list[Result]) -> list:
    """Draw the timeline of every result that recorded one (a static PNG in the evidence); return the figures."""
    figs = []
    for r in results:
        draw = FIGURES.get(r.item_id)
        if draw and r.details.get("timeline"):
            import matplotlib.pyplot as plt  # only when there is something to draw: it costs ~1 s per kernel
            fig = draw(r)
            figs.append(fig)
            plt.show()
            plt.close(fig)
    return figs
