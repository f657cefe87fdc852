"""Execute the book's notebooks with papermill, stopping at the first cell error.

    python scripts/execute_notebooks.py book/01_introduction.ipynb [...]            # in place
    python scripts/execute_notebooks.py --jobs 2 book/*.ipynb                       # two at a time
    python scripts/execute_notebooks.py book/02_entity_tracking.ipynb \\
        -p model 7b -p n_samples 500 -o runs/02_entity_tracking_7b.ipynb          # other parameters

In place is what scripts/execute_chapters.sh does to refresh the committed CPU notebooks. With -p,
papermill injects a cell tagged `injected-parameters` with the new values right after the chapter's
`parameters` cell, and the result is written to -o (runs/ is git-ignored), so a 7B run never
overwrites the committed organism notebook. Values are Python literals; a bare word is a string.

Papermill stamps every cell with its start and end times; those are removed before an in-place
notebook is written, so re-executing a chapter changes its file only where a reader would see a
difference. Widget state is stored, so the static book shows each widget's default state.

With ``--jobs 2`` independent chapters run in two processes (each chapter uses one torch thread);
a chapter waits for the chapters whose stored results it reads (`DEPENDS_ON`), so every result is
computed once, by the first chapter that needs it, exactly as in a sequential run.
"""

from __future__ import annotations

import argparse
import ast
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import nbformat

TIMEOUT_S = 1800  # per cell; generous for a 7B run of the heaviest cells on a GPU

#: Which chapters' stored results a chapter reads (by file-name prefix): run after them.
DEPENDS_ON = {
    "01": ("07",),              # the introduction's "what reproduces here" box reads every chapter's results
    "04": ("03",),              # the base circuit
    "05": ("03",),              # the base circuit (DCM and the patching checks are its own)
    "06": ("04",),              # the fine-tunes' own circuits, found in chapter 4
    "07": ("02", "04", "05", "06"),
    "A3": ("05", "06"),
}


def _clean(nb) -> None:
    """Drop what changes on every run without changing what a reader sees (timings, papermill's
    bookkeeping)."""
    nb.metadata.pop("papermill", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)


def execute(path: Path, output: Path | None = None, parameters: dict | None = None, timeout: int = TIMEOUT_S) -> float:
    """Run every cell of ``path`` (in its folder) and write the outputs to ``output`` (default: ``path``)."""
    import papermill

    target = Path(output or path)
    target.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    nb = papermill.execute_notebook(str(path), str(target), parameters=parameters or {}, cwd=str(path.parent),
                                    kernel_name="python3", progress_bar=False, log_output=False,
                                    request_save_on_cell_execute=False, execution_timeout=timeout)
    _clean(nb)
    nbformat.write(nb, target)
    return time.perf_counter() - start


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word is a string: -p model llama-7b


def _prefix(path: Path) -> str:
    return path.name.split("_", 1)[0]


def _run(path: Path, output, parameters, timeout) -> tuple[Path, float | None, str]:
    from papermill.exceptions import PapermillExecutionError

    try:
        return path, execute(path, output, parameters, timeout), ""
    except PapermillExecutionError as err:
        return path, None, f"{err.ename}: {err.evalue}\n{''.join(err.traceback[-3:])}"


def run_all(paths: list[Path], jobs: int, timeout: int) -> int:
    """Execute ``paths`` in place, ``jobs`` at a time, each after the chapters it depends on."""
    pending = list(paths)
    prefixes = {_prefix(p) for p in paths}
    done: set[str] = set()
    running = {}
    status = 0
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            ready = [p for p in pending
                     if all(d in done or d not in prefixes for d in DEPENDS_ON.get(_prefix(p), ()))]
            while ready and len(running) < jobs:
                path = ready.pop(0)
                pending.remove(path)
                running[pool.submit(_run, path, None, None, timeout)] = path
            if not running:
                print(f"cannot order {pending}: check DEPENDS_ON", file=sys.stderr)
                return 1
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished:
                path, seconds, error = future.result()
                del running[future]
                if error:
                    print(f"FAILED {path}: a cell raised an error\n{error}", file=sys.stderr)
                    status = 1
                    pending.clear()
                else:
                    done.add(_prefix(path))
                    print(f"executed {path} in {seconds:.1f} s", flush=True)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="override a parameters-cell variable (needs -o)")
    parser.add_argument("-o", "--output", type=Path, help="where to write the executed notebook (one input only)")
    parser.add_argument("--jobs", type=int, default=1, help="notebooks executed at once (in place only)")
    parser.add_argument("--timeout", type=int, default=TIMEOUT_S, help="seconds per cell")
    args = parser.parse_args(argv)
    parameters = {name: _literal(value) for name, value in args.parameter}
    if args.output and len(args.notebooks) != 1:
        parser.error("-o takes one notebook")
    if parameters and not args.output:
        parser.error("-p needs -o: the committed notebook keeps its default parameters")
    if args.output:
        path, seconds, error = _run(args.notebooks[0], args.output, parameters, args.timeout)
        if error:
            print(f"FAILED {path}: a cell raised an error\n{error}", file=sys.stderr)
            return 1
        print(f"executed {path} -> {args.output} in {seconds:.1f} s")
        return 0
    return run_all(args.notebooks, max(1, args.jobs), args.timeout)


if __name__ == "__main__":
    sys.exit(main())
