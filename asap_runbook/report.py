"""HTML fragments and pages, rendered from results with jinja2; inline CSS, no script, no CDN."""

from __future__ import annotations

import html
import json
import re
from functools import lru_cache
from importlib import resources
from itertools import groupby
from typing import Any

import jinja2
from markupsafe import Markup

from .results import Result


def _pretty(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, default=str, ensure_ascii=False)


def _md_code(text: str) -> Markup:
    """The checklist's `backticks` as <code>, everything else escaped."""
    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text or "")))


@lru_cache
def env() -> jinja2.Environment:
    e = jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: (resources.files("asap_runbook") / "templates" / name).read_text()),
        autoescape=True, trim_blocks=True, lstrip_blocks=True,
    )
    e.filters["pretty"] = _pretty
    e.filters["md_code"] = _md_code
    e.tests["search"] = lambda value, pattern: pattern in value
    return e


def style() -> str:
    return (resources.files("asap_runbook") / "templates" / "_style.css").read_text()


def findings_html(results: list[Result]) -> str:
    groups = [(k, list(v)) for k, v in groupby(results, key=lambda r: r.subsection)]
    return env().get_template("_findings.html.j2").render(groups=groups)


def status_badge(status: str) -> str:
    return f'<span class="st st-{html.escape(status)}">{html.escape(status)}</span>'
