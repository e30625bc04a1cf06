"""Just enough PromQL to say what a rule reads: its vector selectors (metric name + label matchers).

Used to decide, from the rules Prometheus has *loaded*, which rule covers which agent job: by
what the expression selects, never by the rule's name. Not a full parser: it tokenises the
expression, skips strings, durations, function names, keywords and the label lists of
`by`/`without`/`on`/`ignoring`/`group_left`/`group_right`, and keeps every remaining
identifier (with its `{...}` matchers) as a selector. Recording rules are expanded, so an alert
on `asap:foo:rate5m` reads whatever the rule recording `asap:foo:rate5m` reads.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
             "bool", "offset", "atan2", "inf", "nan", "start", "end"}
_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                 "bottomk", "topk", "quantile"}
_LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_TOKEN = re.compile(
    r"""(?P<ws>\s+)|(?P<comment>\#[^\n]*)|(?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)"""
    r"""|(?P<range>\[[^\]]*\])|(?P<matchers>\{)|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)"""
    r"""|(?P<number>[0-9.]+(?:[eE][+-]?[0-9]+)?[smhdwy]?)|(?P<op>.)""",
    re.S,
)
_MATCHER = re.compile(r"""\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)\s*,?""")


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str  # = != =~ !~
    value: str

    def matches(self, value: str) -> bool:
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        try:
            hit = re.fullmatch(self.value, value) is not None  # PromQL regexes are fully anchored
        except re.error:
            hit = False
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        return f'{self.label}{self.op}"{self.value}"'


@dataclass(frozen=True)
class Selector:
    metric: str | None
    matchers: tuple[Matcher, ...] = ()
    via: tuple[str, ...] = field(default=(), compare=False)  # recording rules it was reached through

    def selects(self, labels: dict[str, str]) -> bool:
        """Would this selector select a series with these labels (labels it does not constrain are free)?"""
        for m in self.matchers:
            if m.label == "__name__":
                continue
            if m.label in labels and not m.matches(labels[m.label]):
                return False
            if m.label not in labels and not m.matches(""):
                # a label the caller did not give: only a matcher that demands a value can exclude it
                continue
        return True

    def __str__(self) -> str:
        inner = ", ".join(str(m) for m in self.matchers if m.label != "__name__")
        return f"{self.metric or ''}{{{inner}}}" if inner or not self.metric else self.metric


def _unquote(s: str) -> str:
    if s[0] == "`":
        return s[1:-1]
    return bytes(s[1:-1], "utf-8").decode("unicode_escape")


def _matchers(text: str, pos: int) -> tuple[tuple[Matcher, ...], int]:
    out, i = [], pos
    while True:
        while i < len(text) and text[i] in " \t\n,":
            i += 1
        if i < len(text) and text[i] == "}":
            return tuple(out), i + 1
        m = _MATCHER.match(text, i)
        if not m:
            raise ValueError(f"cannot read label matchers at {text[i:i + 30]!r}")
        out.append(Matcher(m.group(1), m.group(2), _unquote(m.group(3))))
        i = m.end()


def selectors(expr: str) -> list[Selector]:
    """The vector selectors an expression reads, in order."""
    return list(_selectors(expr))


@functools.lru_cache(maxsize=4096)
def _selectors(expr: str) -> tuple[Selector, ...]:
    """Pure and asked again for every rule by every alerting check of every target: parsed once
    per expression (Selector is frozen, so sharing one is safe)."""
    out: list[Selector] = []
    pos = 0
    tokens = []
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        kind = m.lastgroup
        if kind == "matchers":
            matchers, pos = _matchers(expr, m.end())
            tokens.append(("matchers", matchers))
            continue
        pos = m.end()
        if kind in ("ws", "comment"):
            continue
        tokens.append((kind, m.group(kind)))
    i = 0
    while i < len(tokens):
        kind, value = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else (None, None)
        if kind == "ident" and value in _LABEL_LIST_KEYWORDS:
            # by (a, b) / on (job) / group_left (x): a list of label names, not metrics
            if nxt == ("op", "("):
                j = i + 2
                while j < len(tokens) and tokens[j] != ("op", ")"):
                    j += 1
                i = j + 1
                continue
            i += 1
            continue
        if kind == "ident" and value.lower() not in _KEYWORDS:
            if nxt == ("op", "(") or (value in _AGGREGATIONS and nxt[0] == "ident"
                                      and nxt[1] in ("by", "without")):  # a function or aggregation
                i += 1
                continue
            matchers = nxt[1] if nxt[0] == "matchers" else ()
            out.append(Selector(value, matchers))
            i += 2 if nxt[0] == "matchers" else 1
            continue
        if kind == "matchers":  # {__name__="x", ...} with no metric name in front
            name = next((m.value for m in value if m.label == "__name__" and m.op == "="), None)
            out.append(Selector(name, value))
        i += 1
    return tuple(out)


def expand(expr: str, recorded: dict[str, str], _seen: tuple[str, ...] = ()) -> list[Selector]:
    """Selectors of `expr`, with recorded series replaced by what their recording rule reads."""
    out = []
    for sel in selectors(expr):
        if sel.metric in recorded and sel.metric not in _seen:
            for inner in expand(recorded[sel.metric], recorded, _seen + (sel.metric,)):
                out.append(Selector(inner.metric, inner.matchers + sel.matchers, (sel.metric,) + inner.via))
        else:
            out.append(Selector(sel.metric, sel.matchers, sel.via))
    return out


def uses_histogram_quantile_on(expr: str, recorded: dict[str, str], metric: str) -> bool:
    """Does the expression (or a rule it reads) apply histogram_quantile to `metric`?"""
    exprs = [expr] + [recorded[s.metric] for s in selectors(expr) if s.metric in recorded]
    return any("histogram_quantile" in e and any(s.metric == metric for s in selectors(e)) for e in exprs)
