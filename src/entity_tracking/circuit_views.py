"""Chapter 3's readings of a path-patching search: a robust companion to the paper's score, the
stability of each group's membership across disjoint prompt halves, and the tables the chapter
shows (heads written ``L2H0``, groups as "A · value fetchers", no NaN or infinity shown).

The paper's score of a sender is the *mean* over prompts of the relative change
``(p_patched − p_clean) / p_clean`` (`metrics.path_patching_score`). A prompt on which the clean
model gives the answer almost no probability turns a small absolute change into a ratio in the tens,
so a handful of prompts can carry a head's score. `companion_scores` recomputes each step's
per-prompt changes with `path_patching.path_patched_probs` and sets beside the paper's mean the
median over prompts, the mean with ``p_clean`` floored (at 0.05 by default), and the share of the
score's absolute sum that its five largest prompts carry. `halves` and `membership_table` run the
same search on two disjoint sets of prompts and say, group by group, whether the same heads come
out. Explained in chapter 3.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Mapping, Sequence

import pandas as pd
import torch

from . import path_patching as PP
from . import paper_reference as ref
from .circuit import GROUP_LETTERS, GROUPS, Circuit
from .figures import POSITION_WORDS, head_name
from .plots import GROUP_SHORT

Head = tuple[int, int]

#: The companion scores' columns, as a reader reads them.
SCORE_WORDS = {"mean": "mean (paper's score)", "median": "median", "floored": "mean, p clean ≥ 0.05"}


def heads_text(heads: Sequence[Sequence[int]], empty: str = "none") -> str:
    """``"L2H0 L1H2"``, or ``empty`` for no head."""
    names = [head_name(layer, head) for layer, head in heads]
    return " ".join(names) if names else empty


def relative_changes(p_clean: torch.Tensor, p_patched: torch.Tensor, floor: float = 0.0) -> torch.Tensor:
    """``[n_sets, n_prompts]`` relative change of the answer's probability per prompt,
    ``(p_patched − p_clean) / max(p_clean, floor)`` (``floor`` 0: the paper's ratio)."""
    denominator = p_clean.clamp_min(floor) if floor > 0 else p_clean
    return (p_patched - p_clean[None, :]) / denominator[None, :]


def top_share(changes: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Per row: the share of ``sum |change|`` carried by its ``k`` largest prompts (0 when all 0)."""
    mags = changes.abs()
    total = mags.sum(1)
    top = mags.topk(min(k, mags.shape[1]), dim=1).values.sum(1)
    return torch.where(total > 0, top / total.clamp_min(1e-30), torch.zeros_like(total))


def _senders(lm, circuit: Circuit, group: str, limit: int) -> list[Head]:
    """Every head when the model has at most ``limit`` heads; else the step's 2 x candidates by the
    paper's score (the heads whose membership is in question)."""
    every = [(layer, head) for layer in range(lm.n_layers) for head in range(lm.n_heads)]
    if len(every) <= limit:
        return every
    k = 2 * max(len(PP.candidates_of(circuit).get(group, [])), 5)
    return PP.top_heads(torch.tensor(circuit.scores[group]), k, min_effect=-math.inf)


def companion_scores(lm, config: PP.PathPatchingConfig, circuit: Circuit, floor: float = 0.05,
                     limit: int = 64) -> pd.DataFrame:
    """For every step of the search that found ``circuit`` (same prompts, pairing and receivers)
    and every sender head (all heads of a small model, else the step's leading heads): the
    paper's mean relative change, the median over prompts, the mean with ``p_clean`` floored at
    ``floor``, the share of the absolute sum carried by the top five prompts, and the largest
    single change. ``mean`` reproduces the stored score map. Explained in chapter 3."""
    config = config.resolve(lm)
    base, corrupt = PP.pair_batches(lm, config)
    receivers = {g: [tuple(h) for h in hs] for g, hs in circuit.params.get("receivers", {}).items()}
    rows = []
    for step in PP.STEPS:
        senders = _senders(lm, circuit, step.group, limit)
        src = PP.source_positions(corrupt, step.position, config.pairing_seed)
        p_clean, p_patched = PP.path_patched_probs(
            lm, base, corrupt, step.position, PP.sender_masks(lm, senders), receivers.get(step.group, []),
            step.receiver_input, src, config.batch_size, config.max_rows)
        p_clean, p_patched = p_clean.double(), p_patched.double()
        paper = relative_changes(p_clean, p_patched)
        floored = relative_changes(p_clean, p_patched, floor)
        share = top_share(paper)
        for i, (layer, head) in enumerate(senders):
            rows.append({"group": step.group, "layer": layer, "head": head, "head_name": head_name(layer, head),
                         "mean": float(paper[i].mean()), "median": float(paper[i].median()),
                         "floored": float(floored[i].mean()), "top5_share": float(share[i]),
                         "largest": float(paper[i].abs().max()), "prompts": int(paper.shape[1]),
                         "min_p_clean": float(p_clean.min())})
    return pd.DataFrame(rows)


def top_by(frame: pd.DataFrame, group: str, column: str, k: int, min_effect: float = 0.0) -> list[Head]:
    """The ``k`` heads of ``group`` with the most negative ``column`` below ``-min_effect`` (the
    paper's selection rule, applied to any of the companion scores)."""
    rows = frame[(frame["group"] == group) & (frame[column] < -min_effect)]
    rows = rows.sort_values([column, "layer", "head"], kind="stable").head(k)
    return [(int(r.layer), int(r.head)) for r in rows.itertuples()]


def companion_table(frame: pd.DataFrame, config: PP.PathPatchingConfig, lm) -> pd.DataFrame:
    """Per group, its candidates by the paper's mean and by the median (same k and rule), and the
    most concentrated head: how much of its score its five strongest prompts carry. Explained in
    chapter 3."""
    config = config.resolve(lm)
    rows = []
    for group in GROUPS:
        k = config.candidates_of(group)
        by_mean = top_by(frame, group, "mean", k, config.min_effect)
        by_median = top_by(frame, group, "median", k, config.min_effect)
        by_floor = top_by(frame, group, "floored", k, config.min_effect)
        own = frame[frame["group"] == group]
        lead = own.sort_values("mean", kind="stable").iloc[0] if len(own) else None
        rows.append({
            "group": GROUP_SHORT[group],
            "by the paper's mean": heads_text(by_mean, "no head below 0"),
            "by the median": heads_text(by_median, "no head below 0"),
            "by the floored mean": heads_text(by_floor, "no head below 0"),
            "strongest head: top 5 prompts' share": ("—" if lead is None or lead["mean"] == 0 else
                                                     f"{lead['head_name']}: {lead['top5_share']:.0%}"),
        })
    return pd.DataFrame(rows).set_index("group")


def scores_of_top_heads(frame: pd.DataFrame, k: int = 3) -> pd.DataFrame:
    """The ``k`` most negative heads per group by the paper's mean, with all three scores (3
    decimals, signed) and their largest single prompt. Explained in chapter 3."""
    rows = []
    for group in GROUPS:
        own = frame[(frame["group"] == group) & (frame["mean"] < 0)].sort_values("mean", kind="stable").head(k)
        for r in own.itertuples():
            rows.append({"group": GROUP_SHORT[group], "head": r.head_name, SCORE_WORDS["mean"]: _signed(r.mean),
                         SCORE_WORDS["median"]: _signed(r.median), SCORE_WORDS["floored"]: _signed(r.floored),
                         "largest single prompt": f"{r.largest:.1f}"})
    return pd.DataFrame(rows, columns=["group", "head", *SCORE_WORDS.values(), "largest single prompt"])


def _signed(x: float) -> str:
    return f"{x:+.3f}".replace("-", "−")


# --------------------------------------------------------------------------------------------------
# Membership stability on disjoint prompt halves
# --------------------------------------------------------------------------------------------------

def halves(config: PP.PathPatchingConfig, other_seed: int | None = None) -> tuple[PP.PathPatchingConfig, ...]:
    """Two searches on disjoint prompts, each half the size: the first ``n_samples // 2`` lines of
    the dataset of ``dataset_seed`` and of another seed (``dataset_seed + 1`` unless given), each
    drawing its corrupted partners from its own half (``pool`` = half), so neither base nor corrupted
    prompts are shared (`shared_prompts` counts them). Explained in chapter 3."""
    task = config.task
    half = max(task.n_samples // 2, 1)
    other = task.dataset_seed + 1 if other_seed is None else other_seed
    if other == task.dataset_seed:
        raise ValueError("the two halves need different dataset seeds")
    return tuple(replace(config, task=replace(task, n_samples=half, dataset_seed=seed), pool=half)
                 for seed in (task.dataset_seed, other))


def shared_prompts(lm, configs: Sequence[PP.PathPatchingConfig]) -> int:
    """How many prompt texts (base or corrupted) occur in more than one of the configs' searches."""
    seen: dict[str, set[int]] = {}
    for i, cfg in enumerate(configs):
        base, corrupt = PP.pair_batches(lm, cfg)
        for ex in [*base.examples, *corrupt.examples]:
            seen.setdefault(ex.prompt, set()).add(i)
    return sum(1 for owners in seen.values() if len(owners) > 1)


def membership_table(circuits: Mapping[str, Circuit], candidates: bool = False) -> pd.DataFrame:
    """Per group: the heads each search found (its circuit, or its path-patching candidates), the
    heads they share, and whether the lists are the same; the top head of each too."""
    names = list(circuits)
    rows = []
    for group in GROUPS:
        lists = {n: (PP.candidates_of(c) if candidates else c.groups)[group] for n, c in circuits.items()}
        sets = [set(map(tuple, v)) for v in lists.values()]
        shared = set.intersection(*sets) if sets else set()
        union = set.union(*sets) if sets else set()
        tops = [_top(c, group) for c in circuits.values()]
        row = {"group": GROUP_SHORT[group]}
        row.update({n: heads_text(lists[n]) for n in names})
        row["shared"] = f"{len(shared)} of {len(union)}" if union else "none found in either"
        row["same heads"] = "yes" if len({frozenset(s) for s in sets}) == 1 else "no"
        row["same top head"] = ("—" if any(t is None for t in tops) else ("yes" if len(set(tops)) == 1 else "no"))
        rows.append(row)
    return pd.DataFrame(rows).set_index("group")


def _top(circuit: Circuit, group: str) -> Head | None:
    heads = PP.top_heads(torch.tensor(circuit.scores[group]), 1, min_effect=0.0) if circuit.scores.get(group) else []
    return heads[0] if heads else None


def membership_by_score(frames: Mapping[str, pd.DataFrame], config: PP.PathPatchingConfig, lm,
                        columns: Sequence[str] = ("mean", "median", "floored")) -> pd.DataFrame:
    """For each score (the paper's mean, the median, the floored mean): in how many groups the two
    halves pick the same candidate heads (same k, same rule), and how many heads they share."""
    config = config.resolve(lm)
    a, b = list(frames.values())[:2]
    rows = []
    for column in columns:
        same, shared, total = 0, 0, 0
        for group in GROUPS:
            k = config.candidates_of(group)
            one, two = set(top_by(a, group, column, k, config.min_effect)), set(top_by(b, group, column, k,
                                                                                       config.min_effect))
            same += one == two
            shared += len(one & two)
            total += len(one | two)
        rows.append({"score": SCORE_WORDS[column], "groups with the same candidates": f"{same} of {len(GROUPS)}",
                     "heads shared": f"{shared} of {total}" if total else "none found"})
    return pd.DataFrame(rows).set_index("score")


# --------------------------------------------------------------------------------------------------
# The chapter's tables
# --------------------------------------------------------------------------------------------------

def _layers(heads: Sequence[Head]) -> str:
    if not heads:
        return "—"
    lo, hi = min(l for l, _ in heads), max(l for l, _ in heads)
    return f"{lo}" if lo == hi else f"{lo}–{hi}"


def circuit_table(circuit: Circuit, paper: str = "llama-7b") -> pd.DataFrame:
    """One row per group: where it acts, candidates and heads kept (ours), their layers, and the
    paper's count and layer range; "—" where a group has no heads. Explained in chapter 3."""
    sizes = ref.circuit_sizes().query("circuit == @paper").set_index("group")
    candidates = PP.candidates_of(circuit)
    rows = []
    for g in GROUPS:
        heads = list(circuit.groups[g])
        rows.append({"group": GROUP_SHORT[g], "acts at": POSITION_WORDS[GROUPS[g]],
                     "heads (ours)": heads_text(heads, "none found"),
                     "kept of candidates": f"{len(heads)} of {len(candidates[g])}",
                     "layers (ours)": _layers(heads),
                     "heads (paper)": int(sizes.loc[g, "heads"]),
                     "layers (paper)": f"{sizes.loc[g, 'first_layer']}–{sizes.loc[g, 'last_layer']}"})
    return pd.DataFrame(rows).set_index("group")


def top_heads_beside_paper(scores: Mapping[str, torch.Tensor], k: int = 5, paper: str = "llama-7b") -> pd.DataFrame:
    """The ``k`` most negative heads of each step, ours and the paper's, as "L2H0 −0.123" cells
    (a rank with no negative head of ours says "—")."""
    theirs = ref.top_heads().query("model == @paper")
    rows = []
    for g in GROUPS:
        ours = PP.top_heads(scores[g], k)
        paper_rows = theirs[theirs["group"] == g].sort_values("rank")
        for rank in range(k):
            cell = "—"
            if rank < len(ours):
                l, h = ours[rank]
                cell = f"{head_name(l, h)} {_signed(float(scores[g][l, h]))}"
            their = "—"
            if rank < len(paper_rows):
                t = paper_rows.iloc[rank]
                their = f"{head_name(t['layer'], t['head'])} {_signed(float(t['score']))}"
            rows.append({"group": GROUP_SHORT[g] if rank == 0 else "", "rank": rank + 1, "ours": cell,
                         f"paper ({ref.MODEL_TITLES[paper]})": their})
    return pd.DataFrame(rows).set_index(["group", "rank"])


def depth_table(circuit: Circuit, n_layers: int, paper: str = "llama-7b") -> pd.DataFrame:
    """Mean relative depth (layer / last layer) of each group's heads, ours beside the middle of
    the paper's layer range ("—" for a group with no heads)."""
    sizes = ref.circuit_sizes().query("circuit == @paper").set_index("group")
    rows = []
    for g in GROUPS:
        heads = circuit.groups[g]
        lo, hi = sizes.loc[g, "first_layer"], sizes.loc[g, "last_layer"]
        ours = sum(l for l, _ in heads) / len(heads) / max(n_layers - 1, 1) if heads else None
        rows.append({"group": GROUP_SHORT[g], "ours": "—" if ours is None else f"{ours:.2f}",
                     "paper (middle of its layers)": f"{(lo + hi) / 2 / 31:.2f}", "_ours": ours})
    return pd.DataFrame(rows).set_index("group")


def depth_order_holds(table: pd.DataFrame) -> bool | None:
    """C before B before A in depth among the groups with heads (None when fewer than two have)."""
    order = [GROUP_SHORT[g] for g in ("position_detector", "position_transmitter", "value_fetcher")]
    values = [table.loc[g, "_ours"] for g in order if table.loc[g, "_ours"] is not None]
    if len(values) < 2:
        return None
    return all(a <= b for a, b in zip(values, values[1:]))


def standout(scores: torch.Tensor) -> float | None:
    """How strongly the top head stands out: its score / the second's, when both are negative
    (None otherwise: one head alone lowers the answer, or none does)."""
    s = sorted(torch.as_tensor(scores).flatten().tolist())
    if len(s) < 2 or not (s[0] < 0 and s[1] < 0):
        return None
    return s[0] / s[1]


def standout_table(circuit: Circuit, paper: str = "llama-7b") -> pd.DataFrame:
    """Per group: heads found, the top score, and top / second, ours beside the paper's; where
    the ratio is undefined it says why."""
    theirs = ref.top_heads().query("model == @paper")
    scores = PP.score_maps(circuit)
    rows = []
    for g in GROUPS:
        t = theirs[theirs["group"] == g].sort_values("rank")
        ratio = standout(scores[g])
        low = float(scores[g].min())
        rows.append({"group": GROUP_SHORT[g], "heads found": len(circuit.groups[g]),
                     "top score (ours)": _signed(low),
                     "top / second (ours)": (f"{ratio:.2f}" if ratio is not None else
                                             ("only one head below 0" if low < 0 else "no head below 0")),
                     "top / second (paper)": f"{t.iloc[0]['score'] / t.iloc[1]['score']:.2f}"})
    return pd.DataFrame(rows).set_index("group")


def empty_group_reasons(circuit: Circuit, config: PP.PathPatchingConfig) -> list[str]:
    """One sentence per group the search left empty, saying why. Explained in chapter 3."""
    receivers = {g: [tuple(h) for h in hs] for g, hs in circuit.params.get("receivers", {}).items()}
    candidates = PP.candidates_of(circuit)
    min_effect = circuit.params.get("config", {}).get("min_effect", config.min_effect) or 0.0
    out = []
    for g in GROUPS:
        if circuit.groups[g]:
            continue
        step = PP.STEP_OF[g]
        feeding = receivers.get(g, [])
        if candidates[g]:
            why = "minimality removed all its candidates"
        elif step.receiver_group and feeding and min(l for l, _ in feeding) == 0:
            why = (f"its receivers, the {GROUP_LETTERS[step.receiver_group]} heads, all sit in layer 0, so no "
                   "earlier head exists to feed them")
        else:
            why = f"no head lowers the answer's probability by at least {min_effect:.0%} on that path"
        out.append(f"Group {GROUP_SHORT[g]} is empty: {why}.")
    return out


def cost_table(table: pd.DataFrame) -> pd.DataFrame:
    """`path_patching.search_cost` with steps in words and thousands separators."""
    names = {g: f"step {GROUP_SHORT[g]}" for g in GROUPS}
    out = table.copy()
    out["step"] = [names.get(s, s) for s in out["step"]]
    for column in out.columns[1:]:
        out[column] = [f"{int(v):,}" for v in out[column]]
    return out.set_index("step")


def authors_passes(config: PP.PathPatchingConfig, n_layers: int = 32, n_heads: int = 32) -> int:
    """The authors' forward passes for one search of a 32 x 32 model with this config's prompts: per
    batch of prompts, one pass per sender in step A, two in steps B, C and D, plus a clean and a
    corrupted run (21,510 for 300 prompts in batches of 100, as they report). Needs no model."""
    chunks = math.ceil(config.task.n_samples / config.batch_size)
    per_chunk = sum(n_layers * n_heads * (1 if s.receiver_input is None else 2) for s in PP.STEPS) + 2
    return chunks * per_chunk
