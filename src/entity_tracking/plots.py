"""The book's one plotting helper: every figure is an Altair chart over a tidy DataFrame.

Why Altair: its charts carry their data and their interactions (dropdowns, sliders, legend
selections) inside the page as a Vega-Lite spec, so they keep working in the static book with no
kernel. ipywidgets freeze there (paper.md / tooling.md §2). Every interaction below is therefore an
``alt.param`` or a selection over data precomputed by the chapter, never a Python callback.

Colours are fixed once here, so a group or a model has the same colour in every chapter:
the four head groups follow the paper's completeness figure (A green, B yellow, C magenta, D blue),
and each model family (LLaMA, Vicuna, Goat, FLoat) keeps one colour whether it is the 7B model or
its CPU organism stand-in; "ours" versus "paper" is shown by mark shape or opacity, never colour.

Do not switch on the ``mimetype`` renderer: the book renders the default HTML output.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import altair as alt
import pandas as pd

# --------------------------------------------------------------------------------------------------
# Fixed colours and names
# --------------------------------------------------------------------------------------------------

#: The circuit's groups, in the paper's order A, B, C, D (same keys as `circuit.GROUPS`).
GROUP_ORDER: tuple[str, ...] = ("value_fetcher", "position_transmitter", "position_detector", "structure_reader")
GROUP_COLORS: dict[str, str] = {
    "value_fetcher": "#2ca02c",         # A green   (paper's completeness figure)
    "position_transmitter": "#e6ab02",  # B yellow
    "position_detector": "#d62ad0",     # C magenta
    "structure_reader": "#1f77b4",      # D blue
}
GROUP_LABELS: dict[str, str] = {
    "value_fetcher": "A value fetcher",
    "position_transmitter": "B position transmitter",
    "position_detector": "C position detector",
    "structure_reader": "D structure reader",
}
#: Extra categories that appear beside the groups (CMAP's full circuit, completeness's random sets).
OTHER_COLORS: dict[str, str] = {"full_circuit": "#555555", "random": "#d62728"}

#: One colour per model family; a 7B model and its organism stand-in share it.
FAMILY_ORDER: tuple[str, ...] = ("llama", "vicuna", "goat", "float")
FAMILY_COLORS: dict[str, str] = {
    "llama": "#d62728",   # red, as LLaMA's reference line in the paper's CMAP figure
    "vicuna": "#9467bd",  # purple
    "goat": "#2ca02c",    # green, as the fine-tuned reference line in the CMAP figure
    "float": "#ff7f0e",   # orange
}
FAMILY_LABELS: dict[str, str] = {"llama": "LLaMA", "vicuna": "Vicuna", "goat": "Goat", "float": "FLoat"}
UNKNOWN_COLOR = "#7f7f7f"

#: Attention-knockout edges (named source -> target positions), coloured by their target as in the
#: paper's knockout figures (object green, query label blue, random yellow).
EDGE_COLORS: dict[str, str] = {
    "last->object": "#2ca02c",
    "last->query_label": "#1f77b4",
    "query_label->prev_query_label": "#9467bd",
    "last->random": "#e6ab02",
    "query_label->random": "#bcbd22",
}

#: How "ours" and "paper" rows are told apart (never by colour).
SOURCE_SHAPES: dict[str, str] = {"ours": "circle", "paper": "diamond"}
SOURCE_OPACITY: dict[str, float] = {"ours": 1.0, "paper": 0.45}

DEFAULT_WIDTH = 360
DEFAULT_HEIGHT = 240


def model_family(name: str) -> str:
    """The paper model a variant stands for ("organism-goat" and "goat-7b" are both "goat"), so the
    organism and the 7B model share a colour and a dropdown entry."""
    short = str(name).lower().removeprefix("organism-").removesuffix("-7b")
    return "llama" if short == "base" else short


def _ordered(values: Iterable, order: Sequence) -> list:
    """Values present in the data, in the canonical order first, then any unknown ones."""
    present = list(dict.fromkeys(values))
    return [v for v in order if v in present] + [v for v in present if v not in order]


def group_scale(values: Iterable[str]) -> alt.Scale:
    """Colour scale for head groups (plus 'full_circuit' / 'random'), restricted to what is plotted."""
    domain = _ordered(values, (*GROUP_ORDER, *OTHER_COLORS))
    palette = {**GROUP_COLORS, **OTHER_COLORS}
    return alt.Scale(domain=domain, range=[palette.get(v, UNKNOWN_COLOR) for v in domain])


def model_scale(values: Iterable[str]) -> alt.Scale:
    """Colour scale for model names: one colour per family, whatever the scale of the model."""
    names = list(dict.fromkeys(values))
    domain = sorted(names, key=lambda n: (_family_rank(n), n))
    return alt.Scale(domain=domain, range=[FAMILY_COLORS.get(model_family(n), UNKNOWN_COLOR) for n in domain])


def _family_rank(name: str) -> int:
    family = model_family(name)
    return FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER)


def _is_group_column(values: Iterable[str]) -> bool:
    return all(v in GROUP_COLORS or v in OTHER_COLORS for v in values)


def _is_model_column(values: Iterable[str]) -> bool:
    return all(model_family(v) in FAMILY_COLORS for v in values)


def color_scale(values: Iterable[str]) -> alt.Scale | None:
    """The fixed palette a colour column should use (groups or models), or None for Altair's default."""
    values = [v for v in dict.fromkeys(values) if pd.notna(v)]
    if values and _is_group_column(values):
        return group_scale(values)
    if values and _is_model_column(values):
        return model_scale(values)
    return None


def _color(field: str, values: Iterable, title: str | None = None, legend: alt.Legend | None = None) -> alt.Color:
    scale = color_scale(values)
    kwargs = {"title": title or field}
    if scale is not None:
        kwargs["scale"] = scale
        kwargs["sort"] = list(scale.domain)
    if legend is None and scale is not None and _is_group_column(scale.domain):
        legend = alt.Legend(labelExpr=_label_expr())
    if legend is not None:
        kwargs["legend"] = legend
    return alt.Color(f"{field}:N", **kwargs)


def _label_expr(labels: Mapping[str, str] = GROUP_LABELS) -> str:
    """A Vega expression that shows a group key ("value_fetcher") as its label ("A value fetcher")
    on an axis or legend, leaving other values as they are."""
    pairs = ", ".join(f"'{k}': '{v}'" for k, v in {**labels, "full_circuit": "full circuit"}.items())
    return f"({{{pairs}}})[datum.value] || datum.value"


def _int_ticks(values: Iterable[int]) -> list[int]:
    """Whole-number ticks over the data's range (every one up to 16, then every 2nd or 4th)."""
    values = [int(v) for v in values]
    lo, hi = min(values), max(values)
    step = 1 if hi - lo <= 16 else (2 if hi - lo <= 32 else 4)
    return list(range(lo, hi + 1, step))


def _require(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} needs columns {list(columns)}; missing {missing} (got {list(df.columns)})")


# --------------------------------------------------------------------------------------------------
# Layer x head maps
# --------------------------------------------------------------------------------------------------

def scores_frame(scores, value: str = "score") -> pd.DataFrame:
    """A ``[layer, head]`` tensor/array as a tidy frame with columns layer, head, ``value``."""
    if isinstance(scores, pd.DataFrame):
        _require(scores, ["layer", "head", value], "a layer x head frame")
        return scores.copy()
    import numpy as np

    array = scores.detach().float().cpu().numpy() if hasattr(scores, "detach") else np.asarray(scores, dtype=float)
    if array.ndim != 2:
        raise ValueError(f"expected a [layer, head] matrix; got shape {array.shape}")
    n_layers, n_heads = array.shape
    return pd.DataFrame({
        "layer": np.repeat(np.arange(n_layers), n_heads),
        "head": np.tile(np.arange(n_heads), n_layers),
        value: array.reshape(-1),
    })


def layer_head_heatmap(scores, title: str = "", highlight: Iterable[tuple[int, int]] | None = None,
                       value: str = "score", diverging: bool = True, cell: int = 12) -> alt.Chart:
    """One cell per head (x = head, y = layer, layer 0 on top, as TransformerLens draws it), with a
    tooltip; ``highlight`` outlines chosen heads (e.g. a circuit group) in black.

    Path-patching scores are signed and the interesting heads are negative, so by default the
    colour scale is diverging around 0 (blue positive, red negative)."""
    df = scores_frame(scores, value)
    marked = {(int(layer), int(head)) for layer, head in (highlight or [])}
    df["highlighted"] = [(int(l), int(h)) in marked for l, h in zip(df["layer"], df["head"])]
    n_layers, n_heads = int(df["layer"].max()) + 1, int(df["head"].max()) + 1
    scale = alt.Scale(scheme="redblue", domainMid=0) if diverging else alt.Scale(scheme="viridis")
    base = alt.Chart(df).encode(
        x=alt.X("head:O", title="head", axis=alt.Axis(labelAngle=0, values=_ticks(n_heads))),
        y=alt.Y("layer:O", title="layer", sort="ascending", axis=alt.Axis(values=_ticks(n_layers))),
    )
    cells = base.mark_rect().encode(
        color=alt.Color(f"{value}:Q", scale=scale, title=value),
        tooltip=[alt.Tooltip("layer:O"), alt.Tooltip("head:O"), alt.Tooltip(f"{value}:Q", format=".3f"),
                 alt.Tooltip("highlighted:N", title="highlighted")],
    )
    layers = [cells]
    if marked:
        layers.append(base.mark_rect(fill=None, stroke="black", strokeWidth=1.5)
                      .transform_filter(alt.datum.highlighted))
    return alt.layer(*layers).properties(
        title=title, width=max(cell * n_heads, 120), height=max(cell * n_layers, 80)
    )


def _ticks(n: int) -> list[int]:
    """Every tick for small models, every 4th for 32 x 32 (keeps the axis readable)."""
    step = 1 if n <= 16 else 4
    return list(range(0, n, step))


# --------------------------------------------------------------------------------------------------
# Accuracy by number of boxes
# --------------------------------------------------------------------------------------------------

def accuracy_by_boxes_chart(df: pd.DataFrame, title: str = "Entity-tracking accuracy by number of boxes",
                            show_chance: bool = True) -> alt.Chart:
    """Accuracy against the number of boxes: our runs as lines, the paper's numbers as diamonds.

    Two controls work in the static page: a dropdown of model families (a 7B model and its
    organism stand-in are one entry, so "Goat" shows organism-goat beside the paper's Goat-7B) and a
    slider for the largest number of boxes shown. The dotted line is chance among the objects in
    the context (1 / boxes), the floor a model that only learned "answer with an object" sits on."""
    _require(df, ["model", "boxes", "accuracy", "source"], "accuracy_by_boxes_chart")
    data = df.copy()
    data["family"] = data["model"].map(model_family)
    data["chance"] = 1.0 / data["boxes"]
    families = _ordered(data["family"], FAMILY_ORDER)
    lo, hi = int(data["boxes"].min()), int(data["boxes"].max())

    variant = alt.param(
        name="variant", value="all",
        bind=alt.binding_select(options=["all", *families],
                                labels=["all", *(FAMILY_LABELS.get(f, f) for f in families)], name="model "),
    )
    max_boxes = alt.param(name="max_boxes", value=hi,
                          bind=alt.binding_range(min=lo, max=max(hi, lo + 1), step=1, name="boxes up to "))
    shown = "(variant == 'all' || datum.family == variant) && datum.boxes <= max_boxes"

    base = alt.Chart(data).transform_filter(shown).encode(
        x=alt.X("boxes:Q", title="number of boxes", scale=alt.Scale(domain=[max(lo - 0.5, 0), hi + 0.5]),
                axis=alt.Axis(values=_int_ticks(data["boxes"]), format="d")),
        y=alt.Y("accuracy:Q", title="accuracy", scale=alt.Scale(domain=[0, 1])),
        color=_color("model", data["model"], title="model"),
        tooltip=["model:N", "source:N", "boxes:Q", alt.Tooltip("accuracy:Q", format=".3f")],
    )
    ours = base.transform_filter(alt.datum.source == "ours")
    paper = base.transform_filter(alt.datum.source == "paper")
    layers = [
        ours.mark_line(),
        ours.mark_point(filled=True, size=50, shape=SOURCE_SHAPES["ours"]),
        paper.mark_point(filled=True, size=140, shape=SOURCE_SHAPES["paper"], stroke="black", strokeWidth=0.8),
    ]
    if show_chance:
        layers.insert(0, alt.Chart(data).transform_filter("datum.boxes <= max_boxes")
                      .transform_aggregate(chance="min(chance)", groupby=["boxes"])
                      .mark_line(strokeDash=[2, 3], color="gray")
                      .encode(x="boxes:Q", y="chance:Q",
                              tooltip=[alt.Tooltip("chance:Q", format=".3f", title="chance (1/boxes)")]))
    return (alt.layer(*layers).add_params(variant, max_boxes)
            .properties(title=title, width=DEFAULT_WIDTH, height=DEFAULT_HEIGHT))


# --------------------------------------------------------------------------------------------------
# Bars
# --------------------------------------------------------------------------------------------------

def summarise_draws(df: pd.DataFrame, by: Sequence[str], value: str) -> pd.DataFrame:
    """Mean and standard deviation of ``value`` over repeated draws (rows) per ``by`` group:
    the input `grouped_bar_chart` wants for its error bars."""
    out = df.groupby(list(by), sort=False)[value].agg(["mean", "std", "count"]).reset_index()
    return out.rename(columns={"mean": value, "std": f"{value}_sd", "count": "draws"}).fillna({f"{value}_sd": 0.0})


def grouped_bar_chart(df: pd.DataFrame, x: str, y: str, color: str, column: str | None = None,
                      error: str | None = None, title: str = "", y_title: str | None = None,
                      y_domain: Sequence[float] | None = None, width: int = 220) -> alt.Chart:
    """Bars of ``y`` per ``x``, side by side per ``color`` (and one panel per ``column``).

    ``error`` names a column holding the spread over draws (e.g. the sd from `summarise_draws`),
    drawn as ±error bars. Clicking a legend entry highlights that series; that works in the static
    page too."""
    _require(df, [c for c in (x, y, color, column, error) if c], "grouped_bar_chart")
    data = df.copy()
    pick = alt.selection_point(fields=[color], bind="legend", name="series")
    x_order = _ordered(data[x], (*GROUP_ORDER, *OTHER_COLORS, *FAMILY_ORDER))
    y_scale = alt.Scale(domain=list(y_domain)) if y_domain is not None else alt.Undefined
    enc = dict(
        x=alt.X(f"{x}:N", title=x, sort=x_order, axis=alt.Axis(labelAngle=-30, labelExpr=_label_expr())),
        xOffset=alt.XOffset(f"{color}:N", sort=list(color_scale(data[color]).domain)
                            if color_scale(data[color]) is not None else alt.Undefined),
        y=alt.Y(f"{y}:Q", title=y_title or y, scale=y_scale),
    )
    tooltip = [f"{x}:N", f"{color}:N", alt.Tooltip(f"{y}:Q", format=".3f")]
    if error:
        tooltip.append(alt.Tooltip(f"{error}:Q", format=".3f", title=f"± {error}"))
    if column:
        tooltip.insert(0, f"{column}:N")
    bars = alt.Chart().mark_bar().encode(
        **enc, color=_color(color, data[color]),
        opacity=alt.condition(pick, alt.value(1.0), alt.value(0.25)),
        tooltip=tooltip,
    ).add_params(pick)
    layers = [bars]
    if error:
        layers.append(alt.Chart().transform_calculate(
            lower=f"datum['{y}'] - datum['{error}']", upper=f"datum['{y}'] + datum['{error}']",
        ).mark_errorbar(ticks=True, color="black").encode(
            x=enc["x"], xOffset=enc["xOffset"], y=alt.Y("lower:Q", title=y_title or y, scale=y_scale),
            y2="upper:Q",
        ))
    chart = alt.layer(*layers, data=data).properties(width=width, height=DEFAULT_HEIGHT)
    if column:
        chart = chart.facet(column=alt.Column(f"{column}:N", title=None))
    return chart.properties(title=title)


def cmap_bars(df: pd.DataFrame, reference_lines: Mapping[str, float] | Mapping[str, Mapping[str, float]],
              x: str = "group", y: str = "accuracy", column: str | None = "pair",
              title: str = "CMAP: fine-tuned head outputs patched into the base model") -> alt.Chart:
    """Accuracy of the base model with one group's outputs taken from the fine-tuned model, per
    group (bars coloured by group, "ours" solid and "paper" faded), with dashed reference lines.

    ``reference_lines`` maps a label ("Llama-7B", "Goat-7B") to an accuracy drawn in every panel,
    or a panel value of ``column`` to such a mapping when the panels need different lines. A line's
    colour follows its model family (red LLaMA, green Goat, as in the paper's figure)."""
    _require(df, [c for c in (x, y, column) if c], "cmap_bars")
    data = df.copy()
    if "source" not in data.columns:
        data["source"] = "ours"
    data["_kind"] = "bar"
    panels = list(dict.fromkeys(data[column])) if column else [None]
    rules = []
    for panel in panels:
        lines = reference_lines.get(panel, {}) if _is_nested(reference_lines) else reference_lines
        for label, value in lines.items():
            row = {"_kind": "rule", "reference": label, y: float(value), "_color": FAMILY_COLORS.get(
                model_family(label.split(" ")[0]), UNKNOWN_COLOR)}
            if column:
                row[column] = panel
            rules.append(row)
    data = pd.concat([data, pd.DataFrame(rules)], ignore_index=True) if rules else data
    x_order = _ordered(data.loc[data["_kind"] == "bar", x], (*GROUP_ORDER, "full_circuit"))
    bars = alt.Chart().transform_filter(alt.datum._kind == "bar").mark_bar().encode(
        x=alt.X(f"{x}:N", title=None, sort=x_order, axis=alt.Axis(labelAngle=-30, labelExpr=_label_expr())),
        xOffset=alt.XOffset("source:N", sort=["paper", "ours"]),
        y=alt.Y(f"{y}:Q", title=y, scale=alt.Scale(domain=[0, 1])),
        color=_color(x, data.loc[data["_kind"] == "bar", x], title="patched group"),
        opacity=alt.Opacity("source:O", sort=list(SOURCE_OPACITY), title="source",
                            scale=alt.Scale(domain=list(SOURCE_OPACITY), range=list(SOURCE_OPACITY.values()))),
        tooltip=[f"{x}:N", "source:N", alt.Tooltip(f"{y}:Q", format=".3f")],
    )
    rule = alt.Chart().transform_filter(alt.datum._kind == "rule").mark_rule(strokeDash=[6, 4], size=1.5).encode(
        y=f"{y}:Q", color=alt.Color("_color:N", scale=None),
        tooltip=["reference:N", alt.Tooltip(f"{y}:Q", format=".3f")],
    )
    label = rule.mark_text(align="left", dx=2, dy=-6, fontSize=10).encode(
        x=alt.value(2), text="reference:N")
    chart = alt.layer(bars, rule, label, data=data).properties(width=260, height=DEFAULT_HEIGHT)
    if column:
        chart = chart.facet(column=alt.Column(f"{column}:N", title=None))
    return chart.properties(title=title)


def _is_nested(mapping: Mapping) -> bool:
    return any(isinstance(v, Mapping) for v in mapping.values())


# --------------------------------------------------------------------------------------------------
# Completeness and knockout
# --------------------------------------------------------------------------------------------------

def completeness_scatter(df: pd.DataFrame, title: str = "Completeness: circuit vs model with K removed",
                         column: str | None = None) -> alt.Chart:
    """x = F(C\\K) (circuit with K also ablated), y = F(M\\K) (whole model with only K ablated),
    random K as red dots and each whole group as a diamond; a complete circuit sits on the dashed
    line y = x.

    Columns: ``K`` ("random" or a group name), ``circuit_without_K``, ``model_without_K``,
    optionally ``source`` ("ours"/"paper": paper points hollow) and ``column`` for one panel per
    circuit. Clicking a legend entry highlights that kind of K."""
    _require(df, ["K", "circuit_without_K", "model_without_K"], "completeness_scatter")
    data = df.copy()
    if "source" not in data.columns:
        data["source"] = "ours"
    data["kind"] = ["random" if k == "random" else "group" for k in data["K"]]
    pick = alt.selection_point(fields=["K"], bind="legend", name="K_pick")
    axis_scale = alt.Scale(domain=[0, 1])
    points = alt.Chart().mark_point(size=90).encode(
        x=alt.X("circuit_without_K:Q", title="F(C \\ K)", scale=axis_scale),
        y=alt.Y("model_without_K:Q", title="F(M \\ K)", scale=axis_scale),
        color=_color("K", data["K"], title="K"),
        shape=alt.Shape("kind:N", scale=alt.Scale(domain=["random", "group"], range=["circle", "diamond"]),
                        legend=None),
        fill=alt.condition("datum.source == 'paper'", alt.value("white"), _color("K", data["K"], title="K",
                                                                                  legend=None)),
        size=alt.condition("datum.kind == 'group'", alt.value(160), alt.value(60)),
        opacity=alt.condition(pick, alt.value(0.95), alt.value(0.15)),
        tooltip=["K:N", "source:N", alt.Tooltip("circuit_without_K:Q", format=".3f"),
                 alt.Tooltip("model_without_K:Q", format=".3f")],
    ).add_params(pick)
    diagonal = alt.Chart().transform_aggregate(
        n="count()").transform_calculate(lo="0", hi="1").mark_rule(strokeDash=[5, 4], color="gray").encode(
        x=alt.X("lo:Q", scale=axis_scale), y=alt.Y("lo:Q", scale=axis_scale), x2="hi:Q", y2="hi:Q")
    chart = alt.layer(diagonal, points, data=data).properties(width=DEFAULT_HEIGHT, height=DEFAULT_HEIGHT)
    if column:
        chart = chart.facet(column=alt.Column(f"{column}:N", title=None))
    return chart.properties(title=title)


def _edge_color(edges: Iterable[str]) -> alt.Color:
    """Fixed colours for the paper's edges; Altair's default palette for any other edge."""
    present = list(dict.fromkeys(edges))
    if all(e in EDGE_COLORS for e in present):
        domain = [e for e in EDGE_COLORS if e in present]
        return alt.Color("edge:N", title="edge cut", sort=domain,
                         scale=alt.Scale(domain=domain, range=[EDGE_COLORS[e] for e in domain]))
    return alt.Color("edge:N", title="edge cut")


def knockout_lines(df: pd.DataFrame, model_accuracy: float | None = None,
                   title: str = "Attention knockout from a starting layer onwards") -> alt.Chart:
    """Accuracy when one attention edge is cut in every layer from ``start_layer`` on (1-based, as
    the paper's "Knockout Starting Layer"), one line per edge; dashed red line = the model's own
    accuracy. Columns: ``edge``, ``start_layer``, ``accuracy``, optionally ``source`` ("paper" dashed)."""
    _require(df, ["edge", "start_layer", "accuracy"], "knockout_lines")
    data = df.copy()
    if "source" not in data.columns:
        data["source"] = "ours"
    pick = alt.selection_point(fields=["edge"], bind="legend", name="edge_pick")
    lines = alt.Chart(data).mark_line(point=True).encode(
        x=alt.X("start_layer:Q", title="knockout starting layer",
                axis=alt.Axis(values=_int_ticks(data["start_layer"]), format="d")),
        y=alt.Y("accuracy:Q", title="accuracy", scale=alt.Scale(domain=[0, 1])),
        color=_edge_color(data["edge"]),
        strokeDash=alt.StrokeDash("source:N", scale=alt.Scale(domain=["ours", "paper"], range=[[1, 0], [4, 3]]),
                                  title="source"),
        detail="source:N",
        opacity=alt.condition(pick, alt.value(1.0), alt.value(0.15)),
        tooltip=["edge:N", "source:N", "start_layer:Q", alt.Tooltip("accuracy:Q", format=".3f")],
    ).add_params(pick)
    layers = [lines]
    if model_accuracy is not None:
        ref = pd.DataFrame({"accuracy": [float(model_accuracy)], "reference": ["model accuracy"]})
        layers.append(alt.Chart(ref).mark_rule(color=FAMILY_COLORS["llama"], strokeDash=[6, 4]).encode(
            y="accuracy:Q", tooltip=["reference:N", alt.Tooltip("accuracy:Q", format=".3f")]))
    return alt.layer(*layers).properties(title=title, width=DEFAULT_WIDTH, height=DEFAULT_HEIGHT)


# --------------------------------------------------------------------------------------------------
# Minimality
# --------------------------------------------------------------------------------------------------

def minimality_bars(df: pd.DataFrame, thresholds: Sequence[float] = (0.01, 0.0),
                    title: str = "Minimality: relative drop when a head is removed on top of K") -> alt.Chart:
    """One bar per head (``layer``, ``head``), one panel per ``group``: its minimality score
    before/after − 1. A radio button picks the threshold (it works in the static page): heads at or
    above it are solid (kept), the others faded (pruned); the dashed line marks it. Infinite
    scores (removing the head takes accuracy to 0) are drawn at the top of the axis."""
    _require(df, ["group", "layer", "head", "score"], "minimality_bars")
    data = df.copy()
    scores = pd.to_numeric(data["score"], errors="coerce")
    finite = scores[scores.abs() != float("inf")].dropna()
    top = max([*finite.tolist(), *thresholds, 0.05]) * 1.15
    data["infinite"] = scores == float("inf")
    data["shown"] = scores.clip(upper=top).fillna(0.0)
    data["score_text"] = [("∞" if s == float("inf") else f"{s:.3f}") for s in scores]
    data["node"] = [f"L{int(layer)}H{int(head)}" for layer, head in zip(data["layer"], data["head"])]
    options = list(dict.fromkeys(float(t) for t in thresholds))
    pick = alt.param(name="threshold", value=options[0],
                     bind=alt.binding_radio(options=options, labels=[f"{t:.0%}" for t in options], name="threshold "))
    bars = alt.Chart().mark_bar().encode(
        x=alt.X("node:N", title="head", sort=None, axis=alt.Axis(labelAngle=-60)),
        y=alt.Y("shown:Q", title="before / after − 1", scale=alt.Scale(domainMax=top)),
        color=_color("group", data["group"], title="group"),
        opacity=alt.condition("datum.infinite || datum.shown >= threshold", alt.value(1.0), alt.value(0.25)),
        tooltip=["group:N", "node:N", alt.Tooltip("score_text:N", title="score"),
                 *[alt.Tooltip(f"{c}:Q", format=".3f") for c in ("before", "after") if c in data.columns],
                 *(["K:N"] if "K" in data.columns else [])],
    )
    rule = alt.Chart().transform_calculate(level="threshold").mark_rule(strokeDash=[5, 4], color="black").encode(
        y="level:Q")
    chart = alt.layer(bars, rule, data=data).add_params(pick).properties(width=alt.Step(14), height=180)
    return chart.facet(column=alt.Column("group:N", title=None, sort=list(GROUP_ORDER)),
                       ).resolve_scale(x="independent").properties(title=title)


def ours_beside_paper_table(ours: pd.DataFrame, beside: pd.DataFrame) -> pd.DataFrame:
    """Our accuracy by number of boxes (one column each) and, beside it, the paper's 7-box Table 1
    number of the model each variant stands for: a compact table that fits the article column.
    Explained in chapter 2."""
    from .paper_reference import MODEL_TITLES

    wide = ours.pivot(index="model", columns="boxes", values="accuracy").round(3)
    wide.columns = [f"{b} boxes" for b in wide.columns]
    known = beside.set_index("model")
    wide["stands for"] = known["paper_model"].map(lambda m: MODEL_TITLES.get(m, "—") if isinstance(m, str) else "—")
    wide["paper, 7 boxes"] = known["paper"].map(lambda x: "—" if x != x else f"{x:.2f}")
    return wide.loc[list(dict.fromkeys(ours["model"]))]
