"""Is the circuit the mechanism? Faithfulness, completeness and minimality.

Every measurement here is the accuracy of a *mean-ablated* model: each head output ``z`` is replaced
by its position-wise mean over the reference prompts (`data.mean_ablation_reference`, whose query
letter names no box, so the mean carries the task's layout but no answer), except for the head
outputs an `Ablation` keeps. The paper's circuit evaluation keeps only the circuit's nodes, each at
its own position — groups A and B at ``last``, C at ``query_label``, D at ``prev_query_label`` — and
ablates every head at every other position (`pp_utils.mean_ablate`). Completeness also needs the
opposite: the whole model with only a set K ablated (the authors' ``ablate_non_vital_pos=False``).

* **faithfulness** = F(circuit) / F(model), beside random circuits of the same shape;
* **completeness**: for subsets K of the circuit, F(C \\ K) against F(M \\ K) (a complete circuit
  lies on y = x);
* **minimality**: how much performance falls when one head is removed on top of the set K that
  makes it matter most; the head stays if the relative drop reaches a threshold (1 % in the paper;
  the authors' Goat and FLoat circuits used 0).

Many ablations are evaluated in one forward pass: the prompts are repeated once per ablation and
the keep-masks stacked along the batch (`max_rows` bounds the rows per pass), so the cost is a few
large passes rather than one pass per condition or per prompt.
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
from .cache import cached
from .data import TaskConfig
from .circuit import GROUPS, Circuit, Head
from .patching import Node
from .progress import progress


# --------------------------------------------------------------------------------------------------
# Configuration (defaults = the authors' values, `experiment_1/circuit_eval.ipynb`, `minimality.py`,
# `completeness.ipynb`)
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalConfig:
    """Data and sampling for every evaluation in this module; each default is the paper's.
    Explained in chapter 4."""

    task: TaskConfig = TaskConfig()  # evaluation prompts: 500 lines, 7 boxes              (paper: 500)
    n_reference: int = 500           # mean-ablation reference prompts                    (paper: 500)
    batch_size: int = 50             # prompts per forward pass                           (paper: 50)
    max_rows: int = 1000             # prompts x ablations stacked in one forward pass (the memory budget)
    random_draws: int = 10           # random circuits per faithfulness row               (paper: 10)
    random_seed: int = 0
    completeness_draws: int = 20     # random K per circuit                  (paper: 20; 10 for LLaMA)
    completeness_seed: int = 5       #                                                    (paper: 5)
    minimality_samples: int = 100    # the first prompts, used for minimality             (paper: 100)
    minimality_fraction: float = 0.3  # |K| <= ceil(fraction * group size)                (paper: 0.3)


DEFAULT_EVAL = EvalConfig()

#: The minimality thresholds the book shows: the paper's 1 %, and the 0 that reproduces the
#: authors' shipped Goat and FLoat circuits.
THRESHOLDS = (0.01, 0.0)


# --------------------------------------------------------------------------------------------------
# Mean ablation of everything an `Ablation` does not keep
# --------------------------------------------------------------------------------------------------

#: The positions where circuit nodes live; every other position is ablated wholesale or left alone.
VITAL_POSITIONS: tuple[str, ...] = tuple(dict.fromkeys(GROUPS.values()))


@dataclass(frozen=True)
class Ablation:
    """Which head outputs keep their own value; every other one is set to its position-wise mean.

    ``nodes`` (layer, head, named position) keep their value. At the other positions (not ``last``,
    ``query_label`` or ``prev_query_label``) every head is ablated when ``ablate_other_positions``
    (the paper's circuit evaluation), and left alone otherwise (the authors'
    ``ablate_non_vital_pos=False``, used for the model without K in completeness). Explained in chapter 4."""

    nodes: frozenset
    ablate_other_positions: bool = True

    def __post_init__(self):
        object.__setattr__(self, "nodes", frozenset((int(l), int(h), str(p)) for l, h, p in self.nodes))


def every_node(model) -> frozenset:
    """Every head at every position where circuit nodes live. Explained in chapter 4."""
    n_layers, n_heads = P.n_layers_heads(model)
    return frozenset((l, h, p) for l in range(n_layers) for h in range(n_heads) for p in VITAL_POSITIONS)


def circuit_only(nodes: Iterable[Node], ablate_other_positions: bool = True) -> Ablation:
    """The paper's circuit evaluation: only ``nodes`` survive. Explained in chapter 4."""
    return Ablation(frozenset(nodes), ablate_other_positions)


def model_without(model, nodes: Iterable[Node] = ()) -> Ablation:
    """The whole model with only ``nodes`` ablated (M \\ K); no nodes: the model itself. Explained in chapter 4."""
    return Ablation(every_node(model) - frozenset(nodes), ablate_other_positions=False)


def keep_mask(model, batch: D.TaskBatch, ablation: Ablation) -> torch.Tensor:
    """``[layer, prompt, position, head]``: True where the head output keeps its own value. Explained in chapter 4."""
    mask = P.nodes_mask(model, batch, ablation.nodes)
    if not ablation.ablate_other_positions:
        other = torch.ones(len(batch), batch.seq_len, dtype=torch.bool, device=mask.device)
        rows = torch.arange(len(batch), device=mask.device)
        for position in VITAL_POSITIONS:
            index = P.position_index(batch, position).to(mask.device)
            ok = index >= 0
            other[rows[ok], index[ok]] = False
        mask |= other[None, :, :, None]
    return mask


class AblationSetup:
    """One model with its evaluation prompts and the mean head outputs ablated heads are set to.

    The means are computed on first use, so a chapter that only rereads cached results never runs
    the model. Explained in chapter 4."""

    def __init__(self, lm, batch: D.TaskBatch, config: EvalConfig = DEFAULT_EVAL, means: torch.Tensor | None = None):
        self.lm, self.batch, self.config, self._means = lm, batch, config, means

    @property
    def model(self):
        return self.lm.model

    @property
    def means(self) -> torch.Tensor:
        """``[layer, position, head, d_head]``: position-wise mean head outputs on the reference prompts."""
        if self._means is None:
            means = P.mean_head_outputs(self.model, reference_batch(self.lm, self.config),
                                        batch_size=self.config.batch_size)
            if means.shape[1] != self.batch.seq_len:
                raise ValueError(f"reference prompts have {means.shape[1]} tokens but evaluation prompts "
                                 f"{self.batch.seq_len}; mean ablation is position-wise, so both need the same "
                                 "number of boxes")
            self._means = means
        return self._means

    def with_batch(self, batch: D.TaskBatch) -> "AblationSetup":
        return AblationSetup(self.lm, batch, self.config, self._means)

    def with_config(self, config: EvalConfig) -> "AblationSetup":
        return AblationSetup(self.lm, self.batch, config, self._means)


def reference_batch(lm, config: EvalConfig = DEFAULT_EVAL) -> D.TaskBatch:
    """The mean-ablation reference prompts in this model's vocabulary (the authors' recipe: the first line of
    each context with a query letter that names no box). Explained in chapter 4."""
    task = config.task
    examples = D.mean_ablation_reference(task.n_boxes, config.n_reference, task.dataset_seed,
                                         objects=lm.objects, authors_compat=task.authors_compat)
    return lm.tokenize(examples)


_SETUPS: dict[tuple, AblationSetup] = {}


def ablation_setup(model, config: EvalConfig = DEFAULT_EVAL) -> AblationSetup:
    """The evaluation prompts (the dataset's first ``task.n_samples`` lines) of a model (a variant
    name or a loaded model, `variants.load`); the reference means are computed on first use and kept
    for the resident model, so the faithfulness, completeness and minimality of one model share them.
    Explained in chapter 4."""
    from . import variants

    lm = variants.load(model)
    key = (id(lm.model), lm.fingerprint, config.task, config.n_reference)
    for stale in [k for k in _SETUPS if k[0] != id(lm.model)]:  # another model is resident now
        del _SETUPS[stale]
    if key not in _SETUPS:
        _SETUPS[key] = AblationSetup(lm, lm.batch(config.task), config)
    setup = _SETUPS[key]
    return setup if setup.config == config else setup.with_config(config)


@torch.no_grad()
def ablation_accuracies(setup: AblationSetup, ablations: Sequence[Ablation], n_prompts: int | None = None,
                        desc: str = "mean-ablated runs") -> list[float]:
    """Accuracy of the model under each ablation, on the first ``n_prompts`` evaluation prompts.

    Prompts are cut in chunks of ``batch_size``; each chunk is repeated for as many ablations as fit
    in ``max_rows`` and run once with the stacked keep-masks. Explained in chapter 4."""
    batch = setup.batch if n_prompts is None else setup.batch[:n_prompts]
    cfg = setup.config
    if not ablations:
        return []
    unique = list(dict.fromkeys(ablations))  # equal ablations (e.g. the full model twice) run once
    if len(unique) < len(ablations):
        accs = dict(zip(unique, ablation_accuracies(setup, unique, n_prompts, desc)))
        return [accs[a] for a in ablations]
    means = setup.means
    chunk_size = min(cfg.batch_size, len(batch))
    per_pass = max(1, cfg.max_rows // chunk_size)
    hits = torch.zeros(len(ablations), dtype=torch.long)
    model = setup.model
    # Every ablation keeps or ablates every head alike before a prompt's first vital position (the
    # paper's rule: all heads at their means there; the local one: the clean model), so the ablations
    # of one rule share those tokens' run: it runs once per chunk, and each ablation runs only the
    # tokens from the chunk's earliest vital position on. Prompts are ordered by that position so
    # that a chunk's shared part is as long as it can be.
    reuse = P.supports_prefix_reuse(model)
    if reuse:
        batch = batch[torch.argsort(_first_vital(batch), stable=True).tolist()]
        angles = P.record_prefix(model, batch.tokens[:1])  # every position's rotary angles, once
    by_rule: dict[bool, list[int]] = {}
    for i, a in enumerate(ablations):
        by_rule.setdefault(a.ablate_other_positions, []).append(i)
    for chunk in progress(list(batch.batches(chunk_size)), desc=desc, leave=False):
        start = min(int(_first_vital(chunk).min()), chunk.seq_len - 1) if reuse else 0
        for members in by_rule.values():
            prefix = (P.record_ablated_prefix(model, chunk.tokens, start, means,
                                              keep_mask(model, chunk, ablations[members[0]]), angles)
                      if start else None)
            for k in range(0, len(members), per_pass):
                group = members[k: k + per_pass]
                tokens = chunk.tokens.repeat(len(group), 1)
                keep = torch.cat([keep_mask(model, chunk, ablations[i]) for i in group], dim=1)
                if prefix is None:
                    logits = P.ablate_heads(model, tokens, means, keep)
                else:
                    logits = P.ablate_heads_after(model, tokens, means, keep[:, :, start:], prefix, start, len(group))
                right = (P.last_logits(logits).argmax(-1) == chunk.answer_ids.repeat(len(group)))
                hits[group] += right.view(len(group), len(chunk)).sum(-1).cpu()
    return (hits.double() / len(batch)).tolist()


def _first_vital(batch: D.TaskBatch) -> torch.Tensor:
    """Per prompt, its first token at one of `VITAL_POSITIONS` (the sequence length if none)."""
    index = [P.position_index(batch, p) for p in VITAL_POSITIONS]
    return torch.stack([i.where(i >= 0, batch.seq_len) for i in index]).min(0).values


def forward_passes(setup: AblationSetup, n_ablations: int, n_prompts: int | None = None) -> int:
    """How many forward passes `ablation_accuracies` runs for ``n_ablations`` (prompts are cut in
    chunks of ``batch_size``; each pass holds a chunk once per ablation, up to ``max_rows`` rows).
    Explained in chapter 4."""
    n = len(setup.batch) if n_prompts is None else min(n_prompts, len(setup.batch))
    chunk = min(setup.config.batch_size, n)
    per_pass = max(1, setup.config.max_rows // chunk)
    return math.ceil(n / chunk) * math.ceil(n_ablations / per_pass)


def ablation_accuracy(setup: AblationSetup, ablation: Ablation, n_prompts: int | None = None) -> float:
    """`ablation_accuracies` for one ablation. Explained in chapter 4."""
    return ablation_accuracies(setup, [ablation], n_prompts)[0]


# --------------------------------------------------------------------------------------------------
# Random circuits of the same shape
# --------------------------------------------------------------------------------------------------

def random_circuit(circuit: Circuit, n_layers: int, n_heads: int, seed: int = 0) -> Circuit:
    """A circuit with the same number of heads in every group and at every position, heads drawn
    uniformly without repeats.

    Groups that share a position (A and B at ``last``) take their heads from one draw of as many
    distinct heads as the circuit has there, overlapping by as many as the circuit's groups do. The
    authors drew per-position counts with replacement (W5), which can repeat a head. Explained in chapter 4."""
    rng = random.Random(seed)
    all_heads = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    groups: dict[str, list[Head]] = {}
    by_position: dict[str, list[str]] = {}
    for g, position in GROUPS.items():
        by_position.setdefault(position, []).append(g)
    for position, names in by_position.items():
        distinct = len({h for g in names for h in circuit.groups[g]})
        sizes = [len(circuit.groups[g]) for g in names]
        if distinct > len(all_heads) or max(sizes, default=0) > len(all_heads):
            raise ValueError(f"the circuit has more heads at {position!r} than the model ({len(all_heads)})")
        drawn = rng.sample(all_heads, distinct)
        if len(names) == 1:
            groups[names[0]] = drawn
        else:
            # first group from the front of the draw, the second from the back: they overlap by exactly
            # sizes[0] + sizes[1] - distinct heads, as the circuit's own groups do.
            first, second = names
            groups[first] = drawn[: sizes[0]]
            groups[second] = drawn[distinct - sizes[1]:]
    return Circuit(model=f"random({circuit.model}, seed={seed})", groups=groups,
                   params={"shape_of": circuit.model, "seed": seed})


# --------------------------------------------------------------------------------------------------
# Faithfulness
# --------------------------------------------------------------------------------------------------

def faithfulness(setup: AblationSetup, circuit: Circuit, draws: int | None = None, seed: int | None = None,
                 ablate_other_positions: bool = True) -> dict:
    """Accuracy of the full model, of the circuit alone, and of random circuits of its shape, with
    faithfulness = circuit / full model (the paper's Table 1 row for one model and one circuit).
    ``ablate_other_positions=False`` ablates only the heads outside the circuit at its positions.
    Explained in chapter 4."""
    return faithfulness_many(setup, [(circuit, ablate_other_positions)], draws, seed)[0]


def faithfulness_many(setup: AblationSetup, rows: Sequence[tuple[Circuit, bool]], draws: int | None = None,
                      seed: int | None = None) -> list[dict]:
    """`faithfulness` for several (circuit, ``ablate_other_positions``) rows of one model in one
    `ablation_accuracies` call: the full model runs once, and circuits with the same nodes (or random
    circuits of the same shape and seed) once between them. Each row is what `faithfulness` alone
    returns. Explained in chapter 4."""
    cfg = setup.config
    draws = cfg.random_draws if draws is None else draws
    seed = cfg.random_seed if seed is None else seed
    n_layers, n_heads = P.n_layers_heads(setup.model)
    full_model = model_without(setup.model)
    per_row = []
    for circuit, other in rows:
        randoms = [random_circuit(circuit, n_layers, n_heads, seed + i) for i in range(draws)]
        per_row.append([full_model, circuit_only(circuit.nodes(), other),
                        *[circuit_only(r.nodes(), other) for r in randoms]])
    unique = list(dict.fromkeys(a for ablations in per_row for a in ablations))
    accuracy = dict(zip(unique, ablation_accuracies(setup, unique, desc="faithfulness")))
    results = []
    for (circuit, _), ablations in zip(rows, per_row):
        full, circ = accuracy[ablations[0]], accuracy[ablations[1]]
        rand = [accuracy[a] for a in ablations[2:]]
        rand_mean = sum(rand) / len(rand) if rand else float("nan")
        rand_sd = (sum((r - rand_mean) ** 2 for r in rand) / (len(rand) - 1)) ** 0.5 if len(rand) > 1 else 0.0
        results.append({
            "full_model": full, "circuit": circ, "random_circuit": rand_mean, "random_circuit_sd": rand_sd,
            "random_draws": rand, "faithfulness": circ / full if full else float("nan"),
            "random_faithfulness": rand_mean / full if full else float("nan"),
            "circuit_heads": len(set(circuit.nodes())),
            "forward_passes": forward_passes(setup, len(dict.fromkeys(ablations))),
        })
    return results


# --------------------------------------------------------------------------------------------------
# Completeness
# --------------------------------------------------------------------------------------------------

def random_subsets(nodes: Iterable[Node], draws: int, seed: int) -> list[frozenset]:
    """Each node kept in K with probability 1/2, independently (the authors' `np.random.randint(2)`).
    Explained in chapter 4."""
    nodes = sorted(set(nodes))
    rng = random.Random(seed)
    return [frozenset(n for n in nodes if rng.random() < 0.5) for _ in range(draws)]


def completeness(setup: AblationSetup, circuit: Circuit, draws: int | None = None, seed: int | None = None) -> pd.DataFrame:
    """F(C \\ K) (the circuit without K, everything else ablated) and F(M \\ K) (the whole model with
    only K ablated) for random subsets K and for each whole group; incompleteness = the absolute difference.

    One row per K: ``K`` ("random" or a group), ``draw``, ``size``, ``circuit_without_K``,
    ``model_without_K``, ``incompleteness`` (the layout of `plots.completeness_scatter`). Explained in chapter 4."""
    cfg = setup.config
    draws = cfg.completeness_draws if draws is None else draws
    seed = cfg.completeness_seed if seed is None else seed
    nodes = set(circuit.nodes())
    subsets = [("random", i, k) for i, k in enumerate(random_subsets(nodes, draws, seed))]
    subsets += [(g, 0, frozenset(circuit.nodes([g]))) for g in GROUPS if circuit.groups[g]]
    ablations = []
    for _, _, k in subsets:
        ablations += [circuit_only(nodes - k), model_without(setup.model, k)]
    accs = ablation_accuracies(setup, ablations, desc="completeness")
    rows = []
    for i, (kind, draw, k) in enumerate(subsets):
        c, m = accs[2 * i], accs[2 * i + 1]
        rows.append({"K": kind, "draw": draw, "size": len(k), "circuit_without_K": c, "model_without_K": m,
                     "incompleteness": abs(c - m)})
    return pd.DataFrame(rows)


def completeness_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd over the random K (the paper's "0.10 ± 0.06" line), in
    `paper_reference.completeness_random`'s layout. Explained in chapter 4."""
    rand = frame[frame["K"] == "random"]
    out = {"draws": len(rand)}
    for col in ("model_without_K", "circuit_without_K", "incompleteness"):
        out[col] = rand[col].mean()
        out[f"{col}_sd"] = rand[col].std(ddof=1) if len(rand) > 1 else 0.0
    return pd.DataFrame([out])


# --------------------------------------------------------------------------------------------------
# Minimality
# --------------------------------------------------------------------------------------------------

def without_heads(circuit: Circuit, group: str, heads: Iterable[Head]) -> Circuit:
    """The circuit with ``heads`` removed from one group (a head also in another group at the same
    position stays in the circuit through that group). Explained in chapter 4."""
    drop = set(heads)
    groups = {g: [h for h in hs if not (g == group and h in drop)] for g, hs in circuit.groups.items()}
    return replace(circuit, groups=groups)


def _circuit_without(circuit: Circuit, group: str, heads: Iterable[Head], ablate_other_positions: bool = True) -> Ablation:
    return circuit_only(without_heads(circuit, group, heads).nodes(), ablate_other_positions)


def minimality_group(setup: AblationSetup, circuit: Circuit, group: str, n_prompts: int | None = None,
                     fraction: float | None = None, ablate_other_positions: bool = True) -> pd.DataFrame:
    """The authors' minimality test for every head v of one group (`minimality.py`):

    1. F(C \\ {u, v}) for every pair of the group's heads, and F(C \\ {u});
    2. for v, rank the other heads u by F(C \\ {u}) − F(C \\ {u, v}) (how much more v matters once u
       is gone) and take K = the top ceil(fraction · N), stopping at the first that is not positive;
    3. before = F(C \\ K), after = F(C \\ (K ∪ {v})).

    The other groups stay in the circuit throughout; ``ablate_other_positions`` as in `Ablation`.
    Returns one row per head with ``K`` (as
    "L.H" strings), ``before``, ``after``, ``drop`` = before − after and ``score`` (`minimality_score`).
    Explained in chapter 4."""
    cfg = setup.config
    n_prompts = cfg.minimality_samples if n_prompts is None else n_prompts
    fraction = cfg.minimality_fraction if fraction is None else fraction
    heads = list(dict.fromkeys(circuit.groups[group]))
    if not heads:
        return empty_minimality_table()
    pairs = [(i, j) for i in range(len(heads)) for j in range(i, len(heads))]
    accs = ablation_accuracies(setup, [_circuit_without(circuit, group, {heads[i], heads[j]}, ablate_other_positions)
                                       for i, j in pairs], n_prompts, desc=f"minimality pairs ({group})")
    pair = {}
    for (i, j), a in zip(pairs, accs):
        pair[i, j] = pair[j, i] = a
    limit = math.ceil(fraction * len(heads))
    chosen: list[list[Head]] = []
    for v in range(len(heads)):
        gains = sorted(((pair[u, u] - pair[u, v], u) for u in range(len(heads)) if u != v),
                       key=lambda t: (-t[0], t[1]))
        k = []
        for gain, u in gains[:limit]:
            if gain <= 0:
                break
            k.append(heads[u])
        chosen.append(k)
    tests = []
    for v, k in enumerate(chosen):
        tests += [_circuit_without(circuit, group, k, ablate_other_positions),
                  _circuit_without(circuit, group, [*k, heads[v]], ablate_other_positions)]
    accs = ablation_accuracies(setup, tests, n_prompts, desc=f"minimality K ({group})")
    rows = []
    for v, k in enumerate(chosen):
        before, after = accs[2 * v], accs[2 * v + 1]
        rows.append({"group": group, "layer": heads[v][0], "head": heads[v][1],
                     "K": " ".join(f"{layer}.{head}" for layer, head in k), "before": before, "after": after,
                     "drop": before - after, "score": minimality_score(before, after)})
    return pd.DataFrame(rows)


def minimality_score(before: float, after: float) -> float:
    """Relative drop before/after − 1 (the paper's (F(C\\K) − F(C\\(K∪{v}))) / F(C\\(K∪{v})));
    infinite when removing v takes accuracy from above 0 to 0, and 0 when both are 0. Explained in chapter 4."""
    if after == 0:
        return math.inf if before > 0 else 0.0
    return before / after - 1


def minimality(setup: AblationSetup, circuit: Circuit, groups: Sequence[str] | None = None,
               n_prompts: int | None = None, ablate_other_positions: bool = True) -> pd.DataFrame:
    """`minimality_group` for each group (the paper runs them one at a time, the rest kept). Explained in chapter 4."""
    groups = list(GROUPS) if groups is None else list(groups)
    frames = [minimality_group(setup, circuit, g, n_prompts, ablate_other_positions=ablate_other_positions)
              for g in groups]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else empty_minimality_table()


def empty_minimality_table() -> pd.DataFrame:
    """The minimality table of a circuit group with no heads. Explained in chapter 4."""
    return pd.DataFrame(columns=["group", "layer", "head", "K", "before", "after", "drop", "score"])


def with_threshold(table: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """The minimality table with ``kept`` = score ≥ threshold (scores recomputed from before/after,
    so a table read back from JSON, where infinity does not survive, gives the same answer). Explained in chapter 4."""
    out = table.copy()
    out["score"] = [minimality_score(b, a) for b, a in zip(out["before"], out["after"])]
    out["threshold"] = threshold
    out["kept"] = out["score"] >= threshold
    return out


def prune_circuit(circuit: Circuit, table: pd.DataFrame, threshold: float) -> Circuit:
    """The circuit with only the heads whose minimality score reaches ``threshold`` (heads absent
    from the table are kept: they were not tested). Explained in chapter 4."""
    judged = with_threshold(table, threshold)
    dropped = {(g, int(l), int(h)) for g, l, h, k in judged[["group", "layer", "head", "kept"]].itertuples(index=False)
               if not k}
    groups = {g: [h for h in hs if (g, *h) not in dropped] for g, hs in circuit.groups.items()}
    params = {**circuit.params, "minimality_threshold": threshold}
    return Circuit(model=circuit.model, groups=groups, params=params, scores=circuit.scores, notes=circuit.notes)


# --------------------------------------------------------------------------------------------------
# Cached results (one file per model, circuit and configuration)
# --------------------------------------------------------------------------------------------------

def circuit_key(circuit: Circuit) -> dict:
    """What identifies a circuit for caching: its heads per group (not its scores or notes). Explained in chapter 4."""
    return {"model": circuit.model, "groups": {g: sorted(map(list, hs)) for g, hs in circuit.groups.items()}}


def _params(model, circuit: Circuit, config: EvalConfig, **extra) -> dict:
    from .variants import fingerprint, label

    return {"model": fingerprint(model), "variant": label(model), "circuit": circuit_key(circuit),
            "config": asdict(config), **extra}


def stored_faithfulness(model, circuit: Circuit, config: EvalConfig = DEFAULT_EVAL,
                        ablate_other_positions: bool = True) -> dict:
    """`faithfulness` of ``circuit`` inside ``model`` (a variant name or loaded model), read from
    ``results/`` or computed and stored; the model is loaded only to compute. Explained in chapter 4."""
    return cached("faithfulness", _faithfulness_params(model, circuit, config, ablate_other_positions),
                  lambda: faithfulness(ablation_setup(model, config), circuit,
                                       ablate_other_positions=ablate_other_positions))


def _faithfulness_params(model, circuit: Circuit, config: EvalConfig, ablate_other_positions: bool) -> dict:
    extra = {} if ablate_other_positions else {"ablate_other_positions": False}  # the paper's setting keeps its key
    return _params(model, circuit, config, **extra)


def stored_completeness(model, circuit: Circuit, config: EvalConfig = DEFAULT_EVAL) -> pd.DataFrame:
    """`completeness`, read from ``results/`` or computed and stored. Explained in chapter 4."""
    return cached("completeness", _params(model, circuit, config),
                  lambda: completeness(ablation_setup(model, config), circuit))


def stored_minimality(model, circuit: Circuit, config: EvalConfig = DEFAULT_EVAL,
                      ablate_other_positions: bool = True) -> pd.DataFrame:
    """`minimality`, read from ``results/`` or computed and stored; scores are recomputed from
    before/after because JSON has no infinity. Explained in chapter 4."""
    extra = {} if ablate_other_positions else {"ablate_other_positions": False}  # the paper's setting keeps its key
    table = cached("minimality", _params(model, circuit, config, **extra),
                   lambda: minimality(ablation_setup(model, config), circuit,
                                      ablate_other_positions=ablate_other_positions))
    table["score"] = [minimality_score(b, a) for b, a in zip(table["before"], table["after"])]
    return table


def faithfulness_row(model, circuit: Circuit, config: EvalConfig = DEFAULT_EVAL,
                     ablate_other_positions: bool = True) -> dict:
    """One row of the paper's Table 1 layout: model, circuit, full model, circuit, random, faithfulness.
    Explained in chapter 4."""
    return _table1_row(model, circuit, ablate_other_positions,
                       stored_faithfulness(model, circuit, config, ablate_other_positions))


def _table1_row(model, circuit: Circuit, ablate_other_positions: bool, result: dict) -> dict:
    from .variants import label

    return {"model": label(model), "circuit_of": circuit.model, "ablate_other_positions": ablate_other_positions,
            **{k: result[k] for k in ("full_model", "circuit", "random_circuit", "random_circuit_sd", "faithfulness")}}


def overlap_table(reference: Circuit, others: Mapping[str, Circuit]) -> pd.DataFrame:
    """Per group and fine-tuned circuit: sizes, shared (head, group) nodes and the two fractions, in
    the layout of `paper_reference.overlap` (``llama_heads`` = the reference circuit's heads).
    Explained in chapter 4."""
    from .circuit import overlap

    rows = []
    for name, other in others.items():
        ref = replace(reference, model="reference")
        oth = replace(other, model="other")
        for group, o in overlap(ref, oth).items():
            rows.append({"group": group, "other": name, "llama_heads": o["reference"], "other_heads": o["other"],
                         "shared": o["shared"], "frac_llama_in_other": o["frac_reference_in_other"],
                         "frac_other_in_llama": o["frac_other_in_reference"]})
    return pd.DataFrame(rows, columns=["group", "other", "llama_heads", "other_heads", "shared",
                                       "frac_llama_in_other", "frac_other_in_llama"])


# --------------------------------------------------------------------------------------------------
# Generalisation: circuits evaluated inside other models
# --------------------------------------------------------------------------------------------------

def faithfulness_table(models: Sequence, circuits: Sequence[Circuit], config: EvalConfig = DEFAULT_EVAL,
                       ablate_other_positions: Sequence[bool] = (True,)) -> pd.DataFrame:
    """Every circuit evaluated, unchanged, inside every model (Table 1 and its appendix version): one
    row per (model, circuit, ablation) with full model, circuit and random-circuit accuracy and
    faithfulness. Stored results are read back without loading a model; otherwise one model is
    resident at a time (`variants.load`) and each uses its own reference means.
    ``ablate_other_positions`` lists the ablations to run (`Ablation`): the paper's (True), only at
    the circuit's positions (False), or both. Explained in chapter 4."""
    from .cache import cached_many

    rows = []
    for model in progress(models, desc="models"):
        wanted = [(circuit, other) for other in ablate_other_positions for circuit in circuits]
        results = cached_many(  # one batched run for every row this model lacks, each stored under its own key
            "faithfulness", [_faithfulness_params(model, c, config, o) for c, o in wanted],
            lambda todo: faithfulness_many(ablation_setup(model, config), [wanted[i] for i in todo]))
        rows += [_table1_row(model, c, o, r) for (c, o), r in zip(wanted, results)]
    return pd.DataFrame(rows)


def table1_beside_paper(ours: pd.DataFrame, circuit: str) -> pd.DataFrame:
    """Our rows for one circuit (under the paper's ablation) in the paper's Table 1 columns, next to
    the row of the 7B model each variant stands for (`paper_reference.paper_model_of`). Explained in chapter 4."""
    if "ablate_other_positions" in ours.columns:
        ours = ours[ours["ablate_other_positions"]]
    from . import paper_reference as ref

    paper = ref.table1().set_index("model")
    rows = []
    for r in ours[ours["circuit_of"] == circuit].itertuples():
        pm = ref.paper_model_of(r.model)
        known = pm in paper.index
        rows.append({"model": r.model, "paper_model": pm,
                     "full_model": r.full_model, "paper_full_model": paper.loc[pm, "full_model"] if known else math.nan,
                     "circuit": r.circuit, "paper_circuit": paper.loc[pm, "llama_circuit"] if known else math.nan,
                     "random_circuit": r.random_circuit,
                     "paper_random_circuit": paper.loc[pm, "random_circuit"] if known else math.nan,
                     "faithfulness": r.faithfulness,
                     "paper_faithfulness": paper.loc[pm, "faithfulness"] if known else math.nan})
    return pd.DataFrame(rows)
