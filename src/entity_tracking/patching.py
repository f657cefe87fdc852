"""Reading and overwriting per-head outputs: the one place every method touches the model's insides.

A *head output* is TransformerLens's ``blocks.{l}.attn.hook_z`` (``[batch, pos, head, d_head]``), the
attention-weighted sum of value vectors before ``W_O`` — what the authors called the ``o_proj`` input.
Editing ``z`` leaves the module's own output projection in place, so a merged LoRA update of
``o_proj`` still applies (the authors' hooks rebuilt ``z @ W_O`` by hand and lost it).

Every function is batched over prompts: an edit is a boolean mask over (layer, prompt, position,
head) and a source tensor broadcast against it, applied in one forward pass.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch

from .data import TaskBatch

# TransformerLens hook names (one naming scheme for every activation).
def z_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def q_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_q"


def k_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_k"


def v_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_v"


def pattern_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


def scores_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_attn_scores"


def mlp_out_name(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


EMBED_NAME = "hook_embed"

#: A circuit node: (layer, head, named position) — e.g. (14, 27, "last").
Node = tuple[int, int, str]

#: A hook function as TransformerLens calls it.
Hook = Callable[[torch.Tensor, object], torch.Tensor]


def n_layers_heads(model) -> tuple[int, int]:
    return model.cfg.n_layers, model.cfg.n_heads


# --------------------------------------------------------------------------------------------------
# Running with hooks
# --------------------------------------------------------------------------------------------------

def run_with_hooks(model, tokens: torch.Tensor, hooks: Sequence[tuple[str, Hook]] = ()) -> torch.Tensor:
    """Logits of a forward pass with the given hooks (plain functions ``hook(tensor, hook) -> tensor``)."""
    if not hooks:
        return model(tokens)
    return model.run_with_hooks(tokens, fwd_hooks=list(hooks))


def last_logits(logits: torch.Tensor) -> torch.Tensor:
    """Next-token logits at the last prompt token (prompts are unpadded and equally long)."""
    return logits[:, -1, :]


def z_edit_hooks(model, edit: Callable[[int, torch.Tensor], torch.Tensor],
                 layers: Iterable[int] | None = None) -> list[tuple[str, Hook]]:
    """Hooks that pass every chosen layer's head outputs through ``edit(layer, z) -> z``.

    Closures carry the layer: on the bridge, ``hook.name`` is the canonical ``attn.o.hook_in``, so the
    TransformerLens habit of looking data up by ``hook.name`` would break (tooling.md pitfall 2)."""
    layers = range(model.cfg.n_layers) if layers is None else layers

    def make(layer):
        def hook(z, hook):
            return edit(layer, z)
        return hook

    return [(z_name(layer), make(layer)) for layer in layers]


def cache_activations(model, tokens: torch.Tensor, names: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and the named activations of one forward pass (detached)."""
    store: dict[str, torch.Tensor] = {}

    def make(name):
        def hook(x, hook):
            store[name] = x.detach()
            return x
        return hook

    logits = run_with_hooks(model, tokens, [(name, make(name)) for name in names])
    return logits, store


def head_outputs(model, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and every layer's head outputs stacked as ``[layer, batch, pos, head, d_head]``."""
    n_layers, _ = n_layers_heads(model)
    logits, store = cache_activations(model, tokens, [z_name(layer) for layer in range(n_layers)])
    return logits, torch.stack([store[z_name(layer)] for layer in range(n_layers)])


# --------------------------------------------------------------------------------------------------
# Masks over (layer, prompt, position, head)
# --------------------------------------------------------------------------------------------------

def empty_mask(model, batch: TaskBatch) -> torch.Tensor:
    n_layers, n_heads = n_layers_heads(model)
    return torch.zeros(n_layers, len(batch), batch.seq_len, n_heads, dtype=torch.bool, device=batch.tokens.device)


def position_index(batch: TaskBatch, position: str) -> torch.Tensor:
    """Token index of a named position per prompt: "last", "query_label", "prev_query_label",
    "object_{i}" or "label_{i}" (-1 where the prompt has no such token)."""
    if position in batch.positions and batch.positions[position].dim() == 1:
        return batch.positions[position]
    kind, _, index = position.rpartition("_")
    if kind in ("object", "label") and index.isdigit():
        return batch.positions[kind][:, int(index)]
    raise ValueError(
        f"unknown position {position!r}: use 'last', 'query_label', 'prev_query_label', 'object_<i>' or 'label_<i>'"
    )


def nodes_mask(model, batch: TaskBatch, nodes: Iterable[Node]) -> torch.Tensor:
    """A mask that is True at each node's (layer, head) and its named position in every prompt."""
    mask = empty_mask(model, batch)
    rows = torch.arange(len(batch), device=mask.device)
    for layer, head, position in nodes:
        index = position_index(batch, position).to(mask.device)
        ok = index >= 0
        mask[layer, rows[ok], index[ok], head] = True
    return mask


def heads_at(heads: Iterable[tuple[int, int]], position: str) -> list[Node]:
    return [(layer, head, position) for layer, head in heads]


# --------------------------------------------------------------------------------------------------
# Patching
# --------------------------------------------------------------------------------------------------

def patch_hooks(model, source: torch.Tensor, mask: torch.Tensor) -> list[tuple[str, Hook]]:
    """Hooks replacing head outputs where ``mask`` is True by ``source``.

    ``source`` is ``[layer, batch or 1, pos, head, d_head]`` and ``mask`` ``[layer, batch or 1, pos,
    head]``; layers whose mask is all False get no hook."""
    layers = [layer for layer in range(mask.shape[0]) if bool(mask[layer].any())]

    def edit(layer, z):
        return torch.where(mask[layer].unsqueeze(-1), source[layer].to(z.dtype), z)

    return z_edit_hooks(model, edit, layers)


def patch_heads(model, tokens: torch.Tensor, source: torch.Tensor, mask: torch.Tensor,
                extra_hooks: Sequence[tuple[str, Hook]] = ()) -> torch.Tensor:
    """Logits of ``tokens`` with the masked head outputs taken from ``source`` (another run's, a
    mean, or another model's), all in one forward pass."""
    return run_with_hooks(model, tokens, [*patch_hooks(model, source, mask), *extra_hooks])


def activation_patch(model, base: TaskBatch, source: TaskBatch, nodes: Iterable[Node],
                     source_nodes_position: str | None = None) -> torch.Tensor:
    """Logits of the base prompts with each node's head output taken from the source prompt at the
    same named position (positions are looked up separately in base and source)."""
    nodes = list(nodes)
    _, z_src = head_outputs(model, source.tokens)
    mask = nodes_mask(model, base, nodes)
    n_layers, _, _, n_heads, d_head = z_src.shape
    aligned = z_src.new_zeros(n_layers, len(base), base.seq_len, n_heads, d_head)
    rows = torch.arange(len(base), device=z_src.device)
    for layer, head, position in nodes:
        b_idx = position_index(base, position).to(z_src.device)
        s_idx = position_index(source, source_nodes_position or position).to(z_src.device)
        ok = (b_idx >= 0) & (s_idx >= 0)
        aligned[layer, rows[ok], b_idx[ok], head] = z_src[layer, rows[ok], s_idx[ok], head]
    return patch_heads(model, base.tokens, aligned, mask)


def mean_head_outputs(model, reference: TaskBatch, batch_size: int = 50) -> torch.Tensor:
    """Position-wise mean head outputs over reference prompts, ``[layer, pos, head, d_head]``: the
    value an ablated head is set to (paper.md §2.4b)."""
    total = None
    for chunk in reference.batches(batch_size):
        with torch.no_grad():
            _, z = head_outputs(model, chunk.tokens)
        part = z.sum(dim=1)
        total = part if total is None else total + part
    return total / len(reference)


def ablate_heads(model, tokens: torch.Tensor, means: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Logits with every head output set to its position-wise mean except where ``keep`` is True."""
    return patch_heads(model, tokens, means.unsqueeze(1), ~keep)


def replace_hooks(name: str, source: torch.Tensor) -> tuple[str, Hook]:
    """A hook that replaces a whole activation (e.g. the embedding or an MLP output) by ``source``."""
    def hook(x, hook):
        return source.to(x.dtype).expand_as(x)
    return name, hook

