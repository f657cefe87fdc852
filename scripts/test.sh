#!/usr/bin/env bash
# The book's tests, in the order a failure is cheapest to find (README, "Run the tests"):
#   1. unit tests        pytest tests (without tests/browser)
#   2. nbval             every executed book/*.ipynb re-run and compared with its stored outputs
#   3. book build        strict HTML build from the committed notebooks (scripts/build_book.sh)
#   4. browser check     every page opened offline in headless Chromium (tests/browser)
# Assumes `pip install -r requirements.txt` was done (.ci/run does it). Prints each stage's time and
# writes them to _build/test_times.txt. Extra arguments go to the unit-test pytest (e.g. -x).
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false ET_PROGRESS=0 PYTHONHASHSEED=0

times=()
status=0
stage() {
  local name=$1; shift
  local start=$SECONDS
  echo "=== ${name}: $*"
  if "$@"; then
    times+=("$(printf '%-16s %5d s  ok' "$name" $((SECONDS - start)))")
  else
    status=1
    times+=("$(printf '%-16s %5d s  FAILED' "$name" $((SECONDS - start)))")
  fi
}

total_start=$SECONDS
stage "unit tests" python -m pytest -q tests --ignore=tests/browser "$@"
stage "nbval" bash scripts/nbval.sh
stage "book build" bash scripts/build_book.sh --no-install
if [[ -f _build/html/index.html ]]; then
  stage "browser check" python -m pytest -q tests/browser
else
  times+=("$(printf '%-16s %5s    skipped (no HTML)' "browser check" -)")
fi
times+=("$(printf '%-16s %5d s' total $((SECONDS - total_start)))")

mkdir -p _build
printf '%s\n' "${times[@]}" | tee _build/test_times.txt
exit $status
