"""Tables, charts and readings of chapter 5 (what each head group carries: DCM and the
activation-patching check), built from the stored results of `dcm` and `path_patching`.

Nothing here runs a model: every function turns a frame the chapter already has (a DCM summary or
history, a tidy patching-check frame, the floors) into what a reader sees, with heads written
``L2H0`` (`figures.head_name`), desiderata in words, and no NaN: a missing number is said in words.
The paper's claims about the figure (`functionality_claims`) are checked the same way on our frame
and on the paper's. Explained in chapter 5; chapter 7 reuses `NAMED` and `named_accuracy`.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import altair as alt
import pandas as pd

from . import data as D
from . import paper_reference as ref
from .circuit import GROUP_LETTERS, GROUPS, Circuit
from .figures import POSITION_WORDS, head_name
from .plots import GROUP_LABELS, group_scale

#: Each group's desideratum, the variable its name says it carries (the paper's diagonal).
NAMED = {"value_fetcher": "object_value", "position_transmitter": "positional",
         "position_detector": "positional", "structure_reader": "positional"}

#: How a desideratum is written for a reader.
DESIDERATUM_WORDS = {"object_value": "object value", "box_label_value": "box label", "positional": "position"}


def heads_text(heads: Sequence[Sequence[int]], empty: str = "none") -> str:
    """``"L1H2 L2H0"``: heads as the book writes them, or ``empty`` for no head. Explained in
    chapter 5."""
    names = [head_name(layer, head) for layer, head in heads]
    return " ".join(names) if names else empty


def circuit_table(circuit: Circuit) -> pd.DataFrame:
    """One row per group: where it acts, how many heads, which. Explained in chapter 5."""
    return pd.DataFrame({
        "acts at": [POSITION_WORDS[GROUPS[g]] for g in GROUPS],
        "heads": [len(circuit.groups[g]) for g in GROUPS],
        "which": [heads_text(circuit.groups[g], empty="none found") for g in GROUPS],
    }, index=pd.Index([GROUP_LABELS[g] for g in GROUPS], name="group"))


def pair_lines(pairs: Mapping[str, D.CounterfactualPairs]) -> str:
    """Markdown: for each desideratum one base prompt, its source and the target, with each
    prompt's own answer (blockquotes wrap on a narrow screen). Explained in chapter 5."""
    out = []
    for name, pair in pairs.items():
        base, source = pair.base[0], pair.source[0]
        out.append(f"**{DESIDERATUM_WORDS.get(name, name)}** (`{name}`): the model should say "
                   f"**{pair.targets[0]}**\n\n"
                   f"> base: {base.prompt} → *{base.answer}*\n>\n"
                   f"> source: {source.prompt} → *{source.answer}* "
                   f"(queried box in segment {source.query_index + 1} of {source.n_boxes})\n")
    return "\n".join(out)


def one_pair_predictions(lm, pairs: Mapping[str, D.CounterfactualPairs], circuit: Circuit) -> pd.DataFrame:
    """For the first pair of each desideratum: the model's top next token unpatched and with each
    group's whole head set patched from the source at the group's position, beside the token the
    desideratum predicts. A group with no heads changes nothing. Explained in chapter 5."""
    import torch

    from .patching import activation_patch, heads_at

    def top(logits):
        return lm.tokenizer.decode(logits[:, -1].argmax(-1)).strip()

    rows = []
    for name, pair in pairs.items():
        batch = D.tokenize_pairs(pair, lm.tokenizer)
        base_run, source_run = batch.base.to(lm.device), batch.source.to(lm.device)
        with torch.no_grad():
            row = {"desideratum": name, "target": pair.targets[0], "unpatched": top(lm.model(base_run.tokens))}
            for g in GROUPS:
                logits = activation_patch(lm.model, base_run, source_run, heads_at(circuit.groups[g], GROUPS[g]))
                row[GROUP_LABELS[g]] = top(logits)
        rows.append(row)
    return pd.DataFrame(rows).set_index("desideratum")


def dcm_beside_paper(summary: pd.DataFrame, paper_model: str = "llama-7b") -> pd.DataFrame:
    """The DCM summary in a compact ours | paper layout: per group and desideratum, the heads DCM
    selected (of the group's candidates) and the mask's test accuracy, ours and the paper's.
    Explained in chapter 5."""
    paper = ref.dcm()
    paper = paper[paper["circuit"] == paper_model].set_index(["group", "desideratum"])
    rows = []
    for r in summary.itertuples():
        key = (r.group, r.desideratum)
        known = key in paper.index
        rows.append({
            "group": GROUP_LABELS[r.group], "desideratum": DESIDERATUM_WORDS[r.desideratum],
            "heads (ours)": (f"{r.n_heads} of {r.candidates}: {heads_text(r.heads)}" if r.candidates
                             else "no candidates"),
            "test accuracy (ours)": (f"{r.test_accuracy:.2f}" if r.candidates
                                     else f"{r.test_accuracy:.2f} (nothing patched)"),
            "heads (paper)": (f"{int(paper.loc[key, 'heads'])} of {int(paper.loc[key, 'circuit_heads'])}"
                              if known else "not run"),
            "test accuracy (paper)": f"{paper.loc[key, 'test_accuracy']:.2f}" if known else "not run",
        })
    return pd.DataFrame(rows).set_index(["group", "desideratum"])


def dcm_training_chart(history: pd.DataFrame, title: str, width: int = 240) -> alt.HConcatChart:
    """How each group's mask moved while training with its named desideratum: heads the rounded
    mask would patch (left) and validation accuracy where it was measured (right); the legend sits
    below so the pair fits the article column. Explained in chapter 5."""
    curves = pd.concat([history[(history["group"] == g) & (history["desideratum"] == d)]
                        for g, d in NAMED.items()], ignore_index=True)
    curves = curves.assign(group_label=curves["group"].map(GROUP_LABELS))
    scale = group_scale(curves["group"])
    color = alt.Color("group:N", scale=scale, sort=list(scale.domain), title="group",
                      legend=alt.Legend(orient="bottom", columns=2,
                                        labelExpr=_label_expr()))
    base = alt.Chart(curves).encode(x=alt.X("step:Q", title="training step"), color=color,
                                    tooltip=["group_label:N", "step:Q", "n_heads:Q",
                                             alt.Tooltip("val_accuracy:Q", format=".3f")])
    left = base.mark_line().encode(y=alt.Y("n_heads:Q", title="heads patched (rounded mask = 0)",
                                           axis=alt.Axis(tickMinStep=1)))
    right = base.transform_filter("isValid(datum.val_accuracy)").mark_line(point=True).encode(
        y=alt.Y("val_accuracy:Q", title="validation accuracy", scale=alt.Scale(domain=[0, 1])))
    return alt.hconcat(left.properties(width=width, height=180), right.properties(width=width, height=180)
                       ).properties(title=title)


def _label_expr() -> str:
    pairs = ", ".join(f"'{k}': '{v}'" for k, v in GROUP_LABELS.items())
    return f"({{{pairs}}})[datum.value] || datum.value"


def facets_in_order(chart: alt.FacetChart, order: Sequence[str]) -> alt.FacetChart:
    """The chart with its column panels in ``order`` (Altair sorts them alphabetically), e.g. the
    paper's object value, box label, position. Explained in chapter 5."""
    facet = chart.facet  # a column mapping, or a wrapped facet when the panels wrap
    target = facet["column"] if "column" in facet.to_dict() else facet
    target["sort"] = list(order)
    return chart


def mean_over_draws(frame: pd.DataFrame, by: Sequence[str] = ("model", "group", "desideratum")) -> pd.DataFrame:
    """Mean and sd of the accuracy over draws (``accuracy``, ``accuracy_sd``), per ``by``.
    Explained in chapter 5."""
    out = frame.groupby(list(by), sort=False)["accuracy"].agg(["mean", "std"]).reset_index()
    return out.rename(columns={"mean": "accuracy", "std": "accuracy_sd"}).fillna({"accuracy_sd": 0.0})


def patching_beside_paper(ours: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Mean accuracies (draws summarised) in a compact layout: one row per variant and group, one
    column per desideratum, each cell ``ours | paper`` with the paper's number from the 7B model
    the variant stands for ("—" where the paper has none). Explained in chapter 5."""
    theirs = paper.set_index(["model", "group", "desideratum"])["accuracy"]
    rows = []
    for (model, group), cells in ours.groupby(["model", "group"], sort=False):
        pm = ref.paper_model_of(model)
        row = {"model": model, "group": GROUP_LABELS[group]}
        for r in cells.itertuples():
            key = (pm, group, r.desideratum)
            other = f"{theirs[key]:.2f}" if key in theirs.index else "—"
            row[f"{DESIDERATUM_WORDS[r.desideratum]} (ours | paper)"] = f"{r.accuracy:.2f} | {other}"
        rows.append(row)
    return pd.DataFrame(rows).set_index(["model", "group"])


def best_lines(ours: pd.DataFrame, paper: pd.DataFrame, floors: Mapping[str, Mapping[str, float]]) -> str:
    """Markdown, one line per variant and group: the desideratum its heads move best, against the
    unpatched floor, beside the paper's line for the 7B model it stands for. Explained in chapter 5."""
    from .dcm import best_desideratum

    best = best_desideratum(ours)
    paper_best = best_desideratum(paper).set_index(["model", "group"])
    lines = []
    for r in best.itertuples():
        pm = ref.paper_model_of(r.model)
        theirs = ""
        if (pm, r.group) in paper_best.index:
            pb = paper_best.loc[(pm, r.group)]
            theirs = f"; paper ({ref.MODEL_TITLES[pm]}): {DESIDERATUM_WORDS[pb.desideratum]} {pb.accuracy:.2f}"
        floor = floors[r.model][r.desideratum]
        lines.append(f"* {r.model}, {GROUP_LABELS[r.group]}: best {DESIDERATUM_WORDS[r.desideratum]} "
                     f"{r.accuracy:.2f} (unpatched floor {floor:.2f}){theirs}")
    return "\n".join(lines)


def functionality_claims(frame: pd.DataFrame, base_model: str, margin: float = ref.PAPER_NOISE) -> pd.DataFrame:
    """The paper's readings of its activation-patching figure, checked on a frame of mean
    accuracies (columns model, group, desideratum, accuracy): one row per model and claim with
    ``key``, ``claim``, ``holds`` and the ``numbers`` it was decided on. A difference counts only
    above ``margin``. A group without a number (no heads, or a model the frame lacks) cannot carry
    anything, so its accuracy counts as 0 and the text says "no number". Explained in chapter 5."""
    acc = frame.set_index(["model", "group", "desideratum"])["accuracy"]

    def a(m, g, d):
        value = acc.get((m, g, d))
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)

    def text(value):
        return "no number" if value is None else f"{value:.2f}"

    rows = []
    models = list(dict.fromkeys(frame["model"]))
    for m in models:
        own = a(m, "value_fetcher", "object_value") or 0.0
        rivals = [a(m, g, "object_value") for g in list(GROUPS)[1:]]
        best_rival = max((r for r in rivals if r is not None), default=0.0)
        rows.append({"model": m, "key": "A_object", "claim": "A carries the object value",
                     "holds": own - best_rival > margin,
                     "numbers": f"A {text(a(m, 'value_fetcher', 'object_value'))}, "
                                f"best other group {best_rival:.2f}"})
        for letter, g in (("B", "position_transmitter"), ("C", "position_detector")):
            pos = a(m, g, "positional") or 0.0
            rival = max(a(m, g, "object_value") or 0.0, a(m, g, "box_label_value") or 0.0)
            rows.append({"model": m, "key": f"{letter}_position", "claim": f"{letter} carries the position",
                         "holds": pos - rival > margin,
                         "numbers": "object / box label / position: "
                                    + " / ".join(text(a(m, g, d)) for d in D.DESIDERATA)})
        if m != base_model and base_model in models:
            gain = (a(m, "position_transmitter", "positional") or 0.0) - (
                a(base_model, "position_transmitter", "positional") or 0.0)
            rows.append({"model": m, "key": "B_gain", "claim": "B moves position better than in the base",
                         "holds": gain > margin, "numbers": f"{gain:+.2f} against {base_model}"})
    return pd.DataFrame(rows)


def claims_beside_paper(ours: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """`functionality_claims` of our variants and of the paper's models in a compact layout: one
    row per variant (with the 7B model it stands for), one column per claim, cells ``ours |
    paper`` as "yes" / "no" ("—" where a claim does not apply). Explained in chapter 5."""
    theirs = paper.set_index(["model", "key"])["holds"]
    claim_text = dict(zip(ours["key"], ours["claim"]))
    rows = []
    for model, cells in ours.groupby("model", sort=False):
        pm = ref.paper_model_of(model)
        row = {"model": f"{model} ({ref.MODEL_TITLES[pm]})" if pm else model}
        for r in cells.itertuples():
            other = ("yes" if theirs[(pm, r.key)] else "no") if (pm, r.key) in theirs.index else "—"
            row[claim_text[r.key]] = f"{'yes' if r.holds else 'no'} | {other}"
        rows.append(row)
    return pd.DataFrame(rows).set_index("model").fillna("—")


def claims_summary(ours: pd.DataFrame, paper: pd.DataFrame) -> str:
    """Markdown: how many of our variants and of the paper's 7B models each claim holds for.
    Explained in chapter 5."""
    ours_held = ours.groupby("key", sort=False)["holds"].agg(["sum", "count"])
    paper_held = paper.groupby("key", sort=False)["holds"].agg(["sum", "count"])
    claim_text = dict(zip(ours["key"], ours["claim"]))
    lines = []
    for key, r in ours_held.iterrows():
        theirs = (f"the paper: {int(paper_held.loc[key, 'sum'])} of {int(paper_held.loc[key, 'count'])} 7B models"
                  if key in paper_held.index else "the paper: not measured")
        lines.append(f"* {claim_text[key]}: holds for {int(r['sum'])} of {int(r['count'])} of our variants; "
                     f"{theirs}")
    return "\n".join(lines)


def survival_text(accuracy: float, baseline: float) -> str:
    """`dcm.survival` in words: "kept (0.93 of the plain positional accuracy)", or what a missing
    baseline means. Explained in chapter 5."""
    from .dcm import survival

    verdict, ratio = survival(accuracy, baseline)
    if ratio is None:
        return "not measurable (the plain positional desideratum moves nothing to compare with)"
    return f"{verdict} ({ratio:.2f})"


def survival_table(ours: Mapping[str, float], paper: Mapping[str, float], ours_baseline: float,
                   paper_baseline: float) -> pd.DataFrame:
    """Per rewritten source: its accuracy as a share of the plain positional desideratum's, with
    the verdict (kept ≥ 0.8, weakened 0.5–0.8, lost < 0.5), ours and the paper's.
    Explained in chapter 5."""
    rows = [{"rewritten source": d, "ours": survival_text(ours[d], ours_baseline),
             "paper": survival_text(paper[d], paper_baseline) if d in paper else "not run"} for d in ours]
    return pd.DataFrame(rows).set_index("rewritten source")


def position_reading(ours: Mapping[str, float], paper: Mapping[str, float], ours_baseline: float,
                     paper_baseline: float) -> str:
    """One computed sentence on where the transmitted position is counted from: text added before
    the context (``random_text_start``, ``add_seg_start``) against text added after it
    (``random_text_end``, ``add_seg_end``). Explained in chapter 5."""
    from .dcm import survival

    def verdicts(acc, baseline, names):
        return [survival(acc[d], baseline)[0] for d in names]

    start, end = ("random_text_start", "add_seg_start"), ("random_text_end", "add_seg_end")
    if ours_baseline <= 0:
        return ("Our plain positional desideratum moves nothing, so the rewrites cannot say where the "
                "position is counted from.")
    ours_start, ours_end = verdicts(ours, ours_baseline, start), verdicts(ours, ours_baseline, end)
    paper_end = verdicts(paper, paper_baseline, end)
    paper_words = ("The paper's LLaMA-7B keeps the signal under both." if "lost" not in paper_end else
                   "The paper's LLaMA-7B loses it when text is added after the context, too.")
    if all(v == "kept" for v in ours_start) and all(v == "lost" for v in ours_end):
        return ("Text added *before* the context leaves our position transmitters' signal intact and text "
                "added *after* it destroys it: in this model the transmitted position behaves like a count "
                "of segments from the end of the context (next to the query), not from its start. "
                + paper_words)
    if all(v == "kept" for v in ours_start + ours_end):
        return ("Text added before or after the context leaves our position transmitters' signal intact, "
                "as a position counted within the context would. " + paper_words)
    return ("Text added before the context: " + ", ".join(f"{d} {v}" for d, v in zip(start, ours_start))
            + "; after it: " + ", ".join(f"{d} {v}" for d, v in zip(end, ours_end))
            + ". Neither pattern is clean enough to say where our model counts the position from. "
            + paper_words)


def compat_table(compat: pd.DataFrame) -> pd.DataFrame:
    """The authors'-data comparison (`dcm.stored_authors_compat`, draws summarised) in a compact
    layout: one row per group (and the unpatched floor), one column per desideratum, cells
    ``corrected | authors'``. Explained in chapter 5."""
    cells = compat.groupby(["data", "group", "desideratum"], sort=False)["accuracy"].mean()
    groups = list(dict.fromkeys(compat["group"]))
    rows = []
    for g in groups:
        row = {"group": GROUP_LABELS.get(g, g)}
        for d in D.DESIDERATA:
            ok = cells.get(("corrected", g, d))
            theirs = cells.get(("authors (B1, B2, W3)", g, d))
            if ok is not None and theirs is not None:
                row[f"{DESIDERATUM_WORDS[d]} (corrected | authors')"] = f"{ok:.2f} | {theirs:.2f}"
        rows.append(row)
    return pd.DataFrame(rows).set_index("group")


def compat_reading(compat: pd.DataFrame) -> str:
    """Markdown: the positional floor with no head patched and the best box-label accuracy under
    the corrected and the authors' data (bugs B1 and B2). Explained in chapter 5."""
    cells = compat.groupby(["data", "group", "desideratum"], sort=False)["accuracy"].mean()
    ok, theirs = "corrected", "authors (B1, B2, W3)"
    floor_ok, floor_b1 = cells[(ok, "none (floor)", "positional")], cells[(theirs, "none (floor)", "positional")]
    box = compat[(compat["desideratum"] == "box_label_value") & (compat["group"] != "none (floor)")]
    box = box.groupby(["data", "group"])["accuracy"].mean().groupby("data").max()
    return (f"* Positional floor (nothing patched): {floor_ok:.3f} with the corrected pairs, {floor_b1:.3f} "
            f"with the authors' (B1 adds the pairs whose target is the base's own answer; the paper's "
            f"LLaMA-7B floor is {ref.POSITIONAL_FLOOR:.3f}).\n"
            f"* Box-label target, best group: {box[ok]:.3f} corrected, {box[theirs]:.3f} with the authors' "
            "target (B2: a token the model never predicts).")


def named_accuracy(frame: pd.DataFrame) -> pd.DataFrame:
    """Only each group's named desideratum (`NAMED`): the paper's main reading of its figure.
    Explained in chapter 5; used by chapter 7."""
    return frame[frame["desideratum"] == frame["group"].map(NAMED)].reset_index(drop=True)


def letters(groups: Sequence[str]) -> str:
    """"A, B and C" for the groups given. Explained in chapter 5."""
    names = [GROUP_LETTERS[g] for g in groups]
    return " and ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else "".join(names)


def additional_summary(extra: pd.DataFrame) -> pd.DataFrame:
    """The appendix's rewritten sources (`dcm.stored_additional_desiderata`): per desideratum the
    mean and sd over draws of the patched accuracy, with DCM's head count and test accuracy.
    Explained in chapter 5."""
    dcm_columns = extra.groupby("desideratum", sort=False)[["dcm_n_heads", "dcm_test_accuracy"]].first()
    return mean_over_draws(extra, ["desideratum"]).merge(dcm_columns.reset_index(), on="desideratum")


def additional_for_chart(ours: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Ours and the paper's rewritten-source accuracies stacked for one bar chart (``source``).
    Explained in chapter 5."""
    theirs = paper.rename(columns={"sd": "accuracy_sd"})[["desideratum", "accuracy", "accuracy_sd"]]
    return pd.concat([ours[["desideratum", "accuracy", "accuracy_sd"]].assign(source="ours"),
                      theirs.assign(source="paper")], ignore_index=True)


def additional_beside_paper(ours: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Per rewritten source: DCM heads, DCM test accuracy and the patched accuracy, ours | the
    paper's (compact). Explained in chapter 5."""
    theirs = paper.set_index("desideratum")
    rows = []
    for r in ours.itertuples():
        known = r.desideratum in theirs.index
        p = theirs.loc[r.desideratum] if known else None
        rows.append({"rewritten source": r.desideratum,
                     "DCM heads (ours | paper)": f"{r.dcm_n_heads} | {len(p['dcm_heads']) if known else '—'}",
                     "DCM test (ours | paper)": f"{r.dcm_test_accuracy:.2f} | "
                                                + (f"{p['dcm_test_accuracy']:.2f}" if known else "—"),
                     "patched (ours | paper)": f"{r.accuracy:.2f} ± {r.accuracy_sd:.2f} | "
                                               + (f"{p['accuracy']:.2f}" if known else "—")})
    return pd.DataFrame(rows).set_index("rewritten source")


def positional_baseline(frame: pd.DataFrame, model: str, group: str = "position_transmitter") -> float:
    """The plain positional desideratum's mean accuracy for one model's group (0 if absent).
    Explained in chapter 5."""
    hit = frame[(frame["model"] == model) & (frame["group"] == group) & (frame["desideratum"] == "positional")]
    return float(hit["accuracy"].iloc[0]) if len(hit) else 0.0


def model_shape(circuit: Circuit) -> tuple[int, int] | None:
    """(layers, heads per layer) of the model a circuit was found in, read off its stored score
    maps, so a chapter can state the model's size without loading it (None without maps).
    Explained in chapter 5."""
    maps = [m for m in circuit.scores.values() if m]
    return (len(maps[0]), len(maps[0][0])) if maps else None


def size_text(circuit: Circuit) -> str:
    """"12 heads (3 layers × 4)": the model's size for a reader, from `model_shape`.
    Explained in chapter 5."""
    shape = model_shape(circuit)
    return f"{shape[0] * shape[1]} heads ({shape[0]} layers × {shape[1]})" if shape else "a few heads"
