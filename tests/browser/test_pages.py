"""Open every chapter of the built book in headless Chromium, offline, the way a reader would.

Run after `bash scripts/build_book.sh` (scripts/test.sh does): serves _build/html on localhost and,
for each page of _toc.yml, at a desktop width (1280 px) and a phone width (420 px), checks that

* the page logs no console error and requests nothing outside localhost (the book works offline:
  its JavaScript is vendored), every Altair chart is drawn (vega-embed put an <svg> or <canvas> in
  it) and every embedded widget is rendered, with its "needs a kernel" note;
* at 1280 px every chart and every table fits the article column (about 688 px): a wider one has
  its legend, last panels or paper columns cut off or hidden behind a scroll bar; the failure names
  the page, the element (its title or columns, and its section) and its width;
* at 420 px nothing makes the page scroll sideways, and no paragraph, list item or heading runs
  past its box (code blocks and tables may scroll inside themselves);
* the page has an "Open in Colab" link to its own notebook when the repository URL of _config.yml
  is real, and no Colab or repository link but the note saying how to turn them on while it is the
  placeholder (scripts/book_assets.py);

and, from the built files and the notebooks themselves: no link points at a placeholder (the
repository placeholder ``github.com/OWNER``, any ``OWNER``, or a file name auto-linked as a web site
such as ``http://paper.md``), every link inside the book (relative, anchors included) leads to a
built file and an element with that id, and no rendered code line is longer than 100 characters.

Full-page screenshots of each page at both widths go to _build/screenshots/ (NAME-1280.png,
NAME-420.png). The self-tests at the end build small pages with each defect and check that it is
caught, so the checks above cannot pass vacuously.

Uses Debian's chromium (/usr/bin/chromium, or $CHROMIUM) through Playwright's Python API; never
`playwright install`. Without chromium or without a built book the tests are skipped, except in CI
(`CI` set, as .ci/run does), where they fail.
"""

from __future__ import annotations

import functools
import html.parser
import http.server
import os
import re
import shutil
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
IN_CI = bool(os.environ.get("CI"))
RENDER_TIMEOUT_MS = 20_000

WIDE, NARROW = 1280, 420          # viewport widths: a desktop browser, a phone
SLACK_PX = 1                      # sub-pixel rounding
MAX_CODE_LINE = 100               # characters per line of code a reader sees
REPO_NOTE_SELECTOR = ".repo-url-note"  # scripts/book_assets.py's note while the URL is the placeholder
#: Hosts that are file names auto-linked as web sites (".md" is Moldova's domain, ".py" Paraguay's).
FILE_NAME_HOST = re.compile(r"\.(md|py|ipynb|json|ya?ml|txt|csv|pt)$", re.IGNORECASE)

sys.path.insert(0, str(ROOT / "src"))
from entity_tracking.colab import PLACEHOLDER_OWNER, is_placeholder, repo_url_from_config  # noqa: E402


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


def repository_is_placeholder() -> bool:
    return is_placeholder(repo_url_from_config(ROOT / "_config.yml"))


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


def _built(entry: str) -> Path:
    html = HTML / f"{entry}.html"
    if not html.is_file():
        _unavailable(f"{html.relative_to(ROOT)} not built: run `bash scripts/build_book.sh --no-install` "
                     f"(is book/{Path(entry).name}.ipynb missing?)")
    return html


# --- serving and visiting ---------------------------------------------------------------------------

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output to the failures
        pass


class _Server:
    """A folder on an ephemeral localhost port."""

    def __init__(self, folder: Path):
        handler = functools.partial(_QuietHandler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server():
    """The built HTML on an ephemeral localhost port."""
    if not (HTML / "index.html").is_file():
        _unavailable(f"{HTML} is not built: run `bash scripts/build_book.sh --no-install` first")
    served = _Server(HTML)
    yield served.url
    served.close()


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


# What a reader would see, measured in the page once everything has rendered. The article column is
# the content box of sphinx-book-theme's <article class="bd-article"> (688 px at 1280 px).
MEASURE_JS = r"""
(slack) => {
  const article = document.querySelector('article.bd-article') || document.querySelector('main')
                  || document.body;
  const style = getComputedStyle(article);
  const column = article.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
  const short = (text, n) => {
    text = (text || '').replace(/\s+/g, ' ').trim();
    return text.length > n ? text.slice(0, n - 1) + '…' : text;
  };
  const section = (el) => {
    const s = el.closest('section');
    const h = s && s.querySelector('h1, h2, h3, h4');
    return h ? short(h.textContent.replace(/#$/, ''), 60) : '(top of page)';
  };
  const chartName = (el) => {
    const svg = el.querySelector('svg');
    const title = el.querySelector('.role-title-text, .role-title text, text.role-title-text');
    const label = (title && title.textContent) || (svg && svg.getAttribute('aria-label')) || el.id || '';
    return short(label, 70);
  };
  const tableName = (t) => {
    const texts = (row) => [...row.children].map(c => short(c.textContent, 24)).filter(Boolean);
    const rows = [...t.querySelectorAll('thead tr')];  // the header row that names the most columns
    const head = rows.length ? rows.reduce((a, b) => texts(b).length > texts(a).length ? b : a)
                             : t.querySelector('tr');
    const cells = head ? texts(head) : [];
    const caption = t.querySelector('caption');
    return (caption ? short(caption.textContent, 40) + ' ' : '') + 'columns: ' + short(cells.join(' | '), 90);
  };
  const wide = [];
  const seen = new Set();
  for (const el of article.querySelectorAll('.vega-embed, div[id^="altair-viz"]')) {
    const chart = el.closest('.vega-embed') || el;
    if (seen.has(chart)) continue;
    seen.add(chart);
    const inner = [...chart.querySelectorAll('svg.marks, canvas.marks, svg, canvas')];
    const w = Math.max(chart.getBoundingClientRect().width,
                       ...inner.map(e => e.getBoundingClientRect().width), 0);
    if (w > column + slack) {
      wide.push({kind: 'chart', name: chartName(chart), section: section(chart), width: Math.round(w)});
    }
  }
  for (const t of article.querySelectorAll('table')) {
    if (t.closest('.vega-embed, .vg-tooltip')) continue;
    const w = Math.max(t.getBoundingClientRect().width, t.scrollWidth);
    if (w > column + slack) {
      wide.push({kind: 'table', name: tableName(t), section: section(t), width: Math.round(w)});
    }
  }
  // Text that runs past the viewport or past its own box (long unbreakable words).
  const viewport = document.documentElement.clientWidth;
  const overflowing = [];
  for (const el of document.querySelectorAll('article p, article li, article h1, article h2, article h3, '
                                             + 'article h4, article dt, article dd, article figcaption')) {
    if (el.closest('pre, table, .vega-embed, .highlight, .jupyter-widgets')) continue;
    const r = el.getBoundingClientRect();
    if (r.width === 0) continue;  // hidden (a collapsed cell)
    const past_viewport = r.right > viewport + slack;
    const past_box = el.scrollWidth > el.clientWidth + slack;
    if (past_viewport || past_box) {
      overflowing.push({element: el.tagName.toLowerCase(), text: short(el.textContent, 70),
                        section: section(el), right: Math.round(Math.max(r.right, r.left + el.scrollWidth)),
                        width: Math.round(Math.max(r.width, el.scrollWidth))});
    }
  }
  return {column: column, wide: wide, overflowing: overflowing, viewport: viewport,
          document_width: document.documentElement.scrollWidth};
}
"""


def visit(browser, url: str, width: int = WIDE, screenshot: Path | None = None) -> dict:
    """Load ``url`` offline at ``width`` px and report what a reader would notice, once everything
    has rendered."""
    page = browser.new_page(viewport={"width": width, "height": 900})
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
            "repository_notes": page.locator(REPO_NOTE_SELECTOR).count(),
            "title": page.title(),
            **page.evaluate(MEASURE_JS, SLACK_PX),
        }
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        return report
    finally:
        page.close()


_REPORTS: dict[tuple[str, int], dict] = {}


def report_of(browser, server: str, entry: str, width: int) -> dict:
    """One visit per page and width, shared by the tests below (and its screenshot taken)."""
    if (entry, width) not in _REPORTS:
        _built(entry)
        _REPORTS[entry, width] = visit(browser, f"{server}/{entry}.html", width,
                                       SCREENSHOTS / f"{Path(entry).name}-{width}.png")
    return _REPORTS[entry, width]


# --- what is checked --------------------------------------------------------------------------------

def too_wide(report: dict) -> list[str]:
    """The charts and tables wider than the article column, one line each."""
    return [f"{w['kind']} '{w['name']}' (section '{w['section']}'): {w['width']} px > {report['column']:.0f} px column"
            for w in report["wide"]]


def sideways_scrolling(report: dict) -> list[str]:
    """What makes a narrow page scroll sideways or spill text: one line each."""
    problems = []
    if report["document_width"] > report["viewport"] + SLACK_PX:
        problems.append(f"the page is {report['document_width']} px wide in a {report['viewport']} px viewport")
    problems += [f"<{o['element']}> '{o['text']}' (section '{o['section']}'): {o['width']} px, right edge at "
                 f"{o['right']} px" for o in report["overflowing"]]
    return problems


class _Links(html.parser.HTMLParser):
    """Every link target (a href, img src) and every id of one HTML file."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("id", "name") if tag == "a" else ("id",):
            if attrs.get(name):
                self.ids.add(attrs[name])
        if tag == "a" and attrs.get("href") is not None:
            self.links.append(attrs["href"])
        if tag == "img" and attrs.get("src"):
            self.links.append(attrs["src"])


@functools.lru_cache(maxsize=None)
def parsed(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return parser


def placeholder_link(href: str) -> str | None:
    """Why ``href`` is a dead placeholder link, or None."""
    parsed_url = urlparse(href)
    host = (parsed_url.hostname or "").lower()
    if PLACEHOLDER_OWNER in href:
        return f"placeholder '{PLACEHOLDER_OWNER}' in the link"
    if parsed_url.scheme in {"http", "https"} and FILE_NAME_HOST.search(host):
        return f"a file name auto-linked as the web site {host}"
    return None


def broken_links(page: Path, root: Path = HTML) -> list[str]:
    """Links of a built page that lead nowhere: placeholders, and links inside the book to a file that
    was not built or to an anchor that the target page lacks."""
    problems = []
    base = "http://book.invalid/" + page.relative_to(root).as_posix()
    for href in dict.fromkeys(parsed(page).links):
        why = placeholder_link(href)
        if why:
            problems.append(f"{href}: {why}")
            continue
        url = urlparse(urljoin(base, href))
        if url.scheme not in {"http", "https"} or url.hostname != "book.invalid":
            continue  # an external page, mailto:, data: ... (not checked offline)
        target = root / unquote(url.path).lstrip("/")
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            problems.append(f"{href}: no file {target.relative_to(root).as_posix()} in the built book")
            continue
        anchor = unquote(url.fragment)
        if anchor and target.suffix == ".html" and anchor not in parsed(target).ids:
            problems.append(f"{href}: {target.relative_to(root).as_posix()} has no element with id '{anchor}'")
    return problems


def long_code_lines(notebook: Path, limit: int = MAX_CODE_LINE) -> list[str]:
    """Code lines a reader sees (every code cell but the removed ones) longer than ``limit``."""
    nb = nbformat.read(notebook, as_version=4)
    long = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or {"remove-cell", "remove-input"} & set(cell.metadata.get("tags", [])):
            continue
        for n, line in enumerate(cell.source.splitlines(), 1):
            if len(line) > limit:
                long.append(f"cell {i} line {n} ({len(line)} chars): {line[:60]}…")
    return long


# --- the book's pages -------------------------------------------------------------------------------

PAGES = toc_pages()


@pytest.mark.parametrize("entry", PAGES)
def test_page_renders_offline_with_charts_widgets_and_colab_button(entry, server, browser):
    report = report_of(browser, server, entry, WIDE)
    assert report["errors"] == [], "\n".join(report["errors"])
    assert report["external"] == [], f"requests outside localhost (not vendored?): {report['external']}"
    assert report["rendered_charts"] >= report["charts"], report
    if report["widget_views"]:
        assert report["rendered_widgets"] > 0, f"{report['widget_views']} widget views, none rendered"
        assert report["widget_notes"] == report["widget_views"], "each frozen widget must say it needs a kernel"
    if repository_is_placeholder():
        assert report["colab_links"] == [], f"Colab links to a repository that does not exist: {report['colab_links']}"
        assert report["repository_notes"] == 1, "the page must say how to turn the Colab button on (set_repo_url.py)"
    elif (ROOT / f"{entry}.ipynb").is_file():
        assert any(link.endswith(f"/{entry}.ipynb") for link in report["colab_links"]), (
            f"no 'Open in Colab' link to {entry}.ipynb among {report['colab_links']}")
        assert report["repository_notes"] == 0


@pytest.mark.parametrize("entry", PAGES)
def test_charts_and_tables_fit_the_article_column_at_1280px(entry, server, browser):
    report = report_of(browser, server, entry, WIDE)
    assert 600 <= report["column"] <= 760, f"article column measured {report['column']} px: theme changed?"
    problems = too_wide(report)
    assert not problems, f"{entry}: wider than the article column at {WIDE} px:\n" + "\n".join(problems)


@pytest.mark.parametrize("entry", PAGES)
def test_text_does_not_scroll_sideways_at_420px(entry, server, browser):
    problems = sideways_scrolling(report_of(browser, server, entry, NARROW))
    assert not problems, f"{entry} at {NARROW} px:\n" + "\n".join(problems)


@pytest.mark.parametrize("entry", PAGES)
def test_page_links_lead_somewhere(entry):
    problems = broken_links(_built(entry))
    assert not problems, f"{entry}: dead links:\n" + "\n".join(problems)


def test_no_page_of_the_book_links_a_placeholder():
    """Every built page, not only the chapters (index, search, genindex, the API page...)."""
    if not (HTML / "index.html").is_file():
        _unavailable(f"{HTML} is not built")
    problems = [f"{page.relative_to(HTML)}: {href}: {why}" for page in sorted(HTML.rglob("*.html"))
                if "_static" not in page.parts for href in parsed(page).links if (why := placeholder_link(href))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("entry", [e for e in PAGES if (ROOT / f"{e}.ipynb").is_file()])
def test_rendered_code_lines_are_at_most_100_characters(entry):
    long = long_code_lines(ROOT / f"{entry}.ipynb")
    assert not long, f"{entry}.ipynb: code lines over {MAX_CODE_LINE} characters:\n" + "\n".join(long)


# --- the checks catch what they are meant to --------------------------------------------------------

def _page(body: str, head: str = "") -> str:
    """A page laid out like the book's: an article column of 688 px."""
    return ("<html><head><meta name='viewport' content='width=device-width'>" + head + "</head><body>"
            "<main id='main-content'><article class='bd-article' style='width:752px;max-width:100%;"
            "padding:0 32px;box-sizing:border-box'>" + body + "</article></main></body></html>")


@pytest.fixture()
def served(tmp_path):
    server = _Server(tmp_path)
    yield tmp_path, server.url
    server.close()


def test_a_page_with_a_console_error_is_caught(served, browser):
    """The checks above would pass vacuously if console errors were not being collected."""
    folder, url = served
    (folder / "bad.html").write_text("<html><body><script>throw new Error('boom')</script>"
                                     "<script>console.error('logged')</script></body></html>")
    report = visit(browser, f"{url}/bad.html")
    assert any("boom" in e for e in report["errors"]) and any("logged" in e for e in report["errors"])


def test_a_chart_or_table_wider_than_the_column_is_caught(served, browser):
    folder, url = served
    (folder / "wide.html").write_text(_page(
        "<section><h2>Results</h2><div class='vega-embed'><svg width='860' height='10' "
        "aria-label='Accuracy by layer'></svg></div>"
        "<div style='overflow-x:auto'><table><thead><tr><th>ours</th><th>paper</th></tr></thead>"
        "<tr><td><div style='width:900px'>1</div></td><td>2</td></tr></table></div>"
        "<div class='vega-embed'><svg width='600' height='10'></svg></div>"
        "<table><tr><td>fits</td></tr></table></section>"))
    report = visit(browser, f"{url}/wide.html")
    problems = too_wide(report)
    assert report["column"] == 688
    assert len(problems) == 2, problems
    assert "chart 'Accuracy by layer' (section 'Results'): 860 px" in problems[0]
    assert problems[1].startswith("table 'columns: ours | paper'") and "Results" in problems[1]


def test_text_spilling_sideways_at_420px_is_caught_but_a_scrolling_code_block_is_not(served, browser):
    folder, url = served
    (folder / "narrow.html").write_text(_page(
        "<section><h2>Text</h2><p>fine words</p><pre style='overflow:auto'>" + "x" * 300 + "</pre>"
        "<div style='overflow-x:auto'><table><tr><td><div style='width:900px'>wide</div></td></tr></table></div>"
        "</section>"))
    (folder / "spill.html").write_text(_page(
        "<section><h2>Text</h2><p>an unbreakable " + "w" * 200 + "</p></section>"))
    fine = visit(browser, f"{url}/narrow.html", NARROW)
    assert sideways_scrolling(fine) == [], fine
    spill = visit(browser, f"{url}/spill.html", NARROW)
    problems = sideways_scrolling(spill)
    assert problems and any("an unbreakable" in p and "section 'Text'" in p for p in problems), problems


def test_placeholder_and_dead_internal_links_are_caught(tmp_path):
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "a.html").write_text(
        "<html><body><h1 id='top'>A</h1><a href='#top'>ok</a><a href='#'>top</a><a href='#gone'>x</a>"
        "<a href='b.html#there'>ok</a><a href='b.html#missing'>x</a><a href='c.html'>x</a>"
        "<a href='../_static/s.css'>ok</a><a href='http://paper.md'>x</a>"
        "<a href='https://github.com/OWNER/entity-tracking-book'>x</a>"
        "<a href='https://colab.research.google.com/github/OWNER/repo/blob/main/book/a.ipynb'>x</a>"
        "<a href='https://github.com/Nix07/finetuning'>ok</a><a href='mailto:a@b.c'>ok</a>"
        "<img src='../_static/missing.png'></body></html>")
    (tmp_path / "book" / "b.html").write_text("<html><body><section id='there'></section></body></html>")
    (tmp_path / "_static").mkdir()
    (tmp_path / "_static" / "s.css").write_text("")
    problems = broken_links(tmp_path / "book" / "a.html", root=tmp_path)
    dead = sorted(p.split(":", 1)[0] if not p.startswith("http") else p.split(": ")[0] for p in problems)
    assert dead == sorted(["#gone", "b.html#missing", "c.html", "http://paper.md",
                           "https://github.com/OWNER/entity-tracking-book",
                           "https://colab.research.google.com/github/OWNER/repo/blob/main/book/a.ipynb",
                           "../_static/missing.png"]), problems


def test_long_code_lines_are_caught_except_in_removed_cells(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("x = 1  # " + "y" * 120, metadata={"tags": ["remove-cell"]}),
        nbformat.v4.new_code_cell("short = 1\nlong = '" + "z" * 100 + "'", metadata={"tags": ["hide-input"]}),
        nbformat.v4.new_markdown_cell("m" * 200),
    ])
    nbformat.write(nb, tmp_path / "nb.ipynb")
    assert [line.split(" (")[0] for line in long_code_lines(tmp_path / "nb.ipynb")] == ["cell 1 line 2"]
