"""Cross-Model Activation Patching (CMAP): which part of the fine-tuned model's circuit explains its gain
(.11).

Both models read the *same* prompt. The outputs ``z`` of a set of circuit heads, each at its group's
named position, are taken from the fine-tuned model's run (the *source*) and written into the base
model's run (the *target*) in one forward pass; the target's accuracy then says how much of the
fine-tuned model's advantage those head outputs carry. What moves is ``z``, the attention-weighted sum
of value vectors before ``W_O``: the target keeps its own output matrices, MLPs and embeddings, so
a fine-tuned ``o_proj`` (Goat's LoRA, FLoat's full update) is *not* carried over, exactly as in the
authors' ``cmap_out``.

The authors kept both fp32 7B models on one GPU (about 54 GB). Here only one model is ever resident:
the source's outputs of the chosen heads at their positions are cached on CPU (a few MB even at 7B),
the source is released, then the target is loaded (`cross_model_patching`). `memory_budget` gives
the arithmetic for both ways and `measured_peak_rss` measures them for the organism.

Every row of the result is computed from a fresh, immutable node list (`cmap_head_sets`): the
authors' notebook extended its value-fetcher list *in place* to build the full circuit, so a row
re-run after that cell could silently include the position transmitters.

The input variant (`input_cmap_logits`, the appendix's ``cmap_in``) patches the chosen heads' query
at the last token and/or their keys and values at every position up to it, then resets every head's
output at all other positions to the target's own, so only the last token is affected.
"""

from __future__ import annotations

import resource
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import pandas as pd
import torch

from . import data as D
from . import metrics as M
from . import patching as P
from .circuit import GROUPS, Circuit, Head
from .data import TaskConfig
from .progress import progress

#: A node whose head is patched at every token position (not a named position): used to state what
#: CMAP of *all* components would do.
ALL_POSITIONS = "all"

#: The order of the paper's CMAP figure, then the full circuit.
CMAP_ROWS = ("structure_reader", "position_detector", "position_transmitter", "value_fetcher", "full_circuit")

#: Which DCM desideratum selects each group's heads for CMAP (the paper: object value for the value
#: fetchers, position for B and C; every structure reader, since none carries a clear variable).
DCM_SELECTION = {"value_fetcher": "object_value", "position_transmitter": "positional",
                 "position_detector": "positional", "structure_reader": None}

INPUTS = ("q", "k", "v", "qk", "qkv")


@dataclass(frozen=True)
class CMAPConfig:
    """The evaluation of the authors' ``cmap.ipynb``: the first 500 prompts, 7 boxes. Explained in
    chapter 6."""

    task: TaskConfig = TaskConfig()  # (paper: the first 500 lines, 7 boxes)
    batch_size: int = 32     # prompts per chunk (paper: 8; only speed and float noise depend on it)
    max_rows: int = 1024     # prompts x rows of the table stacked in one target pass (the memory budget)


DEFAULT_CMAP = CMAPConfig()


# --------------------------------------------------------------------------------------------------
# Head sets: one fresh node list per row
# --------------------------------------------------------------------------------------------------

def cmap_head_sets(circuit: Circuit, dcm_heads: Mapping[tuple[str, str], Sequence[Head]] | None = None
                   ) -> dict[str, tuple[P.Node, ...]]:
    """Row name -> the (layer, head, position) nodes patched for it, each an immutable tuple built
    afresh, so no row can leak into another (the authors' in-place ``+=``).

    With ``dcm_heads`` ((group, desideratum) -> heads, `dcm.dcm_heads`) the groups are filtered as in
    the paper (`DCM_SELECTION`); without it every circuit head of the group is patched. The full
    circuit is the union of the four rows. Explained in chapter 6."""
    rows: dict[str, tuple[P.Node, ...]] = {}
    for group, position in GROUPS.items():
        desideratum = DCM_SELECTION[group]
        if dcm_heads is not None and desideratum is not None:
            heads = dcm_heads[(group, desideratum)]
        else:
            heads = circuit.groups[group]
        rows[group] = tuple(P.heads_at([tuple(map(int, h)) for h in heads], position))
    rows["full_circuit"] = tuple(dict.fromkeys(node for group in GROUPS for node in rows[group]))
    return {name: rows[name] for name in CMAP_ROWS}


def all_nodes(n_layers: int, n_heads: int, position: str = ALL_POSITIONS) -> tuple[P.Node, ...]:
    """Every head of every layer at one position (``"all"``: every token). Explained in chapter 6."""
    return tuple((layer, head, position) for layer in range(n_layers) for head in range(n_heads))


# --------------------------------------------------------------------------------------------------
# Source activations (kept on CPU) and the patched target
# --------------------------------------------------------------------------------------------------

ALL_POSITIONS = P.ALL_POSITIONS


def source_node_outputs(lm, batch: D.TaskBatch, nodes: Sequence[P.Node], batch_size: int = 32,
                        desc: str = "caching source heads") -> P.HeadOutputs:
    """Run the source model over the prompts and keep only the chosen heads' outputs at their
    positions, on CPU (`patching.HeadOutputs`): what makes one-model-at-a-time CMAP possible. Explained in chapter 6."""
    return P.HeadOutputs.record(lm.model, batch, nodes, batch_size, device="cpu", model_name=lm.spec.name, desc=desc)


@torch.no_grad()
def cmap_logits(lm, batch: D.TaskBatch, source: P.HeadOutputs, nodes: Sequence[P.Node],
                batch_size: int = 32) -> torch.Tensor:
    """Last-position logits of the target model with each node's output taken from the source
    model's run on the same prompt (all nodes at once, in one forward pass per chunk). Explained in chapter 6."""
    outs = []
    for start in range(0, len(batch), batch_size):
        chunk = batch[start: start + batch_size]
        part = source.rows(slice(start, start + len(chunk)))
        outs.append(P.last_logits(P.patch_from(lm.model, chunk, part, list(nodes))).float())
    return torch.cat(outs)


@torch.no_grad()
def cmap_accuracies(lm, batch: D.TaskBatch, source: P.HeadOutputs, rows: Mapping[str, Sequence[P.Node]],
                    batch_size: int = 32, max_rows: int = 1024) -> tuple[dict[str, float], int]:
    """Accuracy of the target for every row of the table (each a node set patched from the source),
    the rows stacked along the batch: each pass holds a chunk of prompts once per row, as many rows
    as ``max_rows`` allows. Returns the accuracies and the number of target passes run. Explained in chapter 6."""
    names = list(rows)
    hits = dict.fromkeys(names, 0)
    passes = 0
    for start in range(0, len(batch), batch_size):
        chunk = batch[start: start + batch_size]
        part = source.rows(slice(start, start + len(chunk)))
        per_pass = max(1, max_rows // len(chunk))
        for first in range(0, len(names), per_pass):
            group = names[first: first + per_pass]
            aligned = [P.aligned_outputs(lm.model, chunk, part, list(rows[name])) for name in group]
            values = torch.cat([v for v, _ in aligned], dim=1)
            mask = torch.cat([m for _, m in aligned], dim=1)
            logits = P.patch_heads(lm.model, chunk.tokens.repeat(len(group), 1), values, mask)
            right = (P.last_logits(logits).argmax(-1) == chunk.answer_ids.repeat(len(group))).view(len(group), -1)
            passes += 1
            for name, r in zip(group, right.sum(-1).tolist()):
                hits[name] += r
    return {name: hits[name] / len(batch) for name in names}, passes


def cmap_accuracy(lm, batch: D.TaskBatch, source: P.HeadOutputs, nodes: Sequence[P.Node],
                  batch_size: int = 32) -> float:
    """Accuracy of the target with the nodes patched from the source (one row of the table). Explained in chapter 6."""
    return M.accuracy(cmap_logits(lm, batch, source, nodes, batch_size), batch.answer_ids)


# --------------------------------------------------------------------------------------------------
# The experiment: one model resident at a time
# --------------------------------------------------------------------------------------------------

def model_bytes(lm) -> int:
    """Bytes of a loaded model's weights (parameters and buffers). Explained in chapter 6."""
    tensors = [*lm.model.parameters(), *lm.model.buffers()]
    return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())


def _same_prompts(lm, examples, source_tokens: torch.Tensor) -> D.TaskBatch:
    """The prompts tokenised for the target, refusing a target whose tokens differ from the source's."""
    batch = lm.tokenize(examples)
    if not torch.equal(batch.tokens.cpu(), source_tokens):
        raise ValueError("source and target tokenise the prompts differently; CMAP needs both models to "
                         "read the same tokens (the same tokenizer)")
    return batch


def cross_model_patching(source, target, head_sets: Mapping[str, Sequence[P.Node]],
                         config: CMAPConfig = DEFAULT_CMAP, both_resident: bool = False) -> dict:
    """The paper's CMAP table for one (source -> target) pair.

    ``source`` and ``target`` are variant names, specs or loaded models, loaded through
    `variants.load` one at a time: the source runs, its chosen head outputs go to CPU, it is
    released, then the target loads (``both_resident=True`` keeps the source loaded while the target
    runs, as the authors did — only to measure what that costs). Returns ``{"table": DataFrame(row,
    n_heads, accuracy), "source_accuracy", "target_accuracy", "target_passes", "memory": {...}}``; all
    accuracies on the same ``config.task`` prompts. Explained in chapter 6."""
    from . import variants

    nodes = tuple(dict.fromkeys(node for row in head_sets.values() for node in row))
    src = variants.load(source) if not both_resident else variants.load_unmanaged(source)
    examples = src.examples(config.task)
    batch = src.tokenize(examples)
    recorded = source_node_outputs(src, batch, nodes, config.batch_size)
    source_accuracy = M.model_accuracy(src, batch, config.batch_size)
    source_name, source_bytes, source_tokens = src.spec.name, model_bytes(src), batch.tokens.cpu()
    kept = src if both_resident else None
    src = batch = None
    tgt = variants.load(target)
    batch = _same_prompts(tgt, examples, source_tokens)
    target_accuracy = M.model_accuracy(tgt, batch, config.batch_size)
    accs, passes = cmap_accuracies(tgt, batch, recorded, head_sets, config.batch_size, config.max_rows)
    rows = [{"row": name, "n_heads": len(row_nodes), "accuracy": accs[name]} for name, row_nodes in head_sets.items()]
    target_name, target_bytes = tgt.spec.name, model_bytes(tgt)
    del kept
    resident = source_bytes + target_bytes if both_resident else max(source_bytes, target_bytes)
    return {
        "source": source_name, "target": target_name,
        "table": pd.DataFrame(rows, columns=["row", "n_heads", "accuracy"]),
        "source_accuracy": source_accuracy, "target_accuracy": target_accuracy, "target_passes": passes,
        "memory": {"source_weights_bytes": source_bytes, "target_weights_bytes": target_bytes,
                   "cache_bytes": recorded.nbytes(), "both_resident": both_resident,
                   "peak_weights_and_cache_bytes": resident + recorded.nbytes()},
    }


def _key(config: CMAPConfig) -> dict:
    return {k: v for k, v in asdict(config).items() if k not in ("batch_size", "max_rows")}


def stored_cmap(source, target, head_sets: Mapping[str, Sequence[P.Node]], config: CMAPConfig = DEFAULT_CMAP,
                both_resident: bool = False) -> dict:
    """`cross_model_patching`, read from ``results/`` or computed and stored, keyed by the two
    models' weights, the rows and the config: chapter 6 computes it, the conclusion and a rerun read
    it back without loading either model. Explained in chapter 6."""
    from .cache import cached
    from .variants import fingerprint

    params = {"source": fingerprint(source), "target": fingerprint(target),
              "rows": {k: [list(n) for n in v] for k, v in head_sets.items()}, "config": _key(config),
              "both_resident": both_resident}
    return cached("cmap", params,
                  lambda: cross_model_patching(source, target, head_sets, config, both_resident=both_resident))


def dcm_selection(model, circuit: Circuit, config=None) -> dict[tuple[str, str], list[Head]]:
    """(group, desideratum) -> the heads DCM selects for the desiderata CMAP uses (`DCM_SELECTION`):
    the same stored runs as chapter 5 (`dcm.stored_dcms`), trained once."""
    from .dcm import DEFAULT_DCM, stored_dcms

    wanted = [(g, d) for g, d in DCM_SELECTION.items() if d is not None]
    runs = stored_dcms(model, [(circuit.groups[g], g, d) for g, d in wanted], config or DEFAULT_DCM)
    return {(g, d): [tuple(h) for h in r["summary"]["heads"]] for (g, d), r in zip(wanted, runs)}


def finetuned_head_sets(variant, circuit_config=None, dcm_config=None, selection: str = "dcm"
                        ) -> dict[str, tuple[P.Node, ...]]:
    """The paper's CMAP rows for a fine-tuned variant: its own circuit (`path_patching`, as chapter 3
    finds it), filtered by DCM (``selection="dcm"``) or whole (``"circuit"``). Explained in chapter 6."""
    from .path_patching import PathPatchingConfig, stored_circuit

    if selection not in ("dcm", "circuit"):
        raise ValueError(f"selection must be 'dcm' or 'circuit'; got {selection!r}")
    circuit = stored_circuit(variant, circuit_config or PathPatchingConfig())
    return cmap_head_sets(circuit, dcm_selection(variant, circuit, dcm_config) if selection == "dcm" else None)


# --------------------------------------------------------------------------------------------------
# Memory: arithmetic for 7B, measurement for the organism
# --------------------------------------------------------------------------------------------------

def memory_budget(n_params: float, bytes_per_param: int, n_nodes: int, n_prompts: int, d_head: int,
                  n_layers: int, seq_len: int, d_model: int, cache_bytes_per_value: int = 4) -> dict[str, float]:
    """GB of weights and caches for output CMAP done both ways.

    ``both_resident``: two models on the device plus the authors' cache of every layer's ``z`` at
    every position for all prompts. ``one_resident``: the larger single model plus only the chosen
    heads' outputs at their positions. Explained in chapter 6."""
    gb = 2**30
    weights = n_params * bytes_per_param / gb
    full_cache = n_layers * n_prompts * seq_len * d_model * cache_bytes_per_value / gb
    node_cache = n_nodes * n_prompts * d_head * cache_bytes_per_value / gb
    return {"weights_per_model_gb": weights, "both_resident_weights_gb": 2 * weights,
            "authors_full_z_cache_gb": full_cache, "one_resident_weights_gb": weights,
            "node_cache_gb": node_cache}


def _peak_rss_main() -> None:  # pragma: no cover - runs in the subprocess of `measured_peak_rss`
    """Read a job from stdin, run it, print peak and baseline resident memory as JSON."""
    import json
    import sys

    import psutil

    import peft  # noqa: F401  (imported before the baseline: the libraries are not the protocol's cost)
    import transformer_lens  # noqa: F401
    import transformers  # noqa: F401

    job = json.load(sys.stdin)
    torch.set_num_threads(1)
    rows = {k: tuple(tuple(n) for n in v) for k, v in job["head_sets"].items()}
    baseline = psutil.Process().memory_info().rss
    config = dict(job["config"])
    config["task"] = TaskConfig(**config["task"])
    cross_model_patching(job["source"], job["target"], rows, CMAPConfig(**config),
                         both_resident=job["both_resident"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB
    print(json.dumps({"baseline_rss_bytes": baseline, "peak_rss_bytes": peak}))


def measured_peak_rss(source: str, target: str, head_sets: Mapping[str, Sequence[P.Node]],
                      config: CMAPConfig = DEFAULT_CMAP, both_resident: bool = False) -> dict[str, int]:
    """Peak resident memory (bytes) of a fresh Python process running `cross_model_patching`, and
    its increase over the same process once torch and the package are imported. A fresh process
    per measurement, because memory freed by one run stays with the allocator and would hide the
    next run's peak. Explained in chapter 6."""
    import json
    import subprocess
    import sys

    job = {"source": source, "target": target, "both_resident": both_resident, "config": asdict(config),
           "head_sets": {k: [list(n) for n in v] for k, v in head_sets.items()}}
    code = "from entity_tracking.cmap import _peak_rss_main; _peak_rss_main()"
    done = subprocess.run([sys.executable, "-c", code], input=json.dumps(job), capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory measurement failed:\n{done.stderr[-2000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["increase_bytes"] = out["peak_rss_bytes"] - out["baseline_rss_bytes"]
    return out


# --------------------------------------------------------------------------------------------------
# Input CMAP: the heads' queries, keys and values instead of their outputs (appendix)
# --------------------------------------------------------------------------------------------------

@dataclass
class SourceQKV:
    """The source's q at the last token (``[prompt, d_head]``) and k, v at every position
    (``[prompt, pos, d_head]``) for each (layer, head), on CPU. Explained in chapter 6."""

    heads: tuple[Head, ...]
    q: dict[Head, torch.Tensor]
    k: dict[Head, torch.Tensor]
    v: dict[Head, torch.Tensor]

    def rows(self, start: int, stop: int) -> "SourceQKV":
        cut = lambda d: {h: t[start:stop] for h, t in d.items()}  # noqa: E731
        return SourceQKV(self.heads, cut(self.q), cut(self.k), cut(self.v))


def _last_only(nodes: Sequence[P.Node]) -> tuple[Head, ...]:
    bad = [n for n in nodes if n[2] != "last"]
    if bad:
        raise ValueError("input CMAP patches the last token only (groups A and B); "
                         f"these nodes sit elsewhere: {bad[:3]}")
    return tuple(dict.fromkeys((layer, head) for layer, head, _ in nodes))


@torch.no_grad()
def source_qkv(lm, batch: D.TaskBatch, nodes: Sequence[P.Node], batch_size: int = 32,
               kv_through_last: bool = False) -> SourceQKV:
    """Cache the source's pre-rotary q, k, v (``hook_q/k/v``, the authors' q/k/v_proj outputs).
    ``kv_through_last`` is accepted for symmetry with the patching side (every position is cached).
    Explained in chapter 6."""
    heads = _last_only(nodes)
    layers = sorted({layer for layer, _ in heads})
    names = [name(layer) for layer in layers for name in (P.q_name, P.k_name, P.v_name)]
    q, k, v = ({h: [] for h in heads} for _ in range(3))
    chunks = list(batch.batches(batch_size))
    for chunk in progress(chunks, desc="caching source q/k/v", total=len(chunks)):
        _, store = P.cache_activations(lm.model, chunk.tokens, names)
        rows = torch.arange(len(chunk), device=chunk.tokens.device)
        last = chunk.positions["last"]
        for layer, head in heads:
            q[(layer, head)].append(store[P.q_name(layer)][rows, last, head].float().cpu())
            k[(layer, head)].append(store[P.k_name(layer)][:, :, head].float().cpu())
            v[(layer, head)].append(store[P.v_name(layer)][:, :, head].float().cpu())
    cat = lambda d: {h: torch.cat(t) for h, t in d.items()}  # noqa: E731
    return SourceQKV(heads, cat(q), cat(k), cat(v))


def _qkv_hooks(model, chunk: D.TaskBatch, source: SourceQKV, heads: Sequence[Head], which: str,
               kv_through_last: bool = False):
    rows = torch.arange(len(chunk), device=chunk.tokens.device)
    last = chunk.positions["last"]
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    hooks = []
    for layer, layer_heads in by_layer.items():
        def q_hook(x, hook, layer=layer, layer_heads=layer_heads):
            x = x.clone()
            for head in layer_heads:
                x[rows, last, head] = source.q[(layer, head)].to(x)
            return x

        def kv_hook(kind):
            def hook_fn(x, hook, layer=layer, layer_heads=layer_heads):
                x = x.clone()
                table = source.k if kind == "k" else source.v
                token = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
                upto = token <= last.unsqueeze(1) if kv_through_last else token < last.unsqueeze(1)  # [B, pos]
                for head in layer_heads:
                    x[:, :, head] = torch.where(upto.unsqueeze(-1), table[(layer, head)].to(x), x[:, :, head])
                return x
            return hook_fn

        if "q" in which:
            hooks.append((P.q_name(layer), q_hook))
        if "k" in which:
            hooks.append((P.k_name(layer), kv_hook("k")))
        if "v" in which:
            hooks.append((P.v_name(layer), kv_hook("v")))
    return hooks


@torch.no_grad()
def input_cmap_logits(lm, batch: D.TaskBatch, source: SourceQKV, nodes: Sequence[P.Node], which: str = "qkv",
                      batch_size: int = 32, kv_through_last: bool = False) -> torch.Tensor:
    """Last-position logits of the target with the chosen heads' q (at the last token) and/or k, v
    (at every position before it, or up to it with ``kv_through_last``) taken from the source;
    every head's output at every position but the last is then reset to the target's own, so the
    patch acts at the last token only. Explained in chapter 6."""
    if which not in INPUTS:
        raise ValueError(f"which must be one of {INPUTS}; got {which!r}")
    heads = _last_only(nodes)
    outs = []
    for start in range(0, len(batch), batch_size):
        chunk = batch[start: start + batch_size]
        part = source.rows(start, start + len(chunk))
        _, clean_z = P.head_outputs(lm.model, chunk.tokens)
        keep_clean = P.empty_mask(lm.model, chunk)
        not_last = torch.arange(chunk.seq_len, device=keep_clean.device).unsqueeze(0) != chunk.positions["last"].unsqueeze(1)
        keep_clean[:] = not_last[None, :, :, None]
        hooks = [*_qkv_hooks(lm.model, chunk, part, heads, which, kv_through_last),
                 *P.patch_hooks(lm.model, clean_z, keep_clean)]
        outs.append(P.last_logits(P.run_with_hooks(lm.model, chunk.tokens, hooks)).float())
    return torch.cat(outs)


def input_cross_model_patching(source, target, head_sets: Mapping[str, Sequence[P.Node]],
                               inputs: Sequence[str] = INPUTS, config: CMAPConfig = DEFAULT_CMAP,
                               kv_through_last: bool = False) -> pd.DataFrame:
    """The appendix's input-CMAP table: accuracy of the target per (row, patched inputs); one model
    resident at a time. Rows must sit at the last token (value fetchers, position transmitters).
    Keys and values are patched before the last token, as the authors' ``cmap_in``
    (``[:, :heads_pos]``); ``kv_through_last=True`` includes the last token's own key and value.
    Explained in chapter 6."""
    from . import variants

    nodes = tuple(dict.fromkeys(node for row in head_sets.values() for node in row))
    src = variants.load(source)
    examples = src.examples(config.task)
    recorded = source_qkv(src, src.tokenize(examples), nodes, config.batch_size, kv_through_last)
    source_name, source_tokens = src.spec.name, src.tokenize(examples).tokens.cpu()
    src = None
    tgt = variants.load(target)
    batch = _same_prompts(tgt, examples, source_tokens)
    rows = []
    for name, row_nodes in head_sets.items():
        for which in progress(inputs, desc=f"input CMAP {name}"):
            logits = input_cmap_logits(tgt, batch, recorded, row_nodes, which, config.batch_size, kv_through_last)
            rows.append({"source": source_name, "target": tgt.spec.name, "row": name, "patched": which.upper(),
                         "n_heads": len(row_nodes), "accuracy": M.accuracy(logits, batch.answer_ids)})
    return pd.DataFrame(rows)


def stored_input_cmap(source, target, head_sets: Mapping[str, Sequence], config=None,
                      kv_through_last: bool = False) -> pd.DataFrame:
    """`cmap.input_cross_model_patching`, read from ``results/`` or computed and stored, keyed by the
    two models' weights, the rows, the config and where keys and values are patched
    (``kv_through_last=False``: before the last token, the authors' way). Explained in chapter 6."""
    from .cache import cached
    from .variants import fingerprint

    config = config or DEFAULT_CMAP
    params = {"source": fingerprint(source), "target": fingerprint(target),
              "rows": {k: [list(n) for n in v] for k, v in head_sets.items()},
              "config": {k: v for k, v in asdict(config).items() if k not in ("batch_size", "max_rows")},
              "kv_through_last": kv_through_last}
    return cached("cmap_input", params, lambda: input_cross_model_patching(
        source, target, head_sets, config=config, kv_through_last=kv_through_last))


def stored_peak_rss(source: str, target: str, head_sets: Mapping[str, Sequence], config=None,
                    both_resident: bool = False) -> dict:
    """`cmap.measured_peak_rss` (a fresh process per protocol), read from ``results/`` or measured
    and stored: peak resident memory varies from machine to machine, so a rerun reads the first
    measurement back. Explained in chapter 6."""
    from .cache import cached
    from .variants import fingerprint

    config = config or DEFAULT_CMAP
    params = {"pair": [fingerprint(source), fingerprint(target)], "both": both_resident,
              "rows": {k: [list(n) for n in v] for k, v in head_sets.items()},
              "config": {k: v for k, v in asdict(config).items() if k not in ("batch_size", "max_rows")}}
    return cached("cmap_peak_rss", params,
                  lambda: measured_peak_rss(source, target, head_sets, config, both_resident))
