#!/usr/bin/env bash
# Re-execute chapters on this machine (CPU: the organism) and write their outputs into book/*.ipynb.
#
#   bash scripts/execute_chapters.sh                        # every chapters/*.py
#   bash scripts/execute_chapters.sh chapters/02_*.py       # some chapters
#   bash scripts/execute_chapters.sh --fresh [chapters...]  # recompute cached results (ET_CACHE=0)
#
# For each chapter: bring its generated Colab set-up cell up to date, create/update the paired notebook
# (`jupytext --sync`, pairing in jupytext.toml), execute it in place in book/. A cell error stops
# the script with exit 1. Then rebuild the HTML with `bash scripts/build_book.sh --no-install`.
set -euo pipefail
cd "$(dirname "$0")/.."

# One thread (2 shared cores: more threads are slower, pitfall 12 of tooling.md), no progress bars in
# stored outputs (progress.py), and the same hash seed every run.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false ET_PROGRESS=0 PYTHONHASHSEED=0

if [[ "${1:-}" == "--fresh" ]]; then
  export ET_CACHE=0
  shift
fi
if [[ $# -gt 0 ]]; then
  chapters=("$@")
else
  shopt -s nullglob
  chapters=(chapters/*.py)
fi
if [[ ${#chapters[@]} -eq 0 ]]; then
  echo "no chapters to execute" >&2
  exit 1
fi

python scripts/colab_cells.py --write "${chapters[@]}"   # the generated first cell, current

for chapter in "${chapters[@]}"; do
  name=$(basename "${chapter%.py}")
  notebook="book/${name}.ipynb"
  start=$SECONDS
  jupytext --quiet --sync "$chapter"
  if [[ ! -f "$notebook" ]]; then
    echo "$chapter is not paired with $notebook: delete the 'formats:' line from its Jupytext header" \
         "(jupytext.toml pairs every chapter)" >&2
    exit 1
  fi
  python scripts/execute_notebooks.py "$notebook"
  echo "== ${chapter} -> ${notebook}: $((SECONDS - start)) s"
done
