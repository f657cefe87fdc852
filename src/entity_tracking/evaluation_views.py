"""Tables that put chapter 4's circuit evaluation beside the paper's numbers, narrow enough for the
article column: each cell reads "ours | paper" where the two are compared, heads are written
``L2H0``, and an undefined ratio says what it means instead of showing NaN.

The measurements themselves live in `circuit_eval`; these functions only arrange them.
Explained in chapter 4.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import pandas as pd

from . import paper_reference as ref
from .circuit import GROUP_LETTERS, GROUPS, Circuit
from .plots import GROUP_SHORT

#: What a ratio with a zero denominator means to a reader.
UNDEFINED = "undefined (full model at 0)"


def number(value, digits: int = 2, undefined: str = "—") -> str:
    """A number as a reader sees it: rounded, and ``undefined`` instead of NaN or infinity.
    Explained in chapter 4."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return undefined
    if math.isnan(value) or math.isinf(value):
        return undefined
    return f"{value:.{digits}f}"


def head_name(layer: int, head: int) -> str:
    """A head as the book writes it: ``L2H0``. Explained in chapter 4."""
    return f"L{int(layer)}H{int(head)}"


def _pair(ours, paper, digits: int = 2, undefined: str = "—") -> str:
    return f"{number(ours, digits, undefined)} | {number(paper, digits)}"


def circuit_sizes_beside_paper(circuit: Circuit, paper: str = "llama-7b") -> pd.DataFrame:
    """Heads per group, in total and unique, of our circuit beside the paper's (columns ``ours``,
    ``paper``). Explained in chapter 4."""
    sizes = circuit.sizes()
    known = ref.CIRCUIT_SIZES[paper]
    rows = {GROUP_SHORT[g]: (sizes.get(g, 0), n) for g, n in zip(GROUPS, known["sizes"])}
    rows["total"] = (len(circuit), known["total"])
    rows["unique heads"] = (len(circuit.unique_heads()), known["unique"])
    columns = ["ours", f"paper ({ref.MODEL_TITLES[paper]})"]
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns)


def faithfulness_beside_paper(faith: Mapping, paper: str = "llama-7b") -> pd.DataFrame:
    """One model's faithfulness result (`circuit_eval.stored_faithfulness`) beside the paper's
    Table 1 row: full model, circuit alone, random circuits (± sd over draws), faithfulness.
    Explained in chapter 4."""
    row = ref.table1().set_index("model").loc[paper]
    ours = [number(faith["full_model"], 3), number(faith["circuit"], 3),
            f"{number(faith['random_circuit'], 3)} ± {number(faith['random_circuit_sd'], 3)}",
            number(faith["faithfulness"], 2, UNDEFINED)]
    theirs = [number(row[c])
              for c in ("full_model", "llama_circuit", "random_circuit", "faithfulness")]
    return pd.DataFrame({"ours": ours, f"paper ({ref.MODEL_TITLES[paper]})": theirs},
                        index=["full model", "circuit alone", "random circuit", "faithfulness"])


def ablation_comparison(results: Mapping[str, Mapping]) -> pd.DataFrame:
    """Faithfulness results under several mean ablations (keyed by a description), one row each.
    Explained in chapter 4."""
    rows = []
    for how, f in results.items():
        rows.append({"mean ablation": how, "full model": number(f["full_model"], 3),
                     "circuit alone": number(f["circuit"], 3),
                     "random circuit": number(f["random_circuit"], 3),
                     "faithfulness": number(f["faithfulness"], 2, UNDEFINED)})
    return pd.DataFrame(rows).set_index("mean ablation")


def completeness_points(ours: pd.DataFrame, paper: str = "llama-7b") -> pd.DataFrame:
    """Our completeness points and the paper's group points, in `plots.completeness_scatter`'s
    layout. Explained in chapter 4."""
    cols = ["K", "circuit_without_K", "model_without_K", "source"]
    theirs = ref.completeness().query("circuit == @paper")
    return pd.concat([ours.assign(source="ours")[cols], theirs[cols]], ignore_index=True)


def completeness_beside_paper(summary: pd.DataFrame, paper: str = "llama-7b") -> pd.DataFrame:
    """The mean ± sd over random K (`circuit_eval.completeness_summary`) beside the paper's.
    Explained in chapter 4."""
    theirs = ref.completeness_random().set_index("circuit").loc[paper]
    ours = summary.iloc[0]
    rows = {}
    for col, name in (("circuit_without_K", "circuit without K"),
                      ("model_without_K", "model without K"),
                      ("incompleteness", "incompleteness |difference|")):
        rows[name] = (f"{number(ours[col])} ± {number(ours[col + '_sd'])}",
                      f"{number(theirs[col])} ± {number(theirs[col + '_sd'])}")
    rows["random K drawn"] = (str(int(ours["draws"])), str(int(theirs["draws"])))
    columns = ["ours", f"paper ({ref.MODEL_TITLES[paper]})"]
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns)


def completeness_by_group(ours: pd.DataFrame, paper: str = "llama-7b") -> pd.DataFrame:
    """K = each whole group: circuit without K and model without K, each "ours | paper"; a group
    our circuit lacks reads "no heads". Explained in chapter 4."""
    mine = ours[ours["K"] != "random"].set_index("K")
    theirs = ref.completeness().query("circuit == @paper").set_index("K")
    rows = {}
    for g in GROUPS:
        if g not in mine.index:  # our circuit has no such group: only the paper's numbers
            rows[GROUP_SHORT[g]] = tuple(
                f"no heads | {number(theirs.loc[g, c]) if g in theirs.index else '—'}"
                for c in ("circuit_without_K", "model_without_K", "incompleteness"))
            continue
        rows[GROUP_SHORT[g]] = tuple(
            _pair(mine.loc[g, c], theirs.loc[g, c] if g in theirs.index else math.nan)
            for c in ("circuit_without_K", "model_without_K", "incompleteness"))
    columns = ["circuit without K", "model without K", "|difference|"]
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
    return frame.rename_axis("K (ours | paper)")


def zero_drop_heads(table: pd.DataFrame) -> list[str]:
    """The minimality candidates whose removal on top of K costs nothing, as "L2H0 (A)".
    Explained in chapter 4."""
    zero = table[table["drop"] <= 0]
    return [f"{head_name(r.layer, r.head)} ({GROUP_LETTERS[r.group]})" for r in zero.itertuples()]


def pruned_faithfulness(model, candidates: Circuit, tables: Mapping[str, tuple[pd.DataFrame, bool]],
                        thresholds: Sequence[float], config) -> tuple[dict, pd.DataFrame]:
    """For each minimality table (keyed by its ablation, with that ablation's
    ``ablate_other_positions``) and threshold: the pruned circuit, and its size and faithfulness
    under the same ablation. Returns ``({(ablation, threshold): circuit}, table)``.
    Explained in chapter 4."""
    from . import circuit_eval as E

    pruned, rows = {}, []
    for how, (table, other) in tables.items():
        for t in thresholds:
            c = pruned[how, t] = E.prune_circuit(candidates, table, t)
            f = E.stored_faithfulness(model, c, config, ablate_other_positions=other)
            rows.append({"mean ablation": how, "threshold": f"{t:.0%}",
                         "heads A/B/C/D": "/".join(str(c.sizes().get(g, 0)) for g in GROUPS),
                         "circuit alone": number(f["circuit"], 3),
                         "random": number(f["random_circuit"], 3),
                         "faithfulness": number(f["faithfulness"], 2, UNDEFINED)})
    return pruned, pd.DataFrame(rows).set_index(["mean ablation", "threshold"])


def table1_compact(beside: pd.DataFrame) -> pd.DataFrame:
    """`circuit_eval.table1_beside_paper` in four "ours | paper" columns, one row per model, with
    the 7B model each variant stands for. Explained in chapter 4."""
    rows = []
    for r in beside.itertuples():
        known = isinstance(r.paper_model, str)
        stands = ref.MODEL_TITLES.get(r.paper_model, "—") if known else "—"
        rows.append({"model": r.model, "stands for": stands,
                     "full model": _pair(r.full_model, r.paper_full_model),
                     "base circuit": _pair(r.circuit, r.paper_circuit),
                     "random": _pair(r.random_circuit, r.paper_random_circuit),
                     "faithfulness": _pair(r.faithfulness, r.paper_faithfulness,
                                           undefined=UNDEFINED)})
    return pd.DataFrame(rows).set_index("model")


#: How the book names the two mean ablations.
ABLATIONS = {True: "paper's ablation", False: "circuit positions only"}


def accuracies_long(table: pd.DataFrame) -> pd.DataFrame:
    """`circuit_eval.faithfulness_table` rows as one accuracy per (model, ablation, measure), the
    measures in words, for `plots.grouped_bar_chart`. Explained in chapter 4."""
    names = {"full_model": "full model", "circuit": "base circuit alone",
             "random_circuit": "random circuit"}
    long = table.assign(ablation=table["ablate_other_positions"].map(ABLATIONS)).melt(
        id_vars=["model", "ablation"], value_vars=list(names), var_name="measure",
        value_name="accuracy")
    return long.assign(measure=long["measure"].map(names))


def local_table(table: pd.DataFrame) -> pd.DataFrame:
    """The rows with ablation only at the circuit's positions, in words. Explained in chapter 4."""
    local = table[~table["ablate_other_positions"]]
    return pd.DataFrame({"full model": local["full_model"].map(lambda x: number(x, 3)).values,
                         "base circuit alone": local["circuit"].map(lambda x: number(x, 3)).values,
                         "random": [f"{number(m, 3)} ± {number(s, 3)}" for m, s in
                                    zip(local["random_circuit"], local["random_circuit_sd"])],
                         "faithfulness": [number(x, 2, UNDEFINED) for x in local["faithfulness"]]},
                        index=pd.Index(local["model"], name="model"))


def circuit_sizes_table(circuits: Mapping[str, Circuit]) -> pd.DataFrame:
    """Heads per group, total and unique, of each variant's own circuit, with the paper's circuits
    below. Explained in chapter 4."""
    rows = [{"circuit": name, **{GROUP_LETTERS[g]: c.sizes().get(g, 0) for g in GROUPS},
             "total": len(c), "unique": len(c.unique_heads())} for name, c in circuits.items()]
    for name, info in ref.CIRCUIT_SIZES.items():
        rows.append({"circuit": f"{ref.MODEL_TITLES[name]} (paper)",
                     **{GROUP_LETTERS[g]: n for g, n in zip(GROUPS, info["sizes"])},
                     "total": info["total"], "unique": info["unique"]})
    return pd.DataFrame(rows).set_index("circuit")


def cross_grid(cross: pd.DataFrame, circuit_order: Sequence[str],
               model_order: Sequence[str]) -> pd.DataFrame:
    """Circuit accuracy (faithfulness) of every circuit (rows) inside every model (columns; the
    first row is each model's full accuracy), from `circuit_eval.faithfulness_table` rows of one
    ablation.
    Explained in chapter 4."""
    cell = cross.assign(value=[f"{number(c)} ({number(f, 2, 'undefined')})"
                               for c, f in zip(cross["circuit"], cross["faithfulness"])])
    grid = cell.pivot(index="circuit_of", columns="model", values="value").loc[list(circuit_order),
                                                                                list(model_order)]
    full = cross.drop_duplicates("model").set_index("model")["full_model"]
    first = pd.DataFrame([[number(full[m]) for m in grid.columns]], columns=grid.columns,
                         index=["(full model)"])
    grid = pd.concat([first, grid])
    grid.columns.name = None
    return grid.rename_axis("circuit of")


def paper_cross_grid() -> pd.DataFrame:
    """The paper's own-circuit table in `cross_grid`'s layout (Table 1 in the appendix).
    Explained in chapter 4."""
    paper = ref.own_circuit_faithfulness()
    paper = paper.assign(value=[f"{number(c)} ({number(f)})" for c, f in
                                zip(paper["circuit_accuracy"], paper["faithfulness"])])
    grid = paper.pivot(index="circuit", columns="model", values="value")
    order = [m for m in ("llama-7b", "goat-7b", "float-7b") if m in grid.index]
    grid = grid.loc[order, [m for m in ref.MODELS if m in grid.columns]]
    grid.index = [ref.MODEL_TITLES[m] for m in grid.index]
    grid.columns = [ref.MODEL_TITLES[m] for m in grid.columns]
    return grid.rename_axis("circuit of")


def overlap_compact(ours: pd.DataFrame) -> pd.DataFrame:
    """Share of the base circuit's (head, group) nodes inside each fine-tuned circuit, per group,
    as "shared/base (share)"; the paper's LLaMA-in-Goat and LLaMA-in-FLoat columns beside.
    Explained in chapter 4."""
    def cell(r):
        if not r.llama_heads:
            return "no heads"
        return f"{int(r.shared)}/{int(r.llama_heads)} ({r.frac_llama_in_other:.0%})"

    paper = ref.overlap().assign(other=lambda f: f["other"].map(ref.MODEL_TITLES) + " (paper)")
    frames = []
    for frame in (ours, paper):
        cells = frame.assign(value=[cell(r) for r in frame.itertuples()])
        frames.append(cells.pivot(index="group", columns="other", values="value")[
            list(dict.fromkeys(frame["other"]))])
    grid = pd.concat(frames, axis=1)
    order = [g for g in (*GROUPS, "all") if g in grid.index]
    grid = grid.loc[order]
    grid.index = [GROUP_SHORT.get(g, "whole circuit" if g == "all" else g) for g in grid.index]
    grid.columns.name = None
    return grid.rename_axis("base circuit's nodes in")


def heads_kept_by_token(lm, batch, keep) -> tuple[pd.DataFrame, int]:
    """The tokens of one prompt where heads keep their own output (``keep``: a
    ``[layer, position, head]`` mask from `circuit_eval.keep_mask`) or that have a role, with their
    count, and how many other tokens keep none. Explained in chapter 4."""
    from .widgets import token_roles

    roles = token_roles(batch)
    counts = keep.sum(dim=(0, 2)).tolist()
    shown = [i for i in range(batch.seq_len) if counts[i] or roles.get(i)]
    tokens = [lm.tokenizer.decode([int(batch.tokens[0, i])]).strip() for i in shown]
    frame = pd.DataFrame({"token": tokens,
                          "position": [roles.get(i, "") for i in shown],
                          "heads kept": [int(counts[i]) for i in shown]},
                         index=pd.Index(shown, name="index"))
    return frame, batch.seq_len - len(shown)


def with_head_names(table: pd.DataFrame) -> pd.DataFrame:
    """A minimality table whose ``K`` column names heads ``L2H0`` rather than the stored "2.0".
    Explained in chapter 4."""
    def names(k) -> str:
        heads = [h.split(".") for h in str(k).split()] if isinstance(k, str) else []
        return " ".join(head_name(int(layer), int(head)) for layer, head in heads) or "none"

    return table.assign(K=[names(k) for k in table["K"]])
