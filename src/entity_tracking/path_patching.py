"""Path patching: which heads move the information the answer depends on, found group by group
(paper.md §4.3, the authors' `experiment_1/path_patching.py` and `pp_utils.py`).

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

Speed: the authors ran one forward pass per sender head (21,510 passes of 100 prompts per 7B model).
Here one pass holds one copy of the prompts per sender, as many senders as ``max_rows`` allows; pass 1
runs only the sender's token (with every head frozen nothing else can change); pass 2 runs the clean
prefix before the receivers' position once per prompt and reuses its keys and values for every copy;
senders that cannot reach a receiver are skipped. `path_patching_scores_one_head_per_forward` keeps
the one-at-a-time definition, which the tests compare against and the benchmark times.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, replace
from typing import Callable, Sequence

import torch

from . import data as D
from . import patching as P
from .cache import cached, model_fingerprint
from .circuit import GROUPS, Circuit, Head
from .metrics import answer_probs, path_patching_score
from .progress import progress


# --------------------------------------------------------------------------------------------------
# The four steps
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    """One path-patching step: the group it finds, where its senders sit, and what they must reach."""

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

#: The authors' top-k (`pp_main` comments, paper.md §4.3): receivers passed to the next step, and
#: candidates per group kept for minimality (A's candidates before removing heads also in B).
#: Vicuna was never searched by the authors; it gets LLaMA's numbers.
PAPER_TOP_K: dict[str, dict[str, tuple[int, ...]]] = {
    "llama-7b": {"receivers": (20, 5, 10), "candidates": (58, 10, 25, 5)},
    "vicuna-7b": {"receivers": (20, 5, 10), "candidates": (58, 10, 25, 5)},
    "goat-7b": {"receivers": (50, 20, 30), "candidates": (101, 30, 50, 40)},
    "float-7b": {"receivers": (50, 20, 30), "candidates": (102, 30, 50, 40)},
}
#: The authors' seeds per model (paper.md §4.3, W7); the book uses one seed for every model.
PAPER_SEEDS = {"llama-7b": 20, "goat-7b": 82, "float-7b": 85}
#: For a small model such as the organism (a few layers of a few heads), LLaMA's 2 % of heads would
#: be no head at all, so a few heads per group, and only heads that lower the answer's probability
#: by at least 2 % on average.
SMALL_MODEL_TOP_K = {"receivers": (3, 2, 2), "candidates": (6, 3, 4, 3), "min_effect": 0.02}


@dataclass(frozen=True)
class PathPatchingConfig:
    """Everything that decides a discovered circuit; each default is the paper's LLaMA setting, and
    the top-k left at None is chosen per model by `resolve` (the authors' numbers for the 7B
    models, `SMALL_MODEL_TOP_K` for the organism)."""

    n_boxes: int = 7
    n_samples: int = 300              # base prompts: the dataset's first lines             (paper: 300)
    pool: int = 300                   # corrupted prompts are drawn from the first `pool` lines (paper: 300)
    dataset_seed: int = 0             # seed of `make_dataset`, as every chapter uses
    seed: int = 0                     # corrupted pairing, random letters, step-4 source labels
    receivers: tuple[int, int, int] | None = None            # top A, B, C heads as next receivers
    candidates: tuple[int, int, int, int] | None = None      # top A, B, C, D heads kept as candidates
    min_effect: float | None = None   # a head is chosen only if its score is below -min_effect
    drop_b_from_a: bool = True        # remove from A the heads also in B (the authors did)
    batch_size: int = 100             # prompts per chunk                                    (paper: 100)
    max_rows: int = 800               # prompt copies per forward pass (senders x prompts): the memory budget
    authors_compat: bool = False      # any capital as corrupted query letter (may name a box)
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
    activations alive at once, plus the frozen head outputs the hooks build), for ``max_rows``."""
    cfg = lm.model.cfg
    d_mlp = getattr(cfg, "d_mlp", None) or 4 * cfg.d_model
    nbytes = torch.finfo(next(lm.model.parameters()).dtype).bits // 8
    per_row = nbytes * seq_len * (12 * cfg.d_model + 3 * d_mlp + 2 * cfg.n_heads * seq_len)
    return max(1, int(budget_gb * 2**30 // per_row))


# --------------------------------------------------------------------------------------------------
# Data: base prompts, corrupted prompts, where each sender is read
# --------------------------------------------------------------------------------------------------

def pair_batches(lm, config: PathPatchingConfig) -> tuple[D.TaskBatch, D.TaskBatch]:
    """Base prompts (the dataset's first ``n_samples`` lines) and their corrupted counterparts."""
    dataset = lm.dataset(config.n_boxes, max(config.n_samples, config.pool), config.dataset_seed)
    base, corrupt = D.path_patching_pairs(dataset, config.n_samples, config.pool, config.seed,
                                          authors_compat=config.authors_compat)
    return lm.tokenize(base), lm.tokenize(corrupt)


def source_positions(corrupt: D.TaskBatch, position: str, seed: int = 0) -> torch.Tensor:
    """Where each corrupted prompt's sender output is read: the same named position, except for
    ``prev_query_label``, which a corrupted prompt lacks (its letter names no box): a random box
    label of that prompt, as the authors did."""
    if position != "prev_query_label":
        return P.position_index(corrupt, position)
    rng = random.Random(seed)
    labels = corrupt.positions["label"]
    picks = [rng.randrange(labels.shape[1]) for _ in range(len(corrupt))]
    rows = torch.arange(len(corrupt), device=labels.device)
    return labels[rows, torch.tensor(picks, dtype=torch.long, device=labels.device)]


# --------------------------------------------------------------------------------------------------
# The batched core: many sender sets per forward pass
# --------------------------------------------------------------------------------------------------

def sender_masks(lm, senders: Sequence[Head] | Sequence[Sequence[Head]]) -> torch.Tensor:
    """``[n_sets, layer, head]`` booleans: one row per sender *set*. A list of heads gives one set
    per head (the paper's one-sender-at-a-time search); a list of lists gives those sets."""
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


@torch.no_grad()
def _patched_probs_chunk(lm, base: D.TaskBatch, clean_z: torch.Tensor, corrupt_at_src: torch.Tensor,
                         masks: torch.Tensor, position: str, receivers: Sequence[Head],
                         receiver_input: str | None) -> torch.Tensor:
    """Answer probabilities ``[n_sets, n_prompts]`` with each sender set patched in its own copy of
    the prompts.

    Pass 1 freezes every head output at its clean value except the set's heads at the sender
    position, which take the corrupted value. With every head output fixed, nothing can move
    information between positions, so the sender's position evolves on its own: pass 1 runs that
    one token (a sequence of length 1; rotary angles only touch attention scores, which the frozen
    outputs override), about ``seq_len`` times cheaper than the full prompt and exactly equal.
    Pass 2 (if there are receivers) is a clean run of the whole prompt with the receivers' q or v at
    that position taken from pass 1."""
    model = lm.model
    n_sets, n = masks.shape[0], len(base)
    device = clean_z.device
    masks = masks.to(device)
    prompt_rows = torch.arange(n, device=device)
    pos_n = P.position_index(base, position).to(device)
    rows = torch.arange(n_sets * n, device=device)
    pos = pos_n.repeat(n_sets)
    answers = base.answer_ids.repeat(n_sets)

    def freeze(layer, z):
        here = clean_z[layer][prompt_rows, pos_n].repeat(n_sets, 1, 1).to(z.dtype)   # [sets*n, head, d]
        chosen = masks[:, layer, :]
        if bool(chosen.any()):
            corrupted = corrupt_at_src[layer].repeat(n_sets, 1, 1).to(z.dtype)
            here = torch.where(chosen.repeat_interleave(n, 0)[:, :, None], corrupted, here)
        return here.unsqueeze(1)

    by_layer: dict[int, list[int]] = {}
    for layer, head in receivers:
        by_layer.setdefault(int(layer), []).append(int(head))
    recorded: dict[int, torch.Tensor] = {}

    def record(layer):
        def hook(x, hook):
            recorded[layer] = x[:, 0].clone()
            return x
        return hook

    hooks = P.z_edit_hooks(model, freeze)
    if receiver_input is not None:
        hooks += [(_INPUT_HOOK[receiver_input](layer), record(layer)) for layer in by_layer]
    sender_tokens = base.tokens[prompt_rows, pos_n].repeat(n_sets).unsqueeze(1)
    logits = P.run_with_hooks(model, sender_tokens, hooks)
    if receiver_input is not None:
        def write(layer):
            heads = torch.tensor(by_layer[layer], device=device)

            def hook(x, hook):
                x = x.clone()
                x[rows[:, None], pos[:, None], heads[None, :]] = recorded[layer][:, heads].to(x.dtype)
                return x
            return hook

        plain = _plain_model(lm)
        if plain is not None and by_layer:
            probs = _pass2_from_prefix(plain, base, pos_n, n_sets, by_layer, recorded, receiver_input)
            return probs
        tokens = base.tokens.repeat(n_sets, 1)
        logits = P.run_with_hooks(model, tokens, [(_INPUT_HOOK[receiver_input](layer), write(layer)) for layer in by_layer])
    elif position != "last":
        raise ValueError("without receivers the score reads the logits, so senders must sit at 'last'")
    return answer_probs(logits[:, -1], answers).view(n_sets, n)


def _plain_model(lm):
    """A plain Hugging Face `LlamaForCausalLM` sharing ``lm``'s weights (no copy), or None.

    Pass 2 changes nothing before the receivers' position, so the clean prefix's keys and values can
    be computed once per prompt and reused by every sender's copy (a KV cache). The TransformerLens
    bridge drops Hugging Face's cache, so pass 2 runs through this twin; it is checked once against
    the bridge's logits and not used (None) if they differ."""
    if "plain_twin" in lm.extra:
        return lm.extra["plain_twin"]
    twin = None
    try:
        from transformers import LlamaForCausalLM

        original = lm.model.original_model
        with torch.device("meta"):
            twin = LlamaForCausalLM(original.config)
        wanted = twin.state_dict()
        shared = {}
        for key, value in original.state_dict(keep_vars=True).items():
            name = key.replace("._original_component", "").replace("_original_component.", "")
            if name in wanted and name not in shared:
                shared[name] = value
        twin.load_state_dict(shared, assign=True, strict=True)
        device = next(original.parameters()).device
        twin.model.rotary_emb = type(twin.model.rotary_emb)(config=original.config).to(device)
        twin.eval()
        probe = torch.arange(2, 2 + min(12, original.config.vocab_size - 2), device=device).unsqueeze(0) % original.config.vocab_size
        tol = 1e-4 if next(original.parameters()).dtype == torch.float32 else 5e-2  # half precision: rounding
        with torch.no_grad():
            same = torch.allclose(twin(probe).logits.float(), lm.model(probe).float(), atol=tol, rtol=tol)
        twin = twin if same else None
    except Exception:  # any mismatch of module layout: fall back to whole-prompt pass 2
        twin = None
    lm.extra["plain_twin"] = twin
    return twin


@torch.no_grad()
def _pass2_from_prefix(plain, base: D.TaskBatch, pos_n: torch.Tensor, n_sets: int, by_layer: dict[int, list[int]],
                       recorded: dict[int, torch.Tensor], receiver_input: str) -> torch.Tensor:
    """Pass 2 with the clean prefix (every token before the first receiver position of the chunk)
    run once and its key/value cache shared by all sender copies; only the rest of each prompt is
    run per copy. Rows are prompt-major here (the cache repeats each prompt ``n_sets`` times)."""
    from transformers import DynamicCache

    import inspect

    n = len(base)
    start = int(pos_n.min())
    cache = DynamicCache()
    # transformers 5 renamed `past_key_values` to `cache` (the old name still works, with a warning)
    cache_kw = "cache" if "cache" in inspect.signature(plain.forward).parameters else "past_key_values"
    if start > 0:
        plain(base.tokens[:, :start], **{cache_kw: cache}, use_cache=True)
        cache.batch_repeat_interleave(n_sets)
    rows = torch.arange(n * n_sets, device=pos_n.device)
    at = (pos_n - start).repeat_interleave(n_sets)
    module = {"q": "q_proj", "v": "v_proj"}[receiver_input]
    handles = []
    for layer, heads in by_layer.items():
        heads_t = torch.tensor(heads, device=pos_n.device)
        values = recorded[layer].view(n_sets, n, *recorded[layer].shape[1:]).transpose(0, 1).flatten(0, 1)

        def hook(mod, args, out, heads_t=heads_t, values=values):
            out = out.clone()
            view = out.view(out.shape[0], out.shape[1], -1, values.shape[-1])
            view[rows[:, None], at[:, None], heads_t[None, :]] = values[:, heads_t].to(out.dtype)
            return out

        proj = getattr(plain.model.layers[layer].self_attn, module)
        handles.append(proj.register_forward_hook(hook))
    try:
        suffix = base.tokens[:, start:].repeat_interleave(n_sets, 0)
        logits = plain(suffix, **{cache_kw: cache if start > 0 else None}, use_cache=start > 0).logits
    finally:
        for handle in handles:
            handle.remove()
    probs = answer_probs(logits[:, -1], base.answer_ids.repeat_interleave(n_sets))
    return probs.view(n, n_sets).T


def reachable_sets(masks: torch.Tensor, receivers: Sequence[Head], receiver_input: str | None) -> torch.Tensor:
    """Which sender sets can change anything: with receivers, only a set with a head in a layer
    below some receiver's layer (a receiver reads its input before its own layer's heads write);
    the others score exactly 0 by definition and need no forward pass."""
    if receiver_input is None:
        return torch.ones(masks.shape[0], dtype=torch.bool)
    if not receivers:
        return torch.zeros(masks.shape[0], dtype=torch.bool)
    top = max(int(layer) for layer, _ in receivers)
    return masks[:, :top, :].flatten(1).any(1)


@torch.no_grad()
def path_patched_probs(lm, base: D.TaskBatch, corrupt: D.TaskBatch, position: str, masks: torch.Tensor,
                       receivers: Sequence[Head] = (), receiver_input: str | None = None,
                       src_positions: torch.Tensor | None = None, batch_size: int = 100,
                       max_rows: int = 4096, desc: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Clean answer probabilities ``[n_prompts]`` and path-patched ones ``[n_sets, n_prompts]`` for
    every sender set in ``masks`` (`sender_masks`): the prompts are split in chunks of
    ``batch_size``, and each forward pass holds one copy of a chunk per sender set, as many sets as
    ``max_rows`` prompt copies allow."""
    _check_receiver_input(lm, receiver_input)
    if len(base) != len(corrupt):
        raise ValueError(f"need one corrupted prompt per base prompt; got {len(base)} and {len(corrupt)}")
    src_positions = P.position_index(corrupt, position) if src_positions is None else src_positions
    if bool((src_positions < 0).any()) or bool((P.position_index(base, position) < 0).any()):
        raise ValueError(f"some prompts have no {position!r} token")
    active = reachable_sets(masks, receivers, receiver_input).nonzero().flatten().tolist()
    starts = range(0, len(base), batch_size)
    work = []
    for start in starts:
        per_pass = max(1, max_rows // len(base[start:start + batch_size]))
        work += [(start, active[i:i + per_pass]) for i in range(0, len(active), per_pass)] or [(start, [])]
    p_clean = torch.empty(len(base))
    p_patch = torch.empty(masks.shape[0], len(base))
    current = None
    for start, sets in progress(work, desc=desc or f"path patching at {position}"):
        stop = min(start + batch_size, len(base))
        if start != current:  # a new chunk of prompts: its clean and corrupted head outputs
            current = start
            chunk = base[start:stop]
            logits, clean_z = P.head_outputs(lm.model, chunk.tokens)
            p_clean[start:stop] = answer_probs(logits[:, -1], chunk.answer_ids).cpu()
            p_patch[:, start:stop] = p_clean[start:stop]  # unreachable sets: exactly the clean run
            _, corrupt_z = P.head_outputs(lm.model, corrupt[start:stop].tokens)
            idx = src_positions[start:stop].to(corrupt_z.device)
            corrupt_src = corrupt_z[:, torch.arange(stop - start, device=corrupt_z.device), idx]  # [layer, n, head, d]
        if sets:
            p_patch[sets, start:stop] = _patched_probs_chunk(lm, chunk, clean_z, corrupt_src, masks[sets], position,
                                                             receivers, receiver_input).cpu()
    return p_clean, p_patch


def path_patching_scores(lm, base: D.TaskBatch, corrupt: D.TaskBatch, position: str,
                         receivers: Sequence[Head] = (), receiver_input: str | None = None,
                         src_positions: torch.Tensor | None = None, batch_size: int = 100,
                         max_rows: int = 4096, desc: str = "") -> torch.Tensor:
    """``[layer, head]`` path-patching score of every head as a lone sender at ``position``."""
    heads = [(layer, head) for layer in range(lm.n_layers) for head in range(lm.n_heads)]
    p_clean, p_patch = path_patched_probs(lm, base, corrupt, position, sender_masks(lm, heads), receivers,
                                          receiver_input, src_positions, batch_size, max_rows, desc)
    return path_patching_score(p_patch, p_clean.unsqueeze(0)).view(lm.n_layers, lm.n_heads).cpu()


@torch.no_grad()
def path_patching_scores_one_head_per_forward(lm, base: D.TaskBatch, corrupt: D.TaskBatch, position: str,
                                              receivers: Sequence[Head] = (), receiver_input: str | None = None,
                                              src_positions: torch.Tensor | None = None) -> torch.Tensor:
    """The definition, written the authors' way: one sender per forward pass, the frozen run built
    with `patching.patch_heads`. Slow; kept to check the batched version and to time it."""
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
    negative first, leaving out any whose score is not below ``-min_effect``."""
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
                config: PathPatchingConfig) -> torch.Tensor:
    """One step's ``[layer, head]`` score map."""
    src = source_positions(corrupt, step.position, config.seed)
    return path_patching_scores(lm, base, corrupt, step.position, receivers, step.receiver_input, src,
                                config.batch_size, config.max_rows,
                                desc=f"path patching {step.group} ({lm.n_layers * lm.n_heads} senders)")


def candidate_circuit(lm, config: PathPatchingConfig, base: D.TaskBatch | None = None,
                      corrupt: D.TaskBatch | None = None) -> Circuit:
    """The four steps in order, each with the previous step's top heads as receivers; every group's
    top candidates (A without the heads also in B, if ``drop_b_from_a``) and every score map."""
    config = config.resolve(lm)
    if base is None or corrupt is None:
        base, corrupt = pair_batches(lm, config)
    scores: dict[str, torch.Tensor] = {}
    receivers_used: dict[str, list[Head]] = {}
    receivers: list[Head] = []
    for step in STEPS:
        receivers_used[step.group] = receivers
        scores[step.group] = step_scores(lm, step, base, corrupt, receivers, config)
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
    """The `circuit_eval.EvalConfig` minimality runs with: same prompts and letter rule."""
    from .circuit_eval import EvalConfig

    return EvalConfig(n_boxes=config.n_boxes, dataset_seed=config.dataset_seed,
                      minimality_samples=config.minimality_samples, authors_compat=config.authors_compat,
                      n_samples=max(config.minimality_samples, 1))


def minimal_circuit(lm, candidates: Circuit, config: PathPatchingConfig,
                    prune: Callable[[object, Circuit], Circuit] | None = None) -> Circuit:
    """The candidates pruned by minimality. The test lives in `circuit_eval` (written once there);
    ``prune(lm, circuit) -> circuit`` replaces it, e.g. to try another rule.

    Minimality compares the circuit's accuracy with and without a head, every other head
    mean-ablated. If the candidates alone score below chance (1 / n_boxes) under that ablation, every
    such ratio is noise around 0/0 and would prune the whole circuit, so the candidates are kept and
    the skipped test is recorded in ``params["minimality"]``."""
    if prune is not None:
        return prune(lm, candidates)
    from . import circuit_eval as ce

    setup = ce.ablation_setup(lm, eval_config_for(config))
    alone = ce.ablation_accuracy(setup, ce.circuit_only(candidates.nodes()))
    chance = 1 / config.n_boxes
    if alone < chance:
        params = {**candidates.params, "minimality": {"skipped": True, "candidates_alone": alone, "chance": chance}}
        return replace(candidates, params=params,
                       notes=f"path-patching candidates; minimality skipped: alone they score {alone:.3f} "
                             f"under mean ablation, below chance {chance:.3f}")
    table = ce.cached_minimality(setup, candidates)
    pruned = ce.prune_circuit(candidates, table, config.minimality_threshold)
    params = {**pruned.params, "minimality": {"skipped": False, "candidates_alone": alone, "chance": chance}}
    return replace(pruned, params=params,
                   notes=f"path-patching candidates pruned by minimality (threshold {config.minimality_threshold})")


def discover_circuit(lm, config: PathPatchingConfig = PathPatchingConfig(),
                     prune: Callable[[object, Circuit], Circuit] | None = None) -> Circuit:
    """The entity-tracking circuit of one model: path-patching candidates, then (if
    ``config.minimality_threshold`` is set, or ``prune`` given) minimality pruning."""
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


def circuit_params(lm, config: PathPatchingConfig) -> dict:
    """What a stored circuit is keyed by: the weights' fingerprint, the variant and every setting
    that can change the result."""
    settings = {k: v for k, v in asdict(config.resolve(lm)).items() if k not in PERFORMANCE_SETTINGS}
    return {"model": model_fingerprint(lm), "variant": lm.spec.name, "config": settings, "method": METHOD_VERSION}


def load_or_discover_circuit(lm, config: PathPatchingConfig = PathPatchingConfig()) -> Circuit:
    """The circuit stored under ``results/circuits/`` for this model and config, discovering (and
    storing) it first if absent; retraining the model or changing the config makes a new file."""
    name = "circuits/" + lm.spec.name.replace("/", "_")
    stored = cached(name, circuit_params(lm, config), lambda: json.loads(discover_circuit(lm, config).to_json()))
    return Circuit(**stored)


def score_maps(circuit: Circuit) -> dict[str, torch.Tensor]:
    """The stored ``[layer, head]`` score map of each step."""
    return {g: torch.tensor(s) for g, s in circuit.scores.items()}


def candidates_of(circuit: Circuit) -> dict[str, list[Head]]:
    """The path-patching candidates a (possibly pruned) circuit was chosen from."""
    stored = circuit.params.get("candidates", circuit.groups)
    return {g: [tuple(h) for h in hs] for g, hs in stored.items()}


def search_cost(lm, config: PathPatchingConfig, base: D.TaskBatch) -> "pd.DataFrame":
    """Forward passes and token positions processed by one full search, the authors' way (one
    sender per pass, whole prompts in both passes) and ours (one prompt copy per sender in a pass;
    pass 1 on the sender's token only; pass 2 from the chunk's first receiver position on, its clean
    prefix run once per prompt). Ours is an upper bound: senders that cannot reach any receiver are
    skipped at run time, which this count ignores."""
    import math

    import pandas as pd

    config = config.resolve(lm)
    senders = lm.n_layers * lm.n_heads
    seq_len = base.seq_len
    rows = []
    for step in STEPS:
        two = step.receiver_input is not None
        pos = P.position_index(base, step.position)
        passes = positions = 0
        for start in range(0, len(base), config.batch_size):
            chunk = pos[start:start + config.batch_size]
            n = len(chunk)
            per_pass = max(1, config.max_rows // n)
            passes += math.ceil(senders / per_pass) * (2 if two else 1)
            first = int(chunk.min())
            positions += n * senders + (n * first + n * senders * (seq_len - first) if two else 0)
        rows.append({
            "step": step.group,
            "authors' passes": math.ceil(len(base) / config.batch_size) * senders * (2 if two else 1),
            "our passes": passes,
            "authors' token positions": len(base) * senders * seq_len * (2 if two else 1),
            "our token positions": positions,
        })
    return pd.DataFrame(rows)
