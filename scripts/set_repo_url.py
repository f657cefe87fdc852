"""Set the book's repository URL, once, when publishing (README, "Publishing").

    python scripts/set_repo_url.py https://github.com/ORG/REPO

The URL has one home, `repository: url:` in _config.yml: the launch buttons ("Open in Colab") and
the repository button read it there. Each chapter's Colab set-up cell clones the repository, so it
carries a copy; this script changes _config.yml and regenerates that cell in every chapters/*.py
(scripts/colab_cells.py). Then run `bash scripts/execute_chapters.sh` (or `jupytext --sync
chapters/*.py`) so the notebooks in book/ get the new cell too, and commit.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))

from colab_cells import rewrite  # noqa: E402
from entity_tracking.colab import repo_url_from_config, setup_cell_source  # noqa: E402

URL = re.compile(r"https://github\.com/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")


def set_config_url(config: Path, url: str) -> None:
    """Replace the `repository: url:` value in ``config``, leaving every other line as it is."""
    text = config.read_text(encoding="utf-8")
    old = repo_url_from_config(config)
    new_text = re.sub(r"(^repository:\s*\n(?:[ \t]+.*\n)*?[ \t]+url:\s*['\"]?)" + re.escape(old),
                      lambda m: m.group(1) + url, text, count=1, flags=re.M)
    config.write_text(new_text, encoding="utf-8")


def set_repo_url(url: str, root: Path = ROOT) -> list[Path]:
    """Point the book at ``url``; returns the chapter sources whose set-up cell changed."""
    url = url.rstrip("/").removesuffix(".git")
    if not URL.fullmatch(url):
        raise ValueError(f"expected https://github.com/OWNER/REPO (Colab opens GitHub repositories), got {url!r}")
    set_config_url(root / "_config.yml", url)
    cell = setup_cell_source(repo_url_from_config(root / "_config.yml"))
    changed = []
    for chapter in sorted((root / "chapters").glob("*.py")):
        text = chapter.read_text(encoding="utf-8")
        new = rewrite(text, cell)
        if new != text:
            chapter.write_text(new, encoding="utf-8")
            changed.append(chapter)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="https://github.com/OWNER/REPO")
    args = parser.parse_args(argv)
    try:
        changed = set_repo_url(args.url)
    except ValueError as err:
        parser.error(str(err))
    print(f"_config.yml: repository url = {repo_url_from_config(ROOT / '_config.yml')}")
    for chapter in changed:
        print(f"updated the Colab set-up cell of {chapter.relative_to(ROOT)}")
    print("next: bash scripts/execute_chapters.sh (or jupytext --sync chapters/*.py), then commit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
