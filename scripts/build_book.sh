#!/usr/bin/env bash
# Build the HTML book (_build/html) from the executed notebooks in book/, as committed. Nothing is
# executed here: run `bash scripts/execute_chapters.sh` first to refresh outputs.
#
#   bash scripts/build_book.sh               # pip install -r requirements.txt, then build
#   bash scripts/build_book.sh --no-install  # build only (scripts/test.sh, .ci/run)
#   bash scripts/build_book.sh --available   # preview: only the _toc.yml entries whose notebook exists
#
# The build is strict (-W): any Sphinx warning fails it, including a _toc.yml entry whose notebook is
# missing ("toctree contains reference to nonexisting document"). --all rebuilds every page, so a
# warning can't hide in an incremental build.
set -euo pipefail
cd "$(dirname "$0")/.."

install=1
toc=_toc.yml
for arg in "$@"; do
  case "$arg" in
    --no-install) install=0 ;;
    --available) toc=_build/_toc.available.yml ;;
    *) echo "unknown argument: $arg (see the header of $0)" >&2; exit 2 ;;
  esac
done

if [[ $install == 1 ]]; then
  python -m pip install -q -r requirements.txt
fi

# The JavaScript the pages load (vega, require.js, the widget manager, MathJax) is committed under
# book/_static/vendor/; this only fetches what is missing (needs npm) and is otherwise a no-op.
python scripts/vendor_js.py

if [[ $toc != _toc.yml ]]; then
  mkdir -p _build
  python scripts/available_toc.py _toc.yml "$toc"
fi

export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
strict=(-W --keep-going)
# A preview skips -W: links to chapters that do not exist yet are warnings there.
[[ $toc == _toc.yml ]] || strict=()
jupyter-book build . --all "${strict[@]}" --toc "$toc"
echo "book: $(pwd)/_build/html/index.html"
