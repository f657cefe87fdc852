#!/usr/bin/env bash
# Regression test of the book: re-run every executed notebook in book/ and compare each cell's outputs
# with the stored ones (nbval, strict mode), after the sanitizers in tests/nbval/sanitize.cfg.
#   bash scripts/nbval.sh                       # every book/*.ipynb that exists
#   bash scripts/nbval.sh book/02_*.ipynb       # some
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false ET_PROGRESS=0 PYTHONHASHSEED=0

shopt -s nullglob
notebooks=("$@")
[[ ${#notebooks[@]} -gt 0 ]] || notebooks=(book/*.ipynb)
if [[ ${#notebooks[@]} -eq 0 ]]; then
  echo "nbval: no executed notebooks in book/ yet; nothing to compare"
  exit 0
fi
python -m pytest -q -p no:cacheprovider --durations=5 --nbval --nbval-current-env --nbval-cell-timeout=900 \
  --nbval-sanitize-with tests/nbval/sanitize.cfg "${notebooks[@]}"
