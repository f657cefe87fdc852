#!/usr/bin/env bash
# Re-execute chapters on this machine (CPU: the organism) and write their outputs into book/*.ipynb.
#
#   bash scripts/execute_chapters.sh                        # every chapters/*.py
#   bash scripts/execute_chapters.sh chapters/02_*.py       # some chapters
#   bash scripts/execute_chapters.sh --fresh [chapters...]  # recompute every stored result (results/ emptied)
#   JOBS=1 bash scripts/execute_chapters.sh                 # one chapter at a time (default: 2)
#
# For each chapter: bring its generated Colab set-up cell up to date, create/update the paired notebook
# (`jupytext --sync`, pairing in jupytext.toml), execute it in place in book/ with papermill, two
# chapters at a time where one does not read the other's results (scripts/execute_notebooks.py). A
# cell error stops the script with exit 1. Then rebuild the HTML with `bash scripts/build_book.sh --no-install`.
set -euo pipefail
cd "$(dirname "$0")/.."

# One thread per chapter (2 cores: two chapters at a time), no progress bars in
# stored outputs (progress.py), and the same hash seed every run.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false ET_PROGRESS=0 PYTHONHASHSEED=0

fresh=0
if [[ "${1:-}" == "--fresh" ]]; then
  fresh=1
  shift
fi
jobs=${JOBS:-2}
some=$#
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

notebooks=()
for chapter in "${chapters[@]}"; do
  name=$(basename "${chapter%.py}")
  notebook="book/${name}.ipynb"
  jupytext --quiet --sync "$chapter"
  if [[ ! -f "$notebook" ]]; then
    echo "$chapter is not paired with $notebook: delete the 'formats:' line from its Jupytext header" \
         "(jupytext.toml pairs every chapter)" >&2
    exit 1
  fi
  notebooks+=("$notebook")
done

if [[ $fresh == 1 ]]; then
  # Recompute: move the stored results aside, so that every result is computed once, by the first
  # chapter that needs it, and later chapters read it back (ET_CACHE=0 would recompute it in each).
  aside=$(mktemp -d)
  [[ -d results ]] && mv results "$aside/results"
  trap '[[ -d results ]] || { [[ -d "$aside/results" ]] && mv "$aside/results" results; }' EXIT
fi
start=$SECONDS
python scripts/execute_notebooks.py --jobs "$jobs" "${notebooks[@]}"
echo "== ${#notebooks[@]} chapters, ${jobs} at a time: $((SECONDS - start)) s"
if [[ $fresh == 1 ]]; then
  # Every chapter recomputed: what it did not regenerate is stale. Some chapters: keep the others' results.
  [[ $some -gt 0 && -d "$aside/results" ]] && cp -rn "$aside/results/." results/
  rm -rf "$aside"
fi
