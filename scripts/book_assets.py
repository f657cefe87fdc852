"""The book's page assets (a Sphinx extension): JavaScript served from the book, not CDNs.

Altair charts load vega, vega-lite and vega-embed from jsDelivr; pages with ipywidgets load
require.js (cdnjs) and the widget manager (jsDelivr); pages with math load MathJax (jsDelivr).
Offline, or behind a CDN block, those pages show nothing. scripts/vendor_js.py fetches pinned
copies from the npm registry into book/_static/vendor/ (committed, about 8 MB, so a build needs
neither npm nor internet); this extension, listed in _config.yml (sphinx: local_extensions), then

* points myst-nb's ipywidgets scripts and Sphinx's MathJax at those copies (config-inited),
* rewrites the CDN URLs inside Altair's output HTML to page-relative local URLs (html-page-context),
* maps the widget manager's AMD id to its vendored folder and gives it the MathJax 2 call it makes
  (`_locate_widget_manager_files`), and
* puts a one-line note above every embedded widget: frozen here, live with a kernel.

While the repository URL in _config.yml is still the placeholder (``https://github.com/OWNER/...``,
`entity_tracking.colab.is_placeholder`), every "Open in Colab" and repository button would be a dead
link: the extension then leaves out the launch and repository buttons (config-inited) and puts a
note at the foot of each page saying how to turn them on (`python scripts/set_repo_url.py URL`).
With a real URL nothing changes.

It also drops duplicate <script> entries from each page: sphinx-thebe 0.3.1 under Sphinx 7.4
registers its inline config twice, and the second copy throws "Identifier 'THEBE_JS_URL' has
already been declared" in every page's console.

The notebooks keep the CDN URLs (so they render in Jupyter and Colab); only the built HTML changes.
Without the vendored files the build warns and leaves the CDN URLs (the book then needs internet).
Altair emitting a library version that is not vendored is also a warning, so a strict build
(`-W`, as scripts/build_book.sh runs it) fails until VENDOR below is updated.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:  # the book is built from a checkout; the package may not be installed
    sys.path.insert(0, str(ROOT / "src"))

from entity_tracking.colab import is_placeholder  # noqa: E402
STATIC_DIR = ROOT / "book" / "_static"  # html_static_path in _config.yml
VENDOR_SUBDIR = "vendor"


@dataclass(frozen=True)
class Package:
    """One npm package: which files of its tarball the book serves."""

    name: str
    version: str
    integrity: str  # npm's dist.integrity of the tarball (`npm view NAME@VERSION dist.integrity`)
    files: tuple[str, ...]  # paths (globs) inside the tarball's package/ folder
    exclude: tuple[str, ...] = ()  # paths (globs) among those not to serve
    entry: str = ""  # the file a CDN URL is replaced by
    cdn: tuple[str, ...] = field(default=())  # URLs (exact) this package's entry replaces

    @property
    def folder(self) -> str:
        """Folder under _static/vendor/ (scoped names flattened: @a/b -> a-b)."""
        return f"{self.name.lstrip('@').replace('/', '-')}@{self.version}"

    def local(self, path: str | None = None) -> str:
        """Path relative to _static of ``path`` (default: the entry file)."""
        return f"{VENDOR_SUBDIR}/{self.folder}/{path or self.entry}"


# Versions: what altair 6.3 emits (vega@6 (any 6.x), vega-lite@6.4.1, vega-embed@7) and what myst-nb 1.4
# uses (require.js 2.3.4, @jupyter-widgets/html-manager 1.0.6); Sphinx 7.4 uses mathjax@3.
VENDOR = (
    # vega 6.3.0's build/vega.min.js calls itself 5.33.1 (vega-embed then warns of a version
    # mismatch in the console); 6.4.0 is what vega@6 resolves to on the CDN.
    Package("vega", "6.4.0",
            "sha512-rHXCq2LpEWCLMjXBEj7hocY9G0/i5TGYRayGGSj06VTF4+l2IG2Z7oeZKCjWbUh/7hTE/mVhbaOPB72wCElh6g==",
            files=("build/vega.min.js", "LICENSE"), entry="build/vega.min.js"),
    Package("vega-lite", "6.4.1",
            "sha512-KO3ybHNouRK4A0al/+2fN9UqgTEfxrd/ntGLY933Hg5UOYotDVQdshR3zn7OfXwQ7uj0W96Vfa5R+QxO8am3IQ==",
            files=("build/vega-lite.min.js", "LICENSE"), entry="build/vega-lite.min.js"),
    Package("vega-embed", "7.3.0",
            "sha512-wQ8s5GaSzqoKgmRfbRolgBrjE2CP7ZKHXqH7NijxMqPjpdWxSs4Dn8tvp9g0giQvh2cK+3p56sxjWWM0wNngGw==",
            files=("build/vega-embed.min.js", "LICENSE"), entry="build/vega-embed.min.js"),
    Package("requirejs", "2.3.4",
            "sha512-qPD5gRrj6kGQ0ZySAJgqbArkaDqPMbQIT0zSZDkIv1mfA17w/tR2Faq5l2qqRf2CdQx6FWln9nUrgd2UDzb19A==",
            files=("require.js", "LICENSE"), entry="require.js",
            cdn=("https://cdnjs.cloudflare.com/ajax/libs/require.js/2.3.4/require.min.js",)),
    Package("@jupyter-widgets/html-manager", "1.0.6",
            "sha512-+Mn+Ra8wyIHrYaUpfmf9A3dsLkt/NuwzPQN8sthdxBD35VV5cOJbpmgMhNR27n/rmP3mKyEe0PWCJrtZrXTXDQ==",
            # fonts: woff2 only; every browser that runs the widget manager picks woff2 first
            files=("dist/embed-amd.js", "dist/*.woff2", "LICENSE"),
            entry="dist/embed-amd.js",
            cdn=("https://cdn.jsdelivr.net/npm/@jupyter-widgets/html-manager@1.0.6/dist/embed-amd.js",)),
    Package("mathjax", "3.2.2",
            "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw==",
            # TeX extensions load on demand; all-packages.js (0.2 MB) only on an explicit \require
            files=("es5/tex-mml-chtml.js", "es5/output/chtml/fonts/woff-v2/*", "es5/input/tex/extensions/*",
                   "es5/ui/*", "es5/a11y/*", "LICENSE"),
            exclude=("es5/input/tex/extensions/all-packages.js",),
            entry="es5/tex-mml-chtml.js",
            cdn=("https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js",)),
)
BY_NAME = {p.name: p for p in VENDOR}

# Altair's loader: `"vega-lite": "https://cdn.jsdelivr.net/npm/vega-lite@6.4.1?noext"` (both the
# require.js paths and the <script> fallback use these URLs).
ALTAIR_CDN = re.compile(r"https://cdn\.jsdelivr\.net/npm/(vega|vega-lite|vega-embed)@([0-9][0-9A-Za-z.\-]*)\?noext")


def vendored(package: Package) -> bool:
    return (STATIC_DIR / package.local()).is_file()


def satisfies(version: str, requested: str) -> bool:
    """npm-style prefix match: "6" and "6.3" accept 6.3.0; "6.4.1" accepts only 6.4.1."""
    return version == requested or version.startswith(requested + ".")


def _logger():
    from sphinx.util import logging

    return logging.getLogger("book_assets")


def _use_local_scripts(app, config) -> None:
    """Point myst-nb's widget scripts and MathJax at the vendored copies (config-inited)."""
    missing = [p.name for p in VENDOR if not vendored(p)]
    if missing:
        _logger().warning(
            "book_assets: %s not vendored in %s; the book will load them from CDNs. "
            "Run `python scripts/vendor_js.py` (scripts/build_book.sh does).", ", ".join(missing), STATIC_DIR)
    widgets_js = {}
    for url, attrs in dict(config.nb_ipywidgets_js).items():
        package = next((p for p in VENDOR if url in p.cdn and vendored(p)), None)
        if package is None:
            widgets_js[url] = attrs
            continue
        # integrity/crossorigin describe the CDN's file; the local copy is same-origin.
        widgets_js[package.local()] = {k: v for k, v in attrs.items() if k not in {"integrity", "crossorigin"}}
    config.nb_ipywidgets_js = widgets_js
    mathjax = BY_NAME["mathjax"]
    if vendored(mathjax) and config.mathjax_path in mathjax.cdn:
        config.mathjax_path = mathjax.local()


def _rewrite_altair_urls(app, pagename, templatename, context, doctree) -> None:
    """Replace the CDN URLs in a page's Altair outputs by page-relative vendored ones."""
    body = context.get("body")
    if not body or "cdn.jsdelivr.net/npm/vega" not in body:
        return
    pathto = context["pathto"]

    def local(match: re.Match) -> str:
        package = BY_NAME[match.group(1)]
        requested = match.group(2)
        if not vendored(package):
            return match.group(0)  # already warned at config-inited
        if not satisfies(package.version, requested):
            _logger().warning(
                "book_assets: %s asks for %s@%s but %s is vendored; update VENDOR in %s",
                pagename, package.name, requested, package.version, __file__)
            return match.group(0)
        return pathto(f"_static/{package.local()}", 1) + "?noext"

    context["body"] = ALTAIR_CDN.sub(local, body)


# html-manager 1.0.6 typesets widget text with the MathJax 2 API (`MathJax.Hub.Queue`) whenever
# window.MathJax exists; Sphinx 7 loads MathJax 3, which has no Hub, so every page with both math and
# widgets threw "Cannot read properties of undefined (reading 'Queue')". MathJax 3 (a deferred script)
# has replaced window.MathJax by DOMContentLoaded, before the widgets render; this listener, added
# before embed-amd.js's, gives it a Hub.Queue that forwards to MathJax 3's typesetPromise.
MATHJAX2_SHIM = """
document.addEventListener("DOMContentLoaded", function () {
  var M = window.MathJax;
  if (M && !M.Hub) {
    M.Hub = {Queue: function (job) {
      var element = job && job[2];
      if (element && window.MathJax.typesetPromise) { window.MathJax.typesetPromise([element]).catch(console.warn); }
    }};
  }
});"""


def _locate_widget_manager_files(app, pagename, templatename, context, doctree) -> None:
    """Tell require.js where the vendored widget manager lives, right after require.js loads.

    embed-amd.js finds its own fonts relative to its AMD module id
    (``@jupyter-widgets/html-manager/dist/...``); loaded by a plain <script> tag, that id resolves
    against the page's folder, so every widget page 404s on the fonts (a console error) unless the
    id is mapped to the vendored folder."""
    scripts = context.get("script_files")
    requirejs, manager = BY_NAME["requirejs"], BY_NAME["@jupyter-widgets/html-manager"]
    if not scripts or not vendored(manager):
        return
    position = next((i for i, s in enumerate(scripts)
                     if str(getattr(s, "filename", "") or "").endswith(requirejs.local())), None)
    if position is None:
        return
    from sphinx.builders.html._assets import _JavaScript

    dist = context["pathto"](f"_static/{manager.local('dist')}", 1)
    config = _JavaScript("", body='require.config({paths: {"@jupyter-widgets/html-manager/dist": "%s"}});%s'
                         % (dist, MATHJAX2_SHIM))
    context["script_files"] = [*scripts[:position + 1], config, *scripts[position + 1:]]


WIDGET_VIEW = '<script type="application/vnd.jupyter.widget-view+json">'
WIDGET_NOTE = ('<p class="widget-static-note"><em>Live widget, shown in its default state: it recomputes only '
               'with a Python kernel (run this chapter in Jupyter or Colab).</em></p>')


def _note_static_widgets(app, pagename, templatename, context, doctree) -> None:
    """Say above every embedded widget that it needs a kernel: in the static page it is frozen."""
    body = context.get("body")
    if body and WIDGET_VIEW in body:
        context["body"] = body.replace(WIDGET_VIEW, WIDGET_NOTE + WIDGET_VIEW)


#: The book's own layout rules (in _static): long API signatures and inline code wrap on a phone.
LAYOUT_CSS = "book-layout.css"

REPO_NOTE_CLASS = "repo-url-note"
REPO_NOTE = (
    f'<aside class="{REPO_NOTE_CLASS}"><p><small>Running this page yourself: it is the executed notebook '
    '<code class="docutils literal notranslate">book/&lt;chapter&gt;.ipynb</code> of the book\'s repository '
    '(open it in Jupyter, or upload it to Colab). This build has no repository address, so it shows no '
    '"Open in Colab" button; whoever publishes the book sets it once with '
    '<code class="docutils literal notranslate">python scripts/set_repo_url.py URL</code> and rebuilds.'
    '</small></p></aside>')


def _without_repository_buttons(app, config) -> None:
    """With the placeholder repository URL, no launch button, no repository button and no URL for
    the theme to link (config-inited, before sphinx-book-theme reads them)."""
    options = dict(config.html_theme_options)
    url = str(options.get("repository_url") or "")
    app._book_assets_placeholder_repository = bool(url) and is_placeholder(url)
    if not app._book_assets_placeholder_repository:
        return
    options["launch_buttons"] = {}
    for button in ("use_repository_button", "use_issues_button", "use_edit_page_button", "use_source_button"):
        options[button] = False
    options["repository_url"] = ""
    config.html_theme_options = options
    _logger().info("book_assets: repository URL %s is the placeholder; Colab and repository buttons "
                   "left out", url)


def _note_missing_repository(app, pagename, templatename, context, doctree) -> None:
    """Say at the foot of each page how to run it and how the buttons come back (placeholder URL
    only): a footnote, not a box above the chapter's first sentence."""
    body = context.get("body")
    placeholder = getattr(app, "_book_assets_placeholder_repository", False)
    if body is not None and placeholder and doctree is not None:
        context["body"] = body + REPO_NOTE


def _drop_duplicate_scripts(app, pagename, templatename, context, doctree) -> None:
    """Keep the first of identical <script> entries (same file or body, same attributes)."""
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        attributes = getattr(script, "attributes", {})  # "body" (inline code) is one of them;
        # an inline script's filename is None or "" depending on who added it
        key = (str(getattr(script, "filename", script) or ""), tuple(sorted((k, str(v)) for k, v in attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("config-inited", _use_local_scripts, priority=900)  # after myst-nb's own config hooks
    app.connect("config-inited", _without_repository_buttons, priority=100)  # before the theme reads them
    app.connect("html-page-context", _note_missing_repository)
    app.add_css_file(LAYOUT_CSS)
    app.connect("html-page-context", _rewrite_altair_urls)
    app.connect("html-page-context", _note_static_widgets)
    app.connect("html-page-context", _drop_duplicate_scripts, priority=900)  # after others add theirs
    app.connect("html-page-context", _locate_widget_manager_files, priority=950)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
