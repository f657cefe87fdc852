"""Open every chapter of the built book in headless Chromium, offline, the way a reader would.

Run after `bash scripts/build_book.sh` (scripts/test.sh does): serves _build/html on localhost and,
for each page of _toc.yml, checks that the page logs no console error, requests nothing outside
localhost (the book must work offline: its JavaScript is vendored), renders every Altair chart
(vega-embed put an <svg> or <canvas> in it), renders its embedded widgets, and has an "Open in
Colab" link to its own notebook. A full-page screenshot of each chapter goes to _build/screenshots/.

Uses Debian's chromium (/usr/bin/chromium, or $CHROMIUM) through Playwright's Python API; never
`playwright install`. Without chromium or without a built book the tests are skipped, except in CI
(`CI` set, as .ci/run does), where they fail.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
IN_CI = bool(os.environ.get("CI"))
RENDER_TIMEOUT_MS = 20_000


def toc_pages(toc: Path = ROOT / "_toc.yml") -> list[str]:
    """Every page of the table of contents, root first, in reading order."""
    data = yaml.safe_load(toc.read_text())
    pages = [data["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                pages.append(node["file"])
            for key in ("parts", "chapters", "sections"):
                walk(node.get(key, []))
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(data)
    return pages


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def server():
    """The built HTML on an ephemeral localhost port."""
    if not (HTML / "index.html").is_file():
        _unavailable(f"{HTML} is not built: run `bash scripts/build_book.sh --no-install` first")
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output to the failures
        pass


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        _unavailable(f"chromium not found at {CHROMIUM}: apt-get install -y chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


def visit(browser, url: str, screenshot: Path | None = None) -> dict:
    """Load ``url`` offline and report what a reader would notice, once everything has rendered."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    external: list[str] = []
    page.on("console", lambda msg: errors.append(f"console.{msg.type}: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url} ({req.failure})"))

    def offline(route):
        if urlparse(route.request.url).hostname in {"127.0.0.1", "localhost"} or route.request.url.startswith("data:"):
            route.continue_()
        else:
            external.append(route.request.url)
            route.abort()

    page.route("**/*", offline)
    try:
        page.goto(url, wait_until="networkidle")
        charts = page.locator("div[id^='altair-viz']")
        n_charts = charts.count()
        for i in range(n_charts):  # vega-embed replaces the div's content with an svg or canvas
            charts.nth(i).locator("svg, canvas").first.wait_for(state="attached", timeout=RENDER_TIMEOUT_MS)
        n_widget_views = page.locator("script[type='application/vnd.jupyter.widget-view+json']").count()
        if n_widget_views:  # the html-manager renders each view next to its script tag
            page.locator(".jupyter-widgets").first.wait_for(state="attached", timeout=RENDER_TIMEOUT_MS)
        page.wait_for_load_state("networkidle")
        report = {
            "errors": errors,
            "external": external,
            "charts": n_charts,
            "rendered_charts": page.locator("div[id^='altair-viz'] :is(svg, canvas)").count(),
            "widget_views": n_widget_views,
            "rendered_widgets": page.locator(".jupyter-widgets").count(),
            "widget_notes": page.locator(".widget-static-note").count(),
            "colab_links": [a.get_attribute("href") for a in page.locator("a[href*='colab.research.google.com']").all()],
            "title": page.title(),
        }
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        return report
    finally:
        page.close()


@pytest.mark.parametrize("entry", toc_pages())
def test_chapter_page_renders_offline_with_charts_and_colab_button(entry, server, browser):
    html = HTML / f"{entry}.html"
    if not html.is_file():
        _unavailable(f"{html.relative_to(ROOT)} not built (is book/{Path(entry).name}.ipynb missing?)")
    name = Path(entry).name
    report = visit(browser, f"{server}/{entry}.html", SCREENSHOTS / f"{name}.png")

    assert report["errors"] == [], "\n".join(report["errors"])
    assert report["external"] == [], f"requests outside localhost (not vendored?): {report['external']}"
    assert report["rendered_charts"] >= report["charts"], report
    if report["widget_views"]:
        assert report["rendered_widgets"] > 0, f"{report['widget_views']} widget views, none rendered"
        assert report["widget_notes"] == report["widget_views"], "each frozen widget must say it needs a kernel"
    assert any(link.endswith(f"/{entry}.ipynb") for link in report["colab_links"]), (
        f"no 'Open in Colab' link to {entry}.ipynb among {report['colab_links']}")


def test_a_page_with_a_console_error_is_caught(tmp_path, browser):
    """The checks above would pass vacuously if console errors were not being collected."""
    (tmp_path / "bad.html").write_text("<html><body><script>throw new Error('boom')</script>"
                                       "<script>console.error('logged')</script></body></html>")
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        report = visit(browser, f"http://127.0.0.1:{httpd.server_address[1]}/bad.html")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert any("boom" in e for e in report["errors"]) and any("logged" in e for e in report["errors"])
