"""Command line: ``python -m entity_tracking accuracy ...`` and ``python -m entity_tracking models``.

Each accuracy result is printed as one JSON line, so shell scripts and checks can read it."""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_models(args) -> int:
    from .models import REGISTRY, variant_availability

    availability = variant_availability()
    for name, spec in REGISTRY.items():
        row = {
            "name": name,
            "scale": spec.scale,
            "weights": spec.weights,
            "fine_tuning": spec.fine_tuning,
            "analog_of": spec.analog_of,
            "needs_gpu": spec.needs_gpu,
            "memory_gb": round(spec.memory_gb(), 1) if spec.needs_gpu else None,
            "paper_accuracy": spec.paper_accuracy,
            "available": availability[name] is None,
            "why_not": availability[name],
        }
        print(json.dumps(row) if args.json else
              f"{name:16} {spec.scale:9} {'ok' if row['available'] else 'unavailable: ' + row['why_not']}")
    return 0


def _cmd_accuracy(args) -> int:
    import torch

    from .data import check_n_boxes
    from .metrics import model_accuracy
    from .models import load_model

    for n in args.boxes:
        check_n_boxes(n)
    if args.samples < 1:
        raise ValueError(f"--samples must be at least 1; got {args.samples}")
    torch.manual_seed(args.seed)
    for name in args.model:
        lm = load_model(name, device=args.device, authors_compat=args.authors_compat)
        for n in args.boxes:
            batch = lm.tokenize(lm.dataset(n, args.samples, args.seed))
            acc = model_accuracy(lm, batch, batch_size=args.batch_size)
            print(json.dumps({"model": name, "boxes": n, "samples": args.samples, "seed": args.seed,
                              "accuracy": round(acc, 4)}), flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m entity_tracking", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    models = sub.add_parser("models", help="list the model variants and whether each can run here")
    models.add_argument("--json", action="store_true", help="one JSON object per line")
    models.set_defaults(func=_cmd_models)
    acc = sub.add_parser("accuracy", help="entity-tracking accuracy of a model")
    acc.add_argument("--model", nargs="+", required=True, help="registry name(s) or local model directories")
    acc.add_argument("--boxes", nargs="+", type=int, default=[7], help="number(s) of boxes (paper: 7)")
    acc.add_argument("--samples", type=int, default=500, help="prompts per setting (paper: first 500)")
    acc.add_argument("--seed", type=int, default=0)
    acc.add_argument("--batch-size", type=int, default=50)
    acc.add_argument("--device", default=None, help="cpu or cuda (default: cuda for 7B models)")
    acc.add_argument("--authors-compat", action="store_true",
                     help="reproduce the authors' code (drops Goat's o_proj LoRA update)")
    acc.set_defaults(func=_cmd_accuracy)
    return parser


def main(argv=None) -> int:
    from .models import ModelLoadError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, ModelLoadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
