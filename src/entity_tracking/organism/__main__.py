"""``python -m entity_tracking.organism train --variant NAME``: rebuild a shipped organism checkpoint.

``train`` writes ``checkpoints/<variant>`` (or ``--out``) with its manifest, then measures the
variant's accuracy by number of boxes through `models.load_model` (the book's evaluation prompts,
seed 0, 500 per setting) and records it in the manifest. Fine-tunes need the base checkpoint first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .recipes import RECIPES, evaluate_checkpoint, variant_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m entity_tracking.organism")
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train one organism variant from its recipe")
    tr.add_argument("--variant", required=True, help=f"one of {', '.join(RECIPES)}")
    tr.add_argument("--out", help="output directory (default: the shipped checkpoint's directory)")
    tr.add_argument("--threads", type=int, default=None, help="torch threads (default: the recipe's)")
    ev = sub.add_parser("evaluate", help="accuracy by boxes of a checkpoint, recorded in its manifest")
    ev.add_argument("--variant", required=True)
    args = parser.parse_args(argv)
    name = args.variant.removeprefix("organism-")
    if name not in RECIPES:
        print(f"error: unknown organism variant {args.variant!r}; choose one of {', '.join(RECIPES)}", file=sys.stderr)
        return 2
    try:
        if args.command == "train":
            from dataclasses import replace

            from .train import train

            recipe = RECIPES[name] if args.threads is None else replace(RECIPES[name], threads=args.threads)
            out = Path(args.out) if args.out else variant_dir(name)
            train(recipe, out, variant_dir(name).parent)
            print(json.dumps(evaluate_checkpoint(name, out)))
        else:
            print(json.dumps(evaluate_checkpoint(name, variant_dir(name))))
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
