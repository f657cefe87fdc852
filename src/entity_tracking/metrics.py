"""The paper's measurements: accuracy, probability of the correct object, the path-patching score."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .data import TaskBatch
from .patching import last_logits


def predictions(logits: torch.Tensor) -> torch.Tensor:
    """Argmax next token at the last position (``logits`` may be ``[B, pos, vocab]`` or ``[B, vocab]``).
    Explained in chapter 2."""
    return (last_logits(logits) if logits.dim() == 3 else logits).argmax(-1)


def correct(logits: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
    """Whether each prompt's top next token is its answer. Explained in chapter 2."""
    return predictions(logits) == answer_ids.to(logits.device)


def accuracy(logits: torch.Tensor, answer_ids: torch.Tensor) -> float:
    """Fraction of prompts whose top next token is the answer (the paper's metric). Explained in chapter 2."""
    return correct(logits, answer_ids).float().mean().item()


def answer_probs(logits: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
    """Softmax probability of each prompt's answer token at the last position. Explained in chapter 2."""
    last = last_logits(logits) if logits.dim() == 3 else logits
    return last.float().softmax(-1).gather(-1, answer_ids.to(last.device).unsqueeze(-1)).squeeze(-1)


def path_patching_score(p_patched: torch.Tensor, p_clean: torch.Tensor) -> torch.Tensor:
    """(p_patched - p_clean) / p_clean averaged over prompts: the relative change in the probability
    of the correct object; strongly negative for heads the behaviour depends on. Explained in chapter 2."""
    return ((p_patched - p_clean) / p_clean).mean(dim=-1)


def batched_logits(run: Callable[[TaskBatch], torch.Tensor], batch: TaskBatch, batch_size: int = 50) -> torch.Tensor:
    """Last-position logits of ``run`` over a batch in chunks (no Python loop over single prompts).
    Explained in chapter 2."""
    outs = []
    with torch.no_grad():
        for chunk in batch.batches(batch_size):
            outs.append(last_logits(run(chunk)).float())
    return torch.cat(outs)


def model_accuracy(lm, batch: TaskBatch, batch_size: int = 50) -> float:
    """Accuracy of a loaded model on a batch of prompts, in chunks. Explained in chapter 2."""
    logits = batched_logits(lambda chunk: lm.model(chunk.tokens), batch, batch_size)
    return accuracy(logits, batch.answer_ids)


def accuracy_by_boxes(lm, boxes: Sequence[int] = range(2, 8), n_samples: int = 500, seed: int = 0,
                      batch_size: int = 50) -> dict[int, float]:
    """Accuracy on the paper's prompts for each number of boxes (fixed seed: the same prompts for
    every model of the same vocabulary). Explained in chapter 2."""
    return {n: model_accuracy(lm, lm.tokenize(lm.dataset(n, n_samples, seed)), batch_size) for n in boxes}


def stored_accuracy_table(models: Sequence, boxes: Sequence[int] = range(2, 8), task=None,
                          batch_size: int = 50) -> "pd.DataFrame":
    """Accuracy of each model at each number of boxes, on the same prompts for every model (the
    task's ``n_samples`` lines of seed ``dataset_seed``): a tidy frame (model, boxes, accuracy,
    n_samples, seed, source="ours"). Each model's row is stored under ``results/`` by its weights, so
    a 7B run done once on a GPU can be shown by the book built without one. Explained in chapter 2."""
    import pandas as pd
    from dataclasses import asdict, replace

    from . import variants
    from .cache import cached
    from .data import TaskConfig

    task = task or TaskConfig()
    boxes = [int(b) for b in boxes]
    rows = []
    for model in models:
        params = {"model": variants.fingerprint(model), "boxes": boxes, "task": asdict(task)}

        def compute(model=model):
            lm = variants.load(model)
            return {str(n): model_accuracy(lm, lm.batch(replace(task, n_boxes=n)), batch_size) for n in boxes}

        accuracy_of = cached("accuracy", params, compute)
        rows += [{"model": variants.label(model), "boxes": n, "accuracy": accuracy_of[str(n)],
                  "n_samples": task.n_samples, "seed": task.dataset_seed, "source": "ours"} for n in boxes]
    return pd.DataFrame(rows)
