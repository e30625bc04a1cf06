"""The pages people triage (issue 15) and their size for fleets (issue 16), opened in headless
Chromium with every non-file request blocked: the summary page's order, every blocking finding
linked to an existing evidence anchor, the section pages' header and order, the contrast of the
status colours, keyboard access to the evidence toggles, and a 1000-target summary page ≤ 2 MB."""

import importlib.util
import re
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from asap_runbook import report
from asap_runbook.results import RunResults, Status

from test_offline_html import CHROMIUM, browser, keep_screenshot, open_offline  # noqa: F401 (fixture)

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed")
REPO = Path(__file__).resolve().parent.parent
SECTIONS = ["security", "monitoring", "scaling", "resilience"]


def _bench_pages():
    spec = importlib.util.spec_from_file_location("bench_pages", REPO / "bench" / "pages.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_pages"] = mod
    spec.loader.exec_module(mod)
    return mod


def _ids(path: Path) -> set[str]:
    return set(re.findall(r'\bid="([^"]+)"', path.read_text()))


def _assert_links_land(page, page_path: Path, selector: str) -> int:
    """Every link under `selector` points at a file of the run that has the anchor; returns how many."""
    hrefs = page.locator(f"{selector} a").evaluate_all("els => els.map(e => e.href)")
    ids: dict[Path, set[str]] = {}
    for href in hrefs:
        url = urlparse(href)
        assert url.scheme == "file" and url.fragment, href
        target = Path(unquote(url.path))
        assert target.is_file(), href
        assert target.resolve().is_relative_to(page_path.parent.resolve()), href
        ids.setdefault(target, _ids(target))
        assert url.fragment in ids[target], f"{href}: no element with that id"
    return len(hrefs)


# -- the demo run (real agents) ------------------------------------------------------------------

def test_summary_page_puts_what_blocks_first_and_links_every_blocking_finding(evidence_run, browser, tmp_path):
    index = evidence_run.run_dir / "index.html"
    run = RunResults.model_validate_json((evidence_run.run_dir / "results.json").read_text())
    context, page, attempted = open_offline(browser, index)
    try:
        assert attempted == [], attempted
        order = page.locator("h1, h2").evaluate_all("els => els.map(e => e.id)")
        assert order[0] == "verdict"
        expected = ["blocking", "unverified", "awaiting", "warnings", "passed", "drift", "matrix", "sections", "targets"]
        assert [i for i in order if i in expected] == expected
        assert order[-1] == "", "the provenance block's heading comes last"
        assert page.locator("#signoff").evaluate("e => !e.nextElementSibling"), "provenance is the page's last block"
        # the first table after the verdict (outside its coverage figures) is what blocks
        first = page.locator("table:not(#coverage table)").first
        assert "blocking" in first.get_attribute("class")
        assert first.locator("thead").inner_text().split() == ["Severity", "Item", "Target", "Finding", "Fix"]
        severities = first.locator("tbody tr td:first-child").all_inner_texts()
        rank = [report.SEVERITY_ORDER[s.strip()] for s in severities]
        assert rank == sorted(rank), f"sorted by severity: {severities}"
        # one link per (blocking finding, target), each to an anchor that exists on a page of the run
        blocking = [r for r in run.results if r.status is Status.FAIL and r.blocking]
        assert blocking, "the demo has blocking failures"
        assert _assert_links_land(page, index, "table.blocking") == len(blocking)
        for r in blocking:
            assert page.locator(f'table.blocking a[href="{r.section}.html#{r.item_id}--{r.target}"]').count() == 1
        # every other link of the lists lands too (could not verify, awaiting, warnings, passes, matrix)
        for sel in ("#unverified + table", "#awaiting + p + table", "#passed + details", "table.matrix"):
            assert _assert_links_land(page, index, sel) > 0, sel
        assert page.locator("#passed + details").get_attribute("open") is None, "passes are collapsed"
        keep_screenshot(page, tmp_path, "pages-demo-index.png")
    finally:
        context.close()


def test_identical_causes_are_collapsed_with_what_would_verify_them(tmp_path):
    """17 errors sharing a recorded cause and 3 skips sharing a summary are two rows per target;
    a lone error keeps its own row; the page says how many checks each row stands for."""
    bench = _bench_pages()
    run = bench.synthetic_run(2)
    results = []
    for n, r in enumerate(run.results):
        if r.target == "agent-0001" and n % 61 < 17:
            r = r.model_copy(update={"status": Status.ERROR, "summary": f"{r.item_id}: cannot connect",
                                     "details": {"cause": "connection refused (127.0.0.1:9)"}})
        elif r.target == "agent-0001" and n % 61 == 17:
            r = r.model_copy(update={"status": Status.ERROR, "summary": "a lone error", "details": {}})
        results.append(r)
    run = run.model_copy(update={"results": results})
    collapsed = {(t, c): ids for t, c, ids in report.not_looked(run.results)}
    assert len(collapsed[("agent-0001", "connection refused (127.0.0.1:9)")]) == 17
    assert collapsed[("agent-0001", "a lone error")] == [results[61 + 17].item_id]
    drills = "active probe not enabled: set targets[].active_probes.drills"
    assert collapsed[("agent-0000", drills)] == collapsed[("agent-0001", drills)]
    bench.render(run, tmp_path)
    page = (tmp_path / "index.html").read_text()
    section = page[page.index('id="unverified"'):page.index('id="awaiting"')]
    assert "17 checks" in section and "connection refused (127.0.0.1:9)" in section
    assert section.count(drills) == 1, "the same skip on both targets is one row"


@pytest.mark.parametrize("section", SECTIONS)
def test_section_page_has_the_run_header_and_failures_first(evidence_run, browser, tmp_path, section):
    path = evidence_run.run_dir / f"{section}.html"
    text = path.read_text()
    assert "--jp-layout-color0" not in text and ".jp-Notebook" in report.style(), "our stylesheet, not JupyterLab's"
    run = RunResults.model_validate_json((evidence_run.run_dir / "results.json").read_text())
    context, page, attempted = open_offline(browser, path)
    try:
        assert attempted == []
        head = page.locator("header.runhead")
        assert head.count() == 1
        said = head.inner_text()
        assert run.run_id in said and run.environment in said and run.readiness in said
        assert head.locator("a").get_attribute("href") == "index.html"
        tables = page.locator("table.rb:has(tr[id])")
        assert tables.count() >= 1
        for i in range(tables.count()):
            statuses = tables.nth(i).locator("tr[id] td:nth-child(3) .st").all_inner_texts()
            ranks = [report.STATUS_ORDER[Status(s)] for s in statuses]
            assert ranks == sorted(ranks), f"{section}: within a subsection failures come first: {statuses}"
        keep_screenshot(page, tmp_path, f"pages-{section}.png")
    finally:
        context.close()


def test_evidence_toggles_open_from_the_keyboard(evidence_run, browser):
    context, page, _ = open_offline(browser, evidence_run.run_dir / "security.html")
    try:
        for _ in range(400):  # Tab through the page until a <summary> has the focus
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.tagName") == "SUMMARY":
                break
        else:
            pytest.fail("no evidence toggle is reachable with Tab")
        assert page.evaluate("document.activeElement.parentElement.open") is False
        page.keyboard.press("Enter")
        assert page.evaluate("document.activeElement.parentElement.open") is True
        assert page.evaluate("document.activeElement.parentElement.querySelector('pre').offsetHeight") > 0
    finally:
        context.close()


def test_demo_run_folder_keeps_evidence_once(evidence_run):
    d = evidence_run.run_dir
    assert not (d / "sections").exists()
    assert not (d / "targets").exists(), "two targets: the evidence stays on the section pages"
    index = (d / "index.html").read_text()
    assert "<details><summary>evidence" not in index, "the summary links to evidence, it does not copy it"
    size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
    print(f"demo run folder: {size / 1e6:.2f} MB ({d})")


# -- contrast ------------------------------------------------------------------------------------

def _luminance(hex_colour: str) -> float:
    h = hex_colour.lstrip("#")
    if len(h) == 3:
        h = "".join(c * 2 for c in h)
    channels = [int(h[i:i + 2], 16) / 255 for i in (0, 2, 4)]
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(fg: str, bg: str) -> float:
    """WCAG 2 contrast ratio."""
    a, b = sorted((_luminance(fg), _luminance(bg)), reverse=True)
    return (a + 0.05) / (b + 0.05)


def test_contrast_formula_tells_good_from_bad():
    assert round(contrast("#000", "#fff"), 1) == 21.0
    assert contrast("#777777", "#ffffff") < 4.5 < contrast("#767676", "#ffffff")


def test_status_colours_meet_wcag_aa():
    css = report.style()
    pairs = {}
    for selector, body in re.findall(r"([^{}]+)\{([^}]*)\}", css):
        bg = re.search(r"background:(#[0-9a-fA-F]{3,6})", body)
        fg = re.search(r"(?<![-\w])color:(#[0-9a-fA-F]{3,6})", body)
        if bg and fg:
            for name in re.findall(r"\.(st-\w+|m[A-Z]|sev-\w+)\b", selector):
                pairs[name] = (fg.group(1), bg.group(1))
    statuses = [s.value for s in Status]
    assert {f"st-{s}" for s in statuses} <= set(pairs), sorted(pairs)
    assert {f"m{report.LETTER[s]}" for s in statuses} <= set(pairs), sorted(pairs)
    for name, (fg, bg) in sorted(pairs.items()):
        ratio = contrast(fg, bg)
        print(f"{name}: {fg} on {bg} = {ratio:.2f}")
        assert ratio >= 4.5, f"{name}: {fg} on {bg} is {ratio:.2f}:1"
    muted = re.search(r"\.muted\{color:(#[0-9a-f]{6})", css).group(1)
    assert contrast(muted, "#ffffff") >= 4.5 and contrast(muted, "#f6f8fa") >= 4.5


# -- fleets: synthetic runs, pure rendering ------------------------------------------------------

@pytest.fixture(scope="module")
def fleet_pages(tmp_path_factory):
    bench = _bench_pages()
    out = {}
    for n in (20, 1000):
        run = bench.synthetic_run(n)
        d = tmp_path_factory.mktemp(f"fleet{n}")
        out[n] = (run, d, bench.render(run, d))
    return out


def test_a_thousand_targets_fit_a_small_summary_page(fleet_pages, browser, tmp_path):
    run, d, figures = fleet_pages[1000]
    print(f"1000 targets x 61 items: index.html {figures['index_bytes'] / 1e6:.2f} MB, "
          f"largest target page {figures['largest_target_page_bytes'] / 1e3:.0f} kB")
    assert figures["index_bytes"] <= 2_000_000
    assert figures["target_pages"] == 1000
    index = (d / "index.html").read_text()
    assert "<pre" not in index, "no evidence on the summary page"
    # the matrix is whole: one cell per (item, target)
    matrix = index[index.index('id="matrix"'):index.index('id="sections"')]
    assert matrix.count("<td") == 61 * 1000 + 1000  # the cells and the readiness row
    context, page, attempted = open_offline(browser, d / "index.html", timeout_ms=300_000)  # a wait, not a bound
    try:
        assert attempted == []
        first = page.locator("table:not(#coverage table)").first
        assert "blocking" in first.get_attribute("class")
        assert _assert_links_land(page, d / "index.html", "table.blocking") > 0
        assert page.locator("table.blocking tbody tr").count() <= report.MAX_ROWS
        more = page.locator("table.blocking a[href='#targets']")
        assert more.count() > 0, "long target lists end in 'and N more'"
        keep_screenshot(page, tmp_path, "pages-fleet-1000-index.png")
    finally:
        context.close()


def test_each_target_page_holds_only_its_own_evidence(fleet_pages):
    run, d, _ = fleet_pages[1000]
    for t in ("agent-0000", "agent-0999"):
        text = (d / "targets" / f"{t}.html").read_text()
        rows = re.findall(r'<tr id="[\w.-]+--([\w.-]+)">', text)
        assert len(rows) == 61 and set(rows) == {t}
        assert text.count("<details>") == 61
        assert 'href="../index.html"' in text


def test_a_fleets_section_findings_link_to_target_pages_instead_of_embedding_evidence(fleet_pages):
    run, _, _ = fleet_pages[20]
    security = [r for r in run.results if r.section == "security"]
    html = report.findings_html(security)
    assert "<summary>evidence" not in html and "<pre" not in html
    assert 'href="targets/agent-0003.html#SEC-TLS-1--agent-0003"' in html
    small = [r for r in security if r.target in ("agent-0000", "agent-0001")]
    assert report.findings_html(small).count("<details>") == len(small), "a small run keeps evidence inline"


def test_a_fleets_section_page_has_one_row_per_finding_its_targets_share():
    """Targets that show an item the same way (status, finding, fix) are one row naming them, each a link
    to its evidence and the anchor the junit and summary links use; not a row per target repeating the fix."""
    run = _bench_pages().synthetic_run(200)
    security = [r for r in run.results if r.section == "security"]
    html = report.findings_html(security)
    distinct = {(r.item_id, r.status, r.summary.replace(r.target, "<target>"), r.remediation) for r in security}
    assert html.count("<tr>") - html.count("<thead><tr>") == len(distinct) < len(security) / 4
    for r in security:  # every (item, target) keeps its anchor and its link
        assert f'<a id="{r.item_id}--{r.target}" href="targets/{r.target}.html#{r.item_id}--{r.target}">' in html
    passed = [r for r in security if r.item_id == "SEC-AUTH-1" and r.status == Status.PASS]
    assert len(passed) > report.MAX_TARGETS_PER_ROW and f"<details><summary>{len(passed)} targets</summary>" in html
    fix = str(report._md_code(next(r.remediation for r in security if r.remediation and r.item_id == "SEC-TLS-1")))
    tls_fails = {r.summary for r in security if r.item_id == "SEC-TLS-1" and r.status == Status.FAIL}
    assert html.count(fix) == len(tls_fails), "the fix once per distinct finding"


def test_a_finding_that_names_its_target_is_one_row_for_the_targets_it_holds_on():
    run = _bench_pages().synthetic_run(12)
    one = [r for r in run.results if r.item_id == "SEC-AUTH-1"]
    for r in one:
        r.status, r.summary, r.remediation = Status.SKIP, f"targets[{r.target}].token_env is not set", None
    one[0].summary = "no manifest: agent-0000 is down"  # its own finding
    html = report.findings_html(one)
    assert "<summary>11 targets</summary>" in html and html.count("targets[&lt;target&gt;].token_env is not set") == 1
    assert "no manifest: agent-0000 is down" in html, "a row of one target shows its finding as it is"
    assert report._generic("agent-0001 and agent-00012 differ", "agent-0001") == "<target> and agent-00012 differ"


def test_twenty_target_summary_page_screenshot(fleet_pages, browser, tmp_path):
    run, d, figures = fleet_pages[20]
    context, page, attempted = open_offline(browser, d / "index.html")
    try:
        assert attempted == []
        assert _assert_links_land(page, d / "index.html", "table.blocking") > 0
        # a fleet's coverage is per group, not one row per target
        rows = page.locator("#coverage tbody tr").all_text_contents()
        assert rows[0].startswith("all targets") and any(r.startswith("kind: no-tls") for r in rows)
        keep_screenshot(page, tmp_path, "pages-fleet-20-index.png")
        page.locator("#matrix").scroll_into_view_if_needed()
        keep_screenshot(page, tmp_path, "pages-fleet-20-matrix.png")
    finally:
        context.close()
