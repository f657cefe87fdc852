"""Tables, charts and readings of chapter 6 (Cross-Model Activation Patching), built from the stored
results of `cmap`, plus the two stored results the chapter needs that `cmap` does not store
itself: the input-CMAP table with keys and values patched the authors' way and through the last
token (`cmap.stored_input_cmap`), and the measured peak memory of each protocol (`cmap.stored_peak_rss`).

Shares of the accuracy gap come from `claims.cmap_shares`, so a fine-tune that is not better than
its base by more than the noise reads "no gain to recover" here exactly as in chapter 7's checks.
Explained in chapter 6; chapter 7 reuses `cmap_chart` and `share_lines`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import altair as alt
import pandas as pd

from . import paper_reference as ref
from .circuit import GROUP_LETTERS, GROUP_TITLES
from .cmap import CMAP_ROWS

#: The CMAP table's rows for a reader.
ROW_TITLES = {**GROUP_TITLES, "full_circuit": "Full circuit"}
#: The four groups (the rows a share of the gap is read for), in the paper's order A, B, C, D.
GROUP_ROWS = ("value_fetcher", "position_transmitter", "position_detector", "structure_reader")
#: Short column names for the one-prompt table ("base + A": the base with A's outputs patched in).
ROW_LETTERS = {**{g: GROUP_LETTERS[g] for g in GROUP_ROWS}, "full_circuit": "all"}


def stands_for(variant: str) -> str | None:
    """The 7B model a variant stands for ("goat-7b" for organism-goat), None for others.
    Explained in chapter 6."""
    from .variants import label

    return ref.paper_model_of(label(variant))


def head_counts(head_sets: Mapping[str, Mapping[str, Sequence]]) -> pd.DataFrame:
    """Heads patched per CMAP row for each fine-tune (``variant -> row -> nodes``), beside the
    paper's Goat-7B and FLoat-7B counts. Explained in chapter 6."""
    from .variants import label

    table = pd.DataFrame({label(v): {ROW_TITLES[r]: len(nodes) for r, nodes in rows.items()}
                          for v, rows in head_sets.items()})
    for model, counts in ref.CMAP_HEAD_COUNTS.items():
        by_group = dict(zip(GROUP_ROWS, counts))
        table[f"paper: {ref.MODEL_TITLES[model]}"] = [by_group.get(r, sum(counts)) for r in CMAP_ROWS]
    table.index.name = "row"
    return table


def segment_of(example) -> str:
    """Where the queried box sits: "3rd of 7". Explained in chapter 6."""
    n = example.query_index + 1
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix} of {example.n_boxes}"


def queried_segment(example) -> str:
    """The queried box's own segment of the context, as the prompt writes it ("the map is in Box Q").
    Explained in chapter 6."""
    from .data import render

    rendered = render(example)
    start = rendered.spans[f"object_{example.query_index}"][0]
    end = rendered.spans[f"label_{example.query_index}"][1]
    before = rendered.text[:start].rstrip().rsplit(" ", 1)[-1]  # the article before the object
    return f"{before} {rendered.text[start:end]}".strip()


def one_prompt_table(examples: Sequence, predictions: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """One row per prompt: the queried box's segment as the prompt writes it, where it sits, the
    correct answer, then each model's or patched run's prediction (``predictions``: column ->
    words; keep the names short, the table must fit the article column). Explained in chapter 6."""
    table = pd.DataFrame({
        "queried segment": [queried_segment(ex) for ex in examples],
        "segment": [segment_of(ex) for ex in examples],
        "answer": [ex.answer for ex in examples],
        **{name: list(words) for name, words in predictions.items()},
    })
    table.index = pd.RangeIndex(1, len(examples) + 1, name="prompt")
    return table


def cmap_table(results: Mapping[str, dict], base: str) -> pd.DataFrame:
    """The CMAP accuracies in a compact ours | paper layout: rows = the base alone, the fine-tune
    alone and each patched row; columns = our fine-tunes, then the paper's Goat-7B and FLoat-7B.
    Explained in chapter 6."""
    from .variants import label

    index = ["base alone", "fine-tune alone", *(f"base + {ROW_TITLES[r]}" for r in CMAP_ROWS)]
    table = {}
    for v, result in results.items():
        rows = result["table"].set_index("row")
        patched = [f"{rows.at[r, 'accuracy']:.2f}" + (" (no heads)" if rows.at[r, "n_heads"] == 0 else "")
                   for r in CMAP_ROWS]  # a row with no heads is the base itself, and says so
        table[label(v)] = [f"{result['target_accuracy']:.2f}", f"{result['source_accuracy']:.2f}", *patched]
    for model, by_row in ref.CMAP.items():
        table[f"paper: {ref.MODEL_TITLES[model]}"] = [f"{x:.2f}" for x in (
            ref.CMAP_REFERENCE["llama-7b"], ref.CMAP_REFERENCE[model], *(by_row[r] for r in CMAP_ROWS))]
    return pd.DataFrame(table, index=pd.Index(index, name=f"accuracy ({label(base)} or LLaMA-7B)"))


def passes_line(results: Mapping[str, dict], n_prompts: int, batch_size: int) -> str:
    """Markdown: how many patched passes of the base model each fine-tune's table took (the rows are
    stacked along the batch, `cmap.cmap_accuracies`), against one pass per row and chunk.
    Explained in chapter 6."""
    from .variants import label

    chunks = -(-n_prompts // batch_size)
    parts = [f"{label(v)} {r['target_passes']}" for v, r in results.items()]
    n_rows = len(CMAP_ROWS)
    return (f"Patched passes of the base model per table: {', '.join(parts)}, where one pass per row "
            f"and chunk of {batch_size} prompts would take {n_rows} × {chunks} = {n_rows * chunks}: "
            "the rows are stacked along the batch, as many as the memory budget (`max_rows`) allows.")


def cmap_chart(results: Mapping[str, dict], base: str, title: str, with_paper: bool = True,
               ) -> alt.VConcatChart:
    """One CMAP panel per fine-tune (stacked, so the figure fits the article column): the base
    model's accuracy with each row's heads taken from the fine-tune (solid bars), the paper's bars
    for the 7B pair it stands for (faded) and dashed lines for the two models alone. Explained in
    chapter 6."""
    from .plots import cmap_bars
    from .variants import label

    panels = []
    paper = ref.cmap()
    for v, result in results.items():
        bars = result["table"].rename(columns={"row": "group"})[["group", "accuracy"]].assign(source="ours")
        pm = stands_for(v)
        subtitle = "dashed: each model alone"
        if with_paper and pm in ref.CMAP:
            theirs = paper[paper["finetuned"] == pm][["group", "accuracy"]].assign(source="paper")
            bars = pd.concat([bars, theirs], ignore_index=True)
            subtitle = (f"faded: the paper's {ref.MODEL_TITLES[pm]} → LLaMA-7B (alone: "
                        f"{ref.CMAP_REFERENCE[pm]:.2f} and {ref.CMAP_REFERENCE['llama-7b']:.2f}); " + subtitle)
        lines = {label(base): result["target_accuracy"], label(v): result["source_accuracy"]}
        panel_title = alt.TitleParams(f"{label(v)} → {label(base)}", subtitle=subtitle, fontSize=12)
        panels.append(cmap_bars(bars, lines, column=None, title=panel_title))
    return alt.vconcat(*panels).properties(title=title)


def share_lines(results: Mapping[str, dict], noise: float = ref.PAPER_NOISE) -> str:
    """Markdown, one line per fine-tune and one for the paper: each group's share of the gap between
    the base alone and the fine-tune alone that its patched outputs recover, or "no gain to
    recover" when the fine-tune is not better by more than ``noise`` (`claims.cmap_shares`).
    Explained in chapter 6."""
    from .claims import cmap_shares
    from .variants import label

    lines = []
    for v, r in results.items():
        lo, hi = r["target_accuracy"], r["source_accuracy"]
        shares = cmap_shares(r["table"], lo, hi, noise)
        if shares is None:
            lines.append(f"- {label(v)} ({hi:.2f}) is not better than the base ({lo:.2f}) by more than the "
                         f"noise ({noise:.2f}): no gain to recover; its rows only show what the transplant "
                         "does to the base.")
            continue
        best = max(GROUP_ROWS, key=shares.get)
        parts = ", ".join(f"{GROUP_LETTERS[g]} {shares[g] + 0.0:.0%}" for g in GROUP_ROWS)
        lines.append(f"- {label(v)} ({hi:.2f}) against the base ({lo:.2f}): share of the gap recovered "
                     f"{parts}, full circuit {shares['full_circuit'] + 0.0:.0%}; the group that recovers "
                     f"most: {ROW_TITLES[best]}.")
    lo = ref.CMAP_REFERENCE["llama-7b"]
    paper = []
    for model, by_row in ref.CMAP.items():
        gap = ref.CMAP_REFERENCE[model] - lo
        paper.append(f"{ref.MODEL_TITLES[model]}: " + ", ".join(
            f"{GROUP_LETTERS[g]} {(by_row[g] - lo) / gap + 0.0:.0%}" for g in GROUP_ROWS))
    lines.append("- The paper (7B, against LLaMA-7B): " + "; ".join(paper) + ".")
    return "\n".join(lines)


def reverse_table(reverse: Mapping[str, dict], base: str) -> pd.DataFrame:
    """The reverse direction (base outputs into each fine-tune): rows = the fine-tune alone, the base
    alone and each patched row; one column per fine-tune. Explained in chapter 6."""
    from .variants import label

    index = ["fine-tune alone", "base alone", *(f"fine-tune + base's {ROW_TITLES[r]}" for r in CMAP_ROWS)]
    table = {}
    for v, result in reverse.items():
        rows = result["table"].set_index("row")["accuracy"]
        table[label(v)] = [result["target_accuracy"], result["source_accuracy"], *(rows[r] for r in CMAP_ROWS)]
    return pd.DataFrame(table, index=pd.Index(index, name=f"accuracy (base: {label(base)})")).round(2)


# --------------------------------------------------------------------------------------------------
# Input CMAP, stored both ways, and the comparison
# --------------------------------------------------------------------------------------------------

def input_table(before: pd.DataFrame, through: pd.DataFrame) -> pd.DataFrame:
    """Input CMAP for groups A and B, one row per patched input (Q, K, V, QK, QKV): ours with keys
    and values patched before the last token (the authors' way), ours through the last token, the
    difference, and the paper's Goat-7B number. Explained in chapter 6."""
    paper = ref.cmap_input().set_index(["group", "patched"])["accuracy"]
    ours = before.set_index(["row", "patched"])["accuracy"]
    also = through.set_index(["row", "patched"])["accuracy"]
    rows = []
    for group in dict.fromkeys(before["row"]):
        for patched in dict.fromkeys(before["patched"]):
            key = (group, patched)
            rows.append({"group": f"{GROUP_LETTERS[group]} {ROW_TITLES[group].split(' (')[0].lower()}",
                         "patched": patched, "before last (authors')": ours[key],
                         "through last": also[key], "difference": also[key] - ours[key],
                         "paper (Goat-7B)": paper.get(key, float("nan"))})
    out = pd.DataFrame(rows).set_index(["group", "patched"])
    return out.round(3)


def input_difference_line(table: pd.DataFrame) -> str:
    """Markdown: how much patching the last token's own key and value changes input CMAP.
    Explained in chapter 6."""
    diff = table["difference"]
    kv = diff[[p != "Q" for _, p in diff.index]]
    q_only = diff[[p == "Q" for _, p in diff.index]]
    biggest = kv.abs().idxmax() if len(kv) else None
    text = (f"Patching the last token's own key and value as well changes the accuracy by at most "
            f"{kv.abs().max():.3f}" + (f" ({biggest[0]}, {biggest[1]})" if biggest else "")
            + f" and by {kv.abs().mean():.3f} on average over the rows that patch K or V")
    if len(q_only):
        text += (f"; the Q-only rows cannot change (they patch no key or value) and differ by "
                 f"{q_only.abs().max():.3f}")
    return text + "."


# --------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------

BUDGET_WORDS = {"weights_per_model_gb": "weights of one model (GB)",
                "both_resident_weights_gb": "both models resident (GB)",
                "authors_full_z_cache_gb": "the authors' cache of every z (GB)",
                "one_resident_weights_gb": "one model at a time (GB)",
                "node_cache_gb": "the chosen heads' outputs only (GB)"}


def budget_table(n_params: float, **shape) -> pd.DataFrame:
    """`cmap.memory_budget` in float32 (the paper) and float16, rows in words. ``shape``: the
    keyword arguments of `cmap.memory_budget` other than the parameter count and precision.
    Explained in chapter 6."""
    from .cmap import memory_budget

    table = pd.DataFrame({dtype: memory_budget(n_params, nbytes, **shape)
                          for dtype, nbytes in (("float32 (the paper)", 4), ("float16", 2))})
    return table.rename(index=BUDGET_WORDS).round(2)


def accounted_memory(one: dict, both: dict) -> pd.DataFrame:
    """Bytes of weights and cache held at the peak by each protocol (`cmap.stored_cmap`'s
    ``memory``), in MB. Explained in chapter 6."""
    def column(result):
        return {"weights + cache at the peak (MB)": result["memory"]["peak_weights_and_cache_bytes"] / 2**20,
                "head-output cache (MB)": result["memory"]["cache_bytes"] / 2**20}

    return pd.DataFrame({"one at a time": column(one), "both resident (authors)": column(both)}).round(3)


def measured_memory(one: dict, both: dict) -> pd.DataFrame:
    """The two measurements of `cmap.stored_peak_rss` as a table, in MB. Explained in chapter 6."""
    def column(rss):
        return {"peak RSS (MB)": rss["peak_rss_bytes"] / 2**20,
                "increase over imports (MB)": rss["increase_bytes"] / 2**20}

    return pd.DataFrame({"one at a time": column(one), "both resident (authors)": column(both)}).round(1)
