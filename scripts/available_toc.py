"""Write a copy of _toc.yml without the entries whose file does not exist yet (for previews).

    python scripts/available_toc.py _toc.yml _build/_toc.available.yml

The committed _toc.yml lists every chapter of the paper, including ones still being written; a strict
build of it fails until each notebook exists. `bash scripts/build_book.sh --available` builds this
filtered copy instead, so a chapter can be previewed before the others land.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = (".ipynb", ".md", ".py")


def exists(entry: str) -> bool:
    return any((ROOT / f"{entry}{suffix}").is_file() for suffix in SUFFIXES)


def prune(node):
    """``node`` without file entries that do not exist, and without parts left empty."""
    if isinstance(node, list):
        kept = [prune(item) for item in node]
        return [item for item in kept if item is not None]
    if isinstance(node, dict):
        if "file" in node and not exists(node["file"]):
            return None
        out = {key: prune(value) if key in {"parts", "chapters", "sections"} else value for key, value in node.items()}
        if "chapters" in node and not out["chapters"] and "file" not in node:
            return None  # a part with no chapter left
        return out
    return node


def main(argv: list[str]) -> int:
    source, target = (Path(a) for a in argv)
    toc = yaml.safe_load(source.read_text())
    if not exists(toc["root"]):
        raise SystemExit(f"{source}: root {toc['root']} does not exist")
    pruned = prune(toc)
    for key in ("parts", "chapters"):
        if key in pruned and not pruned[key]:
            del pruned[key]
    target.write_text(yaml.safe_dump(pruned, sort_keys=False))
    print(f"{target}: {sum(1 for _ in _files(pruned))} of {sum(1 for _ in _files(toc))} pages exist")
    return 0


def _files(node):
    if isinstance(node, dict):
        if "file" in node:
            yield node["file"]
        if "root" in node:
            yield node["root"]
        for value in node.values():
            yield from _files(value)
    elif isinstance(node, list):
        for item in node:
            yield from _files(item)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
