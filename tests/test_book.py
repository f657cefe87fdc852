"""The book as readers get it: table of contents, chapter/notebook pairing, the Colab set-up cell,
the repository URL, the nbval sanitizers and the progress bar rules. Offline and fast: no model is
loaded and no notebook is executed here (scripts/nbval.sh and tests/browser do that)."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

from entity_tracking import colab, models, progress

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests" / "browser"))

import available_toc  # noqa: E402
import execute_notebooks  # noqa: E402
import colab_cells  # noqa: E402
import set_repo_url  # noqa: E402
from test_pages import toc_pages  # noqa: E402

PAPER_ORDER = ["01_introduction", "02_entity_tracking", "03_circuit_discovery", "04_circuit_evaluation",
               "05_functionality", "06_cmap", "07_conclusion", "A1_organism", "A2_attention_knockout", "A3_errata",
               "A4_api"]  # A4 is a Markdown page generated from the package (autodoc), not a notebook
CHAPTERS = sorted((ROOT / "chapters").glob("*.py"))
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))


# --- table of contents and pairing -----------------------------------------------------------------

def test_toc_lists_every_chapter_in_the_papers_order():
    assert toc_pages() == [f"book/{name}" for name in PAPER_ORDER]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.name)
def test_every_chapter_source_is_a_toc_page(chapter):
    assert f"book/{chapter.stem}" in toc_pages(), f"add book/{chapter.stem} to _toc.yml at its place in the paper's order"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.name)
def test_chapter_header_does_not_override_the_pairing(chapter):
    """A `formats:` line in a chapter's header replaces jupytext.toml's pairing, so `jupytext --sync`
    silently never writes book/NN.ipynb."""
    header = chapter.read_text(encoding="utf-8").split("# ---", 2)[1] if chapter.read_text().startswith("# ---") else ""
    assert "formats:" not in header, f"delete the 'formats:' line from the Jupytext header of {chapter.name}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_executed_notebook_has_the_cells_of_its_chapter_source(notebook):
    """nbval tests book/NN.ipynb; this makes sure that is the code chapters/NN.py holds."""
    source = ROOT / "chapters" / f"{notebook.stem}.py"
    assert source.is_file(), f"{notebook.name} has no chapter source {source.relative_to(ROOT)}"
    executed = nbformat.read(notebook, as_version=4)
    expected = jupytext.read(source)

    def cells(nb):
        return [(cell.cell_type, cell.source.strip()) for cell in nb.cells]

    assert cells(executed) == cells(expected), (
        f"{notebook.name} is out of date with {source.name}: run bash scripts/execute_chapters.sh {source.relative_to(ROOT)}")
    unexecuted = [i for i, cell in enumerate(executed.cells) if cell.cell_type == "code" and cell.source.strip()
                  and cell.get("execution_count") is None]
    assert not unexecuted, f"{notebook.name}: code cells {unexecuted} were never executed"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_executed_notebook_stores_no_progress_bar(notebook):
    """A stored bar is a frozen 100% widget in the book and a different line of text on every run:
    chapters are executed with ET_PROGRESS=0 (scripts/execute_chapters.sh)."""
    text = notebook.read_text(encoding="utf-8")
    assert "FloatProgressModel" not in text, f"{notebook.name} stores a tqdm widget bar; re-execute with ET_PROGRESS=0"
    assert not re.search(r"\d+%\|[^\n]*\|", text), f"{notebook.name} stores a tqdm text bar; re-execute with ET_PROGRESS=0"


def test_preview_toc_keeps_existing_pages_and_drops_missing_ones(tmp_path, monkeypatch):
    (tmp_path / "book").mkdir()
    for name in ("intro", "there"):
        (tmp_path / "book" / f"{name}.ipynb").write_text("{}")
    monkeypatch.setattr(available_toc, "ROOT", tmp_path)
    toc = {"format": "jb-book", "root": "book/intro", "parts": [
        {"caption": "Paper", "chapters": [{"file": "book/there"}, {"file": "book/missing"}]},
        {"caption": "Appendix", "chapters": [{"file": "book/also_missing"}]},
    ]}
    assert available_toc.prune(toc) == {"format": "jb-book", "root": "book/intro",
                                        "parts": [{"caption": "Paper", "chapters": [{"file": "book/there"}]}]}


def test_every_public_function_names_the_chapter_that_explains_it():
    """The d2l way: the package is the book's index of code, and each entry points to its chapter."""
    import importlib
    import inspect

    modules = ["data", "variants", "patching", "path_patching", "circuit_eval", "dcm", "cmap", "knockout",
               "metrics", "claims", "figures", "plots", "widgets", "organism.gates", "organism.train"]
    missing = []
    for name in modules:
        module = importlib.import_module(f"entity_tracking.{name}")
        for attr, value in vars(module).items():
            if attr.startswith("_") or not (inspect.isfunction(value) or inspect.isclass(value)):
                continue
            if getattr(value, "__module__", None) != module.__name__:
                continue
            doc = inspect.getdoc(value) or ""
            if not re.search(r"(chapters?|appendix) [0-9A]", doc, re.IGNORECASE):
                missing.append(f"{name}.{attr}")
    assert not missing, f"public functions whose docstring names no chapter: {missing}"


def test_papermill_puts_parameters_after_the_parameters_cell_and_leaves_no_timings(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell('model = "organism"\nn_samples = 20', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("print(model, n_samples, x)"),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    source, out = tmp_path / "nb.ipynb", tmp_path / "runs" / "nb_7b.ipynb"
    nbformat.write(nb, source)
    assert execute_notebooks.main([str(source), "-p", "model", "llama-7b", "-p", "n_samples", "500",
                                   "-o", str(out)]) == 0
    ran = nbformat.read(out, as_version=4)
    assert "injected-parameters" in ran.cells[2].metadata["tags"]
    assert "model = \"llama-7b\"" in ran.cells[2].source and "n_samples = 500" in ran.cells[2].source
    assert ran.cells[3].outputs[0]["text"] == "llama-7b 500 1\n"
    assert "papermill" not in ran.metadata and not any("papermill" in c.metadata for c in ran.cells)
    assert nbformat.read(source, as_version=4).cells[1].source.startswith('model = "organism"')  # untouched
    assert execute_notebooks._literal("llama-7b") == "llama-7b" and execute_notebooks._literal("[2, 7]") == [2, 7]


def test_chapters_wait_for_the_chapters_whose_results_they_read():
    prefixes = {c.stem.split("_", 1)[0] for c in CHAPTERS}
    assert all(d in prefixes for needs in execute_notebooks.DEPENDS_ON.values() for d in needs)
    done, pending = set(), set(prefixes)
    while pending:  # the dependencies can be ordered (no cycle)
        ready = {p for p in pending if set(execute_notebooks.DEPENDS_ON.get(p, ())) <= done}
        assert ready, f"cyclic dependencies among {sorted(pending)}"
        done |= ready
        pending -= ready


# --- Colab -------------------------------------------------------------------------------------------

def test_config_names_the_repository_once_and_colab_cells_use_it():
    url = colab.repo_url_from_config(ROOT / "_config.yml")
    assert url.startswith("https://github.com/")
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert config["execute"]["execute_notebooks"] == "off", "the build renders the committed executed notebooks"
    assert f'REPO_URL = "{url}"' in colab.setup_cell_source(url)


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.name)
def test_every_chapter_starts_with_the_current_colab_setup_cell(chapter):
    text = chapter.read_text(encoding="utf-8")
    cell = colab.setup_cell_source(colab.repo_url_from_config(ROOT / "_config.yml"))
    assert colab_cells.rewrite(text, cell) == text, f"run: python scripts/colab_cells.py --write {chapter.relative_to(ROOT)}"


def test_colab_cell_is_inserted_once_then_replaced_in_place():
    chapter = ("# ---\n# jupyter:\n#   kernelspec:\n#     display_name: Python 3\n#     language: python\n"
               "#     name: python3\n# ---\n\n# %% [markdown]\n# # Title\n\n# %%\nx = 1\n")
    first = colab_cells.rewrite(chapter, colab.setup_cell_source("https://github.com/a/b"))
    assert first.count(colab.MARKER) == 1 and first.index(colab.MARKER) < first.index("# # Title")
    assert first.startswith("# ---\n# jupyter:") and first.rstrip().endswith("x = 1")
    second = colab_cells.rewrite(first, colab.setup_cell_source("https://github.com/c/d"))
    assert second.count(colab.MARKER) == 1 and "github.com/c/d" in second and "github.com/a/b" not in second
    assert colab_cells.rewrite(second, colab.setup_cell_source("https://github.com/c/d")) == second
    notebook = jupytext.reads(second, fmt="py:percent")
    assert notebook.cells[0].metadata["tags"] == ["remove-cell"]


def test_colab_cell_replaces_an_older_hand_written_setup_cell():
    chapter = ('# %% tags=["remove-cell"]\n# placeholder\nimport sys\nif "google.colab" in sys.modules:\n'
               '    raise RuntimeError("no set-up yet")\n\n# %% [markdown]\n# # Title\n')
    new = colab_cells.rewrite(chapter, colab.setup_cell_source("https://github.com/a/b"))
    assert "placeholder" not in new and new.count(colab.MARKER) == 1 and "# # Title" in new


def test_setup_cell_refuses_a_url_that_would_break_its_code():
    with pytest.raises(ValueError):
        colab.setup_cell_source('https://github.com/a/b"; import os')


def _run_setup_cell(monkeypatch, tmp_path, on_colab: bool) -> dict:
    """Execute the set-up cell with subprocess, chdir and the constraint file recorded, not run."""
    calls = {"run": [], "chdir": [], "files": {}}
    monkeypatch.setattr(subprocess, "run", lambda cmd, check=False: calls["run"].append(cmd))
    monkeypatch.setattr(os, "chdir", lambda path: calls["chdir"].append(path))
    monkeypatch.setattr(os.path, "isdir", lambda path: False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    if on_colab:
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    else:
        monkeypatch.delitem(sys.modules, "google.colab", raising=False)

    def fake_open(path, mode="r"):
        local = tmp_path / Path(path).name
        calls["files"][path] = local
        return open(local, mode)

    namespace = {"open": fake_open}
    exec(colab.setup_cell_source("https://github.com/someone/entity-tracking-book"), namespace)
    calls["namespace"] = namespace
    return calls


def test_setup_cell_on_colab_clones_installs_without_replacing_torch_and_enters_book(monkeypatch, tmp_path):
    import torch

    calls = _run_setup_cell(monkeypatch, tmp_path, on_colab=True)
    clone, requirements, package = calls["run"]
    assert clone[:2] == ["git", "clone"] and clone[-2:] == ["https://github.com/someone/entity-tracking-book",
                                                           "/content/entity-tracking-book"]
    constraint = next(iter(calls["files"].values())).read_text()
    assert constraint == f"torch=={torch.__version__}\n"  # Colab's own build is the only acceptable torch
    for cmd in (requirements, package):
        assert cmd[:4] == [sys.executable, "-m", "pip", "install"] and "-c" in cmd
    assert requirements[-2:] == ["-r", "/content/entity-tracking-book/requirements-colab.txt"]
    assert package[-3:] == ["--no-deps", "-e", "/content/entity-tracking-book"]
    assert calls["chdir"] == ["/content/entity-tracking-book/book"]
    assert calls["namespace"]["DEFAULT_VARIANT"] == models.default_variant()


def test_setup_cell_elsewhere_installs_nothing_and_picks_the_hardware_default(monkeypatch, tmp_path):
    calls = _run_setup_cell(monkeypatch, tmp_path, on_colab=False)
    assert calls["run"] == [] and calls["chdir"] == []
    assert calls["namespace"]["DEFAULT_VARIANT"] == models.default_variant()


def test_default_variant_is_the_organism_without_a_big_gpu(monkeypatch):
    monkeypatch.setattr(models, "gpu_memory_gb", lambda: 0.0)
    assert models.default_variant() == "organism-base"
    monkeypatch.setattr(models, "gpu_memory_gb", lambda: 40.0)
    assert models.default_variant() == "llama-7b"


def _requirement_names(path: Path) -> list[str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return [re.split(r"[<>=!~\[ ;]", line)[0].lower() for line in lines if line and not line.startswith("-")]


def test_colab_requirements_leave_torch_alone_and_cover_the_package_dependencies():
    colab_names = _requirement_names(ROOT / "requirements-colab.txt")
    assert "torch" not in colab_names
    pyproject = (ROOT / "pyproject.toml").read_text()
    dependencies = re.search(r"dependencies = \[(.*?)\]", pyproject, re.S).group(1)
    needed = {re.split(r"[<>=!~\[ ]", d.strip().strip('",'))[0].lower() for d in dependencies.split("\n") if d.strip().strip('",')}
    assert needed - {"torch"} <= set(colab_names)
    assert "torch" in _requirement_names(ROOT / "requirements.txt")  # CI pins the tested CPU build


def test_set_repo_url_changes_the_config_and_every_chapter_cell(tmp_path):
    shutil.copy(ROOT / "_config.yml", tmp_path / "_config.yml")
    (tmp_path / "chapters").mkdir()
    chapter = tmp_path / "chapters" / "01_x.py"
    chapter.write_text("# %% [markdown]\n# # X\n")
    changed = set_repo_url.set_repo_url("https://github.com/org/book.git", root=tmp_path)
    assert colab.repo_url_from_config(tmp_path / "_config.yml") == "https://github.com/org/book"
    assert changed == [chapter] and 'REPO_URL = "https://github.com/org/book"' in chapter.read_text()
    before = (ROOT / "_config.yml").read_text().splitlines()
    after = (tmp_path / "_config.yml").read_text().splitlines()
    assert [i for i, (a, b) in enumerate(zip(before, after)) if a != b] == [before.index(
        next(line for line in before if line.strip().startswith("url:")))], "only the url line changes"
    with pytest.raises(ValueError):
        set_repo_url.set_repo_url("https://gitlab.com/org/book", root=tmp_path)


def test_placeholder_url_is_recognised_and_a_real_one_is_not():
    assert colab.is_placeholder(colab.PLACEHOLDER_URL)
    assert colab.is_placeholder("https://github.com/OWNER/another-name/")
    assert not colab.is_placeholder("https://github.com/someone/entity-tracking-book")


def _theme_config(url: str) -> types.SimpleNamespace:
    return types.SimpleNamespace(html_theme_options={
        "repository_url": url, "use_repository_button": True, "launch_buttons": {"colab_url": "https://colab"},
        "use_issues_button": False, "use_edit_page_button": False})


def test_build_leaves_out_the_launch_and_repository_buttons_only_while_the_url_is_the_placeholder():
    import book_assets

    app = types.SimpleNamespace()
    config = _theme_config(colab.PLACEHOLDER_URL)
    book_assets._without_repository_buttons(app, config)
    options = config.html_theme_options
    assert options["launch_buttons"] == {} and not options["use_repository_button"]
    assert options["repository_url"] == ""  # nothing left for the theme to link
    context = {"body": "<section><h1>Title</h1><p>text</p></section>"}
    book_assets._note_missing_repository(app, "book/x", "page.html", context, doctree=object())
    assert context["body"].index("</p>") < context["body"].index(book_assets.REPO_NOTE_CLASS)  # at the foot
    assert "scripts/set_repo_url.py" in context["body"]

    real = types.SimpleNamespace()
    config = _theme_config("https://github.com/someone/entity-tracking-book")
    book_assets._without_repository_buttons(real, config)
    assert config.html_theme_options["launch_buttons"] == {"colab_url": "https://colab"}
    assert config.html_theme_options["use_repository_button"]
    context = {"body": "<h1>Title</h1>"}
    book_assets._note_missing_repository(real, "book/x", "page.html", context, doctree=object())
    assert context["body"] == "<h1>Title</h1>"


def test_build_does_not_turn_file_names_into_web_links():
    """linkify's fuzzy links made "paper.md" a link to http://paper.md."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["sphinx"]["config"]["myst_linkify_fuzzy_links"] is False
    assert "book_assets" in config["sphinx"]["local_extensions"]


# --- nbval sanitizers ----------------------------------------------------------------------------------

def _sanitizers() -> list[tuple[str, str, str]]:
    parser = configparser.ConfigParser(interpolation=None, comment_prefixes=("#",))
    parser.read(ROOT / "tests" / "nbval" / "sanitize.cfg")
    return [(name, parser[name]["regex"], parser[name]["replace"]) for name in parser.sections()]


def _sanitize(text: str) -> str:
    for _, regex, replace in _sanitizers():
        text = re.sub(regex, replace, text)
    return text


def test_every_sanitizer_says_why_it_exists():
    text = (ROOT / "tests" / "nbval" / "sanitize.cfg").read_text()
    for name, _, _ in _sanitizers():
        before = text.split(f"[{name}]")[0].rstrip().splitlines()
        assert before and before[-1].startswith("#"), f"sanitizer [{name}] needs a comment saying why"


@pytest.mark.parametrize("volatile, stable", [
    ('<div id="altair-viz-91dc055feb4440c497c713d68bb7948c">', '<div id="altair-viz-ID">'),
    ("<Styler at 0x7fa39278d590>", "<Styler at 0xADDRESS>"),
    ("trained in 3.2 s, 41 ms per forward", "trained in DURATION, DURATION per forward"),
    ("patching heads:  40%|████      | 4/10 [00:01<00:02,  3.1it/s]", "patching heads:  PROGRESS"),
    ("/tmp/clone/src/entity_tracking/organism/checkpoints/base", "REPO/src/entity_tracking/organism/checkpoints/base"),
    ("/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/torch/x.py:3: UserWarning",
     "SITE-PACKAGES/torch/x.py:3: UserWarning"),
    ('<table id="T_5d3a1">', '<table id="T_STYLER">'),
])
def test_sanitizers_mask_what_changes_between_runs(volatile, stable):
    assert _sanitize(volatile) == stable


@pytest.mark.parametrize("result", [
    "accuracy 0.66 (n=500), 7 boxes, seed 0",
    "organism-goat +0.16 over organism-base; 72 heads in 4 groups",
    "layer 14 head 27: score -0.4123",
    "| llama-7b | 0.66 | 0.66 | 0.00 | 1.00 |",
    "12.6 GB (float16)",
])
def test_sanitizers_leave_results_alone(result):
    assert _sanitize(result) == result


# --- progress bars ------------------------------------------------------------------------------------

@pytest.mark.parametrize("setting, ci, enabled", [("0", None, False), ("1", "1", True), ("", "1", False)])
def test_progress_bar_follows_et_progress_then_ci(monkeypatch, setting, ci, enabled):
    monkeypatch.setenv(progress.ENV_VAR, setting)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    assert progress.progress_enabled() is enabled


def test_disabled_progress_bar_still_iterates_and_prints_nothing(monkeypatch, capsys):
    monkeypatch.setenv(progress.ENV_VAR, "0")
    bar = progress.progress(range(3), desc="heads")
    assert list(bar) == [0, 1, 2]
    bar.set_postfix(score=1.0)  # callers may use tqdm's API unconditionally
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_finished_inner_bars_disappear_but_callers_can_keep_them(monkeypatch):
    monkeypatch.setenv(progress.ENV_VAR, "1")
    monkeypatch.delitem(sys.modules, "IPython", raising=False)  # a terminal, not a kernel
    with open(os.devnull, "w") as sink:
        inner, kept = progress.progress(range(2), file=sink), progress.progress(range(2), leave=True, file=sink)
        assert inner.leave is None and kept.leave is True
        inner.close(), kept.close()
