"""Put the canonical Colab set-up cell at the top of chapters, or check that it is there.

    python scripts/colab_cells.py --write [chapters/NN_name.py ...]   # default: every chapters/*.py
    python scripts/colab_cells.py --check [chapters/NN_name.py ...]

The cell's text lives in entity_tracking.colab.setup_cell_source; the repository URL in
_config.yml. --write replaces an existing set-up cell (the first cell, recognised by its marker
line or, for an older hand-written one, by its test for google.colab) or inserts one before the
first cell, and edits only that cell's lines of the .py file. Run `jupytext --sync` afterwards
(scripts/execute_chapters.sh does) to carry it into book/*.ipynb.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from entity_tracking.colab import MARKER, TAGS, repo_url_from_config, setup_cell_source  # noqa: E402

CELL_HEADER = f"# %% tags={json.dumps(list(TAGS))}"


def _split_header(lines: list[str]) -> int:
    """Index of the first line after the Jupytext YAML header (and the blank lines after it)."""
    i = 0
    if lines and lines[0].strip() == "# ---":
        i = next(k for k in range(1, len(lines)) if lines[k].strip() == "# ---") + 1
    while i < len(lines) and not lines[i].strip():
        i += 1
    return i


def rewrite(text: str, cell: str) -> str:
    """``text`` (a percent-format chapter) with its set-up cell replaced by, or preceded by, ``cell``."""
    lines = text.splitlines()
    start = _split_header(lines)
    new_cell = [CELL_HEADER, *cell.splitlines()]
    end = next((k for k in range(start + 1, len(lines)) if lines[k].startswith("# %%")), len(lines))
    first_cell = lines[start:end]
    # A set-up cell: ours (its marker line), or an older hand-written one (it tests for Colab).
    is_setup = bool(first_cell) and first_cell[0].startswith("# %%") and "[markdown]" not in first_cell[0] and (
        (len(first_cell) > 1 and first_cell[1].strip() == MARKER) or any("google.colab" in line for line in first_cell))
    rest = lines[end:] if is_setup else lines[start:]
    body = lines[:start] + new_cell + ([""] * 2 + rest if rest else [])
    return "\n".join(body).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="insert or update the cell")
    mode.add_argument("--check", action="store_true", help="exit 1 if a chapter's cell is missing or stale")
    parser.add_argument("chapters", nargs="*", type=Path)
    args = parser.parse_args(argv)

    cell = setup_cell_source(repo_url_from_config(ROOT / "_config.yml"))
    chapters = args.chapters or sorted((ROOT / "chapters").glob("*.py"))
    stale = []
    for path in chapters:
        text = path.read_text(encoding="utf-8")
        new = rewrite(text, cell)
        if new == text:
            continue
        if args.write:
            path.write_text(new, encoding="utf-8")
            print(f"updated the Colab set-up cell of {path}")
        else:
            stale.append(path)
    for path in stale:
        print(f"{path}: Colab set-up cell missing or outdated; run: python scripts/colab_cells.py --write {path}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
