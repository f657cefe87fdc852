"""Fetch the book's JavaScript from the npm registry into book/_static/vendor/ (idempotent).

    python scripts/vendor_js.py          # fetch what is missing
    python scripts/vendor_js.py --force  # fetch everything again

Which packages, versions and files: VENDOR in scripts/book_assets.py (the Sphinx extension
that then serves them). Each tarball comes from `npm pack` and is checked against the pinned
npm integrity (sha512) before anything is extracted.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from book_assets import STATIC_DIR, VENDOR, VENDOR_SUBDIR, Package, vendored  # noqa: E402


def _integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def fetch(package: Package, workdir: Path) -> None:
    spec = f"{package.name}@{package.version}"
    result = subprocess.run(["npm", "pack", spec, "--json", "--pack-destination", str(workdir)],
                            check=True, capture_output=True, text=True)
    tarball = workdir / json.loads(result.stdout)[0]["filename"]
    if _integrity(tarball) != package.integrity:
        raise SystemExit(f"{spec}: tarball integrity {_integrity(tarball)} != pinned {package.integrity}")
    dest = STATIC_DIR / VENDOR_SUBDIR / package.folder
    shutil.rmtree(dest, ignore_errors=True)
    count = 0
    with tarfile.open(tarball) as tar:
        for member in tar.getmembers():
            inner = member.name.split("/", 1)[1] if "/" in member.name else member.name
            if not member.isfile() or not any(fnmatch.fnmatch(inner, pattern) for pattern in package.files):
                continue
            if any(fnmatch.fnmatch(inner, pattern) for pattern in package.exclude):
                continue
            target = dest / inner
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            count += 1
    if not vendored(package):
        raise SystemExit(f"{spec}: {package.entry} not in the tarball")
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"vendored {spec}: {count} files, {size / 1e6:.1f} MB -> {dest.relative_to(STATIC_DIR.parents[1])}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--force", action="store_true", help="fetch even what is already there")
    args = parser.parse_args(argv)
    todo = [p for p in VENDOR if args.force or not vendored(p)]
    if not todo:
        print(f"vendored JS up to date in {STATIC_DIR / VENDOR_SUBDIR}")
        return 0
    if shutil.which("npm") is None:
        raise SystemExit("npm not found: install Node.js (Debian: apt-get install -y npm)")
    with tempfile.TemporaryDirectory() as tmp:
        for package in todo:
            fetch(package, Path(tmp))
    # drop versions no longer pinned
    keep = {p.folder for p in VENDOR}
    for old in (STATIC_DIR / VENDOR_SUBDIR).iterdir():
        if old.is_dir() and old.name not in keep:
            shutil.rmtree(old)
            print(f"removed {old.name} (no longer pinned)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
