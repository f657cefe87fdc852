"""Command line: every experiment of the book as a batch job, ``python -m entity_tracking COMMAND ...``.

Each command prints one JSON line per result, so shell scripts and checks can read it, and reads and
writes the same stored results (``results/``) as the chapters: a circuit found here is the one
chapter 3 shows, and a 7B run done here on a GPU is what the book built without one displays.

    python -m entity_tracking models
    python -m entity_tracking accuracy --model organism-base --boxes 2 7
    python -m entity_tracking circuit --model llama-7b
    python -m entity_tracking faithfulness --model goat-7b --circuit-of llama-7b
    python -m entity_tracking dcm --model llama-7b
    python -m entity_tracking cmap --source goat-7b --target llama-7b
    python -m entity_tracking knockout --model llama-7b

Explained in chapter 1 (running the book) and the README.
"""

from __future__ import annotations

import argparse
import json
import sys


def _task(args, n_samples: int | None = None):
    from .data import TaskConfig

    return TaskConfig(n_boxes=args.boxes, n_samples=args.samples if args.samples is not None else n_samples or 500,
                      dataset_seed=args.seed, authors_compat=getattr(args, "authors_compat", False))


def _print(row: dict) -> None:
    print(json.dumps(row, default=str), flush=True)


def _cmd_models(args) -> int:
    from .models import REGISTRY, variant_availability

    availability = variant_availability()
    for name, spec in REGISTRY.items():
        row = {
            "name": name, "scale": spec.scale, "weights": spec.weights, "fine_tuning": spec.fine_tuning,
            "analog_of": spec.analog_of, "needs_gpu": spec.needs_gpu,
            "memory_gb": round(spec.memory_gb(), 1) if spec.needs_gpu else None,
            "paper_accuracy": spec.paper_accuracy, "available": availability[name] is None,
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
            _print({"model": name, "boxes": n, "samples": args.samples, "seed": args.seed, "accuracy": round(acc, 4)})
    return 0


def _circuit_config(args, n_samples: int = 300):
    from .path_patching import PathPatchingConfig

    return PathPatchingConfig(task=_task(args, n_samples), pairing_seed=args.pairing_seed)


def _cmd_circuit(args) -> int:
    from .path_patching import stored_circuit

    circuit = stored_circuit(args.model, _circuit_config(args))
    _print({"model": args.model, "groups": {g: [f"L{l}H{h}" for l, h in hs] for g, hs in circuit.groups.items()},
            "sizes": circuit.sizes(), "notes": circuit.notes})
    return 0


def _cmd_faithfulness(args) -> int:
    from .circuit_eval import EvalConfig, stored_faithfulness
    from .path_patching import stored_circuit

    circuit = stored_circuit(args.circuit_of or args.model, _circuit_config(args))
    result = stored_faithfulness(args.model, circuit, EvalConfig(task=_task(args), random_draws=args.random_draws))
    _print({"model": args.model, "circuit_of": args.circuit_of or args.model,
            **{k: result[k] for k in ("full_model", "circuit", "random_circuit", "faithfulness",
                                      "random_faithfulness", "circuit_heads", "forward_passes")}})
    return 0


def _cmd_dcm(args) -> int:
    from .dcm import DCMConfig, stored_circuit_dcm
    from .path_patching import stored_circuit

    circuit = stored_circuit(args.model, _circuit_config(args))
    summary, _ = stored_circuit_dcm(args.model, circuit, DCMConfig(task=_task(args, 2000), dcm_seed=args.dcm_seed))
    for row in summary.itertuples():
        _print({"model": args.model, "group": row.group, "desideratum": row.desideratum,
                "heads": [f"L{l}H{h}" for l, h in row.heads], "test_accuracy": row.test_accuracy})
    return 0


def _cmd_cmap(args) -> int:
    from .cmap import CMAPConfig, finetuned_head_sets, stored_cmap
    from .dcm import DCMConfig

    head_sets = finetuned_head_sets(args.source, _circuit_config(args),
                                    DCMConfig(task=_task(args, 2000), dcm_seed=args.dcm_seed), args.selection)
    result = stored_cmap(args.source, args.target, head_sets, CMAPConfig(task=_task(args)))
    table = result["table"].set_index("row")
    _print({"source": args.source, "target": args.target, "source_accuracy": result["source_accuracy"],
            "target_accuracy": result["target_accuracy"], "rows": table["accuracy"].to_dict(),
            "heads": table["n_heads"].to_dict(), "target_passes": result.get("target_passes")})
    return 0


def _cmd_knockout(args) -> int:
    from .knockout import KnockoutConfig, stored_knockout

    result = stored_knockout(args.model, config=KnockoutConfig(task=_task(args), edge_seed=args.edge_seed))
    curves = result["curves"]
    _print({"model": args.model, "model_accuracy": result["model_accuracy"],
            "curves": {e: g.set_index("start_layer")["accuracy"].to_dict() for e, g in curves.groupby("edge", sort=False)}})
    return 0


def _task_arguments(parser, samples_default: str = "the method's paper default") -> None:
    parser.add_argument("--boxes", type=int, default=7, help="boxes per prompt (paper: 7)")
    parser.add_argument("--samples", type=int, default=None, help=f"prompts (default: {samples_default})")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed of the prompts (the book's chapters use 0)")
    parser.add_argument("--pairing-seed", type=int, default=0, help="path patching's corrupted pairing seed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m entity_tracking", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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

    circuit = sub.add_parser("circuit", help="the model's circuit, found by path patching (chapter 3)")
    circuit.add_argument("--model", required=True)
    _task_arguments(circuit, "300, the paper's path-patching prompts")
    circuit.set_defaults(func=_cmd_circuit)

    faith = sub.add_parser("faithfulness", help="a circuit inside a model under the paper's mean ablation (chapter 4)")
    faith.add_argument("--model", required=True, help="the model the circuit runs in")
    faith.add_argument("--circuit-of", default=None, help="whose circuit (default: the model's own)")
    faith.add_argument("--random-draws", type=int, default=10, help="random circuits (paper: 10)")
    _task_arguments(faith, "500")
    faith.set_defaults(func=_cmd_faithfulness)

    dcm = sub.add_parser("dcm", help="DCM on every group x desideratum of the model's circuit (chapter 5)")
    dcm.add_argument("--model", required=True)
    dcm.add_argument("--dcm-seed", type=int, default=20, help="DCM's pairing and torch seed (the authors' 20)")
    _task_arguments(dcm, "2000 DCM pairs")
    dcm.set_defaults(func=_cmd_dcm)

    cmap = sub.add_parser("cmap", help="cross-model activation patching, source heads into the target (chapter 6)")
    cmap.add_argument("--source", required=True, help="the fine-tuned model, e.g. goat-7b")
    cmap.add_argument("--target", required=True, help="the model patched into, e.g. llama-7b")
    cmap.add_argument("--selection", choices=("dcm", "circuit"), default="dcm",
                      help="the source circuit's DCM heads (paper) or every head of each group")
    cmap.add_argument("--dcm-seed", type=int, default=20)
    _task_arguments(cmap, "500")
    cmap.set_defaults(func=_cmd_cmap)

    knock = sub.add_parser("knockout", help="attention knockout of the paper's edges (appendix A2)")
    knock.add_argument("--model", required=True)
    knock.add_argument("--edge-seed", type=int, default=5, help="seed of the random edges (paper: 5)")
    _task_arguments(knock, "500")
    knock.set_defaults(func=_cmd_knockout)
    return parser


def main(argv=None) -> int:
    from .models import ModelLoadError

    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "samples", None) is not None and args.samples < 1:
            raise ValueError(f"--samples must be at least 1; got {args.samples}")
        if args.command not in ("models", "accuracy"):
            from .data import check_n_boxes
            from .models import resolve

            check_n_boxes(args.boxes)
            for name in ("model", "source", "target", "circuit_of"):
                if getattr(args, name, None):
                    resolve(getattr(args, name))
        return args.func(args)
    except (ValueError, ModelLoadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
