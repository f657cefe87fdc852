"""Reading and overwriting per-head outputs: the one place every method touches the model's insides.

A *head output* is TransformerLens's ``blocks.{l}.attn.hook_z`` (``[batch, pos, head, d_head]``), the
attention-weighted sum of value vectors before ``W_O`` — what the authors called the ``o_proj`` input.
Editing ``z`` leaves the module's own output projection in place, so a merged LoRA update of
``o_proj`` still applies (the authors' hooks rebuilt ``z @ W_O`` by hand and lost it).

Every function is batched over prompts: an edit is a boolean mask over (layer, prompt, position,
head) and a source tensor broadcast against it, applied in one forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

from .data import TaskBatch

# TransformerLens hook names (one naming scheme for every activation).
def z_name(layer: int) -> str:
    """TransformerLens name of layer ``layer``'s head outputs (``hook_z``). Explained in chapter 3."""
    return f"blocks.{layer}.attn.hook_z"


def q_name(layer: int) -> str:
    """TransformerLens name of layer ``layer``'s queries (``hook_q``, before rotary). Explained in chapter 3."""
    return f"blocks.{layer}.attn.hook_q"


def k_name(layer: int) -> str:
    """TransformerLens name of layer ``layer``'s keys (``hook_k``). Explained in chapter 3."""
    return f"blocks.{layer}.attn.hook_k"


def v_name(layer: int) -> str:
    """TransformerLens name of layer ``layer``'s values (``hook_v``). Explained in chapter 3."""
    return f"blocks.{layer}.attn.hook_v"


def pattern_name(layer: int) -> str:
    """TransformerLens name of layer ``layer``'s attention pattern. Explained in chapter 3."""
    return f"blocks.{layer}.attn.hook_pattern"


def scores_name(layer: int) -> str:
    """TransformerLens name of layer ``layer``'s pre-softmax attention scores. Explained in appendix A2."""
    return f"blocks.{layer}.attn.hook_attn_scores"


def mlp_out_name(layer: int) -> str:
    """TransformerLens name of layer ``layer``'s MLP output. Explained in chapter 3."""
    return f"blocks.{layer}.hook_mlp_out"


EMBED_NAME = "hook_embed"

#: A circuit node: (layer, head, named position) — e.g. (14, 27, "last").
Node = tuple[int, int, str]

#: A hook function as TransformerLens calls it.
Hook = Callable[[torch.Tensor, object], torch.Tensor]


def n_layers_heads(model) -> tuple[int, int]:
    """The model's number of layers and of heads per layer. Explained in chapter 3."""
    return model.cfg.n_layers, model.cfg.n_heads


# --------------------------------------------------------------------------------------------------
# Running with hooks
# --------------------------------------------------------------------------------------------------

def run_with_hooks(model, tokens: torch.Tensor, hooks: Sequence[tuple[str, Hook]] = ()) -> torch.Tensor:
    """Logits of a forward pass with the given hooks (plain functions ``hook(tensor, hook) -> tensor``).
    Explained in chapters 3–6."""
    if not hooks:
        return model(tokens)
    return model.run_with_hooks(tokens, fwd_hooks=list(hooks))


def last_logits(logits: torch.Tensor) -> torch.Tensor:
    """Next-token logits at the last prompt token (prompts are unpadded and equally long). Explained in chapters 3–6."""
    return logits[:, -1, :]


def z_edit_hooks(model, edit: Callable[[int, torch.Tensor], torch.Tensor],
                 layers: Iterable[int] | None = None) -> list[tuple[str, Hook]]:
    """Hooks that pass every chosen layer's head outputs through ``edit(layer, z) -> z``.

    Closures carry the layer: on the bridge, ``hook.name`` is the canonical ``attn.o.hook_in``, so the
    TransformerLens habit of looking data up by ``hook.name`` would break (tooling.md pitfall 2).
    Explained in chapters 3–6."""
    layers = range(model.cfg.n_layers) if layers is None else layers

    def make(layer):
        def hook(z, hook):
            return edit(layer, z)
        return hook

    return [(z_name(layer), make(layer)) for layer in layers]


def cache_activations(model, tokens: torch.Tensor, names: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and the named activations of one forward pass (detached). Explained in chapters 3–6."""
    store: dict[str, torch.Tensor] = {}

    def make(name):
        def hook(x, hook):
            store[name] = x.detach()
            return x
        return hook

    logits = run_with_hooks(model, tokens, [(name, make(name)) for name in names])
    return logits, store


def head_outputs(model, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and every layer's head outputs stacked as ``[layer, batch, pos, head, d_head]``.
    Explained in chapters 3–6."""
    n_layers, _ = n_layers_heads(model)
    logits, store = cache_activations(model, tokens, [z_name(layer) for layer in range(n_layers)])
    return logits, torch.stack([store[z_name(layer)] for layer in range(n_layers)])


# --------------------------------------------------------------------------------------------------
# Masks over (layer, prompt, position, head)
# --------------------------------------------------------------------------------------------------

def empty_mask(model, batch: TaskBatch) -> torch.Tensor:
    """An all-False mask over (layer, prompt, position, head). Explained in chapter 3."""
    n_layers, n_heads = n_layers_heads(model)
    return torch.zeros(n_layers, len(batch), batch.seq_len, n_heads, dtype=torch.bool, device=batch.tokens.device)


def position_index(batch: TaskBatch, position: str) -> torch.Tensor:
    """Token index of a named position per prompt: "last", "query_label", "prev_query_label",
    "object_{i}" or "label_{i}" (-1 where the prompt has no such token). Explained in chapters 3–6."""
    if position in batch.positions and batch.positions[position].dim() == 1:
        return batch.positions[position]
    kind, _, index = position.rpartition("_")
    if kind in ("object", "label") and index.isdigit():
        return batch.positions[kind][:, int(index)]
    raise ValueError(
        f"unknown position {position!r}: use 'last', 'query_label', 'prev_query_label', 'object_<i>' or 'label_<i>'"
    )


def nodes_mask(model, batch: TaskBatch, nodes: Iterable[Node]) -> torch.Tensor:
    """A mask that is True at each node's (layer, head) and its named position in every prompt.
    Explained in chapters 3–6."""
    mask = empty_mask(model, batch)
    rows = torch.arange(len(batch), device=mask.device)
    for layer, head, position in nodes:
        index = position_index(batch, position).to(mask.device)
        ok = index >= 0
        mask[layer, rows[ok], index[ok], head] = True
    return mask


def heads_at(heads: Iterable[tuple[int, int]], position: str) -> list[Node]:
    """Circuit nodes: each (layer, head) at one named position. Explained in chapter 3."""
    return [(layer, head, position) for layer, head in heads]


# --------------------------------------------------------------------------------------------------
# Patching
# --------------------------------------------------------------------------------------------------

def patch_hooks(model, source: torch.Tensor, mask: torch.Tensor) -> list[tuple[str, Hook]]:
    """Hooks replacing head outputs where ``mask`` is True by ``source``.

    ``source`` is ``[layer, batch or 1, pos, head, d_head]`` and ``mask`` ``[layer, batch or 1, pos,
    head]``; layers whose mask is all False get no hook. Explained in chapters 3–6."""
    layers = [layer for layer in range(mask.shape[0]) if bool(mask[layer].any())]

    def edit(layer, z):
        return torch.where(mask[layer].unsqueeze(-1), source[layer].to(z.dtype), z)

    return z_edit_hooks(model, edit, layers)


def patch_heads(model, tokens: torch.Tensor, source: torch.Tensor, mask: torch.Tensor,
                extra_hooks: Sequence[tuple[str, Hook]] = ()) -> torch.Tensor:
    """Logits of ``tokens`` with the masked head outputs taken from ``source`` (another run's, a
    mean, or another model's), all in one forward pass. Explained in chapters 3–6."""
    return run_with_hooks(model, tokens, [*patch_hooks(model, source, mask), *extra_hooks])


def activation_patch(model, base: TaskBatch, source: TaskBatch, nodes: Iterable[Node],
                     source_nodes_position: str | None = None) -> torch.Tensor:
    """Logits of the base prompts with each node's head output taken from the source prompt at the
    same named position (positions are looked up separately in base and source), or at
    ``source_nodes_position`` of the source. Explained in chapter 5."""
    nodes = list(nodes)
    read = [(layer, head, source_nodes_position or position) for layer, head, position in nodes]
    outputs = HeadOutputs.record(model, source, read, batch_size=max(1, len(source)))
    return patch_from(model, base, outputs, nodes, read)


def patch_from(model, batch: TaskBatch, outputs: "HeadOutputs", nodes: Sequence[Node],
               read: Sequence[Node] | None = None) -> torch.Tensor:
    """Logits of ``batch`` with each node's head output replaced by the recorded output of
    ``read[i]`` (default: the same node), row for row (prompt i of the cache patches prompt i of the
    batch). A node at `ALL_POSITIONS` patches every token. Explained in chapter 5 and chapter 6."""
    values, mask = aligned_outputs(model, batch, outputs, nodes, read)
    return patch_heads(model, batch.tokens, values, mask)


def aligned_outputs(model, batch: TaskBatch, outputs: "HeadOutputs", nodes: Sequence[Node],
                    read: Sequence[Node] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Source tensor ``[layer, prompt, pos, head, d_head]`` and mask placing the recorded outputs at
    each node's position in ``batch`` (prompts without that position are left alone). Explained in chapters 3–6."""
    read = list(nodes) if read is None else list(read)
    missing = [n for n in read if n not in outputs.values]
    if missing:
        raise ValueError(f"{len(missing)} nodes were not recorded, e.g. {missing[:3]}")
    n_layers, n_heads = n_layers_heads(model)
    device = batch.tokens.device
    dtype = next(model.parameters()).dtype  # the model's own precision: half the memory at 7B in float16
    values = torch.zeros(n_layers, len(batch), batch.seq_len, n_heads, model.cfg.d_head, device=device, dtype=dtype)
    mask = empty_mask(model, batch)
    rows = torch.arange(len(batch), device=device).unsqueeze(1)
    for node, source_node in zip(nodes, read):
        layer, head, position = node
        index = node_token_index(batch, position)
        recorded = outputs.values[source_node].to(device=device, dtype=dtype)
        if recorded.shape[1] != index.shape[1]:  # a named source position patched into a named target one
            recorded = recorded[:, :1].expand(-1, index.shape[1], -1)
        source_ok = node_token_index(outputs.batch, source_node[2]).to(device)[:, :1] >= 0  # the source has it
        ok = (index >= 0) & source_ok
        r, i = rows.expand_as(index)[ok], index[ok]
        values[layer, r, i, head] = recorded[ok]
        mask[layer, r, i, head] = True
    return values, mask


def mean_head_outputs(model, reference: TaskBatch, batch_size: int = 50) -> torch.Tensor:
    """Position-wise mean head outputs over reference prompts, ``[layer, pos, head, d_head]``: the
    value an ablated head is set to (the authors' mean ablation). Explained in chapters 3–6."""
    total = None
    for chunk in reference.batches(batch_size):
        with torch.no_grad():
            _, z = head_outputs(model, chunk.tokens)
        part = z.sum(dim=1)
        total = part if total is None else total + part
    return total / len(reference)


def ablate_heads(model, tokens: torch.Tensor, means: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Logits with every head output set to its position-wise mean except where ``keep`` is True.
    Explained in chapters 3–6."""
    return patch_heads(model, tokens, means.unsqueeze(1), ~keep)


def replace_hooks(name: str, source: torch.Tensor) -> tuple[str, Hook]:
    """A hook that replaces a whole activation (e.g. the embedding or an MLP output) by ``source``.
    Explained in chapters 3–6."""
    def hook(x, hook):
        return source.to(x.dtype).expand_as(x)
    return name, hook



# --------------------------------------------------------------------------------------------------
# One cache of head outputs, shared by activation patching, DCM and CMAP
# --------------------------------------------------------------------------------------------------

#: A node position meaning "every token" (DCM reads a source at the base's index, the authors' W3;
#: CMAP can patch all positions).
ALL_POSITIONS = "all"


def node_token_index(batch: TaskBatch, position: str) -> torch.Tensor:
    """``[prompt, k]`` token indices a node covers: its named position (k = 1) or every token.
    Explained in chapters 3–6."""
    if position == ALL_POSITIONS:
        return torch.arange(batch.seq_len, device=batch.tokens.device).expand(len(batch), -1)
    return position_index(batch, position).unsqueeze(1)


class HeadOutputs:
    """Chosen head outputs ``z`` on a set of prompts, recorded once and reused by every run that
    patches them in: activation patching (a source prompt's heads into a base prompt), DCM (every
    training step and evaluation reads the same source activations) and CMAP (another model's heads,
    kept on CPU so that only one model is ever resident).

    ``values[node]`` is ``[prompt, k, d_head]``: k = 1 for a node at a named position, every token for
    a node at `ALL_POSITIONS`. Size for named positions: nodes x prompts x d_head (for 175 LLaMA-7B
    nodes and 500 prompts, 45 MB in float32). Explained in chapter 5 (activation patching) and
    chapter 6 (CMAP)."""

    def __init__(self, nodes: Sequence[Node], values: dict, batch: TaskBatch, model_name: str = ""):
        self.nodes = tuple(nodes)
        self.values = values
        self.batch = batch
        self.model = model_name
        self._row = None

    @classmethod
    @torch.no_grad()
    def record(cls, model, batch: TaskBatch, nodes: Iterable[Node], batch_size: int = 32,
               device: str | torch.device | None = None, model_name: str = "",
               desc: str = "recording head outputs") -> "HeadOutputs":
        """Run the model over the prompts once and keep only the nodes' outputs at their positions
        (on ``device``, default the model's; "cpu" for CMAP)."""
        from .progress import progress

        nodes = tuple(dict.fromkeys((int(layer), int(head), str(pos)) for layer, head, pos in nodes))
        layers = sorted({layer for layer, _, _ in nodes})
        parts: dict[Node, list[torch.Tensor]] = {node: [] for node in nodes}
        chunks = list(batch.batches(batch_size)) if nodes else []
        for chunk in progress(chunks, desc=desc, total=len(chunks), leave=False):
            _, store = cache_activations(model, chunk.tokens, [z_name(layer) for layer in layers])
            rows = torch.arange(len(chunk), device=chunk.tokens.device).unsqueeze(1)
            for node in nodes:
                layer, head, position = node
                index = node_token_index(chunk, position).clamp(min=0)
                value = store[z_name(layer)][rows, index, head]
                parts[node].append(value.float().to(device) if device is not None else value)
        values = {node: torch.cat(t) for node, t in parts.items()}
        return cls(nodes, values, batch, model_name)

    def __len__(self) -> int:
        return len(self.batch)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.values.values())

    def rows(self, rows) -> "HeadOutputs":
        """The cache for a subset of prompts (a slice or an index tensor)."""
        if isinstance(rows, slice):
            batch = self.batch[rows]
        else:
            batch = self.batch[rows.tolist() if torch.is_tensor(rows) else list(rows)]
        return HeadOutputs(self.nodes, {n: t[rows] for n, t in self.values.items()}, batch, self.model)

    def row_of(self, examples) -> torch.Tensor:
        """Row of each example in this cache (the cache was recorded once for every distinct prompt)."""
        if self._row is None:
            self._row = {ex: i for i, ex in enumerate(self.batch.examples)}
        return torch.tensor([self._row[ex] for ex in examples])

    def at(self, node: Node, rows: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """``[len(rows), d_head]``: the node's output for those prompts; for an `ALL_POSITIONS` node,
        at token ``index`` of each (``-1`` read as 0; such rows are left unpatched by the callers)."""
        value = self.values[node]
        rows = rows.to(value.device)
        if node[2] == ALL_POSITIONS:
            if index is None:
                raise ValueError("a node recorded at every position needs the token index to read")
            return value[rows, index.to(value.device).clamp(min=0)]
        return value[rows, 0]

    def select(self, nodes: Iterable[Node]) -> "HeadOutputs":
        """The cache of some of its nodes (no copy): one recording shared by runs of different heads."""
        nodes = tuple(dict.fromkeys((int(layer), int(head), str(pos)) for layer, head, pos in nodes))
        missing = [n for n in nodes if n not in self.values]
        if missing:
            raise KeyError(f"nodes {missing} were not recorded")
        selected = HeadOutputs(nodes, {n: self.values[n] for n in nodes}, self.batch, self.model)
        selected._row = self._row
        return selected


# --------------------------------------------------------------------------------------------------
# Reusing a clean prefix: a run of the later tokens only
# --------------------------------------------------------------------------------------------------

def rotary_name(layer: int, name: str) -> str:
    """TransformerLens names of the bridge's rotary attention that a prefix-reusing run needs besides
    the ones above: ``hook_cos`` / ``hook_sin`` (each position's rotary angles), ``hook_rot_q`` /
    ``hook_rot_k`` (queries and keys after RoPE). Explained in chapter 3."""
    return f"blocks.{layer}.attn.{name}"


def expand_kv(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[..., kv_head, d]`` to one slice per query head, as grouped-query attention shares them.
    Explained in chapter 3."""
    return x if x.shape[-2] == n_heads else x.repeat_interleave(n_heads // x.shape[-2], dim=-2)


def supports_prefix_reuse(model) -> bool:
    """Whether the model exposes the rotary-attention hooks a prefix-reusing run needs. Explained in chapter 3."""
    return all(rotary_name(0, n) in model.hook_dict for n in ("hook_cos", "hook_sin", "hook_rot_q", "hook_rot_k"))


@dataclass
class Prefix:
    """What a clean run leaves for a later run of the same prompts' later tokens: every layer's keys
    after RoPE and values (``[layer, prompt, pos, kv_head, d_head]``) and rotary angles
    (``[layer, 1, pos, rotary dim]``). Explained in chapter 3 (path patching's pass 2) and chapter 5 (DCM)."""

    keys: torch.Tensor
    values: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor

    def __getitem__(self, rows) -> "Prefix":
        return Prefix(self.keys[:, rows], self.values[:, rows], self.cos, self.sin)

    def __len__(self) -> int:
        return self.keys.shape[1]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values, self.cos, self.sin))

    @staticmethod
    def bytes_per_prompt(model, seq_len: int) -> int:
        cfg = model.cfg
        kv_heads = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
        return 2 * cfg.n_layers * seq_len * kv_heads * cfg.d_head * next(model.parameters()).element_size()

    @staticmethod
    def cat(prefixes: Sequence["Prefix"]) -> "Prefix":
        return Prefix(torch.cat([p.keys for p in prefixes], 1), torch.cat([p.values for p in prefixes], 1),
                      prefixes[0].cos, prefixes[0].sin)


def prefix_capture_hooks(n_layers: int, store: dict) -> list[tuple[str, Hook]]:
    """Hooks that keep what `Prefix` holds in ``store`` (``{name}{layer}``), to add to a clean run.
    Explained in chapter 3."""
    def keep(key):
        def hook(x, hook):
            store[key] = x.detach()
            return x
        return hook

    return [(rotary_name(layer, name), keep(f"{name}{layer}"))
            for layer in range(n_layers) for name in ("hook_rot_k", "hook_v", "hook_cos", "hook_sin")]


def prefix_from_store(n_layers: int, store: dict) -> Prefix:
    """The `Prefix` of a clean run whose `prefix_capture_hooks` filled ``store``. Explained in chapter 3."""
    return Prefix(*(torch.stack([store[f"{name}{layer}"] for layer in range(n_layers)])
                    for name in ("hook_rot_k", "hook_v", "hook_cos", "hook_sin")))


@torch.no_grad()
def record_prefix(model, tokens: torch.Tensor, batch_size: int = 64) -> Prefix:
    """A clean run of ``tokens`` (in chunks of ``batch_size``), kept as a `Prefix`. Explained in chapter 5."""
    n_layers = model.cfg.n_layers
    parts = []
    for start in range(0, tokens.shape[0], batch_size):
        store: dict = {}
        run_with_hooks(model, tokens[start:start + batch_size], prefix_capture_hooks(n_layers, store))
        parts.append(prefix_from_store(n_layers, store))
    return Prefix.cat(parts)


def prefix_reuse_hooks(model, prefix: Prefix, start: int, copies: int = 1,
                       scale: float | None = None) -> tuple[dict[str, list[Callable]], list[dict]]:
    """Hooks for a run of tokens ``start:`` of prompts whose tokens before ``start`` are clean and
    were recorded in ``prefix`` (``n`` prompts; the run's rows are ``copies`` set-major copies of them).

    In every layer the hooks give the run's tokens their true rotary angles and let their queries
    attend to the prefix's keys and values, in one softmax with their own keys (the model's
    causal attention covers the run's tokens). Nothing before ``start`` can differ from the clean
    run when every edit of the run lies at or after ``start``, so the run's logits are the full
    run's from ``start`` on; gradients flow as in the full run. Returns the hooks as
    ``{name: [fn(x) -> x, ...]}`` (the caller may append its own, e.g. an edit of ``z`` after the
    prefix's share is added) and one state per layer whose ``"prefix"`` holds that layer's
    attention weights on the prefix ``[row, head, run pos, start]`` (for callers that need them);
    `hook_list` turns them into TransformerLens hooks and frees the weights after each layer.
    Explained in chapter 3 (path patching's pass 2) and chapter 5 (DCM)."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    scale = model.cfg.d_head ** -0.5 if scale is None else scale
    n = len(prefix)
    hooks: dict[str, list[Callable]] = {}
    states: list[dict] = [{} for _ in range(n_layers)]
    if start <= 0:
        return hooks, states

    def add(name, fn):
        hooks.setdefault(name, []).append(fn)

    for layer in range(n_layers):
        state = states[layer]
        keys = expand_kv(prefix.keys[layer][:, :start], n_heads)                # [n, prefix, head, d]
        values = expand_kv(prefix.values[layer][:, :start], n_heads)
        cos, sin = prefix.cos[layer][..., start:, :], prefix.sin[layer][..., start:, :]

        def angles(x, true=None):
            if x.shape[-2:] != true.shape[-2:]:
                raise RuntimeError(f"rotary angles of shape {tuple(x.shape)}; expected {tuple(true.shape)}")
            return true.to(x.dtype)

        def keep_q(x, state=state):
            state["q"] = x                                                      # [row, run pos, head, d]
            return x

        def joint_softmax(x, state=state, keys=keys):
            q = state.pop("q")
            r, h, s, _ = x.shape
            scores = torch.einsum("knshd,nphd->knhsp", q.reshape(copies, n, s, h, -1), keys.to(q.dtype))
            w = torch.cat([scores.reshape(r, h, s, -1) * scale, x], -1).softmax(-1, dtype=torch.float32).to(x.dtype)
            state["prefix"], state["run"] = w[..., :start], w[..., start:]
            return x

        def pattern(x, state=state):
            run = state.pop("run")
            if run.shape != x.shape:
                raise RuntimeError(f"attention pattern of shape {tuple(x.shape)}; expected {tuple(run.shape)}")
            return run

        def add_prefix(z, state=state, values=values):
            w = state["prefix"]
            r, s, h, d = z.shape
            from_prefix = torch.einsum("knhsp,nphd->knshd", w.reshape(copies, n, h, s, -1), values.to(w.dtype))
            return z + from_prefix.reshape(r, s, h, d).to(z.dtype)

        add(rotary_name(layer, "hook_cos"), lambda x, true=cos: angles(x, true))
        add(rotary_name(layer, "hook_sin"), lambda x, true=sin: angles(x, true))
        add(rotary_name(layer, "hook_rot_q"), keep_q)
        add(scores_name(layer), joint_softmax)
        add(pattern_name(layer), pattern)
        add(z_name(layer), add_prefix)
    return hooks, states


@torch.no_grad()
def record_ablated_prefix(model, tokens: torch.Tensor, start: int, means: torch.Tensor,
                          keep: torch.Tensor, angles: Prefix) -> Prefix:
    """A `Prefix` of ``tokens[:, :start]`` (a run of those tokens only) with every head output set to
    its position-wise mean except where ``keep`` ``[layer, prompt, pos, head]`` is True: what the
    later tokens of a mean-ablated run attend to. ``angles``: any `record_prefix` of prompts as long
    as ``tokens``, for every position's rotary angles. Explained in chapter 4."""
    n_layers = model.cfg.n_layers
    store: dict = {}
    run_with_hooks(model, tokens[:, :start], [*patch_hooks(model, means[:, :start].unsqueeze(1), ~keep[:, :, :start]),
                                               *prefix_capture_hooks(n_layers, store)])
    prefix = prefix_from_store(n_layers, store)
    return Prefix(prefix.keys, prefix.values, angles.cos, angles.sin)


def ablate_heads_after(model, tokens: torch.Tensor, means: torch.Tensor, keep: torch.Tensor, prefix: Prefix,
                       start: int, copies: int) -> torch.Tensor:
    """`ablate_heads` of ``copies`` stacked copies of ``n`` prompts whose masks agree before ``start``
    (``prefix``: `record_ablated_prefix` of the shared part): only tokens ``start:`` run, attending to
    the prefix's keys and values, so the logits (of those tokens) are the full runs'. ``keep`` covers
    the run's tokens, ``[layer, copies·n, pos − start, head]``. Explained in chapter 4."""
    hooks, states = prefix_reuse_hooks(model, prefix, start, copies)
    suffix_means = means[:, start:].unsqueeze(1)                                  # [layer, 1, pos, head, d]
    for layer in range(model.cfg.n_layers):
        if bool((~keep[layer]).any()):
            hooks.setdefault(z_name(layer), []).append(
                lambda z, layer=layer: torch.where(keep[layer].unsqueeze(-1), z, suffix_means[layer].to(z.dtype)))
    return run_with_hooks(model, tokens[:, start:], hook_list(hooks, states))


def hook_list(hooks: dict[str, list[Callable]], states: Sequence[dict] = ()) -> list[tuple[str, Hook]]:
    """TransformerLens hooks that run each name's functions in order; with ``states`` (from
    `prefix_reuse_hooks`), each layer's prefix weights are dropped once its ``z`` hooks have run.
    Explained in chapter 3."""
    hooks = {name: list(fns) for name, fns in hooks.items()}
    for layer, state in enumerate(states):
        if state is not None and z_name(layer) in hooks:
            hooks[z_name(layer)].append(lambda z, state=state: (state.clear(), z)[1])

    def compose(fns):
        def run(x, hook):
            for fn in fns:
                x = fn(x)
            return x
        return run

    return [(name, compose(fns)) for name, fns in hooks.items()]
