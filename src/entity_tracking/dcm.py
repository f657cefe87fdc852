"""What each head group carries: Desiderata-based Component Masking and the activation-patching check
(paper.md §4.8–4.10).

A *desideratum* pairs a base prompt with a source prompt and names the word the model should say if
the patched heads carry one variable (`data.desideratum_pairs`): the source's object
(``object_value``), the base object in the box the source queries (``box_label_value``), or the base
object at the source query's *segment index* (``positional``; plus the appendix's eleven rephrased
sources, `data.ADDITIONAL_DESIDERATA`).

**DCM** learns one number ``m_h`` in [0, 1] per head of a group. At the group's position (`GROUPS`)
the head output becomes ``m_h · z_h(base) + (1 − m_h) · z_h(source)``, and the mask is trained to
raise the target's logit while patching as few heads as possible. The heads whose rounded mask is 0
are the group's heads that carry the variable.

**The activation-patching check** patches a fixed head set fully (``m = 0``) and reports how often
the model then says the target, over fresh random pairings, in any model: do the heads DCM found in
one model carry the same variable in the others?

``authors_compat=True`` reproduces what the authors' code did, so the book can show what each defect
changed: the data bugs B1 (source query position compared with 0) and B2 (broken box-label target),
DCM's model selection that read the structure readers' positions from the *training* batch (their
``input_tokens=inputs`` during validation), and activation patching that read the structure
readers' source activation at the *base's* previous-query-label index (W3).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, replace
from typing import Iterable, Mapping, Sequence

import pandas as pd
import torch

from . import data as D
from . import patching as P
from .circuit import GROUPS, Circuit, Head
from .progress import progress


# --------------------------------------------------------------------------------------------------
# Configuration (defaults = the paper's hyper-parameters, `experiment_2/DCM.py`, `activation_patching.py`)
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DCMConfig:
    """DCM's hyper-parameters; every default is the authors' value."""

    sparsity: float = 0.01      # λ of the loss  −mean target logit + λ·Σ(1 − m)   (paper: 0.01)
    lr: float = 0.1             # Adam learning rate                                  (paper: 0.1)
    epochs: int = 2             #                                                      (paper: 2)
    batch_size: int = 32        #                                                      (paper: 32)
    n_train: int = 1000         # pairs, split in order train / validation / test     (paper: 1,000
    n_val: int = 500            #                                                       / 500
    n_test: int = 500           #                                                       / 500)
    eval_every: int = 4         # validate the rounded mask after batch b of an epoch when b % 4 == 0
    seed: int = 20              # torch seed and pairing seed (the authors' torch.manual_seed(20))
    dataset_seed: int = 0       # seed of the prompts (`make_dataset`), as every chapter uses
    n_boxes: int = 7            #                                                      (paper: 7)
    authors_compat: bool = False  # B1/B2 data and the validation-position bug

    @property
    def n_pairs(self) -> int:
        return self.n_train + self.n_val + self.n_test


@dataclass(frozen=True)
class PatchingCheckConfig:
    """The activation-patching check: the authors' `activation_patching.py` defaults."""

    n_pairs: int = 500          # base lines 0..499, sources drawn from the same 500   (paper: 500)
    n_draws: int = 10           # fresh random pairing per draw                       (paper: 10)
    batch_size: int = 32        #                                                      (paper: 32)
    seed: int = 20              # seeds the pairing of every draw (the authors' random.seed(20))
    dataset_seed: int = 0
    n_boxes: int = 7
    authors_compat: bool = False  # B1/B2 data and W3 (base index in the source for group D)


DEFAULT_DCM = DCMConfig()
DEFAULT_CHECK = PatchingCheckConfig()


# --------------------------------------------------------------------------------------------------
# Where a group is patched, and the source activations it is patched with
# --------------------------------------------------------------------------------------------------

def patch_positions(base: D.TaskBatch, source: D.TaskBatch, group: str,
                    base_index_in_source: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Token index of the group's position in each base prompt and in its source prompt (-1 where a
    prompt has none). Each prompt uses its *own* named position, so sources of another layout (the
    appendix's rephrasings) are read where the position really is. ``base_index_in_source`` reads
    the source at the base's index instead — the authors' W3 — which differs only for the
    structure readers (the others' positions count from the end, as the authors' did)."""
    position = _group_position(group)
    base_index = P.position_index(base, position)
    if base_index_in_source and position == "prev_query_label":
        source_index = base_index.clone()
    else:
        source_index = P.position_index(source, position)
    both = (base_index >= 0) & (source_index >= 0) & (source_index < source.seq_len)
    return torch.where(both, base_index, -1), torch.where(both, source_index, -1)


def _group_position(group: str) -> str:
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r}; choose from {list(GROUPS)}")
    return GROUPS[group]


def _unique_heads(heads: Iterable[Sequence[int]]) -> list[Head]:
    return list(dict.fromkeys((int(layer), int(head)) for layer, head in heads))


@torch.no_grad()
def source_head_outputs(model, source_tokens: torch.Tensor, heads: Sequence[Head], source_index: torch.Tensor,
                        batch_size: int = 32) -> torch.Tensor:
    """The source prompts' outputs of ``heads`` at ``source_index``, ``[prompt, head, d_head]``,
    detached: computed once, then reused by every training step and evaluation that patches them."""
    n = source_tokens.shape[0]
    if not heads:
        return torch.zeros(n, 0, model.cfg.d_head, device=source_tokens.device)
    layers = sorted({layer for layer, _ in heads})
    parts = []
    for start in progress(range(0, n, batch_size), desc="source activations", leave=False):
        tokens = source_tokens[start: start + batch_size]
        index = source_index[start: start + batch_size].to(tokens.device).clamp(min=0)
        _, store = P.cache_activations(model, tokens, [P.z_name(layer) for layer in layers])
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        parts.append(torch.stack([store[P.z_name(layer)][rows, index, head] for layer, head in heads], dim=1))
    return torch.cat(parts)


def blend_hooks(model, heads: Sequence[Head], mask: torch.Tensor, base_index: torch.Tensor,
                source_z: torch.Tensor) -> list[tuple[str, P.Hook]]:
    """Hooks setting, for each head ``k`` and prompt ``i``, ``z[i, base_index[i], head_k] ←
    m_k · z + (1 − m_k) · source_z[i, k]`` (prompts with ``base_index`` −1 are left alone).

    Written without in-place edits of the forward's own tensor so the gradient reaches ``mask``;
    ``mask`` = 1 leaves the run exactly as it was, ``mask`` = 0 is plain activation patching."""
    by_layer: dict[int, list[int]] = {}
    for k, (layer, _) in enumerate(heads):
        by_layer.setdefault(layer, []).append(k)
    valid = base_index >= 0
    rows = torch.nonzero(valid).squeeze(-1)
    positions = base_index[valid]
    source_z = source_z[valid]

    def edit(layer, z):
        cols = torch.tensor(by_layer[layer], device=z.device)
        head_ids = torch.tensor([heads[k][1] for k in by_layer[layer]], device=z.device)
        r, p = rows.to(z.device)[:, None], positions.to(z.device)[:, None]
        current = z[r, p, head_ids[None, :]]                        # [prompt, head, d_head]
        m = mask.to(z.device, z.dtype)[cols][None, :, None]
        blended = m * current + (1 - m) * source_z.to(z.device, z.dtype)[:, cols]
        out = z.clone()
        out[r, p, head_ids[None, :]] = blended
        return out

    return P.z_edit_hooks(model, edit, sorted(by_layer))


def blended_logits(model, tokens: torch.Tensor, heads: Sequence[Head], mask: torch.Tensor,
                   base_index: torch.Tensor, source_z: torch.Tensor) -> torch.Tensor:
    """Logits of the base prompts with each head's output mixed with the source's by its mask value."""
    if not heads:
        return P.run_with_hooks(model, tokens)
    return P.run_with_hooks(model, tokens, blend_hooks(model, heads, mask, base_index, source_z))


# --------------------------------------------------------------------------------------------------
# Prepared desideratum data: base tokens, patch positions, source activations, targets
# --------------------------------------------------------------------------------------------------

@dataclass
class PatchData:
    """Everything a patched run needs, per pair. ``source_tokens``/``source_index`` are kept so the
    source activations can be re-read at other positions (the authors' validation bug)."""

    tokens: torch.Tensor          # base prompts [N, P]
    base_index: torch.Tensor      # [N] token index patched in the base (-1: leave alone)
    source_tokens: torch.Tensor   # [N, P_source]
    source_index: torch.Tensor    # [N] token index read in the source
    source_z: torch.Tensor        # [N, head, d_head] the heads' source outputs at source_index
    targets: torch.Tensor         # [N] the desideratum's target token id

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index: slice) -> "PatchData":
        return PatchData(self.tokens[index], self.base_index[index], self.source_tokens[index],
                         self.source_index[index], self.source_z[index], self.targets[index])

    def batches(self, size: int) -> Iterable["PatchData"]:
        for start in range(0, len(self), size):
            yield self[start: start + size]


def pairs_to(pairs: D.PairBatch, device) -> D.PairBatch:
    return D.PairBatch(pairs.desideratum, pairs.base.to(device), pairs.source.to(device),
                       pairs.target_ids.to(device))


def prepare_patch_data(model, pairs: D.PairBatch, heads: Sequence[Head], group: str,
                       base_index_in_source: bool = False, batch_size: int = 32) -> PatchData:
    """Patch positions and (detached) source activations of ``heads`` for every pair."""
    base_index, source_index = patch_positions(pairs.base, pairs.source, group, base_index_in_source)
    source_z = source_head_outputs(model, pairs.source.tokens, heads, source_index, batch_size)
    return PatchData(pairs.base.tokens, base_index, pairs.source.tokens, source_index, source_z, pairs.target_ids)


def target_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Logit of each pair's target at the last prompt position (prompts are unpadded)."""
    return P.last_logits(logits).gather(-1, targets.to(logits.device)[:, None]).squeeze(-1)


@torch.no_grad()
def patched_accuracy(model, data: PatchData, heads: Sequence[Head], mask: torch.Tensor, batch_size: int = 32,
                     positions_from: PatchData | None = None) -> float:
    """Fraction of pairs whose top next token is the target, with the heads mixed by ``mask``.

    ``positions_from`` reproduces the authors' DCM validation: every evaluated batch takes its patch
    positions row by row from that (training) batch, and the source is re-read there."""
    correct = 0
    for chunk in data.batches(batch_size):
        if positions_from is not None:
            chunk = _with_positions_of(model, chunk, positions_from, heads, batch_size)
        logits = blended_logits(model, chunk.tokens, heads, mask, chunk.base_index, chunk.source_z)
        correct += int((P.last_logits(logits).argmax(-1) == chunk.targets.to(logits.device)).sum())
    return correct / len(data)


def _with_positions_of(model, chunk: PatchData, other: PatchData, heads: Sequence[Head],
                       batch_size: int) -> PatchData:
    """``chunk`` patched at ``other``'s positions (row i takes other's row i, cycling if shorter;
    the authors' code would have crashed there, but with their sizes it never evaluated such a batch)."""
    take = torch.arange(len(chunk), device=other.base_index.device) % len(other)
    base_index = other.base_index[take].clamp(max=chunk.tokens.shape[1] - 1)
    source_index = other.source_index[take].clamp(max=chunk.source_tokens.shape[1] - 1)
    source_z = source_head_outputs(model, chunk.source_tokens, heads, source_index, batch_size)
    return replace(chunk, base_index=base_index, source_index=source_index, source_z=source_z)


# --------------------------------------------------------------------------------------------------
# DCM
# --------------------------------------------------------------------------------------------------

@dataclass
class DCMResult:
    """A trained mask and what it selects. ``heads`` = the group's heads whose rounded mask is 0
    (patched from the source); ``history`` = one row per training step (tidy)."""

    model: str
    group: str
    desideratum: str
    candidates: list[Head]
    mask: torch.Tensor            # the selected (best validation) mask, clamped to [0, 1]
    heads: list[Head]
    validation_accuracy: float
    test_accuracy: float
    history: pd.DataFrame
    config: DCMConfig

    def summary(self) -> dict:
        return {"model": self.model, "group": self.group, "desideratum": self.desideratum,
                "candidates": len(self.candidates), "n_heads": len(self.heads),
                "heads": [list(h) for h in self.heads], "validation_accuracy": self.validation_accuracy,
                "test_accuracy": self.test_accuracy, "authors_compat": self.config.authors_compat}


def selected_heads(candidates: Sequence[Head], mask: torch.Tensor) -> list[Head]:
    """Heads whose rounded mask is 0, i.e. taken from the source: the ones that carry the variable."""
    rounded = mask.detach().clamp(0, 1).round()
    return [head for head, value in zip(candidates, rounded.tolist()) if value == 0]


def dcm_pairs(lm, desideratum: str, config: DCMConfig = DEFAULT_DCM) -> D.PairBatch:
    """The desideratum's pairs for DCM: base and source both from the first ``n_pairs`` prompts
    (the authors built 2,000 pairs from the first 2,000 lines)."""
    dataset = lm.dataset(config.n_boxes, config.n_pairs, config.dataset_seed)
    pairs = D.desideratum_pairs(desideratum, dataset, config.n_pairs, pool=config.n_pairs, seed=config.seed,
                                authors_compat=config.authors_compat)
    return pairs_to(D.tokenize_pairs(pairs, lm.tokenizer), lm.device)


def split_pairs(pairs: D.PairBatch,
                config: DCMConfig = DEFAULT_DCM) -> tuple[D.PairBatch, D.PairBatch, D.PairBatch]:
    """Train / validation / test, in order (as the authors' `create_dataloaders`)."""
    if len(pairs) < config.n_pairs:
        raise ValueError(f"DCM needs {config.n_pairs} pairs ({config.n_train}/{config.n_val}/{config.n_test} "
                         f"train/validation/test); got {len(pairs)}")
    a, b = config.n_train, config.n_train + config.n_val
    return pairs[:a], pairs[a:b], pairs[b: config.n_pairs]


def run_dcm(lm, heads: Sequence[Sequence[int]], group: str, desideratum: str, config: DCMConfig | None = None,
            pairs: D.PairBatch | None = None, **overrides) -> DCMResult:
    """Train a DCM mask over ``heads`` (one group of a circuit) for one desideratum and score it.

    ``pairs`` (optional) replaces the generated desideratum data, e.g. for constructed tests;
    ``overrides`` change single `DCMConfig` fields (``run_dcm(..., epochs=1)``)."""
    config = replace(config or DEFAULT_DCM, **overrides)
    _group_position(group)
    candidates = _unique_heads(heads)
    pairs = dcm_pairs(lm, desideratum, config) if pairs is None else pairs
    train, val, test = (prepare_patch_data(lm.model, part, candidates, group, batch_size=config.batch_size)
                        for part in split_pairs(pairs, config))
    # The authors' selection bug: validating the structure readers at the training batch's positions.
    buggy_validation = config.authors_compat and GROUPS[group] == "prev_query_label"
    mask, history, val_acc = train_mask(lm.model, candidates, train, val, config, buggy_validation)
    test_acc = patched_accuracy(lm.model, test, candidates, mask.round(), config.batch_size)
    return DCMResult(lm.spec.name, group, desideratum, candidates, mask, selected_heads(candidates, mask),
                     val_acc, test_acc, history, config)


def train_mask(model, heads: Sequence[Head], train: PatchData, val: PatchData, config: DCMConfig = DEFAULT_DCM,
               buggy_validation: bool = False) -> tuple[torch.Tensor, pd.DataFrame, float]:
    """The authors' training loop: Adam on the mask (clamped to [0, 1] before each step), the rounded
    mask validated after every ``eval_every``-th batch of an epoch, best validation accuracy kept
    (ties: the mask selecting more heads). Returns (best mask, history, its validation accuracy).

    Only the mask gets gradients: the model's parameters are frozen by `models.load_model` and the
    source activations are detached."""
    torch.manual_seed(config.seed)
    device = train.tokens.device
    mask = torch.ones(len(heads), device=device, requires_grad=True)
    optimizer = torch.optim.Adam([mask], lr=config.lr)
    best_mask, best_acc, best_n = mask.detach().clone(), -math.inf, -math.inf
    rows = []
    n_batches = math.ceil(len(train) / config.batch_size)
    steps = progress(range(config.epochs * n_batches), desc="DCM steps", total=config.epochs * n_batches)
    batches = [b for _ in range(config.epochs) for b in train.batches(config.batch_size)]
    for step, batch in zip(steps, batches):
        epoch, index = divmod(step, n_batches)
        with torch.no_grad():
            mask.clamp_(0, 1)
        optimizer.zero_grad()
        logits = blended_logits(model, batch.tokens, heads, mask, batch.base_index, batch.source_z)
        target_logit = target_logits(logits, batch.targets).mean()
        loss = -target_logit + config.sparsity * (1 - mask).sum()
        if heads:
            loss.backward()
            optimizer.step()
        row = {"epoch": epoch, "batch": index, "step": step, "loss": loss.item(),
               "target_logit": target_logit.item(),
               "n_heads": len(selected_heads(heads, mask)), "val_accuracy": float("nan"), "kept": False}
        if index % config.eval_every == 0:
            rounded = mask.detach().clamp(0, 1).round()
            acc = patched_accuracy(model, val, heads, rounded, config.batch_size,
                                   positions_from=batch if buggy_validation else None)
            n_selected = int((rounded == 0).sum())
            row["val_accuracy"] = acc
            if acc > best_acc or (acc == best_acc and n_selected > best_n):
                best_mask, best_acc, best_n = mask.detach().clamp(0, 1).clone(), acc, n_selected
                row["kept"] = True
        rows.append(row)
    return best_mask, pd.DataFrame(rows), best_acc


def run_dcm_circuit(lm, circuit: Circuit, desiderata: Sequence[str] = D.DESIDERATA,
                    groups: Sequence[str] = tuple(GROUPS), config: DCMConfig | None = None,
                    **overrides) -> list[DCMResult]:
    """DCM for every (group, desideratum) of a circuit, as the paper's Section 4 runs (the data of a
    desideratum is built once and shared by the groups)."""
    config = replace(config or DEFAULT_DCM, **overrides)
    results = []
    for desideratum in desiderata:
        pairs = dcm_pairs(lm, desideratum, config)
        for group in progress(groups, desc=f"DCM {desideratum}"):
            results.append(run_dcm(lm, circuit.groups[group], group, desideratum, config, pairs=pairs))
    return results


def dcm_frame(results: Iterable[DCMResult], circuit: str | None = None) -> pd.DataFrame:
    """One tidy row per DCM run: model, circuit, group, desideratum, candidates, n_heads, heads,
    validation and test accuracy, authors_compat."""
    rows = [{**r.summary(), "circuit": circuit or r.model} for r in results]
    cols = ["model", "circuit", "group", "desideratum", "candidates", "n_heads", "heads",
            "validation_accuracy", "test_accuracy", "authors_compat"]
    return pd.DataFrame(rows, columns=cols)


def dcm_heads(results: Iterable[DCMResult]) -> dict[tuple[str, str], list[Head]]:
    """(group, desideratum) -> heads DCM selected: the head sets the activation-patching check reuses."""
    return {(r.group, r.desideratum): list(r.heads) for r in results}


def load_or_run_dcm(lm, heads: Sequence[Sequence[int]], group: str, desideratum: str,
                    config: DCMConfig | None = None, **overrides) -> dict:
    """One DCM run, stored under ``results/dcm/`` by its parameters and the model's weights, so every
    chapter that needs the same run (ch05 for the semantics, ch06 for CMAP's head selection) trains
    it once. Returns ``{"summary": DCMResult.summary(), "mask": [...], "history": DataFrame}``."""
    from .cache import cached, model_fingerprint

    config = replace(config or DEFAULT_DCM, **overrides)
    candidates = _unique_heads(heads)
    params = {"model": model_fingerprint(lm), "group": group, "desideratum": desideratum,
              "heads": [list(h) for h in candidates], "config": asdict(config)}

    def compute():
        result = run_dcm(lm, candidates, group, desideratum, config)
        return {"summary": result.summary(), "mask": [float(v) for v in result.mask.tolist()],
                "history": result.history}

    return cached("dcm/" + lm.spec.name.replace("/", "_"), params, compute)


def dcm_circuit_frames(lm, circuit: Circuit, desiderata: Sequence[str] = D.DESIDERATA,
                       groups: Sequence[str] = tuple(GROUPS), config: DCMConfig | None = None,
                       **overrides) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`load_or_run_dcm` for every group x desideratum of a circuit: the `dcm_frame`-style summary
    (one row per run, ``circuit`` = the circuit's model) and the training histories (tidy, with
    ``group`` and ``desideratum`` columns)."""
    config = replace(config or DEFAULT_DCM, **overrides)
    summaries, histories = [], []
    for desideratum in desiderata:
        for group in progress(groups, desc=f"DCM {desideratum}"):
            run = load_or_run_dcm(lm, circuit.groups[group], group, desideratum, config)
            summaries.append({**run["summary"], "circuit": circuit.model})
            histories.append(run["history"].assign(group=group, desideratum=desideratum))
    cols = ["model", "circuit", "group", "desideratum", "candidates", "n_heads", "heads",
            "validation_accuracy", "test_accuracy", "authors_compat"]
    return pd.DataFrame(summaries, columns=cols), pd.concat(histories, ignore_index=True)


def heads_of(summary: pd.DataFrame) -> dict[tuple[str, str], list[Head]]:
    """(group, desideratum) -> the heads DCM selected, from a summary frame (`dcm_circuit_frames`)."""
    return {(r.group, r.desideratum): [tuple(h) for h in r.heads] for r in summary.itertuples()}


# --------------------------------------------------------------------------------------------------
# The activation-patching check (paper.md §4.9) and the additional desiderata (§4.10)
# --------------------------------------------------------------------------------------------------

def draw_seeds(seed: int, n_draws: int) -> list[int]:
    """One pairing seed per draw, all derived from ``seed`` (the authors seeded `random` once)."""
    rng = random.Random(seed)
    return [rng.randrange(2**31) for _ in range(n_draws)]


def desideratum_accuracy(lm, heads: Sequence[Sequence[int]], group: str, desideratum: str,
                         config: PatchingCheckConfig | None = None, **overrides) -> torch.Tensor:
    """Accuracy of the desideratum's target with ``heads`` patched from the source at the group's
    position, one value per draw (``[n_draws]``, fractions). Each draw pairs the first ``n_pairs``
    prompts afresh. With no heads it is the unpatched floor (bug B1's ≈13 % in the paper).

    Every draw picks its sources from the same ``n_pairs`` prompts, so each distinct source prompt is
    run once (`SourceOutputs`) and the draws only re-run their base prompts: half the forward passes
    of running every pair, with the same numbers.

    ``overrides`` change single fields: ``desideratum_accuracy(lm, heads, g, d, n_pairs=500,
    n_draws=10, seed=20, authors_compat=True)``."""
    config = replace(config or DEFAULT_CHECK, **overrides)
    candidates = _unique_heads(heads)
    dataset = lm.dataset(config.n_boxes, config.n_pairs, config.dataset_seed)
    draws = [D.desideratum_pairs(desideratum, dataset, config.n_pairs, pool=config.n_pairs, seed=seed,
                                 authors_compat=config.authors_compat)
             for seed in draw_seeds(config.seed, config.n_draws)]
    sources = SourceOutputs(lm, candidates, [ex for pairs in draws for ex in pairs.source], config.batch_size)
    base = D.tokenize_examples(draws[0].base, lm.tokenizer).to(lm.device)  # the same prompts in every draw
    base_texts = [D.render(ex).text for ex in draws[0].base]
    zeros = torch.zeros(len(candidates), device=lm.device)
    accuracies = []
    for pairs in progress(draws, desc=f"{group} {desideratum}"):
        source = sources.batch(pairs.source)
        base_index, source_index = patch_positions(base, source, group, base_index_in_source=config.authors_compat)
        targets = D.answer_token_ids(lm.tokenizer, base_texts, pairs.targets, mode=pairs.target_token_mode)
        data = PatchData(base.tokens, base_index, source.tokens, source_index, sources.at(pairs.source, source_index),
                         targets.to(lm.device))
        accuracies.append(patched_accuracy(lm.model, data, candidates, zeros, config.batch_size))
    return torch.tensor(accuracies)


class SourceOutputs:
    """The heads' outputs at every token of each distinct source prompt, computed once.

    Stored for every position (not only the group's) so that the authors' W3 reading of the
    structure readers at the *base's* index needs no second run. Size: prompts x tokens x heads x
    d_head (for 500 LLaMA-7B prompts and 40 heads about 0.55 GB in float32)."""

    def __init__(self, lm, heads: Sequence[Head], examples: Sequence[D.Example], batch_size: int = 32):
        self.heads = list(heads)
        self.row = {ex: i for i, ex in enumerate(dict.fromkeys(examples))}
        unique = list(self.row)
        self.tokenized = D.tokenize_examples(unique, lm.tokenizer).to(lm.device)
        tokens = self.tokenized.tokens
        if not self.heads:
            self.z = torch.zeros(len(unique), tokens.shape[1], 0, lm.model.cfg.d_head, device=lm.device)
            return
        layers = sorted({layer for layer, _ in self.heads})
        parts = []
        with torch.no_grad():
            for start in range(0, len(unique), batch_size):
                _, store = P.cache_activations(lm.model, tokens[start: start + batch_size],
                                               [P.z_name(layer) for layer in layers])
                parts.append(torch.stack([store[P.z_name(layer)][:, :, head] for layer, head in self.heads], dim=2))
        self.z = torch.cat(parts)  # [prompt, pos, head, d_head]

    def batch(self, examples: Sequence[D.Example]) -> D.TaskBatch:
        """The tokenised prompts (with named positions) of these examples, without re-tokenising."""
        rows = [self.row[ex] for ex in examples]
        return self.tokenized[rows]

    def at(self, examples: Sequence[D.Example], index: torch.Tensor) -> torch.Tensor:
        """``[pair, head, d_head]``: each example's head outputs at its ``index`` (-1 read as 0; such
        pairs are left unpatched by `blend_hooks`)."""
        rows = torch.tensor([self.row[ex] for ex in examples], device=self.z.device)
        return self.z[rows, index.to(self.z.device).clamp(min=0)]


HeadSets = Mapping[tuple[str, str], Sequence[Sequence[int]]]


def functionality_frame(models: Sequence, head_sets: Mapping[str, HeadSets],
                        config: PatchingCheckConfig | None = None, **overrides) -> pd.DataFrame:
    """The paper's §4.9 experiment as one tidy DataFrame with a row per draw:
    ``model, circuit, group, desideratum, draw, accuracy, n_heads, authors_compat``.

    ``models`` are `LoadedModel`s or names (a name is loaded, used and released, so 7B models are
    resident one at a time); ``head_sets`` maps a circuit name to its ``(group, desideratum) ->
    heads`` (e.g. `dcm_heads` of that circuit's DCM runs)."""
    from .models import load_model

    config = replace(config or DEFAULT_CHECK, **overrides)
    rows = []
    for entry in models:
        lm = load_model(entry) if isinstance(entry, str) else entry
        for circuit, sets in head_sets.items():
            for (group, desideratum), heads in sets.items():
                accuracies = desideratum_accuracy(lm, heads, group, desideratum, config)
                rows += [{"model": lm.spec.name, "circuit": circuit, "group": group, "desideratum": desideratum,
                          "draw": draw, "accuracy": float(acc), "n_heads": len(_unique_heads(heads)),
                          "authors_compat": config.authors_compat} for draw, acc in enumerate(accuracies)]
        if isinstance(entry, str):
            del lm
    return pd.DataFrame(rows, columns=["model", "circuit", "group", "desideratum", "draw", "accuracy",
                                       "n_heads", "authors_compat"])


def additional_desiderata_frame(lm, heads: Sequence[Sequence[int]], group: str = "position_transmitter",
                                desiderata: Sequence[str] = tuple(D.ADDITIONAL_DESIDERATA),
                                dcm_config: DCMConfig | None = None,
                                check_config: PatchingCheckConfig | None = None,
                                ) -> tuple[pd.DataFrame, list[DCMResult]]:
    """The appendix (§4.10): for each rephrased source, DCM over the group's heads, then the
    activation-patching check of the heads it selected. Returns one tidy row per (desideratum,
    draw) — with the DCM head count and test accuracy — and the DCM results."""
    dcm_config = dcm_config or DEFAULT_DCM
    check_config = replace(check_config or DEFAULT_CHECK, authors_compat=dcm_config.authors_compat)
    rows, results = [], []
    for desideratum in progress(desiderata, desc="additional desiderata"):
        result = run_dcm(lm, heads, group, desideratum, dcm_config)
        results.append(result)
        accuracies = desideratum_accuracy(lm, result.heads, group, desideratum, check_config)
        rows += [{"model": lm.spec.name, "group": group, "desideratum": desideratum, "draw": draw,
                  "accuracy": float(acc), "dcm_n_heads": len(result.heads),
                  "dcm_heads": [list(h) for h in result.heads],
                  "dcm_test_accuracy": result.test_accuracy, "authors_compat": dcm_config.authors_compat}
                 for draw, acc in enumerate(accuracies)]
    return pd.DataFrame(rows), results


def config_dict(config: DCMConfig | PatchingCheckConfig) -> dict:
    """The configuration as a plain dict (for saving beside results)."""
    return asdict(config)
