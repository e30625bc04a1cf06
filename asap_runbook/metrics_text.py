"""Reading a metrics exposition the way a scraper would, and the histogram arithmetic ASAP needs.

asap-protocol 2.5.10 labels `/asap/metrics` as OpenMetrics while the body is classic Prometheus
text, and cumulates `asap_request_duration_seconds` buckets twice (reference §2.1). Everything
here works on plain data so the checks, the plots and the tests share one implementation:

* `parse_exposition` parses with prometheus_client's parser for the format the content type
  *claims* (that is what Prometheus does), and says whether the other parser would have accepted it;
* `histogram_problems` finds finite buckets above `+Inf` and non-monotonic buckets;
* `decumulate` undoes the double cumulation (real cumulative count of finite bucket i is
  scraped[i] - scraped[i-1]); `quantile` interpolates like PromQL's `histogram_quantile`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_classic

OPENMETRICS = "application/openmetrics-text"
CLASSIC = "text/plain"

# prometheus_client's default collectors: present in any Python app, not business metrics
_RUNTIME_PREFIXES = ("process_", "python_", "go_")


@dataclass
class Exposition:
    content_type: str
    claimed_format: str  # "openmetrics" | "prometheus-text" | "unknown"
    families: dict[str, object] = field(default_factory=dict)  # name -> prometheus_client Metric
    error: str | None = None  # parse error under the claimed format
    other_format_ok: bool | None = None  # would the other parser have accepted the body?

    @property
    def ok(self) -> bool:
        return self.error is None

    def samples(self, name: str) -> list:
        """Samples whose *sample* name is `name` (e.g. `asap_requests_total`, `..._bucket`)."""
        return [s for fam in self.families.values() for s in fam.samples if s.name == name]

    def total(self, name: str) -> float:
        return sum(s.value for s in self.samples(name))


def claimed_format(content_type: str) -> str:
    ct = (content_type or "").split(";")[0].strip().lower()
    if ct == OPENMETRICS:
        return "openmetrics"
    if ct in (CLASSIC, ""):
        return "prometheus-text"
    return "unknown"


def _families(parser, text: str) -> dict[str, object]:
    return {fam.name: fam for fam in parser(text)}


def _first_line(e: Exception) -> str:
    text = str(e) or type(e).__name__
    return text.splitlines()[0][:200]


def parse_exposition(text: str, content_type: str) -> Exposition:
    fmt = claimed_format(content_type)
    exp = Exposition(content_type=content_type, claimed_format=fmt)
    primary, other = (parse_openmetrics, parse_classic) if fmt == "openmetrics" else (parse_classic, parse_openmetrics)
    if fmt == "unknown":
        exp.error = f"content type {content_type!r} is neither Prometheus text nor OpenMetrics"
    else:
        try:
            exp.families = _families(primary, text)
        except Exception as e:  # the parsers raise ValueError and friends; any of them means "does not parse"
            exp.error = _first_line(e)
    try:
        fams = _families(other, text)
        exp.other_format_ok = True
        if not exp.families:
            exp.families = fams  # so the caller can still say what the body contains
    except Exception:
        exp.other_format_ok = False
    if fmt == "openmetrics" and exp.error is None and not text.rstrip().endswith("# EOF"):
        exp.error = "body does not end with '# EOF'"
    return exp


def family_names(exp: Exposition) -> set[str]:
    """Family names as a Prometheus user knows them (counters with their `_total`)."""
    names = set()
    for name, fam in exp.families.items():
        names.add(name + "_total" if fam.type == "counter" and not name.endswith("_total") else name)
    return names


def custom_families(exp: Exposition) -> list[str]:
    return sorted(n for n in family_names(exp) if not n.startswith("asap_") and not n.startswith(_RUNTIME_PREFIXES))


# ------------------------------------------------------------------------------------ histograms
def _le(value: str) -> float:
    return math.inf if value in ("+Inf", "Inf", "inf") else float(value)


def histogram_series(exp: Exposition, family: str) -> dict[tuple, list[tuple[float, float]]]:
    """{labels without le: [(le, value), ...] sorted by le} for one histogram family."""
    out: dict[tuple, list[tuple[float, float]]] = {}
    for s in exp.samples(family + "_bucket"):
        key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
        out.setdefault(key, []).append((_le(s.labels["le"]), s.value))
    for buckets in out.values():
        buckets.sort()
    return out


def histogram_problems(buckets: list[tuple[float, float]]) -> list[str]:
    """What is wrong with one series' buckets (sorted by le, +Inf last)."""
    problems = []
    inf = next((v for le, v in buckets if math.isinf(le)), None)
    finite = [(le, v) for le, v in buckets if not math.isinf(le)]
    if inf is None:
        problems.append("no +Inf bucket")
    else:
        above = [(le, v) for le, v in finite if v > inf]
        if above:
            le, v = above[-1]
            problems.append(f"finite bucket le={le:g} = {v:g} is above the +Inf bucket ({inf:g})")
    for (le1, v1), (le2, v2) in zip(buckets, buckets[1:]):
        if v2 < v1:
            problems.append(f"buckets not monotonic: le={le1:g} = {v1:g} > le={le2:g} = {v2:g}")
            break
    return problems


def is_double_cumulated(buckets: list[tuple[float, float]]) -> bool:
    """The asap-protocol 2.5.10 signature: some finite bucket larger than +Inf."""
    inf = next((v for le, v in buckets if math.isinf(le)), None)
    return inf is not None and any(v > inf for le, v in buckets if not math.isinf(le))


def decumulate(buckets: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Undo the double cumulation: real cumulative count of finite bucket i = scraped[i] - scraped[i-1]
    (first bucket as is); +Inf is already right."""
    out, prev = [], 0.0
    for le, v in buckets:
        if math.isinf(le):
            out.append((le, v))
        else:
            out.append((le, v - prev))
            prev = v
    return out


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """PromQL `histogram_quantile` on cumulative buckets (sorted, +Inf last). None without data."""
    if not buckets or not math.isinf(buckets[-1][0]):
        return None
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le  # PromQL returns the highest finite bound
            if le == prev_le:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / max(count - prev_count, 1e-12)
        prev_le, prev_count = le, count
    return prev_le


def prometheus_monotonic(buckets: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """What PromQL's histogram_quantile does to non-monotonic buckets: raise each to the running max
    (so +Inf becomes the largest double-cumulated value)."""
    out, top = [], 0.0
    for le, v in buckets:
        top = max(top, v)
        out.append((le, top))
    return out


def latency_summary(buckets: list[tuple[float, float]], q: float = 0.99, double_cumulated: bool | None = None) -> dict:
    """The q-quantile computed the right way for these buckets, and how it was computed.
    `double_cumulated`: when the buckets are increases over a window, whether the exported counters
    show the bug (judged on their current values); by default judged on `buckets` themselves."""
    broken = is_double_cumulated(buckets) if double_cumulated is None else double_cumulated
    fixed = decumulate(buckets) if broken else buckets
    return {
        "quantile": q,
        "value_seconds": quantile(q, fixed),
        "naive_histogram_quantile_seconds": quantile(q, prometheus_monotonic(buckets)),
        "double_cumulated": broken,
        "method": ("de-cumulated buckets (scraped[i] - scraped[i-1]): this job's buckets are double-cumulated"
                   if broken else "buckets as scraped (this job's buckets are sane: no finite bucket above +Inf)"),
        "observations": buckets[-1][1] if buckets and math.isinf(buckets[-1][0]) else 0,
    }
