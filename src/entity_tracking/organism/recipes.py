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


def _boxes(box_weights, paper_form, requery, filler=0.1) -> Mixture:
    return Mixture(boxes=1 - filler, filler=filler, box_weights=box_weights, paper_form=paper_form, requery=requery)


# Measured on 2 CPU cores (one thread): the base sits at chance (1/boxes: it answers with an object
# of the prompt, but not the right one) for about 5,000 steps, then learns to bind objects to boxes
# within about 1,500 steps. It stops at 6,500 steps of a 20,000-step schedule, while 7 boxes are still
# clearly imperfect (LLaMA-7B: 0.66). Contexts grow from 2-3 boxes to 7 over the first 6,000 steps.
# A last stage teaches only the embeddings of the words its corpus never used (numbers, dialogue).
BASE = Recipe(
    name="base",
    mixture=_boxes((0, 1, 1), paper_form=0.5, requery=0.3),
    stages=((3000, _boxes((0, 1, 1, 1, 1), paper_form=0.5, requery=0.3)),
            (6000, _boxes((1, 3, 3, 3, 2, 1.5, 1), paper_form=0.5, requery=0.2, filler=0.15))),
    steps=20000, stop_after=6500, batch_size=32, seq_len=96, lr=3e-3, warmup=200, answer_weight=10,
    shape=ModelShape(n_layers=3, d_model=64, n_heads=4, d_mlp=128), eval_every=500, eval_samples=100,
    vocabulary_steps=1000,
)
# The fine-tunes read their corpus half-and-half with the base's other text (not its boxes text): a
# model this small otherwise forgets entity tracking within 100 steps (notes/organism-log.md).
_FINE_TUNE = dict(init_from="base", stages=(), steps=400, stop_after=None, lr=5e-5, warmup=30, answer_weight=5.0,
                  eval_every=50, vocabulary_steps=0)
ARITHMETIC = Mixture(arithmetic=0.5, filler=0.5, arithmetic_max=9)

RECIPES: dict[str, Recipe] = {
    "base": BASE,
    "goat": replace(BASE, name="goat", mixture=ARITHMETIC, lora_rank=8, lora_alpha=16, **{**_FINE_TUNE, "lr": 2e-4}),
    "float": replace(BASE, name="float", mixture=ARITHMETIC, **_FINE_TUNE),
    "vicuna": replace(BASE, name="vicuna", mixture=Mixture(chat=0.5, filler=0.5), **_FINE_TUNE),
}

EVAL_BOXES = tuple(range(2, 8))
EVAL_SAMPLES = 500
EVAL_SEED = 0


def variant_dir(name: str) -> Path:
    return ORGANISM_DIR / name


def evaluate_checkpoint(name: str, directory: Path) -> dict:
    """Accuracy by boxes through the book's own loader and prompts; stored in the manifest (which is not
    part of the hashed files), so `tests/test_organism.py` can check it is reproduced exactly."""
    from .. import models
    from ..metrics import accuracy_by_boxes

    directory = Path(directory)
    if not (directory / "manifest.json").is_file():
        raise FileNotFoundError(f"{directory} has no manifest.json; train it with "
                                f"`python -m entity_tracking.organism train --variant {name}`")
    recipe = RECIPES[name]
    if recipe.lora_rank is not None:
        spec = models.ModelSpec(name=f"organism-{name}", base=str(variant_dir(recipe.init_from)),
                                adapter=str(directory), scale="organism", dtype="float32", needs_gpu=False)
    else:
        spec = models.ModelSpec(name=f"organism-{name}", base=str(directory), scale="organism", dtype="float32",
                                needs_gpu=False)
    lm = models.load_model(spec, device="cpu")
    accuracy = {str(n): round(a, 4) for n, a in accuracy_by_boxes(lm, EVAL_BOXES, EVAL_SAMPLES, EVAL_SEED).items()}
    manifest_path = directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["accuracy"] = {"boxes": accuracy, "samples": EVAL_SAMPLES, "seed": EVAL_SEED}
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp.replace(manifest_path)
    return {"variant": name, "accuracy": accuracy}
