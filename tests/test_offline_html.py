"""Every HTML page of a run renders completely with no network (nbconvert #754/#763): opened in
headless Chromium with every non-file request blocked, none is attempted."""

import re
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = Path("/work/screenshots")

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed (scripts/bootstrap --test)")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def open_offline(browser, page_path: Path, timeout_ms: float = 30_000):
    """Open a page with everything but file:// blocked; return (page, attempted non-file requests).
    `timeout_ms`: how long to wait for it to load (a 1000-target page on a loaded 2-core machine)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    attempted = []

    def guard(route):
        if route.request.url.startswith(("file://", "data:")):
            route.continue_()
        else:
            attempted.append(route.request.url)
            route.abort()
    page.route("**/*", guard)
    page.on("requestfailed", lambda r: None if r.url.startswith("file://") else attempted.append(r.url))
    page.set_default_timeout(timeout_ms)
    page.goto(page_path.as_uri(), wait_until="load")
    page.wait_for_load_state("networkidle")
    return context, page, attempted


def keep_screenshot(page, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=False)
    print(f"screenshot: {shot}")
    if SCREENSHOTS.parent.is_dir():  # also outside the test's tmp dir, so it survives the session
        SCREENSHOTS.mkdir(exist_ok=True)
        (SCREENSHOTS / name).write_bytes(shot.read_bytes())
        print(f"screenshot kept: {SCREENSHOTS / name}")
    return shot


def test_no_page_references_a_network_resource(evidence_run):
    """The static half: no <script src>, <link href> or CSS url() pointing off the file."""
    for page in evidence_run.run_dir.glob("*.html"):
        text = page.read_text()
        assert not re.search(r"<script[^>]+src=", text), page.name
        assert not re.search(r"<link[^>]+href=[\"']https?:", text), page.name
        assert not re.search(r"url\([\"']?(https?:)?//", text), page.name
        assert not re.search(r"@import", text), page.name
        assert "<script" not in text, f"{page.name}: no script at all"


def test_summary_page_renders_offline(evidence_run, browser, tmp_path):
    context, page, attempted = open_offline(browser, evidence_run.run_dir / "index.html")
    try:
        assert attempted == [], f"network requests attempted: {attempted}"
        assert page.locator("#signoff").is_visible()
        assert page.locator("#signoff").inner_text().count("Run id") == 1
        assert page.locator("table.rb").first.is_visible()
        assert page.locator("#waivers + table").get_by_text("OPS-1234").is_visible()
        assert page.locator("#confirmations + table").get_by_text("Alice Operator").is_visible()
        keep_screenshot(page, tmp_path, "offline-index.png")
    finally:
        context.close()
    # evidence on demand, on the section page: closed <details> until clicked
    context, page, attempted = open_offline(browser, evidence_run.run_dir / "security.html")
    try:
        assert attempted == []
        assert page.locator("tr#SEC-TLS-4--misconfigured .st-waived").is_visible()
        details = page.locator("tr#SEC-TLS-4--hardened details")
        assert details.count() == 1 and details.get_attribute("open") is None
        pre = details.locator("pre").first
        assert not pre.is_visible()
        details.locator("summary").click()
        assert pre.is_visible()
        keep_screenshot(page, tmp_path, "offline-security-evidence-open.png")
    finally:
        context.close()


@pytest.mark.parametrize("section", ["security", "monitoring", "scaling", "resilience"])
def test_section_page_renders_offline_with_code_hidden(evidence_run, browser, tmp_path, section):
    context, page, attempted = open_offline(browser, evidence_run.run_dir / f"{section}.html")
    try:
        assert attempted == [], f"network requests attempted: {attempted}"
        assert page.locator("table.rb").first.is_visible(), "the section's results table"
        assert page.locator(".jp-CodeCell .jp-InputArea").count() == 0, "code is hidden"
        assert page.locator(".jp-MarkdownCell").first.is_visible(), "the prose stays"
        assert "import asap_runbook" not in page.content()
        assert page.locator("details").first.count() == 1
        keep_screenshot(page, tmp_path, f"offline-{section}.png")
    finally:
        context.close()


def test_the_guard_sees_a_cdn_reference(browser, tmp_path):
    """The guard itself can fail: a page that loads a script and a font from a CDN is caught."""
    page_path = tmp_path / "bad.html"
    page_path.write_text('<html><head><script src="https://cdn.jsdelivr.net/npm/x.js"></script>'
                         '<style>@font-face{font-family:x;src:url(https://fonts.example/x.woff2)}body{font-family:x}</style>'
                         '</head><body>text</body></html>')
    context, page, attempted = open_offline(browser, page_path)
    context.close()
    assert any("cdn.jsdelivr.net" in u for u in attempted), attempted
