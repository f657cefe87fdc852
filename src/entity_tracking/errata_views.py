"""What appendix A3 (errata) measures besides the methods' own stored results, and its small tables.

Each defect of the authors' code that A3 documents is measured by running the package twice, once as
written and once reproducing the authors' behaviour. Most of that goes through the methods' stored
entry points (`dcm.stored_authors_compat`, `circuit_eval.stored_faithfulness`, `cmap.stored_cmap`);
this module adds what they do not cover:

* **B1, B2** on the data alone: how often a source queries the base's own segment
  (`same_segment_share`) and whether a target is a token the model can say (`target_tokens`).
* **W4, Goat's LoRA on ``o_proj``.** The authors hooked an un-merged PEFT Goat and rebuilt every
  attention output as ``z @ W_O`` with the *base* weight, so every hooked (patched or ablated) run
  lost the adapter's ``o_proj`` update, while their clean runs and full-model accuracies (plain
  forward passes) kept it. ``authors_compat=True`` in `models.load_model` drops the update from
  *every* run, clean ones included. `stored_step1_probs` keeps path patching's step 1 per prompt, so
  `step1_score_maps` can score it three ways: corrected (merged adapter everywhere), our compat mode
  (update dropped everywhere) and the authors' split (patched runs without the update, the clean
  probability with it); `authors_split_faithfulness` does the same for Table 1's faithfulness.
* **The desiderata's segment test.** The authors found a box label's segment with ``label in
  segment``, a *substring* test on the context split at ", ": "B" is found in the "Box" of the first
  segment and "T" in its "The", so a source querying B or T always looks like segment 0 and is
  redrawn (`authors_segment_index`, `substring_redraws`).
* **Their object list** (`AUTHORS_OBJECTS`, `object_overlap`).
* **W5** (`is_not_pairs`, `flat_index_decoding`) and **the CMAP head lists** (`leaked_rows`).

Explained in appendix A3.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Iterable, Mapping, Sequence

import pandas as pd
import torch

from . import data as D
from .cache import cached
from .circuit import Circuit, Head
from .figures import head_name

#: The authors' object list, `data/objects.csv` of github.com/Nix07/finetuning (the column
#: ``object_name``, in the file's order of BNC frequency). Their prompts draw every object from it.
AUTHORS_OBJECTS: tuple[str, ...] = (
    "book", "car", "paper", "letter", "game", "computer", "picture", "plant", "cup", "machine",
    "bill", "glass", "note", "stone", "fish", "drug", "television", "card", "document", "rock",
    "radio", "ball", "tea", "file", "newspaper", "branch", "train", "fig", "flower", "bag",
    "boat", "key", "painting", "phone", "drink", "engine", "bus", "coffee", "sheet", "plate",
    "magazine", "egg", "block", "brain", "map", "crown", "ring", "leaf", "dress", "fan",
    "milk", "ticket", "gift", "cross", "plane", "mirror", "coat", "wheel", "string", "ice",
    "rose", "boot", "hat", "suit", "creature", "bomb", "camera", "bread", "meat", "apple",
    "pipe", "guitar", "disk", "medicine", "clock", "chemical", "seed", "tie", "watch", "shell",
    "wire", "pot", "brick", "bell", "magnet",
)
AUTHORS_OBJECTS_SOURCE = "github.com/Nix07/finetuning, data/objects.csv"


# --------------------------------------------------------------------------------------------------
# The data: B1, B2, the substring test, the object list
# --------------------------------------------------------------------------------------------------

def same_segment_share(pairs: D.CounterfactualPairs) -> float:
    """Share of pairs whose source queries the base's own segment (bug B1 lets ≈1/n of them in: for
    the positional target that is the base's own answer). Explained in appendix A3."""
    same = sum(s.query_index == b.query_index for b, s in zip(pairs.base, pairs.source))
    return same / len(pairs) if len(pairs) else 0.0


def target_tokens(pairs: D.CounterfactualPairs, tokenizer) -> dict[str, float]:
    """For a desideratum's pairs: the share of targets that are one of the base prompt's object
    tokens (what the model can answer) and the share that are the unknown token (bug B2's encoding
    of a word without its word-start marker). Explained in appendix A3."""
    batch = D.tokenize_pairs(pairs, tokenizer)
    objects = batch.base.tokens.gather(1, batch.base.positions["object"])
    in_prompt = (objects == batch.target_ids.unsqueeze(1)).any(1).float().mean().item()
    unknown = (batch.target_ids == tokenizer.unk_token_id).float().mean().item() \
        if tokenizer.unk_token_id is not None else 0.0
    return {"object token of the prompt": in_prompt, "unknown token": unknown}


def authors_segment_index(example: D.Example, label: str | None = None) -> int:
    """The segment the authors' desiderata code assigns to ``label`` (default: the example's query
    label): the first segment of the context, split at ", ", that contains it as a *substring*
    (their ``[idx for idx, segment in enumerate(...) if label in segment][0]``). Explained in
    appendix A3."""
    label = example.query_label if label is None else label
    context = example.prompt.split(". ")[0]
    return next(i for i, segment in enumerate(context.split(", ")) if label in segment)


def substring_misreads(examples: Iterable[D.Example]) -> pd.DataFrame:
    """Per query label: how many prompts query it and how many of them the substring test puts in
    the wrong segment. Explained in appendix A3."""
    rows: dict[str, list[int]] = {}
    for ex in examples:
        count = rows.setdefault(ex.query_label, [0, 0])
        count[0] += 1
        count[1] += authors_segment_index(ex) != ex.query_index
    frame = pd.DataFrame([{"label": k, "prompts": n, "misread": bad} for k, (n, bad) in sorted(rows.items())])
    return frame.assign(share=frame["misread"] / frame["prompts"])


def substring_redraws(pairs: D.CounterfactualPairs) -> dict[str, float | list[str]]:
    """Which sources of a desideratum the authors' sampler would have redrawn: those whose query
    label the substring test reads as segment 0 (the base's segment under bug B1) although they
    query another one. Returns the share of pairs and the labels involved. Explained in appendix A3."""
    redrawn = [s for s in pairs.source if authors_segment_index(s) == 0 and s.query_index != 0]
    return {"share": len(redrawn) / len(pairs) if len(pairs) else 0.0,
            "labels": sorted({s.query_label for s in redrawn})}


def object_overlap(ours: Sequence[str] = D.OBJECTS, theirs: Sequence[str] = AUTHORS_OBJECTS) -> dict:
    """How many nouns two object lists share, and which are only in one. Explained in appendix A3."""
    shared = [w for w in ours if w in set(theirs)]
    return {"ours": len(ours), "theirs": len(theirs), "shared": len(shared),
            "only_ours": [w for w in ours if w not in set(theirs)],
            "only_theirs": [w for w in theirs if w not in set(ours)]}


# --------------------------------------------------------------------------------------------------
# W4: Goat's o_proj update, the authors' split between clean and hooked runs
# --------------------------------------------------------------------------------------------------

def stored_step1_probs(variant, authors_compat: bool = False, config=None) -> dict:
    """Path patching's step 1 (every head a lone sender at the last token; the answer's probability
    read from the logits) for one variant, kept per prompt: ``{"p_clean": [prompt], "p_patch":
    [head][prompt], "n_layers", "n_heads"}``, heads in layer-major order. ``authors_compat`` loads the
    variant with its LoRA ``o_proj`` update dropped (`models.load_model`). The prompts are chapter 3's
    (``config``: a `path_patching.PathPatchingConfig`, the default search). Stored under
    ``results/``; the model is loaded only to compute. Explained in appendix A3."""
    from . import path_patching as pp
    from . import variants

    config = config or pp.PathPatchingConfig()
    settings = {k: v for k, v in asdict(config).items() if k not in pp.PERFORMANCE_SETTINGS}
    params = {"model": variants.fingerprint(variant, authors_compat=authors_compat), "config": settings}

    def compute():
        lm = variants.load(variant, authors_compat=authors_compat)
        base, corrupt = pp.pair_batches(lm, config)
        step = pp.STEPS[0]
        heads = [(layer, head) for layer in range(lm.n_layers) for head in range(lm.n_heads)]
        p_clean, p_patch = pp.path_patched_probs(
            lm, base, corrupt, step.position, pp.sender_masks(lm, heads),
            src_positions=pp.source_positions(corrupt, step.position, config.pairing_seed),
            batch_size=config.batch_size, max_rows=config.max_rows)
        return {"p_clean": p_clean.tolist(), "p_patch": p_patch.tolist(), "n_layers": lm.n_layers,
                "n_heads": lm.n_heads}

    return cached("errata_step1", params, compute)


def step1_score_maps(merged: Mapping, compat: Mapping, p_floor: float | None = None) -> dict[str, torch.Tensor]:
    """Step 1's ``[layer, head]`` score map, mean of ``(p_patched − p_clean) / p_clean``, three ways
    (`stored_step1_probs` of the merged and of the ``o_proj``-dropped model, same prompts):
    ``corrected`` (merged throughout), ``compat`` (update dropped throughout: our
    ``authors_compat=True``) and ``authors`` (the patched run without the update, the clean
    probability with it, as the authors' plain clean pass kept it). With ``p_floor`` the
    denominator is ``max(p_clean, p_floor)``: chapter 3's robust companion, which keeps a few prompts
    where the answer had almost no probability from carrying the mean. Explained in appendix A3."""
    shape = (merged["n_layers"], merged["n_heads"])

    from .circuit_views import relative_changes

    def score(p_patch, p_clean):
        changes = relative_changes(torch.tensor(p_clean), torch.tensor(p_patch), p_floor or 0.0)
        return changes.mean(-1).view(shape)

    return {"corrected": score(merged["p_patch"], merged["p_clean"]),
            "compat": score(compat["p_patch"], compat["p_clean"]),
            "authors": score(compat["p_patch"], merged["p_clean"])}


def clean_probability_change(merged: Mapping, compat: Mapping) -> float:
    """Mean relative change of the clean answer probability when the ``o_proj`` update is dropped,
    ``(p_clean(compat) − p_clean(merged)) / p_clean(merged)`` over the prompts: the amount by which
    the authors' split moves a sender that changes nothing. Explained in appendix A3."""
    p_merged, p_compat = torch.tensor(merged["p_clean"]), torch.tensor(compat["p_clean"])
    return float(((p_compat - p_merged) / p_merged).mean())


def step1_summary(maps: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    """Mean, most negative and largest head score of each step-1 map, and its top head (L2H0).
    Explained in appendix A3."""
    rows = {}
    for name, m in maps.items():
        flat = int(m.flatten().argmin())
        rows[name] = {"mean score over heads": float(m.mean()), "most negative": float(m.min()),
                      "largest": float(m.max()), "top head": head_name(*divmod(flat, m.shape[1]))}
    return pd.DataFrame(rows)


def authors_split_faithfulness(merged: Mapping, compat: Mapping) -> dict[str, float]:
    """Table 1's row the authors' way from two `circuit_eval.stored_faithfulness` results: the full
    model's accuracy from the merged model (their plain forward pass kept the update), the circuit's
    and the random circuits' from the ``o_proj``-dropped one (their ablated runs were hooked), and
    faithfulness = circuit / full model. Explained in appendix A3."""
    full = merged["full_model"]
    return {"full_model": full, "circuit": compat["circuit"], "random_circuit": compat["random_circuit"],
            "faithfulness": compat["circuit"] / full if full else 0.0}


# --------------------------------------------------------------------------------------------------
# W5 and the CMAP head lists
# --------------------------------------------------------------------------------------------------

def is_not_pairs(circuit: Circuit) -> tuple[int, int]:
    """(pairs the authors' minimality never removes together, all pairs) over the circuit's groups.
    Their test ``layer_1 is not layer_2 and head_1 is not head_2`` compares layer names (strings
    built afresh, never the same object) and head indices (small ints, the same object when equal)
    by identity, so two heads with the same head index in different layers are never removed
    together: that pair's entry is a single-head removal. Explained in appendix A3."""
    total = broken = 0
    for heads in circuit.groups.values():
        heads = list(dict.fromkeys(heads))
        for i, (l1, h1) in enumerate(heads):
            for l2, h2 in heads[i + 1:]:
                total += 1
                broken += h1 == h2 and l1 != l2
    return broken, total


def flat_index_decoding(n_layers: int, n_heads: int) -> tuple[int, int]:
    """The authors' random circuits decode a flat head index as ``(i // n_layers, i % n_heads)``:
    (indices decoded to the wrong head, indices decoded beyond the last layer) for this shape; both
    are 0 only when n_layers == n_heads (LLaMA's 32 x 32). Explained in appendix A3."""
    indices = range(n_layers * n_heads)
    wrong = sum((i // n_layers, i % n_heads) != divmod(i, n_heads) for i in indices)
    beyond = sum(i // n_layers >= n_layers for i in indices)
    return wrong, beyond


def leaked_rows(value_fetchers: Sequence[Head], transmitters: Sequence[Head]) -> dict[str, tuple]:
    """The CMAP "value fetcher" row from a fresh list, and the same row after the authors'
    ``pos_heads_dict[0] += pos_transmitter`` extended the list in place (what a re-run of the row
    would patch): ``{row name: ((layer, head, "last"), ...)}``. Explained in appendix A3."""
    fresh = tuple((int(layer), int(head), "last") for layer, head in value_fetchers)
    listed = list(value_fetchers)
    listed += list(transmitters)  # the authors' in-place extension
    leaked = tuple((int(layer), int(head), "last") for layer, head in dict.fromkeys(map(tuple, listed)))
    return {"value fetcher, fresh list": fresh, "value fetcher after the in-place +=": leaked}
