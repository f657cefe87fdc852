"""The shipped organism variants: one recipe each, the single source of how a checkpoint was made.

The fine-tunes mirror the paper's models: Goat was LLaMA-7B plus a LoRA adapter trained on synthetic
arithmetic, FLoat the same data as a full fine-tune, Vicuna a full fine-tune on conversations. Here the
arithmetic binds numbers to single-letter variables and never mentions boxes or objects.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ..models import ORGANISM_DIR
from .corpus import Mixture
from .train import ModelShape, Recipe


def _pretraining(list_lengths) -> Mixture:
    return Mixture(boxes=0.50, values=0.18, variables=0.15, filler=0.12, chat=0.05,
                   list_lengths=list_lengths, paper_form=0.4, requery=0.2, variables_min=2, variables_max=4)


# Lists grow from 1-3 items to 1-7 over the first 5,000 steps; 6 and 7 items stay rare (LLaMA-7B's
# 0.66 at 7 boxes). The base sits at chance (1/boxes) for about 7,000 steps, then learns the lookup;
# the draw order of the corpus is the one that leaves that plateau (notes/organism-log.md: two other
# orders stayed at chance for 14,000 steps). From step RARE_FROM on, boxes and variables are named
# mostly with the first half of the alphabet (N-Z kept with probability RARE_KEEP): the base keeps
# refining its lookup on the common letters only, as a web-trained model sees some names far more
# often than others. The arithmetic names its variables with all 26 letters.
RARE_LETTERS = "NOPQRSTUVWXYZ"
RARE_FROM = 9000
RARE_KEEP = 0.05
_FINAL = _pretraining((1, 3, 3, 3, 2, 1.5, 1))
BASE = Recipe(
    name="base",
    mixture=_pretraining((1, 2, 2, 0, 0, 0, 0)),
    stages=((2000, _pretraining((1, 2, 3, 2, 1, 0, 0))), (5000, _FINAL),
            (RARE_FROM, replace(_FINAL, rare_labels=RARE_LETTERS, rare_keep=RARE_KEEP))),
    steps=12000, stop_after=12000, batch_size=24, seq_len=128, lr=3e-3, warmup=200, answer_weight=10,
    shape=ModelShape(n_layers=3, d_model=64, n_heads=4, d_mlp=128), eval_every=500, eval_samples=140, threads=1,
)
#: The arithmetic of the Goat and FLoat analogs: variable lists longer than pre-training's, every
#: question a sum (computed, not copied), loss on the answers only (as Goat was trained).
ARITHMETIC = Mixture(variables=1.0, variables_min=5, variables_max=9, variable_queries=("plus_digit", "plus_variable"),
                     variable_query_weights=(0.6, 0.4))
_FINE_TUNE = dict(init_from="base", stages=(), steps=600, stop_after=None, lr=1e-4, warmup=30, min_lr_ratio=1.0,
                  answer_weight=1.0, answers_only=True, eval_every=100, embedding_decay=0.0, embedding_decay_from=0)

RECIPES: dict[str, Recipe] = {
    "base": BASE,
    "goat": replace(BASE, name="goat", mixture=ARITHMETIC, lora_rank=8, lora_alpha=16, **{**_FINE_TUNE, "lr": 1e-3}),
    "float": replace(BASE, name="float", mixture=ARITHMETIC, **_FINE_TUNE),
    "vicuna": replace(BASE, name="vicuna", mixture=Mixture(chat=1.0), **_FINE_TUNE),
}

EVAL_BOXES = tuple(range(2, 8))
EVAL_SAMPLES = 500
EVAL_SEED = 0


def variant_dir(name: str) -> Path:
    return ORGANISM_DIR / name


def _spec(name: str, directory: Path):
    from .. import models

    recipe = RECIPES[name]
    if recipe.lora_rank is not None:
        return models.ModelSpec(name=f"organism-{name}", base=str(variant_dir(recipe.init_from)),
                                adapter=str(directory), scale="organism", dtype="float32", needs_gpu=False)
    return models.ModelSpec(name=f"organism-{name}", base=str(directory), scale="organism", dtype="float32",
                            needs_gpu=False)


def circuit_gate(name: str, directory: Path) -> dict:
    """Gate (e) on validation prompts (seed `train.VALIDATION_SEED`, never the book's): the variant's
    own circuit found by the book's path patching, and its faithfulness under the paper's mean
    ablation beside random circuits of its shape. Recorded in the manifest. Explained in appendix A1."""
    from .. import circuit_eval as E
    from .. import models
    from .. import path_patching as PP
    from ..data import TaskConfig
    from .train import VALIDATION_SEED

    lm = models.load_model(_spec(name, Path(directory)), device="cpu")
    circuit = PP.discover_circuit(lm, PP.PathPatchingConfig(task=TaskConfig(n_samples=300, dataset_seed=VALIDATION_SEED)))
    faith = E.faithfulness(E.ablation_setup(lm, E.EvalConfig(task=TaskConfig(dataset_seed=VALIDATION_SEED))), circuit)
    return {"groups": {g: [f"L{l}H{h}" for l, h in hs] for g, hs in circuit.groups.items()},
            **{k: round(faith[k], 4) for k in ("full_model", "circuit", "random_circuit", "faithfulness",
                                                "random_faithfulness")}}


def evaluate_checkpoint(name: str, directory: Path) -> dict:
    """Accuracy by boxes through the book's own loader and prompts; stored in the manifest (which is not
    part of the hashed files), so `tests/test_organism.py` can check it is reproduced exactly.
    Explained in appendix A1."""
    from .. import models
    from ..metrics import accuracy_by_boxes

    directory = Path(directory)
    if not (directory / "manifest.json").is_file():
        raise FileNotFoundError(f"{directory} has no manifest.json; train it with "
                                f"`python -m entity_tracking.organism train --variant {name}`")
    lm = models.load_model(_spec(name, directory), device="cpu")
    accuracy = {str(n): round(a, 4) for n, a in accuracy_by_boxes(lm, EVAL_BOXES, EVAL_SAMPLES, EVAL_SEED).items()}
    manifest_path = directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["accuracy"] = {"boxes": accuracy, "samples": EVAL_SAMPLES, "seed": EVAL_SEED}
    manifest.setdefault("gates", {})["circuit (validation prompts)"] = circuit_gate(name, directory)
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.replace(manifest_path)
    return {"variant": name, "accuracy": accuracy}
