"""Execute notebooks in their own folder, stopping at the first cell error.

    python scripts/execute_notebooks.py book/01_introduction.ipynb [...]          # in place
    python scripts/execute_notebooks.py book/02_entity_tracking.ipynb \\
        -p model '"7b"' -p samples 500 -o runs/02_entity_tracking_7b.ipynb      # other parameters

In place is what scripts/execute_chapters.sh does to refresh the committed CPU notebooks. With -p,
papermill-style: a cell tagged `injected-parameters` holding the new values is put right after the
chapter's `parameters` cell, and the result is written to -o (runs/ is git-ignored), so a 7B run never
overwrites the committed organism notebook. Values are Python literals (quote strings).

`jupyter execute --inplace` would also work but stamps every cell with its execution times, which
changes the committed notebooks on every run without changing anything a reader sees; here timing is
not recorded. Widget state is stored, so the static book shows each widget's default state.
"""

from __future__ import annotations

import argparse
import ast
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

TIMEOUT_S = 1800  # per cell; generous for a 7B run of the heaviest cells on a GPU
INJECTED_TAG = "injected-parameters"


def inject_parameters(nb, parameters: dict) -> None:
    """Put ``parameters`` in a cell after the one tagged `parameters` (replacing an earlier injection)."""
    nb.cells = [c for c in nb.cells if INJECTED_TAG not in c.metadata.get("tags", [])]
    position = next((i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])), None)
    if position is None:
        raise ValueError("the notebook has no cell tagged 'parameters'")
    source = "# Parameters injected by scripts/execute_notebooks.py\n" + "".join(
        f"{name} = {value!r}\n" for name, value in parameters.items())
    nb.cells.insert(position + 1, nbformat.v4.new_code_cell(source, metadata={"tags": [INJECTED_TAG]}))


def execute(path: Path, output: Path | None = None, parameters: dict | None = None, timeout: int = TIMEOUT_S) -> float:
    """Run every cell of ``path`` (in its folder) and write the outputs to ``output`` (default: ``path``)."""
    nb = nbformat.read(path, as_version=4)
    if parameters:
        inject_parameters(nb, parameters)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=False,
                            record_timing=False, resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    for cell in nb.cells:  # left over from executions by other tools
        cell.metadata.pop("execution", None)
    target = output or path
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, target)
    return time.perf_counter() - start


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word is a string: -p model llama-7b


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="override a parameters-cell variable (needs -o)")
    parser.add_argument("-o", "--output", type=Path, help="where to write the executed notebook (one input only)")
    parser.add_argument("--timeout", type=int, default=TIMEOUT_S, help="seconds per cell")
    args = parser.parse_args(argv)
    parameters = {name: _literal(value) for name, value in args.parameter}
    if args.output and len(args.notebooks) != 1:
        parser.error("-o takes one notebook")
    if parameters and not args.output:
        parser.error("-p needs -o: the committed notebook keeps its default parameters")
    for path in args.notebooks:
        try:
            seconds = execute(path, args.output, parameters, args.timeout)
        except CellExecutionError as err:
            print(f"FAILED {path}: a cell raised an error\n{err}", file=sys.stderr)
            return 1
        print(f"executed {path} -> {args.output or path} in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
