"""Attention knockout: where in depth does information move
from one token to another?

One *edge* is a (query position -> key position) pair, e.g. the last token reading the correct
object. Knocking it out from layer L on sets that attention score to -inf in **every head** of every
layer >= L, so no head from L upward can move information along it (earlier layers still can). If
accuracy stays high when the edge is cut from L on, the information crossed the edge before L.

The authors recomputed attention by hand (rotary, causal mask, softmax) inside transformers-4.35
internals; here the edit is a TransformerLens hook on ``hook_attn_scores``, the pre-softmax scores,
which the model's own softmax then turns into the pattern — equivalent to zeroing the edge in the
pattern and renormalising each row.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Sequence

import pandas as pd
import torch

from . import data as D
from . import metrics as M
from . import patching as P
from .data import TaskConfig
from .progress import progress

#: The paper's edges: (query position, key position). "answer_object" is the object in the queried
#: box; "random" a seeded uniform draw from the context before the query label, as the authors'
#: ``randint(0, len - 4)``.
EDGES: dict[str, tuple[str, str]] = {
    "last->object": ("last", "answer_object"),
    "last->query_label": ("last", "query_label"),
    "last->random": ("last", "random"),
    "query_label->prev_query_label": ("query_label", "prev_query_label"),
    "query_label->random": ("query_label", "random"),
}


@dataclass(frozen=True)
class KnockoutConfig:
    """The authors' ``attn_knockout.ipynb`` setting (they ran one prompt per forward pass; batching
    changes nothing but speed). Explained in appendix A2."""

    task: TaskConfig = TaskConfig()  # (paper: 500 prompts, 7 boxes)
    edge_seed: int = 5       # draws of the random edges (paper: seed 5)
    batch_size: int = 50


DEFAULT_KNOCKOUT = KnockoutConfig()


def edge_positions(batch: D.TaskBatch, edge: str, seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Query and key token index of the edge in each prompt (``[prompt]`` each). Explained in appendix A2."""
    if edge not in EDGES:
        raise ValueError(f"unknown edge {edge!r}; choose from {list(EDGES)}")
    query_name, key_name = EDGES[edge]
    query = P.position_index(batch, query_name)
    if key_name == "answer_object":
        rows = torch.arange(len(batch), device=batch.tokens.device)
        index = torch.tensor([ex.query_index for ex in batch.examples], device=batch.tokens.device)
        key = batch.positions["object"][rows, index]
    elif key_name == "random":
        rng = random.Random(seed)
        limit = P.position_index(batch, "query_label") - 1
        key = torch.tensor([rng.randint(0, int(hi)) for hi in limit], device=batch.tokens.device)
    else:
        key = P.position_index(batch, key_name)
    if bool((key < 0).any()) or bool((key > query).any()):
        raise ValueError(f"edge {edge!r} needs a key at or before its query in every prompt")
    return query, key


def knockout_hooks(model, query: torch.Tensor, key: torch.Tensor, start_layer: int) -> list[tuple[str, P.Hook]]:
    """Hooks that cut attention from ``query[b]`` to ``key[b]`` in every head of every layer from
    ``start_layer`` (0-based) on. ``start_layer >= n_layers`` cuts nothing. Explained in appendix A2."""
    rows = torch.arange(query.shape[0], device=query.device)

    def hook(scores, hook):  # [batch, head, query pos, key pos]
        scores = scores.clone()
        scores[rows, :, query, key] = float("-inf")
        return scores

    return [(P.scores_name(layer), hook) for layer in range(max(start_layer, 0), model.cfg.n_layers)]


@torch.no_grad()
def knockout_logits(model, batch: D.TaskBatch, query: torch.Tensor, key: torch.Tensor, start_layer: int,
                    batch_size: int = 50) -> torch.Tensor:
    """Last-position logits with the edge cut from ``start_layer`` (0-based) on. Explained in appendix A2."""
    outs = []
    for start in range(0, len(batch), batch_size):
        chunk = batch[start: start + batch_size]
        stop = start + len(chunk)
        hooks = knockout_hooks(model, query[start:stop], key[start:stop], start_layer)
        outs.append(P.last_logits(P.run_with_hooks(model, chunk.tokens, hooks)).float())
    return torch.cat(outs)


def knockout_curves(lm, edges: Sequence[str] = tuple(EDGES), config: KnockoutConfig = DEFAULT_KNOCKOUT
                    ) -> pd.DataFrame:
    """Accuracy with each edge cut from each starting layer on: one row per (edge, start_layer),
    ``start_layer`` 1-based as the paper's "Knockout Starting Layer" axis, in `plots.knockout_lines`'s
    layout. Explained in appendix A2."""
    batch = lm.batch(config.task)
    rows = []
    for edge in edges:
        query, key = edge_positions(batch, edge, config.edge_seed)
        for layer in progress(range(lm.n_layers), desc=f"knockout {edge}", total=lm.n_layers):
            logits = knockout_logits(lm.model, batch, query, key, layer, config.batch_size)
            rows.append({"edge": edge, "start_layer": layer + 1, "accuracy": M.accuracy(logits, batch.answer_ids)})
    return pd.DataFrame(rows, columns=["edge", "start_layer", "accuracy"])


def stored_knockout(model, edges: Sequence[str] = tuple(EDGES), config: KnockoutConfig = DEFAULT_KNOCKOUT) -> dict:
    """`knockout_curves` and the uncut model's accuracy on the same prompts, read from ``results/`` or
    computed and stored (the model, a variant name or a loaded one, is loaded only to compute).
    Explained in appendix A2."""
    from . import variants
    from .cache import cached

    def compute():
        lm = variants.load(model)
        return {"curves": knockout_curves(lm, list(edges), config),
                "model_accuracy": M.model_accuracy(lm, lm.batch(config.task), config.batch_size)}

    params = {"model": variants.fingerprint(model), "edges": list(edges),
              "config": {k: v for k, v in asdict(config).items() if k != "batch_size"}}
    return cached("knockout", params, compute)


def recovered_from(curves: pd.DataFrame, accuracy: float, edge: str, noise: float = 0.03) -> int | None:
    """The first start layer from which cutting the edge costs at most ``noise`` of accuracy and keeps
    doing so at every later start layer: the layer by which the information has crossed the edge.
    Explained in appendix A2."""
    rows = curves[curves["edge"] == edge].sort_values("start_layer")
    ok = rows["accuracy"] >= accuracy - noise
    for layer in rows["start_layer"]:
        if ok[rows["start_layer"] >= layer].all():
            return int(layer)
    return None


def recovery_table(curves: pd.DataFrame, accuracy: float, n_layers: int, paper: pd.DataFrame,
                   paper_accuracy: float, noise: float = 0.03) -> pd.DataFrame:
    """Per edge: from which start layer ours and the paper's LLaMA-7B recover, out of how many
    layers, and our accuracy with the edge cut in every layer. Explained in appendix A2."""
    rows = []
    for e in EDGES:
        everywhere = curves[(curves.edge == e) & (curves.start_layer == 1)]["accuracy"]
        rows.append({"edge": e, "ours: recovered from layer": recovered_from(curves, accuracy, e, noise),
                     "ours: layers": n_layers, "ours: cut everywhere": float(everywhere.iloc[0]),
                     "paper: recovered from layer": (recovered_from(paper, paper_accuracy, e, noise)
                                                     if e in set(paper.edge) else None),
                     "paper: layers": 32})
    table = pd.DataFrame(rows)
    return table.astype({c: "Int64" for c in table.columns if "recovered" in c})


def recovery_view(summary: pd.DataFrame) -> pd.DataFrame:
    """`recovery_table` for a reader: an edge whose cut still costs in the last layer "never recovers";
    an edge the paper's curves do not include says so, instead of an empty cell. Explained in appendix A2."""
    view = summary.astype(object)
    ours, paper = "ours: recovered from layer", "paper: recovered from layer"
    view[ours] = view[ours].where(summary[ours].notna(), "never (costs even in the last layer)")
    view[paper] = view[paper].where(summary[paper].notna(), "not in the paper's curves")
    return view.set_index("edge")


def describe_recovery(summary: pd.DataFrame, name: str, accuracy: float, noise: float = 0.03) -> str:
    """A paragraph, computed from `recovery_table`, on whether the circuit edges recover in the
    paper's bottom-up order (C, then B, then A) and what the random controls cost. An edge that never
    recovers counts as recovering after the last layer. Explained in appendix A2."""
    table = summary.set_index("edge")
    main = ["query_label->prev_query_label", "last->query_label", "last->object"]
    after_last = int(table["ours: layers"].iloc[0]) + 1
    layer = {e: (after_last if pd.isna(table.at[e, "ours: recovered from layer"])
                 else int(table.at[e, "ours: recovered from layer"])) for e in main}
    same = [layer[e] for e in main] == sorted(layer[e] for e in main)
    said = [f"{e} {'never recovers' if layer[e] == after_last else f'from layer {layer[e]}'}" for e in main]
    cost = {e: accuracy - float(table.at[e, "ours: cut everywhere"]) for e in ("last->random", "query_label->random")}
    within = all(abs(c) <= noise for c in cost.values())
    return (f"In the paper the three circuit edges recover in the order query label → previous label (C), "
            f"then last → query label (B), then last → object (A): the circuit runs bottom-up D/C → B → A. "
            f"In {name} the order is {'the same' if same else 'different'}: " + ", ".join(said) + ". "
            "The random edges are controls: cutting them in every layer costs "
            + " and ".join(f"{c:+.3f} ({e})" for e, c in cost.items())
            + f" in accuracy, {'within' if within else 'about'} the noise of the prompts ({noise}).")
