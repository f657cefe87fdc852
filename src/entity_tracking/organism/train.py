"""Training the organism: a tiny `LlamaForCausalLM` on a synthetic corpus, on CPU, from a seed.

The trainer packs documents into fixed-length windows (each document starts with ``<s>``, as every
evaluation prompt does), weights the loss of answer words (the tokens that need a lookup, a few per
document among many that need none), and can grow the number of boxes over training (a curriculum).
A fine-tune starts from a saved checkpoint and trains either every weight (FLoat, Vicuna analogs) or a
LoRA adapter on q/k/v/o_proj (the Goat analog, as Goat itself was trained).

What a run writes is a Hugging Face directory that `models.load_model` reads like LLaMA-7B's, plus a
``manifest.json`` (recipe, seed, steps, losses, learning curve, sha256 of every file, accuracy by
boxes). It is written to a temporary directory and renamed at the end, so an interrupted run leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ..data import OBJECTS, make_dataset, single_token_words, tokenize_examples
from ..metrics import accuracy
from ..progress import progress
from . import gates
from .corpus import Document, HeldOut, Mixture, organism_words

VALIDATION_SEED = 1000  # learning curves use their own prompts, never the book's evaluation seeds


@dataclass(frozen=True)
class ModelShape:
    """The organism's LLaMA shape; the defaults are the larger one a gate may call for. Explained in appendix A1."""

    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 8
    d_mlp: int = 256
    max_positions: int = 256
    # HF's default init (std 0.02) is tuned for d_model in the thousands; at d_model 64 it leaves every
    # attention pattern uniform and the lookup heads slow to form. None: 0.02 * sqrt(768 / d_model).
    init_std: float | None = None
    # Tied input/output embeddings make copying a context word to the output a near-identity map for
    # the attention heads, which a tiny model finds much sooner than two separate tables.
    tie_embeddings: bool = True


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a checkpoint (with the code): the corpus, the schedule, the shape.
    Explained in appendix A1."""

    name: str
    mixture: Mixture
    steps: int                            # length of the learning-rate schedule
    seed: int = 0
    stop_after: int | None = None         # stop early, mid-schedule (the base stops before it is perfect)
    init_from: str | None = None          # variant directory to fine-tune (None: train from scratch)
    lora_rank: int | None = None          # train a LoRA adapter instead of every weight
    lora_alpha: int | None = None
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")  # Goat's: all four projections
    shape: ModelShape = ModelShape()
    batch_size: int = 32
    seq_len: int = 128
    lr: float = 2e-3
    warmup: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    # Decoupled weight decay of the embedding table alone (each step: rows *= 1 - lr * decay), from step
    # `embedding_decay_from` on. A row the corpus stops using fades; the rows in use are held up by
    # their gradients: a name the model has not seen for a long time becomes one it knows less well.
    embedding_decay: float = 0.0
    embedding_decay_from: int = 0
    embedding_decay_unused_only: bool = False  # decay only the rows of tokens absent from the step's batch
    answer_weight: float = 5.0            # loss weight of answer words relative to other words
    answers_only: bool = False            # loss on answer words only (Goat's "loss on outputs only")
    stages: tuple[tuple[int, Mixture], ...] = ()   # (step, mixture): the corpus from that step on (a curriculum)
    eval_every: int = 250
    eval_samples: int = 140
    threads: int = 2                      # results are bit-identical run to run for a fixed thread count


# ------------------------------------------------------------------------------------------------
# Tokens
# ------------------------------------------------------------------------------------------------

def build_tokenizer(directory: Path):
    """One token per word of the organism's world, so every box letter and object is one token, as
    the paper's prompts are for LLaMA. Explained in appendix A1."""
    from ..testing import build_word_tokenizer

    return build_word_tokenizer(organism_words(), directory)


class Encoder:
    """Word -> id, exactly as the saved tokenizer encodes the joined text (checked in the tests).
    Explained in appendix A1."""

    def __init__(self, tokenizer):
        vocab = tokenizer.get_vocab()
        self.bos = tokenizer.bos_token_id
        self.ids = {piece[1:]: i for piece, i in vocab.items() if piece.startswith("▁")}

    def __call__(self, words: list[str]) -> list[int]:
        return [self.ids[w] for w in words]


class Stream:
    """An endless stream of packed windows ``(tokens [B, T], weights [B, T-1], is_answer [B, T-1])``.
    Explained in appendix A1."""

    def __init__(self, recipe: Recipe, encoder: Encoder, objects, held_out: HeldOut | None):
        self.recipe = recipe
        self.encoder = encoder
        self.rng = random.Random(recipe.seed)
        self.samplers = [(0, recipe.mixture.sampler(objects, held_out))]
        self.samplers += [(start, mix.sampler(objects, held_out)) for start, mix in recipe.stages]
        self.buffer: list[int] = []
        self.answer_flags: list[bool] = []

    def _document(self, step: int) -> Document:
        sample = [s for start, s in self.samplers if step >= start][-1]
        return sample(self.rng)

    def batch(self, step: int):
        r = self.recipe
        need = r.batch_size * r.seq_len
        while len(self.buffer) < need:
            doc = self._document(step)
            ids = [self.encoder.bos] + self.encoder(doc.words)
            flags = [False] * len(ids)
            for a in doc.answers:
                flags[a + 1] = True
            self.buffer.extend(ids)
            self.answer_flags.extend(flags)
        tokens = torch.tensor(self.buffer[:need]).view(r.batch_size, r.seq_len)
        flags = torch.tensor(self.answer_flags[:need]).view(r.batch_size, r.seq_len)[:, 1:]
        del self.buffer[:need], self.answer_flags[:need]
        weights = torch.where(flags, r.answer_weight, 0.0 if r.answers_only else 1.0)
        return tokens, weights, flags


# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------

def new_model(shape: ModelShape, tokenizer, seed: int):
    """A freshly initialised LLaMA of this shape: the architecture the 7B path loads. Explained in appendix A1."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=shape.d_model, intermediate_size=shape.d_mlp,
        num_hidden_layers=shape.n_layers, num_attention_heads=shape.n_heads, num_key_value_heads=shape.n_heads,
        max_position_embeddings=shape.max_positions, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=shape.tie_embeddings,
        rms_norm_eps=1e-5, initializer_range=shape.init_std or 0.02 * math.sqrt(768 / shape.d_model),
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def weighted_loss(model, tokens: torch.Tensor, weights: torch.Tensor):
    """Next-token loss per position, and its mean with answer words weighted up. Explained in appendix A1."""
    logits = model(tokens).logits[:, :-1]
    losses = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none").view_as(weights)
    return losses, (losses * weights).sum() / weights.sum()


def _lr(recipe: Recipe, step: int) -> float:
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    t = min(1.0, (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup))  # then stay at the floor
    return recipe.lr * (recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def validation_accuracy(model, tokenizer, objects, boxes=range(2, 8), n_samples: int = 140) -> dict[int, float]:
    """Accuracy on validation prompts (their own seed) straight from the HF model: cheap, for curves.
    Explained in appendix A1."""
    model.eval()
    out = {}
    with torch.no_grad():
        for n in boxes:
            batch = tokenize_examples(make_dataset(n, n_samples, VALIDATION_SEED, objects=objects), tokenizer)
            out[n] = accuracy(model(batch.tokens).logits, batch.answer_ids)
    model.train()
    return out


def train(recipe: Recipe, out_dir: Path, checkpoints: Path, log=print, save_state: tuple[int, Path] | None = None,
          resume: Path | None = None) -> dict:
    """Train ``recipe`` and write its checkpoint to ``out_dir``; returns the manifest.

    ``save_state=(step, path)`` also saves everything the run depends on after ``step`` steps (weights,
    optimiser, the corpus's random state and packing buffer, curve so far); ``resume=path`` continues
    from such a file. A recipe that differs from the saved one only in what it does from that step on
    (a later stage) then trains in a fraction of the time, to the weights a run from scratch writes,
    bit for bit (`tests/test_organism.py`). Explained in appendix A1."""
    n_steps = recipe.stop_after or recipe.steps
    if save_state is not None and not 0 < save_state[0] <= n_steps:
        raise ValueError(f"save_state step {save_state[0]} is outside the run's {n_steps} steps")
    state = None
    if resume is not None:  # checked before anything is written
        state = torch.load(resume, weights_only=False)
        if state["prefix"] != _prefix(recipe, state["step"]):
            raise ValueError(f"{resume} was saved by a recipe that differs from {recipe.name!r} before step "
                             f"{state['step']}; resume only a recipe whose changes start at or after that step")
    torch.set_num_threads(recipe.threads)
    random.seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    if recipe.init_from is None:
        tokenizer = build_tokenizer(tmp)
        model = new_model(recipe.shape, tokenizer, recipe.seed)
    else:
        from transformers import AutoTokenizer, LlamaForCausalLM

        source = checkpoints / recipe.init_from
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = LlamaForCausalLM.from_pretrained(source, dtype=torch.float32)
        if recipe.lora_rank is None:
            tokenizer.save_pretrained(tmp)
    objects = tuple(single_token_words(OBJECTS, tokenizer))
    if recipe.lora_rank is not None:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=recipe.lora_rank, lora_alpha=recipe.lora_alpha or recipe.lora_rank, lora_dropout=0.0, bias="none",
            target_modules=list(recipe.lora_targets)))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay, betas=(0.9, 0.98))
    stream = Stream(recipe, Encoder(tokenizer), objects, HeldOut(objects))
    curve = []
    cosines = {}
    # gate (c): does this corpus push the weights the way 7 boxes do? (a resumed run has it in its state)
    if recipe.init_from is not None and state is None:
        cosines["start"] = _cosines(model, tokenizer, recipe, objects)
        log(json.dumps({"gradient_cosine_with_7_boxes": cosines["start"]}))
    ema = ema_answer = None
    first = 0
    if state is not None:
        first = state["step"]
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimiser"])
        stream.rng.setstate(state["corpus_rng"])
        stream.buffer, stream.answer_flags = state["buffer"], state["answer_flags"]
        for (_, sample), label_rng in zip(stream.samplers, state["label_rngs"]):
            if label_rng is not None and sample.relabel is not None:
                sample.relabel.rng.setstate(label_rng)
        ema, ema_answer, curve, cosines = state["ema"], state["ema_answer"], state["curve"], state["cosines"]
    start = time.time()
    bar = progress(range(first, n_steps), desc=f"training {recipe.name}")
    for step in bar:
        tokens, weights, flags = stream.batch(step)
        for group in opt.param_groups:
            group["lr"] = _lr(recipe, step)
        losses, loss = weighted_loss(model, tokens, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if recipe.embedding_decay and step >= recipe.embedding_decay_from:
            with torch.no_grad():
                table = model.get_input_embeddings().weight
                factor = 1 - _lr(recipe, step) * recipe.embedding_decay
                if recipe.embedding_decay_unused_only:
                    unused = torch.ones(table.shape[0], dtype=torch.bool)
                    unused[tokens.unique()] = False
                    table[unused] *= factor
                else:
                    table.mul_(factor)
        plain = losses.mean().item()
        answer = losses[flags].mean().item() if flags.any() else float("nan")
        ema = plain if ema is None else 0.98 * ema + 0.02 * plain
        if not math.isnan(answer):
            ema_answer = answer if ema_answer is None else 0.98 * ema_answer + 0.02 * answer
        if (step + 1) % recipe.eval_every == 0 or step + 1 == n_steps:
            seconds = round(time.time() - start, 1)
            row = gates.validation_row(model, tokenizer, objects, recipe.eval_samples, VALIDATION_SEED)
            row["arithmetic"] = gates.arithmetic_gate(model, tokenizer, n_documents=20)
            curve.append({"step": step + 1, "loss": round(ema, 4), "answer_loss": round(ema_answer or 0, 4),
                          "seconds": seconds, **row})
            log(json.dumps(curve[-1]))
        if save_state is not None and step + 1 == save_state[0]:
            _save_state(Path(save_state[1]), recipe, step + 1, model, opt, stream, ema, ema_answer, curve, cosines)
    if recipe.init_from is not None:
        cosines["end"] = _cosines(model, tokenizer, recipe, objects)
    return _save(model, recipe, curve, time.time() - start, tmp, out_dir, {"gradient_cosine": cosines} if cosines else {})


def _prefix(recipe: Recipe, step: int) -> dict:
    """What the first ``step`` steps of a run depend on: the recipe without its name, evaluation
    settings and the stages that start later."""
    key = asdict(recipe)
    for field in ("name", "eval_every", "eval_samples", "stop_after", "stages"):
        key.pop(field)
    key["stages"] = [asdict(mixture) | {"from": start} for start, mixture in recipe.stages if start < step]
    return key


def _save_state(path: Path, recipe: Recipe, step: int, model, opt, stream: Stream, ema, ema_answer, curve, cosines):
    tmp = path.with_name(path.name + ".partial")
    torch.save({"step": step, "prefix": _prefix(recipe, step), "model": model.state_dict(), "optimiser": opt.state_dict(),
                "corpus_rng": stream.rng.getstate(), "buffer": list(stream.buffer),
                "answer_flags": list(stream.answer_flags),
                "label_rngs": [s.relabel.rng.getstate() if s.relabel else None for _, s in stream.samplers],
                "ema": ema, "ema_answer": ema_answer, "curve": list(curve),
                "cosines": dict(cosines)}, tmp)
    tmp.replace(path)


def _cosines(model, tokenizer, recipe: Recipe, objects) -> dict:
    mixture = recipe.mixture
    only = recipe.answers_only
    return {"all weights": gates.gradient_cosine(model, tokenizer, mixture, objects, answers_only=only),
            "attention only": gates.gradient_cosine(model, tokenizer, mixture, objects, attention_only=True,
                                                    answers_only=only)}


def _save(model, recipe: Recipe, curve: list, seconds: float, tmp: Path, out_dir: Path, extra: dict | None = None):
    """Write weights (or the LoRA adapter) and manifest beside the tokenizer in ``tmp``, then rename it."""
    model.eval()
    model.save_pretrained(tmp)
    manifest = {
        "variant": recipe.name,
        "recipe": asdict(recipe),
        "final_loss": curve[-1]["loss"] if curve else None,
        "final_answer_loss": curve[-1]["answer_loss"] if curve else None,
        "training_seconds": round(seconds, 1),
        "learning_curve": [row for row in curve if row["step"] <= (recipe.stop_after or recipe.steps)],
        **(extra or {}),
    }
    write_manifest(tmp, manifest)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return manifest


def weight_files(directory: Path) -> list[Path]:
    """The files whose hashes pin a checkpoint (the manifest itself is not hashed). Explained in appendix A1."""
    return sorted(p for p in directory.iterdir() if p.is_file() and p.name != "manifest.json")


def write_manifest(directory: Path, manifest: dict) -> None:
    """Records the recipe and the weight hashes that retraining must reproduce. Explained in appendix A1."""
    from ..models import _sha256

    manifest = dict(manifest)
    manifest["sha256"] = {p.name: _sha256(p) for p in weight_files(directory)}
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
