"""Path patching: which heads move the information the answer depends on, found group by group
(the authors' `experiment_1/path_patching.py` and `pp_utils.py`). Explained in
chapter 3 (circuit discovery).

A *sender* head's output ``z`` at one position is replaced by its value on a corrupted prompt (the
query letter replaced by one that names no box, in another context), while every other head output
stays frozen at its clean value, so the change reaches later layers only through the residual stream
and the MLPs of that position (pass 1). With no receivers the score reads the answer's probability
from pass 1; otherwise the *receivers'* query (Q-composition) or value (V-composition) inputs
recorded in pass 1 are written into an otherwise clean run (pass 2). The score of a sender is the
mean relative change of the correct object's probability, ``(p_patched − p_clean) / p_clean``
(`metrics.path_patching_score`); the most negative scores name the heads the behaviour needs.

The four steps, each using the previous step's top heads as receivers (`STEPS`):

====  =========================  ==================  =======================  =================
step  group found                sender position     receivers                receiver input
====  =========================  ==================  =======================  =================
1     A value fetcher            last                (the logits)             —
2     B position transmitter     last                top A heads              q at last
3     C position detector        query_label         top B heads              v at query_label
4     D structure reader         prev_query_label    top C heads              v at prev_query_label
====  =========================  ==================  =======================  =================

Why a receiver reads at the sender's position: with attention frozen, a sender can only change the
residual stream of its own position, so the receivers' input there is all it can move. In step 4 the
corrupted prompt has no earlier copy of its query letter, so its sender output is read at a random
box label of the corrupted prompt, as the authors did (``random.choice(range(6, 49, 7))``).

Speed. The authors ran one forward pass of whole prompts per sender and per pass (21,510 passes of
100 prompts per 7B model). The scores here are the same (the tests compare them with
`path_patching_scores_one_head_per_forward`, the definition written their way, to 1e-6 in float32),
from far less work, all through the TransformerLens hooks every other method uses:

* The clean and corrupted runs are recorded once per chunk of prompts and shared by the four steps
  (`Records`), as the authors cached theirs once per batch.
* One pass holds one copy of the prompts per sender, as many as ``max_rows`` allows, with no Python
  loop over senders; senders that cannot reach a receiver (none below its layer) are skipped.
* Pass 1 runs only the sender's token: with every head output frozen, nothing moves information
  between positions, so that token's residual stream is the whole prompt's there.
* Pass 2 runs only the tokens that can change, from the receivers' position on (the last token
  for Q-composition at ``last``). Hooks give them their true rotary angles and let them attend to
  the keys and values the clean run recorded for the tokens before, in one softmax with their own.
  When every receiver a sender reaches sits in the last layer, a V-composition runs only the last
  token: below that layer nothing changes, and in it only the last token's output is read, which
  moves by its attention on the receiver position times the change of the value.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
import random
from dataclasses import asdict, dataclass, replace
from typing import Callable, Sequence

import torch

from . import data as D
from . import patching as P
from .cache import cached, model_fingerprint
from .data import TaskConfig
from .circuit import GROUPS, Circuit, Head
from .metrics import answer_probs, path_patching_score
from .progress import progress


# --------------------------------------------------------------------------------------------------
# The four steps
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    """One path-patching step: the group it finds, where its senders sit, and what they must reach.
    Explained in chapter 3."""

    group: str
    position: str                    # named position of senders and receivers
    receiver_group: str | None       # the previous step's group, whose top heads are the receivers
    receiver_input: str | None       # "q" (Q-composition) or "v" (V-composition); None: the logits


STEPS: tuple[Step, ...] = (
    Step("value_fetcher", "last", None, None),
    Step("position_transmitter", "last", "value_fetcher", "q"),
    Step("position_detector", "query_label", "position_transmitter", "v"),
    Step("structure_reader", "prev_query_label", "position_detector", "v"),
)
STEP_OF: dict[str, Step] = {s.group: s for s in STEPS}

_INPUT_HOOK = {"q": P.q_name, "v": P.v_name}


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------

#: The authors' top-k (`pp_main` comments): receivers passed to the next step, and
#: candidates per group kept for minimality (A's candidates before removing heads also in B).
#: Vicuna was never searched by the authors; it gets LLaMA's numbers.
PAPER_TOP_K: dict[str, dict[str, tuple[int, ...]]] = {
    "llama-7b": {"receivers": (20, 5, 10), "candidates": (58, 10, 25, 5)},
    "vicuna-7b": {"receivers": (20, 5, 10), "candidates": (58, 10, 25, 5)},
    "goat-7b": {"receivers": (50, 20, 30), "candidates": (101, 30, 50, 40)},
    "float-7b": {"receivers": (50, 20, 30), "candidates": (102, 30, 50, 40)},
}
#: The authors' seeds per model; the book uses one seed for every model.
PAPER_SEEDS = {"llama-7b": 20, "goat-7b": 82, "float-7b": 85}
#: For a small model such as the organism (a few layers of a few heads), LLaMA's 2 % of heads would
#: be no head at all, so a few heads per group; like the authors' 7B runs, any head whose score is
#: negative qualifies (minimality then prunes the ones the circuit does not need).
SMALL_MODEL_TOP_K = {"receivers": (3, 2, 2), "candidates": (6, 3, 4, 3), "min_effect": 0.0}


@dataclass(frozen=True)
class PathPatchingConfig:
    """Everything that decides a discovered circuit; each default is the paper's LLaMA setting, and
    the top-k left at None is chosen per model by `resolve` (the authors' numbers for the 7B
    models, `SMALL_MODEL_TOP_K` for the organism). ``task.authors_compat`` draws the corrupted query
    letter the authors' way (any capital, which may name a box). Explained in chapter 3."""

    task: TaskConfig = TaskConfig(n_samples=300)   # base prompts: the dataset's first lines (paper: 300)
    pool: int = 300                   # corrupted prompts are drawn from the first `pool` lines (paper: 300)
    pairing_seed: int = 0             # corrupted pairing, random letters, step-4 source labels
    receivers: tuple[int, int, int] | None = None            # top A, B, C heads as next receivers
    candidates: tuple[int, int, int, int] | None = None      # top A, B, C, D heads kept as candidates
    min_effect: float | None = None   # a head is chosen only if its score is below -min_effect
    drop_b_from_a: bool = True        # remove from A the heads also in B (the authors did)
    batch_size: int = 100             # prompts per chunk                                    (paper: 100)
    max_rows: int = 800               # prompt copies per forward pass (senders x prompts): the memory budget,
                                      # in whole prompts (a pass of shorter rows holds more of them)
    minimality_threshold: float | None = 0.01  # prune with `circuit_eval` minimality (paper: 1 %); None: keep candidates
    minimality_samples: int = 100     # prompts for minimality                              (paper: 100)

    def __post_init__(self):
        for name, n in (("receivers", 3), ("candidates", 4)):
            value = getattr(self, name)
            if value is not None:
                value = tuple(int(k) for k in value)
                if len(value) != n:
                    raise ValueError(f"{name} needs {n} counts ({'A, B, C, D'[:3 * n - 2]}); got {value}")
                object.__setattr__(self, name, value)
        if self.max_rows < 1 or self.batch_size < 1:
            raise ValueError("max_rows and batch_size must be positive")

    @classmethod
    def paper(cls, model: str = "llama-7b", **changes) -> "PathPatchingConfig":
        """The authors' top-k for one of their circuits (seed left at the book's common seed)."""
        top = PAPER_TOP_K[model]
        return cls(receivers=top["receivers"], candidates=top["candidates"], min_effect=0.0, **changes)

    def resolve(self, lm) -> "PathPatchingConfig":
        """This config with every per-model default filled in for ``lm``."""
        if lm.spec.name in PAPER_TOP_K:
            top = {**PAPER_TOP_K[lm.spec.name], "min_effect": 0.0}
        else:
            top = SMALL_MODEL_TOP_K
        return replace(self, **{k: v for k, v in top.items() if getattr(self, k) is None})

    def receivers_of(self, group: str) -> int:
        return dict(zip(list(GROUPS)[:3], self._need("receivers")))[group]

    def candidates_of(self, group: str) -> int:
        return dict(zip(GROUPS, self._need("candidates")))[group]

    def _need(self, name: str):
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"{name} is chosen per model: call config.resolve(lm) first")
        return value


def rows_for_memory(lm, seq_len: int, budget_gb: float) -> int:
    """How many prompt copies fit one forward pass in ``budget_gb`` (a rough upper estimate of the
    activations alive at once, plus the frozen head outputs the hooks build), for ``max_rows``.
    Explained in chapter 3."""
    cfg = lm.model.cfg
    d_mlp = getattr(cfg, "d_mlp", None) or 4 * cfg.d_model
    nbytes = torch.finfo(next(lm.model.parameters()).dtype).bits // 8
    per_row = nbytes * seq_len * (12 * cfg.d_model + 3 * d_mlp + 2 * cfg.n_heads * seq_len)
    return max(1, int(budget_gb * 2**30 // per_row))


# --------------------------------------------------------------------------------------------------
# Data: base prompts, corrupted prompts, where each sender is read
# --------------------------------------------------------------------------------------------------

def pair_batches(lm, config: PathPatchingConfig) -> tuple[D.TaskBatch, D.TaskBatch]:
    """Base prompts (the dataset's first ``n_samples`` lines) and their corrupted counterparts.
    Explained in chapter 3."""
    task = config.task
    dataset = lm.examples(task, max(task.n_samples, config.pool))
    base, corrupt = D.path_patching_pairs(dataset, task.n_samples, config.pool, config.pairing_seed,
                                          authors_compat=task.authors_compat)
    return lm.tokenize(base), lm.tokenize(corrupt)


def source_positions(corrupt: D.TaskBatch, position: str, seed: int = 0) -> torch.Tensor:
    """Where each corrupted prompt's sender output is read: the same named position, except for
    ``prev_query_label``, which a corrupted prompt lacks (its letter names no box): a random box
    label of that prompt, as the authors did. Explained in chapter 3."""
    if position != "prev_query_label":
        return P.position_index(corrupt, position)
    rng = random.Random(seed)
    labels = corrupt.positions["label"]
    picks = [rng.randrange(labels.shape[1]) for _ in range(len(corrupt))]
    rows = torch.arange(len(corrupt), device=labels.device)
    return labels[rows, torch.tensor(picks, dtype=torch.long, device=labels.device)]


# --------------------------------------------------------------------------------------------------
# Sender sets, and which receivers each can reach
# --------------------------------------------------------------------------------------------------

def sender_masks(lm, senders: Sequence[Head] | Sequence[Sequence[Head]]) -> torch.Tensor:
    """``[n_sets, layer, head]`` booleans: one row per sender *set*. A list of heads gives one set
    per head (the paper's one-sender-at-a-time search); a list of lists gives those sets. Explained in chapter 3."""
    masks = torch.zeros(len(senders), lm.n_layers, lm.n_heads, dtype=torch.bool)
    for i, s in enumerate(senders):
        heads = [s] if isinstance(s[0], int) else s
        for layer, head in heads:
            masks[i, int(layer), int(head)] = True
    return masks


def _check_receiver_input(lm, receiver_input: str | None):
    if receiver_input not in (None, "q", "v"):
        raise ValueError(f"receiver_input must be 'q', 'v' or None; got {receiver_input!r}")
    n_kv = getattr(lm.model.cfg, "n_key_value_heads", None)
    if receiver_input == "v" and n_kv not in (None, lm.n_heads):
        raise NotImplementedError("V-composition receivers need one value head per query head (no grouped-query attention)")


def reachable_sets(masks: torch.Tensor, receivers: Sequence[Head], receiver_input: str | None) -> torch.Tensor:
    """Which sender sets can change anything: with receivers, only a set with a head in a layer
    below some receiver's layer (a receiver reads its input before its own layer's heads write);
    the others score exactly 0 by definition and need no forward pass. Explained in chapter 3."""
    if receiver_input is None:
        return torch.ones(masks.shape[0], dtype=torch.bool)
    if not receivers:
        return torch.zeros(masks.shape[0], dtype=torch.bool)
    top = max(int(layer) for layer, _ in receivers)
    return masks[:, :top, :].flatten(1).any(1)


def _last_layer_only(masks: torch.Tensor, receivers: Sequence[Head], receiver_input: str | None,
                     n_layers: int) -> torch.Tensor:
    """Sets whose V-composition changes only receivers in the model's last layer. For them pass 2
    needs no token but the last: below the last layer every position is clean, and in the last
    layer the other positions' outputs are never read (only the last token's logits are)."""
    if receiver_input != "v" or not receivers:
        return torch.zeros(masks.shape[0], dtype=torch.bool)
    any_head = masks.flatten(1).any(1)
    lowest = torch.where(any_head, masks.any(2).float().argmax(1), torch.full_like(any_head, n_layers, dtype=torch.long))
    reached = torch.tensor(sorted({int(layer) for layer, _ in receivers}))
    below_last = reached[reached < n_layers - 1]
    # a set reaches a receiver layer above its lowest head; none of those may lie below the last layer
    return ~(below_last[None, :] > lowest[:, None]).any(1) if len(below_last) else torch.ones_like(any_head)


# --------------------------------------------------------------------------------------------------
# The clean and corrupted runs, recorded once and read by every step
# --------------------------------------------------------------------------------------------------

@dataclass
class _Chunk:
    """One chunk of prompts: what the clean and corrupted runs left for the patched ones."""

    base: D.TaskBatch
    p_clean: torch.Tensor     # [prompt]
    clean_z: torch.Tensor     # [layer, prompt, pos, head, d_head]
    corrupt_z: torch.Tensor   # [layer, prompt, pos, head, d_head]
    keys: torch.Tensor        # [layer, prompt, pos, kv_head, d_head], after RoPE
    values: torch.Tensor      # [layer, prompt, pos, kv_head, d_head]
    cos: torch.Tensor         # [layer, 1, pos, rotary dim]
    sin: torch.Tensor

    def to(self, device) -> "_Chunk":
        return _Chunk(self.base.to(device), *(t.to(device) for t in (self.p_clean, self.clean_z, self.corrupt_z,
                                                                      self.keys, self.values, self.cos, self.sin)))


class Records:
    """The clean and corrupted runs of every chunk of prompts, made once for all four steps.

    Every step patches the same base prompts from the same corrupted ones, so both runs' head
    outputs, and the clean run's rotated keys, values and rotary angles (which pass 2 reuses for
    the tokens before the receivers' position), are the same in every step; the authors, too,
    cached them once per batch. With several chunks on a GPU the records wait in CPU memory
    (about 6 GB per 100 prompts for a 7B model in float16). Explained in chapter 3."""

    def __init__(self, lm, base: D.TaskBatch, corrupt: D.TaskBatch, batch_size: int = 100):
        if len(base) != len(corrupt):
            raise ValueError(f"need one corrupted prompt per base prompt; got {len(base)} and {len(corrupt)}")
        missing = [n for n in (P.rotary_name(0, "hook_cos"), P.rotary_name(0, "hook_rot_q"), P.rotary_name(0, "hook_rot_k"))
                   if n not in lm.model.hook_dict]
        if missing:
            raise NotImplementedError(f"pass 2 reuses the clean prefix through the bridge's rotary attention hooks; "
                                      f"this model has no {missing}")
        self.lm, self.base, self.corrupt, self.batch_size = lm, base, corrupt, batch_size
        self.device = next(lm.model.parameters()).device
        self._home = self.device if len(base) <= batch_size else torch.device("cpu")
        self._chunks: dict[int, _Chunk] = {}
        self._checked = False
        self.scale = lm.model.cfg.d_head ** -0.5   # LLaMA's; `_check_prefix_reuse` confirms it

    def starts(self) -> range:
        return range(0, len(self.base), self.batch_size)

    def chunk(self, start: int) -> _Chunk:
        if start not in self._chunks:
            self._chunks[start] = self._record(start)
        chunk = self._chunks[start]
        return chunk if self._home == self.device else chunk.to(self.device)

    @torch.no_grad()
    def _record(self, start: int) -> _Chunk:
        model, n_layers = self.lm.model, self.lm.n_layers
        base = self.base[start:start + self.batch_size]
        corrupt = self.corrupt[start:start + self.batch_size]
        store: dict[str, torch.Tensor] = {}

        def keep(name, part=lambda x: x):
            def hook(x, hook):
                store[name] = part(x).detach()
                return x
            return hook

        def clean_hooks():
            hooks = []
            for layer in range(n_layers):
                hooks += [(P.rotary_name(layer, name), keep(f"{name}{layer}"))
                          for name in ("hook_rot_k", "hook_v", "hook_cos", "hook_sin")]
                if not self._checked:  # the first prompt's last query, for `_check_prefix_reuse`
                    hooks += [(P.rotary_name(layer, "hook_rot_q"), keep(f"hook_rot_q{layer}", lambda x: x[0, -1])),
                              (P.scores_name(layer), keep(f"hook_attn_scores{layer}", lambda x: x[0, :, -1]))]
            return hooks

        z_hooks = [(P.z_name(layer), keep(f"z{layer}", lambda x: x)) for layer in range(n_layers)]
        logits = P.run_with_hooks(model, base.tokens, z_hooks + clean_hooks())
        clean_z = torch.stack([store[f"z{layer}"] for layer in range(n_layers)])
        P.run_with_hooks(model, corrupt.tokens, z_hooks)
        corrupt_z = torch.stack([store[f"z{layer}"] for layer in range(n_layers)])
        keys = torch.stack([store[f"hook_rot_k{layer}"] for layer in range(n_layers)])
        if not self._checked:
            self._check_prefix_reuse(store, keys)
            self._checked = True
        home = self._home
        return _Chunk(base.to(home), answer_probs(logits[:, -1], base.answer_ids).to(home),
                      clean_z.to(home), corrupt_z.to(home), keys.to(home),
                      torch.stack([store[f"hook_v{layer}"] for layer in range(n_layers)]).to(home),
                      torch.stack([store[f"hook_cos{layer}"] for layer in range(n_layers)]).to(home),
                      torch.stack([store[f"hook_sin{layer}"] for layer in range(n_layers)]).to(home))

    def _check_prefix_reuse(self, store, keys):
        """Pass 2 computes the attention of later tokens to the cached prefix itself; this checks,
        on the clean run, that it computes it as the model does (scores of the last token), so a
        model or library whose attention differs fails loudly instead of scoring wrongly."""
        for layer in range(self.lm.n_layers):
            q = store[f"hook_rot_q{layer}"]                                      # [head, d]
            k = P.expand_kv(keys[layer, 0], self.lm.n_heads)                       # [pos, head, d]
            ours = torch.einsum("hd,phd->hp", q, k).float() * self.scale
            theirs = store[f"hook_attn_scores{layer}"].float()                   # [head, pos]
            tol = 1e-4 if q.dtype == torch.float32 else 2e-2
            if not torch.allclose(ours, theirs, rtol=tol, atol=tol * float(theirs.abs().max())):
                raise RuntimeError(f"layer {layer}: attention scores recomputed from hook_rot_q/hook_rot_k differ "
                                   "from the model's, so the clean prefix cannot be reused in pass 2")


# --------------------------------------------------------------------------------------------------
# Pass 1: every sender set's token, all head outputs frozen
# --------------------------------------------------------------------------------------------------

@torch.no_grad()
def _sender_pass(lm, chunk: _Chunk, pos: torch.Tensor, src_z: torch.Tensor, masks: torch.Tensor,
                 record: dict[int, tuple[str, torch.Tensor]]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Pass 1 for ``masks`` (``[set, layer, head]``), one copy of the chunk per set (set-major rows):
    last-token logits and the receivers' recorded inputs ``{layer: [row, receiver, d_head]}``.

    With every head output fixed (clean, or corrupted for the set's heads), nothing moves between
    positions, so the sender's position evolves on its own: a sequence of that one token, through
    every layer, is exactly the full prompt's residual stream there (RoPE only touches attention
    scores, which the frozen outputs override; hook_q and hook_v are taken before RoPE)."""
    n_sets, n = masks.shape[0], len(pos)
    prompts = torch.arange(n, device=pos.device)
    clean_at = chunk.clean_z[:, prompts, pos]                                   # [layer, n, head, d]

    def freeze(layer, z):
        here = clean_at[layer].unsqueeze(0)
        chosen = masks[:, layer]
        if bool(chosen.any()):
            here = torch.where(chosen[:, None, :, None], src_z[layer].unsqueeze(0), here)
        return here.expand(n_sets, -1, -1, -1).reshape(n_sets * n, 1, *here.shape[2:]).to(z.dtype)

    recorded: dict[int, torch.Tensor] = {}

    def keep(layer, heads):
        def hook(x, hook):
            recorded[layer] = x[:, 0, heads].clone()
            return x
        return hook

    hooks = P.z_edit_hooks(lm.model, freeze) + [(name, keep(layer, heads)) for layer, (name, heads) in record.items()]
    tokens = chunk.base.tokens[prompts, pos].repeat(n_sets).unsqueeze(1)
    return P.run_with_hooks(lm.model, tokens, hooks)[:, -1], recorded


# --------------------------------------------------------------------------------------------------
# Pass 2: the receivers' inputs written into a clean run from the receivers' position on
# --------------------------------------------------------------------------------------------------

@torch.no_grad()
def _receiver_pass(lm, records: Records, chunk: _Chunk, prompts: torch.Tensor, start: int, n_sets: int,
                   pos: torch.Tensor, writes: dict[int, tuple[torch.Tensor, torch.Tensor]],
                   receiver_input: str) -> torch.Tensor:
    """Answer probabilities of pass 2 for ``n_sets`` copies (set-major) of the chunk's ``prompts``,
    the receivers' inputs taken from pass 1 (``writes``: ``{layer: (heads, [row, receiver, d])}``)
    at their position ``pos`` (per prompt).

    Nothing before ``start`` can differ from the clean run, so only the tokens from ``start`` on
    are run; in every layer the hooks give them the true rotary angles of their positions and let
    their queries attend to the clean run's keys and values of the tokens before (one softmax over
    both; the model's own attention covers the run's tokens). A receiver position before
    ``start`` (a V-composition whose receivers all sit in the last layer) is not run: the receiver's
    output there is its clean output, so the last token's output changes by its attention weight
    on that position times the change of the value."""
    model, scale = lm.model, records.scale
    n = len(prompts)
    rows = torch.arange(n_sets * n, device=pos.device)
    at = pos[prompts].repeat(n_sets)                                            # receiver position per row
    inside = at >= start
    prefix = P.Prefix(chunk.keys[:, prompts, :start], chunk.values[:, prompts, :start], chunk.cos, chunk.sin)
    hooks, states = P.prefix_reuse_hooks(model, prefix, start, copies=n_sets, scale=scale)

    def add(name, fn):
        hooks.setdefault(name, []).append(fn)

    for layer in range(lm.n_layers):
        state = states[layer]
        if layer in writes:
            heads, new = writes[layer]

            def write(x, heads=heads, new=new):
                x = x.clone()
                r = rows[inside]
                x[r[:, None], (at[inside] - start)[:, None], heads[None, :]] = new[inside].to(x.dtype)
                return x

            add((P.q_name if receiver_input == "q" else P.v_name)(layer), write)
            if not bool(inside.all()):
                if receiver_input != "v":
                    raise AssertionError("a Q-composition receiver position is always run")
                clean_v = chunk.values[layer][prompts.repeat(n_sets), at][:, heads]   # [row, receiver, d]

                def correct(z, state=state, heads=heads, new=new, clean_v=clean_v):
                    out = ~inside
                    weight = state["prefix"][rows[out], :, :, at[out]][:, heads]     # [row, receiver, run pos]
                    z = z.clone()
                    change = weight.transpose(1, 2).unsqueeze(-1) * (new[out] - clean_v[out]).unsqueeze(1)
                    z[rows[out][:, None], :, heads[None, :]] += change.transpose(1, 2).to(z.dtype)
                    return z

                add(P.z_name(layer), correct)
    tokens = chunk.base.tokens[prompts, start:].repeat(n_sets, 1)
    logits = P.run_with_hooks(model, tokens, P.hook_list(hooks, states if start > 0 else ()))
    return answer_probs(logits[:, -1], chunk.base.answer_ids[prompts].repeat(n_sets))


# --------------------------------------------------------------------------------------------------
# The plan: which forward passes a search runs (shared by the search and by `search_cost`)
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Pass:
    kind: str               # "pass 1", "pass 2" (or "records": a chunk that needs no pass)
    start: int              # first prompt of the chunk
    sets: tuple[int, ...]   # indices of the sender sets in this pass
    prompts: tuple[int, ...] = ()   # pass 2: the chunk's prompts in it
    first: int = 0          # pass 2: first token run
    tokens: int = 0         # token positions run


def _plan(seq_len: int, positions: torch.Tensor, batch_size: int, max_rows: int, active: Sequence[int],
          last_only: Sequence[bool], receiver_input: str | None) -> list[_Pass]:
    """Every forward pass, chunk by chunk. ``max_rows`` counts whole prompts: a pass of shorter
    rows holds proportionally more of them (memory goes with tokens, and a run token's attention
    covers at most the whole prompt either way). Pass 2 runs each prompt from its receivers'
    position on, so prompts are grouped by that position."""
    budget = max_rows * seq_len
    plan = []
    for start in range(0, len(positions), batch_size):
        pos = positions[start:start + batch_size]
        n = len(pos)
        per = max(1, budget // n)
        plan += [_Pass("pass 1", start, tuple(active[i:i + per]), tokens=len(active[i:i + per]) * n)
                 for i in range(0, len(active), per)]
        if receiver_input is None:
            continue
        groups = [([s for s, last in zip(active, last_only) if last], {seq_len - 1: list(range(n))})]
        by_pos: dict[int, list[int]] = {}
        for i, p in enumerate(pos.tolist()):
            by_pos.setdefault(int(p), []).append(i)
        groups.append(([s for s, last in zip(active, last_only) if not last], by_pos))
        for sets, firsts in groups:
            for first, prompts in sorted(firsts.items()):
                length = seq_len - first
                per = max(1, budget // (len(prompts) * length))
                plan += [_Pass("pass 2", start, tuple(sets[i:i + per]), tuple(prompts), first,
                               len(sets[i:i + per]) * len(prompts) * length) for i in range(0, len(sets), per)]
    return plan


# --------------------------------------------------------------------------------------------------
# Path-patched probabilities of many sender sets
# --------------------------------------------------------------------------------------------------

@torch.no_grad()
def path_patched_probs(lm, base: D.TaskBatch, corrupt: D.TaskBatch, position: str, masks: torch.Tensor,
                       receivers: Sequence[Head] = (), receiver_input: str | None = None,
                       src_positions: torch.Tensor | None = None, batch_size: int = 100,
                       max_rows: int = 4096, desc: str = "", records: Records | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean answer probabilities ``[n_prompts]`` and path-patched ones ``[n_sets, n_prompts]`` for
    every sender set in ``masks`` (`sender_masks`). The prompts are split in chunks of
    ``batch_size`` (those of ``records``, when given: the clean and corrupted runs of an earlier
    step); a forward pass holds one copy of a chunk per sender set, as many as ``max_rows``
    prompt copies allow. Explained in chapter 3."""
    _check_receiver_input(lm, receiver_input)
    if records is None:
        records = Records(lm, base, corrupt, batch_size)
    elif records.base is not base or records.corrupt is not corrupt:
        raise ValueError("records were made for other prompts")
    if receiver_input is None and position != "last":
        raise ValueError("without receivers the score reads the logits, so senders must sit at 'last'")
    src_positions = P.position_index(corrupt, position) if src_positions is None else src_positions
    positions = P.position_index(base, position)
    if bool((src_positions < 0).any()) or bool((positions < 0).any()):
        raise ValueError(f"some prompts have no {position!r} token")
    n_layers = lm.n_layers
    active = reachable_sets(masks, receivers, receiver_input).nonzero().flatten().tolist()
    last_only = _last_layer_only(masks, receivers, receiver_input, n_layers)[active].tolist()
    plan = _plan(base.seq_len, positions, records.batch_size, max_rows, active, last_only, receiver_input)
    slot = {s: i for i, s in enumerate(active)}
    by_layer: dict[int, list[int]] = {}
    for layer, head in receivers if receiver_input else ():
        by_layer.setdefault(int(layer), []).append(int(head))

    p_clean = torch.empty(len(base))
    p_patch = torch.empty(masks.shape[0], len(base))
    planned = {step.start for step in plan}   # a chunk without passes still needs its clean probabilities
    work = sorted([*plan, *(_Pass("records", start, ()) for start in records.starts() if start not in planned)],
                  key=lambda step: step.start)
    current, recorded = None, {}
    for step in progress(work, desc=desc or f"path patching at {position}"):
        if step.start != current:   # a new chunk: its records, and room for what pass 1 records
            current = step.start
            chunk = records.chunk(step.start)
            device = chunk.clean_z.device
            n = len(chunk.base)
            pos = positions[step.start:step.start + n].to(device)
            src = src_positions[step.start:step.start + n].to(device)
            src_z = chunk.corrupt_z[:, torch.arange(n, device=device), src]        # [layer, n, head, d]
            p_clean[step.start:step.start + n] = chunk.p_clean.cpu()
            p_patch[:, step.start:step.start + n] = chunk.p_clean.cpu()            # unreachable sets: the clean run
            heads = {layer: torch.tensor(hs, device=device) for layer, hs in by_layer.items()}
            record = {layer: ((P.q_name if receiver_input == "q" else P.v_name)(layer), hs) for layer, hs in heads.items()}
            recorded = {layer: chunk.clean_z.new_empty(len(active), n, len(hs), lm.model.cfg.d_head)
                        for layer, hs in heads.items()}
        if step.kind == "records":
            continue
        sets = list(step.sets)
        index = torch.tensor([slot[s] for s in sets], device=device)
        if step.kind == "pass 1":
            logits, got = _sender_pass(lm, chunk, pos, src_z, masks[sets].to(device), record)
            if receiver_input is None:
                p_patch[sets, step.start:step.start + n] = answer_probs(logits, chunk.base.answer_ids.repeat(len(sets))).view(len(sets), n).cpu()
            for layer, values in got.items():
                recorded[layer][index] = values.view(len(sets), n, *values.shape[1:]).to(recorded[layer].dtype)
        else:
            prompts = torch.tensor(step.prompts, device=device)
            writes = {layer: (hs, recorded[layer][index][:, prompts].flatten(0, 1)) for layer, hs in heads.items()}
            probs = _receiver_pass(lm, records, chunk, prompts, step.first, len(sets), pos, writes, receiver_input)
            p_patch[torch.tensor(sets)[:, None], step.start + prompts.cpu()[None, :]] = probs.view(len(sets), -1).cpu()
    return p_clean, p_patch


def path_patching_scores(lm, base: D.TaskBatch, corrupt: D.TaskBatch, position: str,
                         receivers: Sequence[Head] = (), receiver_input: str | None = None,
                         src_positions: torch.Tensor | None = None, batch_size: int = 100,
                         max_rows: int = 4096, desc: str = "", records: Records | None = None) -> torch.Tensor:
    """``[layer, head]`` path-patching score of every head as a lone sender at ``position``. Explained in chapter 3."""
    heads = [(layer, head) for layer in range(lm.n_layers) for head in range(lm.n_heads)]
    p_clean, p_patch = path_patched_probs(lm, base, corrupt, position, sender_masks(lm, heads), receivers,
                                          receiver_input, src_positions, batch_size, max_rows, desc, records)
    return path_patching_score(p_patch, p_clean.unsqueeze(0)).view(lm.n_layers, lm.n_heads).cpu()


@torch.no_grad()
def path_patching_scores_one_head_per_forward(lm, base: D.TaskBatch, corrupt: D.TaskBatch, position: str,
                                              receivers: Sequence[Head] = (), receiver_input: str | None = None,
                                              src_positions: torch.Tensor | None = None) -> torch.Tensor:
    """The definition, written the authors' way: one sender per forward pass, the frozen run built
    with `patching.patch_heads`. Slow; kept to check the batched version and to time it. Explained in chapter 3."""
    _check_receiver_input(lm, receiver_input)
    model = lm.model
    src_positions = P.position_index(corrupt, position) if src_positions is None else src_positions
    logits, clean_z = P.head_outputs(model, base.tokens)
    rows = torch.arange(len(base), device=clean_z.device)
    pos = P.position_index(base, position).to(clean_z.device)
    src_positions = src_positions.to(clean_z.device)
    p_clean = answer_probs(logits[:, -1], base.answer_ids)
    _, corrupt_z = P.head_outputs(model, corrupt.tokens)
    everything = torch.ones(clean_z.shape[:-1], dtype=torch.bool, device=clean_z.device)
    layers = sorted({int(l) for l, _ in receivers})
    scores = torch.zeros(lm.n_layers, lm.n_heads)
    for layer in range(lm.n_layers):
        for head in range(lm.n_heads):
            source = clean_z.clone()
            source[layer, rows, pos, head] = corrupt_z[layer, rows, src_positions, head]
            store = {}

            def keep(l):
                def hook(x, hook):
                    store[l] = x.clone()
                    return x
                return hook

            extra = [(_INPUT_HOOK[receiver_input](l), keep(l)) for l in layers] if receiver_input else []
            out = P.patch_heads(model, base.tokens, source, everything, extra_hooks=extra)
            if receiver_input and layers:
                def put(l):
                    def hook(x, hook):
                        x = x.clone()
                        for rl, rh in receivers:
                            if rl == l:
                                x[rows, pos, rh] = store[l][rows, pos, rh]
                        return x
                    return hook
                out = P.run_with_hooks(model, base.tokens, [(_INPUT_HOOK[receiver_input](l), put(l)) for l in layers])
            scores[layer, head] = path_patching_score(answer_probs(out[:, -1], base.answer_ids), p_clean)
    return scores


# --------------------------------------------------------------------------------------------------
# Selection and discovery
# --------------------------------------------------------------------------------------------------

def top_heads(scores, k: int, min_effect: float = 0.0) -> list[Head]:
    """The ``k`` heads with the most negative scores (the authors' ``topk(largest=False)``), most
    negative first, leaving out any whose score is not below ``-min_effect``. Explained in chapter 3."""
    scores = torch.as_tensor(scores, dtype=torch.float32)
    flat = scores.flatten()
    order = torch.argsort(flat, stable=True)
    n_heads = scores.shape[1]
    out = []
    for i in order.tolist():
        if len(out) >= k or not flat[i] < -min_effect:
            break
        out.append((i // n_heads, i % n_heads))
    return out


def step_scores(lm, step: Step, base: D.TaskBatch, corrupt: D.TaskBatch, receivers: Sequence[Head],
                config: PathPatchingConfig, records: Records | None = None) -> torch.Tensor:
    """One step's ``[layer, head]`` score map (``records``: the clean and corrupted runs, shared
    with the other steps). Explained in chapter 3."""
    src = source_positions(corrupt, step.position, config.pairing_seed)
    return path_patching_scores(lm, base, corrupt, step.position, receivers, step.receiver_input, src,
                                config.batch_size, config.max_rows,
                                desc=f"path patching {step.group} ({lm.n_layers * lm.n_heads} senders)",
                                records=records)


def candidate_circuit(lm, config: PathPatchingConfig, base: D.TaskBatch | None = None,
                      corrupt: D.TaskBatch | None = None) -> Circuit:
    """The four steps in order, each with the previous step's top heads as receivers; every group's
    top candidates (A without the heads also in B, if ``drop_b_from_a``) and every score map. Explained in chapter 3."""
    config = config.resolve(lm)
    if base is None or corrupt is None:
        base, corrupt = pair_batches(lm, config)
    records = Records(lm, base, corrupt, config.batch_size)
    scores: dict[str, torch.Tensor] = {}
    receivers_used: dict[str, list[Head]] = {}
    receivers: list[Head] = []
    for step in STEPS:
        receivers_used[step.group] = receivers
        scores[step.group] = step_scores(lm, step, base, corrupt, receivers, config, records)
        if step.group in list(GROUPS)[:3]:
            receivers = top_heads(scores[step.group], config.receivers_of(step.group), config.min_effect)
    groups = {g: top_heads(scores[g], config.candidates_of(g), config.min_effect) for g in GROUPS}
    if config.drop_b_from_a:
        in_b = set(groups["position_transmitter"])
        groups["value_fetcher"] = [h for h in groups["value_fetcher"] if h not in in_b]
    params = {"config": asdict(config), "fingerprint": model_fingerprint(lm),
              "receivers": {g: [list(h) for h in hs] for g, hs in receivers_used.items()},
              "candidates": {g: [list(h) for h in hs] for g, hs in groups.items()}}
    return Circuit(model=lm.spec.name, groups=groups, params=params,
                   scores={g: s.tolist() for g, s in scores.items()},
                   notes="path-patching candidates (top-k per group)")


def eval_config_for(config: PathPatchingConfig):
    """The `circuit_eval.EvalConfig` minimality runs with: same prompts and letter rule. Explained in chapter 3."""
    from .circuit_eval import EvalConfig

    return EvalConfig(task=replace(config.task, n_samples=max(config.minimality_samples, 1)),
                      minimality_samples=config.minimality_samples)


def minimal_circuit(lm, candidates: Circuit, config: PathPatchingConfig,
                    prune: Callable[[object, Circuit], Circuit] | None = None) -> Circuit:
    """The candidates pruned by minimality. The test lives in `circuit_eval` (written once there);
    ``prune(lm, circuit) -> circuit`` replaces it, e.g. to try another rule.

    Minimality compares the circuit's accuracy with and without a head, every other head
    mean-ablated. If the candidates alone score below chance (1 / n_boxes) under that ablation, every
    such ratio is noise around 0/0 and would prune the whole circuit, so the candidates are kept and
    the skipped test is recorded in ``params["minimality"]``. Explained in chapter 3."""
    if prune is not None:
        return prune(lm, candidates)
    from . import circuit_eval as ce

    setup = ce.ablation_setup(lm, eval_config_for(config))
    alone = ce.ablation_accuracy(setup, ce.circuit_only(candidates.nodes()))
    chance = 1 / config.task.n_boxes
    if alone < chance:
        params = {**candidates.params, "minimality": {"skipped": True, "candidates_alone": alone, "chance": chance}}
        return replace(candidates, params=params,
                       notes=f"path-patching candidates; minimality skipped: alone they score {alone:.3f} "
                             f"under mean ablation, below chance {chance:.3f}")
    table = ce.stored_minimality(lm, candidates, eval_config_for(config))
    pruned = ce.prune_circuit(candidates, table, config.minimality_threshold)
    params = {**pruned.params, "minimality": {"skipped": False, "candidates_alone": alone, "chance": chance}}
    return replace(pruned, params=params,
                   notes=f"path-patching candidates pruned by minimality (threshold {config.minimality_threshold})")


def discover_circuit(lm, config: PathPatchingConfig = PathPatchingConfig(),
                     prune: Callable[[object, Circuit], Circuit] | None = None) -> Circuit:
    """The entity-tracking circuit of one model: path-patching candidates, then (if
    ``config.minimality_threshold`` is set, or ``prune`` given) minimality pruning. Explained in chapter 3."""
    config = config.resolve(lm)
    circuit = candidate_circuit(lm, config)
    if config.minimality_threshold is None and prune is None:
        return circuit
    return minimal_circuit(lm, circuit, config, prune)


#: Settings that change only speed and memory, not the result: left out of a stored circuit's key.
PERFORMANCE_SETTINGS = ("batch_size", "max_rows")
#: Bumped whenever the search or the pruning rule changes what a config yields, so stored
#: circuits from older code are recomputed rather than trusted.
METHOD_VERSION = 2


def circuit_params(model, config: PathPatchingConfig) -> dict:
    """What a stored circuit is keyed by: the weights' fingerprint, the variant and every setting
    that can change the result (the per-model top-k resolved from the variant's spec, without a load).
    Explained in chapter 3."""
    from .models import resolve
    from .variants import fingerprint, label

    spec = model.spec if hasattr(model, "spec") else resolve(model)
    settings = {k: v for k, v in asdict(config.resolve(SimpleNamespace(spec=spec))).items()
                if k not in PERFORMANCE_SETTINGS}
    return {"model": fingerprint(model), "variant": label(model), "config": settings, "method": METHOD_VERSION}


def stored_circuit(model, config: PathPatchingConfig = PathPatchingConfig()) -> Circuit:
    """The circuit of ``model`` (a variant name or a loaded model) for this config, read from
    ``results/circuits/`` or discovered (loading the model) and stored; retraining the model or
    changing the config makes a new file. Explained in chapter 3."""
    from .variants import label, load

    name = "circuits/" + label(model).replace("/", "_")
    stored = cached(name, circuit_params(model, config),
                    lambda: json.loads(discover_circuit(load(model), config).to_json()))
    return Circuit(**stored)


def score_maps(circuit: Circuit) -> dict[str, torch.Tensor]:
    """The stored ``[layer, head]`` score map of each step. Explained in chapter 3."""
    return {g: torch.tensor(s) for g, s in circuit.scores.items()}


def candidates_of(circuit: Circuit) -> dict[str, list[Head]]:
    """The path-patching candidates a (possibly pruned) circuit was chosen from. Explained in chapter 3."""
    stored = circuit.params.get("candidates", circuit.groups)
    return {g: [tuple(h) for h in hs] for g, hs in stored.items()}


def search_cost(lm, config: PathPatchingConfig, base: D.TaskBatch) -> "pd.DataFrame":
    """Forward passes and token positions of one full search, the authors' way and ours.

    The authors': per batch of prompts, one pass of whole prompts per sender in step A and two in
    steps B, C and D, plus a clean and a corrupted caching pass. Ours: the passes `path_patched_probs` plans, with every sender assumed
    to reach a receiver below the last layer. The receivers are known only during the search, and
    the senders they rule out, or pass 2 shrunk to the last token, only lower the count, so ours is
    an upper bound. ``lm`` needs only ``n_layers``, ``n_heads`` and ``spec.name``. Explained in chapter 3."""
    import math

    import pandas as pd

    config = config.resolve(lm)
    senders = lm.n_layers * lm.n_heads
    seq_len, chunks = base.seq_len, math.ceil(len(base) / config.batch_size)
    rows = []
    for step in STEPS:
        two = step.receiver_input is not None
        plan = _plan(seq_len, P.position_index(base, step.position), config.batch_size, config.max_rows,
                     list(range(senders)), [False] * senders, step.receiver_input)
        rows.append({"step": step.group,
                     "authors' passes": chunks * senders * (2 if two else 1),
                     "our passes": len(plan),
                     "authors' token positions": len(base) * senders * seq_len * (2 if two else 1),
                     "our token positions": sum(p.tokens for p in plan)})
    rows.append({"step": "clean and corrupted runs", "authors' passes": 2 * chunks, "our passes": 2 * chunks,
                 "authors' token positions": 2 * len(base) * seq_len, "our token positions": 2 * len(base) * seq_len})
    table = pd.DataFrame(rows)
    total = table.drop(columns="step").sum().to_dict()
    return pd.concat([table, pd.DataFrame([{"step": "total", **total}])], ignore_index=True)
