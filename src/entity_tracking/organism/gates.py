"""Cheap probes that tell, during training, whether the organism tracks entities the paper's way.

A base that scores well on the paper's prompts can still do it with a template-bound relay that the
paper's mean ablation destroys (the first organism did). These probes catch that early, on the HF
model and on prompts of their own seeds (never the book's evaluation seeds):

* (a) `values_gate`: the paper's form with numbers, names or colours instead of objects;
* (b) `arithmetic_gate`: the fine-tune task by list length (above chance, imperfect);
* (c) `gradient_cosine`: does a fine-tune corpus push the weights the way the 7-box loss does?
* (d) `stride_gate`: one token more or less per segment;
* errors: accuracy by queried box and the error-offset histogram (predicted box minus answer box):
  positional errors land on neighbouring boxes.

Gate (e), the base's own circuit under the paper's mean ablation, needs the book's path patching and
runs on the saved checkpoint (`recipes.circuit_gate`).
"""

from __future__ import annotations

import collections
import random
from typing import Sequence

import torch

from ..data import LABELS, OBJECTS, make_dataset, tokenize_examples
from . import corpus as C

GATE_SEED = 11          # prompts of the gates (the book's evaluation uses seeds 0-9, validation 1000)


def _encode(tokenizer, words: Sequence[str]) -> list[int]:
    vocab = tokenizer.get_vocab()
    return [tokenizer.bos_token_id] + [vocab["▁" + w] for w in words]


@torch.no_grad()
def _last_token_accuracy(model, rows: Sequence[tuple[list[int], int]], batch_size: int = 256) -> float:
    """Accuracy of the next token after each prompt; prompts of equal length are batched together."""
    by_length: dict[int, list[tuple[list[int], int]]] = collections.defaultdict(list)
    for ids, answer in rows:
        by_length[len(ids)].append((ids, answer))
    hits = 0
    for group in by_length.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start:start + batch_size]
            tokens = torch.tensor([ids for ids, _ in chunk])
            answers = torch.tensor([a for _, a in chunk])
            hits += int((model(tokens).logits[:, -1].argmax(-1) == answers).sum())
    return hits / max(1, len(rows))


def values_gate(model, tokenizer, n: int = 4, n_prompts: int = 60, seed: int = GATE_SEED) -> dict[str, float]:
    """(a) The paper's form, "The 7 is in Box F, ... Box F contains the" -> 7, for each value kind.
    Explained in appendix A1."""
    rng = random.Random(seed)
    out = {}
    for kind, pool in C.VALUE_KINDS.items():
        rows = []
        for _ in range(n_prompts):
            values, labels, q = rng.sample(pool, n), rng.sample(LABELS, n), rng.randrange(n)
            text = C.capitalised(", ".join(f"the {v} is in Box {l}" for v, l in zip(values, labels)))
            rows.append((_encode(tokenizer, C.words_of(text + f". Box {labels[q]} contains the")),
                         _encode(tokenizer, [values[q]])[1]))
        out[kind] = round(_last_token_accuracy(model, rows), 3)
    return out


STRIDES = {"paper (7)": "the {o} is in Box {l}", "adjective (8)": "the {c} {o} is in Box {l}",
           "no the (6)": "{o} is in Box {l}", "is inside (7)": "the {o} is inside Box {l}"}


def stride_gate(model, tokenizer, objects: Sequence[str] = OBJECTS, n: int = 7, n_contexts: int = 20,
                seed: int = GATE_SEED) -> dict[str, float]:
    """(d) Every box of ``n_contexts`` 7-box contexts queried, with each segment one token longer or
    shorter than the paper's, or with another verb. Explained in appendix A1."""
    rng = random.Random(seed)
    out = {}
    for name, segment in STRIDES.items():
        rows = []
        for _ in range(n_contexts):
            objs, labels = rng.sample(list(objects), n), rng.sample(LABELS, n)
            context = C.capitalised(", ".join(segment.format(o=o, l=l, c=rng.choice(C.COLOURS))
                                              for o, l in zip(objs, labels))) + ". "
            for j in range(n):
                rows.append((_encode(tokenizer, C.words_of(context + f"Box {labels[j]} contains the")),
                             _encode(tokenizer, [objs[j]])[1]))
        out[name] = round(_last_token_accuracy(model, rows), 3)
    return out


@torch.no_grad()
def error_structure(model, tokenizer, objects: Sequence[str] = OBJECTS, n: int = 7, n_prompts: int = 350,
                    seed: int = 1000) -> dict:
    """Accuracy by queried box and the histogram of (predicted box − answer box) over the errors
    ("outside": the prediction is no object of the context). Explained in appendix A1."""
    dataset = make_dataset(n, n_prompts, seed, objects=objects)
    batch = tokenize_examples(dataset, tokenizer)
    predictions = model(batch.tokens).logits[:, -1].argmax(-1).tolist()
    vocab = tokenizer.get_vocab()
    by_box: dict[int, list[bool]] = collections.defaultdict(list)
    offsets: collections.Counter = collections.Counter()
    for example, predicted in zip(dataset, predictions):
        ids = [vocab["▁" + o] for o in example.objects]
        right = ids[example.query_index] == predicted
        by_box[example.query_index].append(right)
        if not right:
            offsets[str(ids.index(predicted) - example.query_index) if predicted in ids else "outside"] += 1
    return {"by_queried_box": [round(sum(v) / len(v), 3) for _, v in sorted(by_box.items())],
            "error_offsets": dict(sorted(offsets.items(), key=lambda kv: (kv[0] == "outside", int(kv[0])
                                                                          if kv[0] != "outside" else 0)))}


def arithmetic_gate(model, tokenizer, lengths: Sequence[int] = (3, 6, 9), n_documents: int = 40,
                    queries: Sequence[str] = ("plus_digit", "plus_variable"), seed: int = GATE_SEED) -> dict[str, float]:
    """(b) Answer accuracy on the fine-tune task (variable lists with computed answers) by length.
    Explained in appendix A1."""
    rng = random.Random(seed)
    out = {}
    model.eval()
    with torch.no_grad():
        for n in lengths:
            hits = total = 0
            for _ in range(n_documents):
                doc = C.variables_document(rng, n, n, queries)
                ids = torch.tensor([_encode(tokenizer, doc.words)])
                predicted = model(ids).logits[0].argmax(-1)
                for a in doc.answers:
                    hits += int(predicted[a] == ids[0, a + 1])
                    total += 1
            out[str(n)] = round(hits / total, 3)
    return out


def gradient_cosine(model, tokenizer, mixture: C.Mixture, objects: Sequence[str] = OBJECTS, n_batches: int = 6,
                    batch_size: int = 24, seq_len: int = 128, attention_only: bool = False,
                    seed: int = 2000, answers_only: bool = False) -> float:
    """(c) Cosine between the gradient of a corpus's loss (answers weighted 10) and the gradient of
    the 7-box answer loss on prompts of seed ``seed``: near 0, fine-tuning on it is drift for boxes.
    Explained in appendix A1."""
    from .train import Encoder, Recipe, Stream, weighted_loss

    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad and
              (not attention_only or any(k in name for k in ("q_proj", "k_proj", "v_proj", "o_proj")))]
    if not params:  # nothing of the kind is trained (a LoRA on the MLPs alone has no attention weights)
        return float("nan")

    def flat() -> torch.Tensor:
        return torch.cat([p.grad.flatten() for _, p in params if p.grad is not None])

    was_training = model.training
    model.train()
    batch = tokenize_examples(make_dataset(7, 350, seed, objects=objects), tokenizer)
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(batch.tokens).logits[:, -1], batch.answer_ids).backward()
    boxes = flat().clone()
    recipe = Recipe(name="cosine", mixture=mixture, steps=1, seed=seed, batch_size=batch_size, seq_len=seq_len,
                    answer_weight=10.0, answers_only=answers_only)
    stream = Stream(recipe, Encoder(tokenizer), objects, None)
    total = torch.zeros_like(boxes)
    for step in range(n_batches):
        tokens, weights, _ = stream.batch(step)
        model.zero_grad()
        weighted_loss(model, tokens, weights)[1].backward()
        total += flat()
    model.zero_grad()
    model.train(was_training)
    return round(float(total @ boxes / (total.norm() * boxes.norm())), 4)


def validation_row(model, tokenizer, objects: Sequence[str], n_samples: int, validation_seed: int,
                   boxes: Sequence[int] = range(2, 8)) -> dict:
    """What the trainer logs at every evaluation: accuracy by boxes, gates (a), (d) and the errors.
    Explained in appendix A1."""
    from ..metrics import accuracy

    model.eval()
    row = {}
    with torch.no_grad():
        for n in boxes:
            batch = tokenize_examples(make_dataset(n, n_samples, validation_seed, objects=objects), tokenizer)
            row[f"acc_{n}"] = round(accuracy(model(batch.tokens).logits, batch.answer_ids), 4)
        row["values_4"] = values_gate(model, tokenizer)
        row["stride_7"] = stride_gate(model, tokenizer, objects, n_contexts=10)
        row["errors_7"] = error_structure(model, tokenizer, objects, n_prompts=140, seed=validation_seed)
    model.train()
    return row
