"""What each head group carries: Desiderata-based Component Masking and the activation-patching check
(.8–4.10).

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
from .data import TaskConfig
from .progress import progress


# --------------------------------------------------------------------------------------------------
# Configuration (defaults = the paper's hyper-parameters, `experiment_2/DCM.py`, `activation_patching.py`)
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DCMConfig:
    """DCM's hyper-parameters; every default is the authors' value. The pairs come from the task's
    first ``task.n_samples`` prompts, split in order into train / validation / test (the paper:
    2,000 = 1,000 / 500 / 500). Explained in chapter 5."""

    task: TaskConfig = TaskConfig(n_samples=2000)
    sparsity: float = 0.01      # λ of the loss  −mean target logit + λ·Σ(1 − m)   (paper: 0.01)
    lr: float = 0.1             # Adam learning rate                                  (paper: 0.1)
    epochs: int = 2             #                                                      (paper: 2)
    batch_size: int = 32        #                                                      (paper: 32)
    validation_share: float = 0.25  # of the pairs, after the training pairs          (paper: 500 of 2,000)
    test_share: float = 0.25    # the last pairs                                       (paper: 500 of 2,000)
    eval_every: int = 4         # validate the rounded mask after batch b of an epoch when b % 4 == 0
    dcm_seed: int = 20          # torch seed and pairing seed (the authors' torch.manual_seed(20))
    max_rows: int = 1024        # prompts per forward pass when many masks are validated together
    prefix_budget_mb: int = 1024  # keep the pairs' clean runs for runs of the later tokens only, up to this size

    @property
    def n_pairs(self) -> int:
        return self.task.n_samples

    @property
    def n_val(self) -> int:
        return round(self.n_pairs * self.validation_share)

    @property
    def n_test(self) -> int:
        return round(self.n_pairs * self.test_share)

    @property
    def n_train(self) -> int:
        return self.n_pairs - self.n_val - self.n_test


@dataclass(frozen=True)
class PatchingCheckConfig:
    """The activation-patching check: the authors' `activation_patching.py` defaults (base prompts =
    the task's first ``task.n_samples`` lines, sources drawn from the same lines). Explained in
    chapter 5."""

    task: TaskConfig = TaskConfig(n_samples=500)
    n_draws: int = 10           # fresh random pairing per draw                       (paper: 10)
    batch_size: int = 32        #                                                      (paper: 32)
    pairing_seed: int = 20      # seeds the pairing of every draw (the authors' random.seed(20))
    prefix_budget_mb: int = 1024  # keep the base prompts' clean run for runs of the later tokens only


DEFAULT_DCM = DCMConfig()
DEFAULT_CHECK = PatchingCheckConfig()


# --------------------------------------------------------------------------------------------------
# Where a group is patched, and the source activations it is patched with
# --------------------------------------------------------------------------------------------------

#: Settings that change only speed and memory, not the result: left out of stored results' keys.
PERFORMANCE_SETTINGS = ("batch_size", "max_rows", "prefix_budget_mb")


def patch_positions(base: D.TaskBatch, source: D.TaskBatch, group: str,
                    base_index_in_source: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Token index of the group's position in each base prompt and in its source prompt (-1 where a
    prompt has none). Each prompt uses its *own* named position, so sources of another layout (the
    appendix's rephrasings) are read where the position really is. ``base_index_in_source`` reads
    the source at the base's index instead — the authors' W3 — which differs only for the
    structure readers (the others' positions count from the end, as the authors' did). Explained in chapter 5."""
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


def source_outputs(model, source: D.TaskBatch, heads: Sequence[Head], group: str, every_position: bool = False,
                   batch_size: int = 32) -> P.HeadOutputs:
    """The source prompts' outputs of ``heads`` (`patching.HeadOutputs`), recorded once at the
    group's position, or at every token when a run must read the source elsewhere (the authors'
    W3 and validation bug). Explained in chapter 5."""
    position = P.ALL_POSITIONS if every_position else _group_position(group)
    return P.HeadOutputs.record(model, source, [(layer, head, position) for layer, head in heads], batch_size,
                                desc="source activations")


# --------------------------------------------------------------------------------------------------
# Prepared desideratum data: base tokens, patch positions, source activations, targets
# --------------------------------------------------------------------------------------------------

@dataclass
class PatchData:
    """Everything a patched run needs, per pair: the base prompts, where to patch them, the heads'
    source outputs there (``source_z`` ``[N, head, d_head]``) and the target token. ``source`` and
    ``source_rows`` keep the recorded outputs so a run can re-read them at other positions (the
    authors' validation bug). Explained in chapter 5."""

    tokens: torch.Tensor          # base prompts [N, P]
    base_index: torch.Tensor      # [N] token index patched in the base (-1: leave alone)
    source_index: torch.Tensor    # [N] token index read in the source
    source_z: torch.Tensor        # [N, head, d_head]
    targets: torch.Tensor         # [N] the desideratum's target token id
    source: P.HeadOutputs | None = None
    source_rows: torch.Tensor | None = None
    prefix: P.Prefix | None = None  # the base prompts' clean run, for runs of the tokens from the patch on

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index: slice) -> "PatchData":
        rows = None if self.source_rows is None else self.source_rows[index]
        prefix = None if self.prefix is None else self.prefix[index]
        return PatchData(self.tokens[index], self.base_index[index], self.source_index[index],
                         self.source_z[index], self.targets[index], self.source, rows, prefix)

    def batches(self, size: int) -> Iterable["PatchData"]:
        for start in range(0, len(self), size):
            yield self[start: start + size]

    def reread(self, base_index: torch.Tensor, source_index: torch.Tensor) -> "PatchData":
        """The same pairs patched at other positions, the source re-read there (needs outputs
        recorded at every position)."""
        z = torch.stack([self.source.at(node, self.source_rows, source_index) for node in self.source.nodes], dim=1)
        return replace(self, base_index=base_index, source_index=source_index, source_z=z.to(self.source_z))


def source_z_of(outputs: P.HeadOutputs, rows: torch.Tensor, index: torch.Tensor, device) -> torch.Tensor:
    """``[pair, head, d_head]``: each pair's recorded source outputs, at ``index`` for outputs kept at
    every position. Explained in chapter 5."""
    if not outputs.nodes:
        return torch.zeros(len(rows), 0, 0, device=device)
    return torch.stack([outputs.at(node, rows, index) for node in outputs.nodes], dim=1).to(device)


def pairs_to(pairs: D.PairBatch, device) -> D.PairBatch:
    """A desideratum's tokenised pairs on a device. Explained in chapter 5."""
    return D.PairBatch(pairs.desideratum, pairs.base.to(device), pairs.source.to(device),
                       pairs.target_ids.to(device))


def prepare_patch_data(model, pairs: D.PairBatch, heads: Sequence[Head], group: str,
                       base_index_in_source: bool = False, batch_size: int = 32,
                       every_position: bool = False, outputs: P.HeadOutputs | None = None,
                       rows: torch.Tensor | None = None, prefix: P.Prefix | None = None) -> PatchData:
    """Patch positions and the (detached) source outputs of ``heads`` for every pair. ``outputs``
    (recorded once on a larger set of source prompts, ``rows`` the pairs' rows in it) and
    ``prefix`` (the pairs' base prompts run clean, `patching.record_prefix`) let many runs share
    one recording. Explained in chapter 5."""
    base_index, source_index = patch_positions(pairs.base, pairs.source, group, base_index_in_source)
    every_position = every_position or base_index_in_source
    position = P.ALL_POSITIONS if every_position else _group_position(group)
    if outputs is None:
        outputs = source_outputs(model, pairs.source, heads, group, every_position, batch_size)
        rows = torch.arange(len(pairs))
    else:
        outputs = outputs.select([(layer, head, position) for layer, head in heads])
    z = source_z_of(outputs, rows, source_index, pairs.base.tokens.device)
    return PatchData(pairs.base.tokens, base_index, source_index, z, pairs.target_ids, outputs, rows, prefix)


def target_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Logit of each pair's target at the last prompt position (prompts are unpadded). Explained in chapter 5."""
    return P.last_logits(logits).gather(-1, targets.to(logits.device)[:, None]).squeeze(-1)


# --------------------------------------------------------------------------------------------------
# Blending: many (heads, mask, pairs) runs in one forward pass
# --------------------------------------------------------------------------------------------------

@dataclass
class Blend:
    """One run to blend into a shared forward pass: ``heads`` mixed by ``mask`` (a tensor, possibly a
    view of a larger trainable one) on the pairs of ``data``. Explained in chapter 5."""

    heads: Sequence[Head]
    mask: torch.Tensor
    data: PatchData


def _blend_edit(blends: Sequence[Blend], start: int = 0):
    """``(edit(layer, z) -> z, layers)`` for `blend_hooks`, for a run of the tokens from ``start`` on."""
    per_layer: dict[int, list[tuple]] = {}
    offset = 0
    for blend in blends:
        data = blend.data
        valid = torch.nonzero(data.base_index >= 0).squeeze(-1)
        for k, (layer, head) in enumerate(blend.heads):
            per_layer.setdefault(int(layer), []).append(
                (valid + offset, data.base_index[valid] - start, int(head), blend.mask, k, data.source_z[valid, k]))
        offset += len(data)

    def edit(layer, z):
        entries = per_layer[layer]
        rows = torch.cat([e[0] for e in entries]).to(z.device)
        pos = torch.cat([e[1] for e in entries]).to(z.device)
        heads = torch.cat([torch.full((len(e[0]),), e[2], dtype=torch.long) for e in entries]).to(z.device)
        m = torch.cat([e[3][e[4]].expand(len(e[0])) for e in entries]).to(z.device, z.dtype)[:, None]
        src = torch.cat([e[5] for e in entries]).to(z.device, z.dtype)
        current = z[rows, pos, heads]
        out = z.clone()
        out[rows, pos, heads] = m * current + (1 - m) * src
        return out

    return edit, sorted(layer for layer, e in per_layer.items() if e)


def blend_hooks(model, blends: Sequence[Blend]) -> list[tuple[str, P.Hook]]:
    """Hooks that, for every blend, every pair ``i`` and head ``k``, set ``z[i, base_index[i], head_k]
    ← m_k · z + (1 − m_k) · source_z[i, k]``; the blends' pairs sit one after another in the batch
    (pairs with ``base_index`` −1 are left alone).

    Written without in-place edits of the forward's own tensor so the gradient reaches the masks;
    ``m`` = 1 leaves the run exactly as it was, ``m`` = 0 is plain activation patching. Rows of
    different blends never interact (attention stays within a prompt), so a stacked pass gives each
    blend what its own pass would. Explained in chapter 5."""
    edit, layers = _blend_edit(blends)
    return P.z_edit_hooks(model, edit, layers)


def _first_patched(blends: Sequence[Blend]) -> int:
    """The earliest patched token of the blends (0 when one has no prefix recorded: run everything)."""
    if any(b.data.prefix is None for b in blends):
        return 0
    patched = [b.data.base_index[b.data.base_index >= 0] for b in blends if len(b.heads)]
    patched = [p for p in patched if len(p)]
    return int(torch.cat(patched).min()) if patched else blends[0].data.tokens.shape[1] - 1


def blended_logits(model, blends: Sequence[Blend]) -> torch.Tensor:
    """Logits of every blend's base prompts (stacked in order), each with its heads mixed by its mask.

    With the base prompts' clean run recorded (``data.prefix``), only the tokens from the earliest
    patched one on are run (`patching.prefix_reuse_hooks`): nothing before it can change, so the
    logits there are the full run's, and a patch at the last token costs one token's forward and
    backward pass instead of the prompt's. The logits returned then cover those tokens only (the
    last one is what every caller reads). Explained in chapter 5."""
    tokens = torch.cat([b.data.tokens for b in blends])
    start = _first_patched(blends)
    if start <= 0:
        return P.run_with_hooks(model, tokens, blend_hooks(model, blends))
    prefix = P.Prefix.cat([b.data.prefix for b in blends])
    prefix = P.Prefix(prefix.keys[:, :, :start], prefix.values[:, :, :start], prefix.cos, prefix.sin)
    hooks, states = P.prefix_reuse_hooks(model, prefix, start)
    edit, layers = _blend_edit(blends, start)
    for layer in layers:
        hooks.setdefault(P.z_name(layer), []).append(lambda z, layer=layer: edit(layer, z))
    return P.run_with_hooks(model, tokens[:, start:], P.hook_list(hooks, states))


@torch.no_grad()
def patched_accuracies(model, blends: Sequence[Blend], batch_size: int = 32, max_rows: int = 1024) -> list[float]:
    """Fraction of each blend's pairs whose top next token is its target. The blends' pairs are cut
    in chunks of ``batch_size`` and as many chunks as ``max_rows`` allows share one forward pass.
    Explained in chapter 5."""
    if not blends:
        return []
    hits = [0] * len(blends)
    jobs = [(i, chunk) for i, b in enumerate(blends) for chunk in b.data.batches(batch_size)]
    per_pass = max(1, max_rows // batch_size)
    for start in range(0, len(jobs), per_pass):
        group = jobs[start:start + per_pass]
        if len({chunk.tokens.shape[1] for _, chunk in group}) > 1:  # prompts of different lengths: one at a time
            for i, chunk in group:
                logits = blended_logits(model, [replace(blends[i], data=chunk)])
                hits[i] += int((P.last_logits(logits).argmax(-1) == chunk.targets.to(logits.device)).sum())
            continue
        logits = blended_logits(model, [replace(blends[i], data=chunk) for i, chunk in group])
        right = P.last_logits(logits).argmax(-1).cpu() == torch.cat([chunk.targets.cpu() for _, chunk in group])
        offset = 0
        for i, chunk in group:
            hits[i] += int(right[offset: offset + len(chunk)].sum())
            offset += len(chunk)
    return [h / len(b.data) for h, b in zip(hits, blends)]


def patched_accuracy(model, data: PatchData, heads: Sequence[Head], mask: torch.Tensor, batch_size: int = 32) -> float:
    """Fraction of pairs whose top next token is the target, with the heads mixed by ``mask``.
    Explained in chapter 5."""
    return patched_accuracies(model, [Blend(list(heads), mask, data)], batch_size)[0]


# --------------------------------------------------------------------------------------------------
# DCM
# --------------------------------------------------------------------------------------------------

@dataclass
class DCMResult:
    """A trained mask and what it selects. ``heads`` = the group's heads whose rounded mask is 0
    (patched from the source); ``history`` = one row per training step (tidy). Explained in chapter 5."""

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
                "test_accuracy": self.test_accuracy, "authors_compat": self.config.task.authors_compat}


def selected_heads(candidates: Sequence[Head], mask: torch.Tensor) -> list[Head]:
    """Heads whose rounded mask is 0, i.e. taken from the source: the ones that carry the variable.
    Explained in chapter 5."""
    rounded = mask.detach().clamp(0, 1).round()
    return [head for head, value in zip(candidates, rounded.tolist()) if value == 0]


def dcm_pairs(lm, desideratum: str, config: DCMConfig = DEFAULT_DCM) -> D.PairBatch:
    """The desideratum's pairs for DCM: base and source both from the task's first ``n_samples``
    prompts (the authors built 2,000 pairs from the first 2,000 lines). Explained in chapter 5."""
    task = config.task
    pairs = D.desideratum_pairs(desideratum, lm.examples(task), config.n_pairs, pool=config.n_pairs,
                                seed=config.dcm_seed, authors_compat=task.authors_compat)
    return pairs_to(D.tokenize_pairs(pairs, lm.tokenizer), lm.device)


def split_pairs(pairs: D.PairBatch,
                config: DCMConfig = DEFAULT_DCM) -> tuple[D.PairBatch, D.PairBatch, D.PairBatch]:
    """Train / validation / test, in order (as the authors' `create_dataloaders`). Explained in chapter 5."""
    if len(pairs) < config.n_pairs:
        raise ValueError(f"DCM needs {config.n_pairs} pairs ({config.n_train}/{config.n_val}/{config.n_test} "
                         f"train/validation/test); got {len(pairs)}")
    a, b = config.n_train, config.n_train + config.n_val
    return pairs[:a], pairs[a:b], pairs[b: config.n_pairs]


@dataclass
class MaskJob:
    """One DCM run's data: a group's candidate heads and the desideratum's train/validation/test pairs.
    Explained in chapter 5."""

    group: str
    desideratum: str
    heads: list[Head]
    train: PatchData
    val: PatchData
    test: PatchData
    buggy_validation: bool = False   # the authors' DCM validated group D at the training batch's positions


def mask_job(lm, heads: Sequence[Sequence[int]], group: str, desideratum: str, config: DCMConfig = DEFAULT_DCM,
             pairs: D.PairBatch | None = None, shared: "SharedRecords | None" = None) -> MaskJob:
    """Prepare one DCM run (pairs built from the config unless given; source outputs and the base
    prompts' clean run taken from ``shared`` when given, else recorded for this run).
    Explained in chapter 5."""
    _group_position(group)
    candidates = _unique_heads(heads)
    pairs = dcm_pairs(lm, desideratum, config) if pairs is None else pairs
    buggy = config.task.authors_compat and GROUPS[group] == "prev_query_label"
    bounds = [0, config.n_train, config.n_train + config.n_val, config.n_pairs]
    parts = []
    for part, lo, hi in zip(split_pairs(pairs, config), bounds, bounds[1:]):
        extra = {}
        if shared is not None:
            rows = torch.arange(lo, hi) if shared.source_rows is None else shared.source_rows[lo:hi]
            extra = dict(outputs=shared.outputs, rows=rows,
                         prefix=None if shared.prefix is None else shared.prefix[lo:hi])
        parts.append(prepare_patch_data(lm.model, part, candidates, group, batch_size=config.batch_size,
                                        every_position=buggy, **extra))
    return MaskJob(group, desideratum, candidates, *parts, buggy_validation=buggy)


@dataclass
class SharedRecords:
    """One desideratum's recordings, shared by every DCM run on its pairs: the source outputs of
    every run's heads (each at its group's position) and the base prompts' clean run (None when it
    would exceed the budget; runs then run whole prompts). Explained in chapter 5."""

    outputs: P.HeadOutputs
    prefix: P.Prefix | None
    source_rows: torch.Tensor | None = None   # each pair's source prompt's row in ``outputs`` (None: the pair's)


#: Prompts per forward pass when recording (no gradient, so larger than a training batch).
RECORD_BATCH = 128


def _prefix_if_affordable(model, tokens: torch.Tensor, budget_mb: int) -> P.Prefix | None:
    if not P.supports_prefix_reuse(model):
        return None
    if P.Prefix.bytes_per_prompt(model, tokens.shape[1]) * tokens.shape[0] > budget_mb * 2**20:
        return None
    return P.record_prefix(model, tokens, RECORD_BATCH)


def shared_records(lm, pairs: D.PairBatch, runs: Sequence[tuple[Sequence[Sequence[int]], str]],
                   config: DCMConfig = DEFAULT_DCM, prefix: P.Prefix | None = None) -> SharedRecords:
    """Record once what the DCM runs ``(heads, group)`` on ``pairs`` read: the source outputs of
    their heads and the base prompts' clean run (``prefix``, when another desideratum with the same
    base prompts recorded it already). Explained in chapter 5."""
    pairs = pairs[:config.n_pairs]
    outputs = P.HeadOutputs.record(lm.model, pairs.source, _nodes_of(runs, config), RECORD_BATCH,
                                   desc="source activations")
    if prefix is None:
        prefix = _prefix_if_affordable(lm.model, pairs.base.tokens, config.prefix_budget_mb)
    return SharedRecords(outputs, prefix)


def _nodes_of(runs: Sequence[tuple[Sequence[Sequence[int]], str]], config: DCMConfig) -> list[P.Node]:
    nodes = []
    for heads, group in runs:
        buggy = config.task.authors_compat and GROUPS[group] == "prev_query_label"
        position = P.ALL_POSITIONS if buggy else _group_position(group)
        nodes += [(layer, head, position) for layer, head in _unique_heads(heads)]
    return nodes


def mask_jobs(lm, runs: Sequence[tuple[Sequence[Sequence[int]], str, str]], config: DCMConfig = DEFAULT_DCM
              ) -> list[MaskJob]:
    """Prepare DCM runs ``(heads, group, desideratum)`` of one model with as few recordings as
    possible: every desideratum's base prompts are the task's first lines, and its sources are
    drawn from the same lines, so one clean run of those prompts gives the prefix every run
    reuses and the source outputs of every run's heads. Explained in chapter 5."""
    desiderata = list(dict.fromkeys(d for _, _, d in runs))
    pairs = {d: dcm_pairs(lm, d, config)[:config.n_pairs] for d in desiderata}
    bases = pairs[desiderata[0]].base if desiderata else None
    row = {ex: i for i, ex in enumerate(bases.examples)} if desiderata else {}
    one_recording = all(tuple(p.base.examples) == tuple(bases.examples) and all(ex in row for ex in p.source.examples)
                        for p in pairs.values())
    shared: dict[str, SharedRecords] = {}
    if one_recording and desiderata:
        outputs = P.HeadOutputs.record(lm.model, bases, _nodes_of([(h, g) for h, g, _ in runs], config),
                                       RECORD_BATCH, desc="head outputs")
        prefix = _prefix_if_affordable(lm.model, bases.tokens, config.prefix_budget_mb)
        for d, p in pairs.items():
            shared[d] = SharedRecords(outputs, prefix, torch.tensor([row[ex] for ex in p.source.examples]))
    else:
        # rewritten sources (the appendix's desiderata) need their own recordings, but the base prompts
        # are still the task's first lines: their clean run is recorded once for all of them
        same_bases = desiderata and all(tuple(p.base.examples) == tuple(bases.examples) for p in pairs.values())
        prefix = _prefix_if_affordable(lm.model, bases.tokens, config.prefix_budget_mb) if same_bases else None
        for d in desiderata:
            shared[d] = shared_records(lm, pairs[d], [(h, g) for h, g, dd in runs if dd == d], config, prefix)
    return [mask_job(lm, heads, group, d, config, pairs[d], shared[d]) for heads, group, d in runs]


def train_masks(model, jobs: Sequence[MaskJob], config: DCMConfig = DEFAULT_DCM
                ) -> list[tuple[torch.Tensor, pd.DataFrame, float]]:
    """The authors' training loop for many masks at once: Adam on the masks (clamped to [0, 1]
    before each step), each rounded mask validated after every ``eval_every``-th batch of an epoch,
    the best validation accuracy kept (ties: the mask selecting more heads). Returns, per job, (best
    mask, history, its validation accuracy).

    The masks are one trainable vector, the jobs' training batches share one forward pass, and the
    loss is the sum of the jobs' losses. Each mask only touches its own prompts, so its gradient is
    exactly its own run's, and Adam is elementwise: training them together is training each alone,
    with one forward and backward pass per step instead of one per job. A rounded mask validated
    before is not run again (its accuracy cannot have changed). Only the masks get gradients: the
    model is frozen (`models.load_model`) and the source outputs are detached. Explained in chapter 5."""
    if not jobs:
        return []
    n_batches = {math.ceil(len(j.train) / config.batch_size) for j in jobs}
    if len(n_batches) != 1:
        raise ValueError("jobs trained together need the same number of training pairs")
    n_batches = n_batches.pop()
    torch.manual_seed(config.dcm_seed)
    device = jobs[0].train.tokens.device
    sizes = [len(j.heads) for j in jobs]
    offsets = [sum(sizes[:i]) for i in range(len(jobs))]
    masks = torch.ones(sum(sizes), device=device, requires_grad=True)
    optimizer = torch.optim.Adam([masks], lr=config.lr)
    view = lambda i, m: m[offsets[i]: offsets[i] + sizes[i]]  # noqa: E731
    best = [(masks.detach()[offsets[i]: offsets[i] + sizes[i]].clone(), -math.inf, -math.inf) for i in range(len(jobs))]
    seen: list[dict] = [{} for _ in jobs]
    rows: list[list[dict]] = [[] for _ in jobs]
    batches = [[b for _ in range(config.epochs) for b in job.train.batches(config.batch_size)] for job in jobs]
    for step in progress(range(config.epochs * n_batches), desc=f"DCM steps ({len(jobs)} masks)"):
        epoch, index = divmod(step, n_batches)
        with torch.no_grad():
            masks.clamp_(0, 1)
        optimizer.zero_grad()
        blends = [Blend(job.heads, view(i, masks), batches[i][step]) for i, job in enumerate(jobs)]
        logits = blended_logits(model, blends)
        targets = torch.cat([b.data.targets for b in blends])
        per_pair = target_logits(logits, targets)
        losses, offset = [], 0
        for i, b in enumerate(blends):
            target_logit = per_pair[offset: offset + len(b.data)].mean()
            offset += len(b.data)
            losses.append((target_logit, -target_logit + config.sparsity * (1 - view(i, masks)).sum()))
        if sum(sizes):
            torch.stack([loss for _, loss in losses]).sum().backward()
            optimizer.step()
        validate = index % config.eval_every == 0
        rounded = [view(i, masks).detach().clamp(0, 1).round() for i in range(len(jobs))]
        if validate:
            todo = []
            for i, job in enumerate(jobs):
                key = (rounded[i].cpu().numpy().tobytes(), step if job.buggy_validation else None)
                if key not in seen[i]:
                    data = job.val
                    if job.buggy_validation:
                        data = _at_positions_of(job.val, batches[i][step])
                    todo.append((i, key, Blend(job.heads, rounded[i], data)))
            for (i, key, _), acc in zip(todo, patched_accuracies(model, [t[2] for t in todo], config.batch_size,
                                                                  config.max_rows)):
                seen[i][key] = acc
        for i, job in enumerate(jobs):
            target_logit, loss = losses[i]
            row = {"epoch": epoch, "batch": index, "step": step, "loss": loss.item(),
                   "target_logit": target_logit.item(), "n_heads": len(selected_heads(job.heads, view(i, masks))),
                   "val_accuracy": float("nan"), "kept": False}
            if validate:
                key = (rounded[i].cpu().numpy().tobytes(), step if job.buggy_validation else None)
                acc = seen[i][key]
                n_selected = int((rounded[i] == 0).sum())
                row["val_accuracy"] = acc
                if acc > best[i][1] or (acc == best[i][1] and n_selected > best[i][2]):
                    best[i] = (view(i, masks).detach().clamp(0, 1).clone(), acc, n_selected)
                    row["kept"] = True
            rows[i].append(row)
    return [(best[i][0], pd.DataFrame(rows[i]), best[i][1]) for i in range(len(jobs))]


def _at_positions_of(val: PatchData, train_batch: PatchData) -> PatchData:
    """The authors' DCM validation: every evaluated pair takes its patch positions row by row from
    the current training batch (row i takes the batch's row i mod its size; the authors' code would
    have crashed there, but with their sizes it never evaluated such a batch), and the source is
    re-read there."""
    take = torch.arange(len(val), device=train_batch.base_index.device) % len(train_batch)
    base_index = train_batch.base_index[take].clamp(max=val.tokens.shape[1] - 1)
    source_index = train_batch.source_index[take].clamp(max=val.source.batch.seq_len - 1)
    return val.reread(base_index, source_index)


def train_mask(model, heads: Sequence[Head], train: PatchData, val: PatchData, config: DCMConfig = DEFAULT_DCM,
               buggy_validation: bool = False) -> tuple[torch.Tensor, pd.DataFrame, float]:
    """One mask trained on its own: the definition `train_masks` must reproduce (tests, benchmark).
    Explained in chapter 5."""
    job = MaskJob("", "", list(heads), train, val, val, buggy_validation)
    return train_masks(model, [job], config)[0]


def run_dcms(lm, jobs: Sequence[MaskJob], config: DCMConfig = DEFAULT_DCM) -> list[DCMResult]:
    """Train every job's mask together (`train_masks`) and score each selected mask on its test pairs.
    Explained in chapter 5."""
    trained = train_masks(lm.model, jobs, config)
    tests = patched_accuracies(lm.model, [Blend(j.heads, m.round(), j.test) for j, (m, _, _) in zip(jobs, trained)],
                               config.batch_size, config.max_rows)
    return [DCMResult(lm.spec.name, j.group, j.desideratum, j.heads, mask, selected_heads(j.heads, mask),
                      val_acc, test_acc, history, config)
            for j, (mask, history, val_acc), test_acc in zip(jobs, trained, tests)]


def run_dcm(lm, heads: Sequence[Sequence[int]], group: str, desideratum: str, config: DCMConfig | None = None,
            pairs: D.PairBatch | None = None, **overrides) -> DCMResult:
    """Train a DCM mask over ``heads`` (one group of a circuit) for one desideratum and score it.
    ``pairs`` (optional) replaces the generated desideratum data, e.g. for constructed tests;
    ``overrides`` change single `DCMConfig` fields (``run_dcm(..., epochs=1)``). Explained in chapter 5."""
    config = replace(config or DEFAULT_DCM, **overrides)
    return run_dcms(lm, [mask_job(lm, heads, group, desideratum, config, pairs)], config)[0]


def dcm_frame(results: Iterable[DCMResult], circuit: str | None = None) -> pd.DataFrame:
    """One tidy row per DCM run: model, circuit, group, desideratum, candidates, n_heads, heads,
    validation and test accuracy, authors_compat. Explained in chapter 5."""
    rows = [{**r.summary(), "circuit": circuit or r.model} for r in results]
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


SUMMARY_COLUMNS = ["model", "circuit", "group", "desideratum", "candidates", "n_heads", "heads",
                   "validation_accuracy", "test_accuracy", "authors_compat"]


def dcm_heads(results: Iterable[DCMResult]) -> dict[tuple[str, str], list[Head]]:
    """(group, desideratum) -> heads DCM selected: the head sets the activation-patching check reuses.
    Explained in chapter 5."""
    return {(r.group, r.desideratum): list(r.heads) for r in results}


def heads_of(summary: pd.DataFrame) -> dict[tuple[str, str], list[Head]]:
    """(group, desideratum) -> the heads DCM selected, from a summary frame (`stored_circuit_dcm`).
    Explained in chapter 5."""
    return {(r.group, r.desideratum): [tuple(h) for h in r.heads] for r in summary.itertuples()}


# --------------------------------------------------------------------------------------------------
# Stored DCM runs: each trained once, read back by every chapter that needs it
# --------------------------------------------------------------------------------------------------

def _key(config) -> dict:
    return {k: v for k, v in asdict(config).items() if k not in PERFORMANCE_SETTINGS}


def _run_params(model, heads, group: str, desideratum: str, config: DCMConfig) -> dict:
    from .variants import fingerprint

    return {"model": fingerprint(model), "group": group, "desideratum": desideratum,
            "heads": [list(h) for h in _unique_heads(heads)], "config": _key(config)}


def _stored_name(model) -> str:
    from .variants import label

    return "dcm/" + label(model).replace("/", "_")


def _as_stored(result: DCMResult) -> dict:
    return {"summary": result.summary(), "mask": [float(v) for v in result.mask.tolist()], "history": result.history}


def stored_dcms(model, runs: Sequence[tuple[Sequence[Sequence[int]], str, str]], config: DCMConfig = DEFAULT_DCM
                ) -> list[dict]:
    """DCM runs ``(heads, group, desideratum)`` of one model, each stored under ``results/dcm/`` by
    its parameters and the model's weights: runs found there are read back, the others are trained
    together in one optimisation (`train_masks`) and stored. Returns one ``{"summary", "mask",
    "history"}`` per run. The model (a variant name or a loaded model) is loaded only to train.
    Explained in chapter 5."""
    from . import variants
    from .cache import cached_many

    def train_missing(todo: list[int]) -> list[dict]:
        lm = variants.load(model)
        return [_as_stored(r) for r in run_dcms(lm, mask_jobs(lm, [runs[i] for i in todo], config), config)]

    return cached_many(_stored_name(model), [_run_params(model, heads, group, d, config) for heads, group, d in runs],
                       train_missing)


def stored_dcm(model, heads: Sequence[Sequence[int]], group: str, desideratum: str,
               config: DCMConfig = DEFAULT_DCM) -> dict:
    """One stored DCM run (`stored_dcms`). Explained in chapter 5."""
    return stored_dcms(model, [(heads, group, desideratum)], config)[0]


def stored_circuit_dcm(model, circuit: Circuit, config: DCMConfig = DEFAULT_DCM,
                       desiderata: Sequence[str] = D.DESIDERATA, groups: Sequence[str] = tuple(GROUPS)
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """DCM for every group x desideratum of a circuit (the paper's Section 4), all masks trained in
    one optimisation: the summary (one row per run, ``circuit`` = the circuit's model) and the
    training histories (tidy, with ``group`` and ``desideratum`` columns). Explained in chapter 5."""
    runs = [(circuit.groups[g], g, d) for d in desiderata for g in groups]
    stored = stored_dcms(model, runs, config)
    summary = pd.DataFrame([{**s["summary"], "circuit": circuit.model} for s in stored], columns=SUMMARY_COLUMNS)
    history = pd.concat([s["history"].assign(group=g, desideratum=d) for s, (_, g, d) in zip(stored, runs)],
                        ignore_index=True)
    return summary, history


# --------------------------------------------------------------------------------------------------
# The activation-patching check and the additional desiderata (§4.10)
# --------------------------------------------------------------------------------------------------

def draw_seeds(seed: int, n_draws: int) -> list[int]:
    """One pairing seed per draw, all derived from ``seed`` (the authors seeded `random` once).
    Explained in chapter 5."""
    rng = random.Random(seed)
    return [rng.randrange(2**31) for _ in range(n_draws)]


HeadSets = Mapping[tuple[str, str], Sequence[Sequence[int]]]


def check_accuracies(lm, requests: Sequence[tuple[Sequence[Sequence[int]], str, str]],
                     config: PatchingCheckConfig = DEFAULT_CHECK, max_rows: int = 2048) -> list[torch.Tensor]:
    """For each request ``(heads, group, desideratum)``: the accuracy of the desideratum's target with
    ``heads`` patched from the source at the group's position, one value per draw (``[n_draws]``).
    Each draw pairs the task's first ``n_samples`` prompts afresh. With no heads it is the unpatched
    floor (bug B1's ≈13 % in the paper).

    Every source prompt is run once for all draws and requests (`patching.HeadOutputs`), and the
    patched base runs of all requests and draws are stacked into as few forward passes as
    ``max_rows`` allows. Explained in chapter 5."""
    task = config.task
    dataset = lm.examples(task)
    compat = task.authors_compat
    desiderata = list(dict.fromkeys(d for _, _, d in requests))
    draws = {d: [D.desideratum_pairs(d, dataset, task.n_samples, pool=task.n_samples, seed=seed,
                                     authors_compat=compat) for seed in draw_seeds(config.pairing_seed, config.n_draws)]
             for d in desiderata}
    base = lm.tokenize(draws[desiderata[0]][0].base) if desiderata else None  # the same prompts in every draw
    prefix = _prefix_if_affordable(lm.model, base.tokens, config.prefix_budget_mb) if desiderata else None
    base_texts = [D.render(ex).text for ex in draws[desiderata[0]][0].base] if desiderata else []
    recorded = {}
    for d in desiderata:  # the sources of one desideratum share a layout (the rephrasings change it)
        sources = list(dict.fromkeys(ex for pairs in draws[d] for ex in pairs.source))
        nodes = list(dict.fromkeys((int(l), int(h), P.ALL_POSITIONS if compat else GROUPS[g])
                                   for heads, g, dd in requests if dd == d for l, h in heads))
        batch = lm.tokenize(sources)
        recorded[d] = (batch, P.HeadOutputs.record(lm.model, batch, nodes, config.batch_size, desc="source activations"))
    blends, owner = [], []
    for r, (heads, group, desideratum) in enumerate(requests):
        heads = _unique_heads(heads)
        position = P.ALL_POSITIONS if compat else GROUPS[group]
        source_batch, outputs = recorded[desideratum]
        for pairs in draws[desideratum]:
            rows = outputs.row_of(pairs.source)
            source = source_batch[rows.tolist()]
            base_index, source_index = patch_positions(base, source, group, base_index_in_source=compat)
            targets = D.answer_token_ids(lm.tokenizer, base_texts, pairs.targets, mode=pairs.target_token_mode)
            z = (torch.stack([outputs.at((l, h, position), rows, source_index) for l, h in heads], dim=1)
                 if heads else torch.zeros(len(rows), 0, lm.d_head))
            data = PatchData(base.tokens, base_index, source_index, z.to(lm.device), targets.to(lm.device),
                             prefix=prefix)
            blends.append(Blend(heads, torch.zeros(len(heads), device=lm.device), data))
            owner.append(r)
    accuracies = patched_accuracies(lm.model, blends, config.batch_size, max_rows)
    out = [[] for _ in requests]
    for r, acc in zip(owner, accuracies):
        out[r].append(acc)
    return [torch.tensor(a) for a in out]


def desideratum_accuracy(lm, heads: Sequence[Sequence[int]], group: str, desideratum: str,
                         config: PatchingCheckConfig | None = None) -> torch.Tensor:
    """`check_accuracies` for one head set: ``[n_draws]`` fractions. Explained in chapter 5."""
    return check_accuracies(lm, [(heads, group, desideratum)], config or DEFAULT_CHECK)[0]


CHECK_COLUMNS = ["model", "circuit", "group", "desideratum", "draw", "accuracy", "n_heads", "authors_compat"]


def stored_patching_check(model, head_sets: Mapping[str, HeadSets], config: PatchingCheckConfig = DEFAULT_CHECK
                          ) -> pd.DataFrame:
    """The paper's §4.9 experiment in one model: for every circuit named in ``head_sets`` (circuit ->
    (group, desideratum) -> heads, e.g. `heads_of` its DCM summary), one tidy row per group x
    desideratum x draw with the target's accuracy. Stored under ``results/``; the model is loaded
    only to compute. Explained in chapter 5."""
    from . import variants
    from .cache import cached

    params = {"model": variants.fingerprint(model),
              "heads": {c: {f"{g}/{d}": [list(h) for h in hs] for (g, d), hs in sets.items()} for c, sets in head_sets.items()},
              "config": _key(config)}

    def compute():
        lm = variants.load(model)
        requests = [(heads, g, d) for sets in head_sets.values() for (g, d), heads in sets.items()]
        names = [c for c, sets in head_sets.items() for _ in sets]
        rows = []
        for circuit, (heads, group, desideratum), accs in zip(names, requests, check_accuracies(lm, requests, config)):
            rows += [{"model": lm.spec.name, "circuit": circuit, "group": group, "desideratum": desideratum,
                      "draw": draw, "accuracy": float(acc), "n_heads": len(_unique_heads(heads)),
                      "authors_compat": config.task.authors_compat} for draw, acc in enumerate(accs)]
        return pd.DataFrame(rows, columns=CHECK_COLUMNS)

    return cached("patching_check", params, compute)


def stored_floors(model, config: PatchingCheckConfig = DEFAULT_CHECK) -> dict[str, float]:
    """Each desideratum's accuracy with no head patched (the floor a patched run is read against).
    Explained in chapter 5."""
    frame = stored_patching_check(model, {"none": {("value_fetcher", d): [] for d in D.DESIDERATA}}, config)
    return frame.groupby("desideratum", sort=False)["accuracy"].mean().to_dict()


def stored_authors_compat(model, heads: HeadSets, config: PatchingCheckConfig = DEFAULT_CHECK) -> pd.DataFrame:
    """The same head sets patched with the corrected data and with the authors' (B1, B2, W3), plus the
    unpatched floors: one tidy row per data x group x desideratum x draw. Explained in appendix A3."""
    floors = {("value_fetcher", d): [] for d in D.DESIDERATA}
    frames = []
    for compat in (False, True):
        cfg = replace(config, task=replace(config.task, authors_compat=compat))
        frame = stored_patching_check(model, {"sets": dict(heads), "none (floor)": floors}, cfg)
        frame.loc[frame["circuit"] == "none (floor)", "group"] = "none (floor)"
        frames.append(frame.assign(data="authors (B1, B2, W3)" if compat else "corrected"))
    return pd.concat(frames, ignore_index=True)[["group", "desideratum", "draw", "accuracy", "data"]]


def stored_additional_desiderata(model, heads: Sequence[Sequence[int]], group: str = "position_transmitter",
                                 desiderata: Sequence[str] = tuple(D.ADDITIONAL_DESIDERATA),
                                 dcm_config: DCMConfig = DEFAULT_DCM, check_config: PatchingCheckConfig = DEFAULT_CHECK,
                                 ) -> pd.DataFrame:
    """The appendix (§4.10): for each rephrased source, DCM over the group's heads (all trained
    together), then the activation-patching check of the heads it selected. One tidy row per
    (desideratum, draw), with the DCM head count and test accuracy. Explained in chapter 5."""
    check_config = replace(check_config, task=replace(check_config.task, authors_compat=dcm_config.task.authors_compat))
    runs = stored_dcms(model, [(heads, group, d) for d in desiderata], dcm_config)
    selected = {(group, d): r["summary"]["heads"] for d, r in zip(desiderata, runs)}
    frame = stored_patching_check(model, {"additional": selected}, check_config)
    by = {d: r["summary"] for d, r in zip(desiderata, runs)}
    frame = frame.assign(dcm_n_heads=[by[d]["n_heads"] for d in frame["desideratum"]],
                         dcm_heads=[by[d]["heads"] for d in frame["desideratum"]],
                         dcm_test_accuracy=[by[d]["test_accuracy"] for d in frame["desideratum"]])
    return frame.drop(columns=["circuit", "n_heads"])


# --------------------------------------------------------------------------------------------------
# Reading the results
# --------------------------------------------------------------------------------------------------

def best_desideratum(frame: pd.DataFrame) -> pd.DataFrame:
    """Per model and group, the desideratum its heads move best (from a draws-summarised frame).
    Explained in chapter 5."""
    idx = frame.groupby(["model", "group"], sort=False)["accuracy"].idxmax()
    return frame.loc[idx, ["model", "group", "desideratum", "accuracy"]]


def survival(accuracy: float, baseline: float) -> tuple[str, float | None]:
    """How much of the plain positional signal a rewritten source keeps: "kept" (≥ 0.8 of it),
    "weakened" (0.5–0.8) or "lost" (< 0.5), with the ratio (None when there is no baseline signal).
    Explained in chapter 5."""
    if baseline <= 0:
        return "no baseline signal", None
    ratio = accuracy / baseline
    return ("kept" if ratio >= 0.8 else "weakened" if ratio >= 0.5 else "lost"), ratio
