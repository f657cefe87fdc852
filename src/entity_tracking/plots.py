"""The book's one plotting helper: every figure is an Altair chart over a tidy DataFrame.

Why Altair: its charts carry their data and their interactions (dropdowns, sliders, legend
selections) inside the page as a Vega-Lite spec, so they keep working in the static book with no
kernel. ipywidgets freeze there (the book's tooling notes). Every interaction below is therefore an
``alt.param`` or a selection over data precomputed by the chapter, never a Python callback.

Colours are fixed once here, so a group or a model has the same colour in every chapter:
the four head groups follow the paper's completeness figure (A green, B yellow, C magenta, D blue),
and each model family (LLaMA, Vicuna, Goat, FLoat) keeps one hue whether it is the 7B model or
its CPU organism stand-in; "ours" versus "paper" (the organism versus the 7B model) is shown by mark
shape, stroke dash or opacity, never by colour alone.

Layout: every chart fits the book's 688-px article column, legends and facets included, at its
default settings (`ARTICLE_WIDTH`, minus the room vega-embed keeps for its "..." menu). Legends sit
at the bottom, facet panels shrink to fit, and titles, axis titles and legend entries are words
(`WORDS`: "full model", not ``full_model``); heads are written ``L2H0``.

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
#: Short group titles for panels and table rows ("A · value fetchers").
GROUP_SHORT: dict[str, str] = {
    "value_fetcher": "A · value fetchers",
    "position_transmitter": "B · position transmitters",
    "position_detector": "C · position detectors",
    "structure_reader": "D · structure readers",
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
#: The paper's 7B marks in `accuracy_by_boxes_chart`: one shape per family, so two models with the
#: same number (Goat-7B and FLoat-7B, 0.82) stay apart, and a small horizontal offset each.
FAMILY_SHAPES: dict[str, str] = {"llama": "diamond", "vicuna": "triangle-up", "goat": "square",
                                 "float": "triangle-down"}
FAMILY_OFFSETS: dict[str, float] = {"llama": 0.15, "vicuna": 0.31, "goat": 0.47, "float": 0.63}
#: A 7B model's colour: a darker shade of its family's (the organism stand-in has the family colour).
FAMILY_COLORS_7B: dict[str, str] = {"llama": "#8c1a1b", "vicuna": "#5b3d80", "goat": "#1a661a", "float": "#b35400"}

#: Raw column values written as words on axes, legends and facet headers.
WORDS: dict[str, str] = {
    "full_model": "full model", "llama_circuit": "LLaMA circuit", "circuit": "circuit alone",
    "random_circuit": "random circuit", "full_circuit": "full circuit", "random": "random K",
    "answer_loss": "loss on answer words", "acc_2": "accuracy, 2 boxes", "acc_7": "accuracy, 7 boxes",
    "ours": "ours", "paper": "paper",
    "last->object": "last → object", "last->query_label": "last → query label",
    "query_label->prev_query_label": "query label → previous query label",
    "last->random": "last → random token", "query_label->random": "query label → random token",
}

#: The article column is 688 px; a chart stays within `ARTICLE_WIDTH` including the 38 px that
#: vega-embed's "..." menu adds on the right, so the drawn chart may use `CHART_WIDTH` (with a
#: 20-px margin for labels and points that overhang the last panel).
ARTICLE_WIDTH = 680
ACTIONS_PX = 38
CHART_WIDTH = ARTICLE_WIDTH - ACTIONS_PX - 20
AXIS_PX = 62            # a left axis with labels such as "0.8" and a title
FACET_SPACING = 12

DEFAULT_WIDTH = 360
DEFAULT_HEIGHT = 240


def model_family(name: str) -> str:
    """The paper model a variant stands for ("organism-goat" and "goat-7b" are both "goat"), so the
    organism and the 7B model share a colour and a dropdown entry. Explained in chapter 7."""
    short = str(name).lower().removeprefix("organism-").removesuffix("-7b")
    return "llama" if short == "base" else short


def _ordered(values: Iterable, order: Sequence) -> list:
    """Values present in the data, in the canonical order first, then any unknown ones."""
    present = list(dict.fromkeys(values))
    return [v for v in order if v in present] + [v for v in present if v not in order]


def group_scale(values: Iterable[str]) -> alt.Scale:
    """Colour scale for head groups (plus 'full_circuit' / 'random'), restricted to what is plotted. Explained in chapter 5."""
    domain = _ordered(values, (*GROUP_ORDER, *OTHER_COLORS))
    palette = {**GROUP_COLORS, **OTHER_COLORS}
    return alt.Scale(domain=domain, range=[palette.get(v, UNKNOWN_COLOR) for v in domain])


def model_scale(values: Iterable[str], shade_7b: bool = False) -> alt.Scale:
    """Colour scale for model names: one colour per family, whatever the scale of the model; with
    ``shade_7b`` a 7B model gets a darker shade of its family's colour (`FAMILY_COLORS_7B`), so it
    and its organism stand-in differ in colour as well as in mark. Explained in appendix A1."""
    names = list(dict.fromkeys(values))
    domain = sorted(names, key=lambda n: (_family_rank(n), is_7b(n), n))

    def colour(n):
        family = model_family(n)
        if shade_7b and is_7b(n):
            return FAMILY_COLORS_7B.get(family, UNKNOWN_COLOR)
        return FAMILY_COLORS.get(family, UNKNOWN_COLOR)

    return alt.Scale(domain=domain, range=[colour(n) for n in domain])


def _family_rank(name: str) -> int:
    family = model_family(name)
    return FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER)


def _is_group_column(values: Iterable[str]) -> bool:
    return all(v in GROUP_COLORS or v in OTHER_COLORS for v in values)


def _is_model_column(values: Iterable[str]) -> bool:
    return all(model_family(v) in FAMILY_COLORS for v in values)


def color_scale(values: Iterable[str]) -> alt.Scale | None:
    """The fixed palette a colour column should use (groups or models), or None for Altair's default. Explained in chapter 2."""
    values = [v for v in dict.fromkeys(values) if pd.notna(v)]
    if values and _is_group_column(values):
        return group_scale(values)
    if values and _is_model_column(values):
        return model_scale(values)
    return None


def _color(field: str, values: Iterable, title: str | None = None,
           legend: alt.Legend | bool | None = None) -> alt.Color:
    scale = color_scale(values)
    kwargs = {"title": title or words(field)}
    if scale is not None:
        kwargs["scale"] = scale
        kwargs["sort"] = list(scale.domain)
    if legend is False:
        kwargs["legend"] = None
    else:
        if legend is None and scale is not None and _is_group_column(scale.domain):
            legend = alt.Legend(labelExpr=_label_expr())
        if legend is not None:
            kwargs["legend"] = legend
    return alt.Color(f"{field}:N", **kwargs)


def words(value) -> str:
    """A raw value as a reader reads it: a group key as its label ("A value fetcher"), a column
    name as words (`WORDS`), anything else as it is. Explained in chapter 5."""
    return GROUP_LABELS.get(value, WORDS.get(value, value)) if isinstance(value, str) else value


def _label_expr(labels: Mapping[str, str] = GROUP_LABELS) -> str:
    """A Vega expression that shows a group key ("value_fetcher") as its label ("A value fetcher")
    and a raw name ("full_model") as words on an axis or legend, leaving other values as they are."""
    import json

    pairs = json.dumps({**WORDS, **labels}, ensure_ascii=False)
    return f"({pairs})[datum.value] || datum.value"


def _bottom_legend(n_entries: int, title: str | None = None, label_chars: int = 16, width: float = CHART_WIDTH,
                   **kwargs) -> alt.Legend:
    """A legend under the chart, in as many columns as fit ``width`` (the chart's drawn width)."""
    title_px = 7 * len(title or "") + 12
    columns = max(1, min(n_entries, int((width - title_px) // (label_chars * 6.5 + 28))))
    kwargs.setdefault("labelExpr", _label_expr())
    return alt.Legend(orient="bottom", direction="horizontal", columns=columns,
                      title=title if title is not None else alt.Undefined, titleOrient="left", **kwargs)


def fit_panels(n_panels: int, width: float, spacing: float = FACET_SPACING, axis: float = AXIS_PX,
               budget: float = CHART_WIDTH, axis_each: bool = False, min_width: float = 110) -> tuple[int, int]:
    """(panel width, columns) for ``n_panels`` facet panels of at most ``width`` px each, so that a
    row of them plus the left axis (one per panel with ``axis_each``) stays within ``budget``;
    panels that would be narrower than ``min_width`` wrap onto more rows. Explained in chapter 5."""
    n = max(int(n_panels), 1)
    for columns in range(n, 0, -1):
        axes = axis * (columns if axis_each else 1)
        fit = (budget - axes - spacing * (columns - 1)) / columns
        if fit >= min(width, min_width) or columns == 1:
            return int(min(width, fit)), columns
    return int(width), 1


def is_7b(name: str) -> bool:
    """A paper-scale variant ("goat-7b"), as opposed to its organism stand-in ("organism-goat"). Explained in chapter 2."""
    return str(name).lower().endswith("-7b")


def _scale_word(name: str) -> str:
    return "7B (paper)" if is_7b(name) else "organism (ours)"


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
    """A ``[layer, head]`` tensor/array as a tidy frame with columns layer, head, ``value``. Explained in chapter 3."""
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
                       value: str = "score", diverging: bool = True, cell: int = 12,
                       value_title: str | None = None) -> alt.Chart:
    """One cell per head (x = head, y = layer, layer 0 on top, as TransformerLens draws it), with a
    tooltip naming the head ``L2H0``; ``highlight`` outlines chosen heads (e.g. a circuit group) in
    black. Cells shrink so a 32 x 32 map and its colour legend fit the article column.

    Path-patching scores are signed and the interesting heads are negative, so by default the
    colour scale is diverging around 0 (blue positive, red negative). Explained in chapter 3."""
    df = scores_frame(scores, value)
    marked = {(int(layer), int(head)) for layer, head in (highlight or [])}
    df["highlighted"] = [(int(l), int(h)) in marked for l, h in zip(df["layer"], df["head"])]
    df["head_name"] = [f"L{int(l)}H{int(h)}" for l, h in zip(df["layer"], df["head"])]
    n_layers, n_heads = int(df["layer"].max()) + 1, int(df["head"].max()) + 1
    cell = min(cell, (CHART_WIDTH - AXIS_PX - 90) / n_heads)  # 90: the colour legend on the right
    scale = alt.Scale(scheme="redblue", domainMid=0) if diverging else alt.Scale(scheme="viridis")
    base = alt.Chart(df).encode(
        x=alt.X("head:O", title="head", axis=alt.Axis(labelAngle=0, values=_ticks(n_heads))),
        y=alt.Y("layer:O", title="layer", sort="ascending", axis=alt.Axis(values=_ticks(n_layers))),
    )
    cells = base.mark_rect().encode(
        color=alt.Color(f"{value}:Q", scale=scale, title=value_title or words(value)),
        tooltip=[alt.Tooltip("head_name:N", title="head"), alt.Tooltip(f"{value}:Q", format=".3f"),
                 alt.Tooltip("highlighted:N", title="outlined")],
    )
    layers = [cells]
    if marked:
        layers.append(base.mark_rect(fill=None, stroke="black", strokeWidth=1.5)
                      .transform_filter(alt.datum.highlighted))
    return alt.layer(*layers).properties(
        title=title, width=max(round(cell * n_heads), 120), height=max(round(cell * n_layers), 80)
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
    """Accuracy against the number of boxes: our runs as lines with round points, the paper's
    numbers as one shape per model (LLaMA a diamond, Vicuna a triangle, Goat a square, FLoat an
    upside-down triangle), each nudged to the right of its number of boxes by its own offset
    (`FAMILY_OFFSETS`) so equal numbers (Goat-7B and FLoat-7B, both 0.82) sit side by side. A 7B model has a darker shade of its organism stand-in's colour.

    Two controls work in the static page: a dropdown of model families (a 7B model and its
    organism stand-in are one entry, so "Goat" shows organism-goat beside the paper's Goat-7B) and a
    slider for the largest number of boxes shown. The dotted line is chance among the objects in
    the context (1 / boxes), the floor a model that only learned "answer with an object" sits on. Explained in chapter 2."""
    _require(df, ["model", "boxes", "accuracy", "source"], "accuracy_by_boxes_chart")
    data = df.copy()
    data["family"] = data["model"].map(model_family)
    data["chance"] = 1.0 / data["boxes"]
    data["where"] = [b + (FAMILY_OFFSETS.get(f, 0.0) if s == "paper" else 0.0)
                     for b, f, s in zip(data["boxes"], data["family"], data["source"])]
    data["source_words"] = data["source"].map({"ours": "ours (organism)", "paper": "paper (7B)"}).fillna(
        data["source"])
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

    colours = model_scale(data["model"], shade_7b=True)
    domain = list(colours.domain)
    shapes = alt.Scale(domain=domain, range=[
        FAMILY_SHAPES.get(model_family(m), "diamond") if is_7b(m) or m in set(data.loc[data["source"] == "paper", "model"])
        else SOURCE_SHAPES["ours"] for m in domain])
    legend = _bottom_legend(len(domain), title="model", label_chars=15, width=DEFAULT_WIDTH + AXIS_PX)
    right = hi + (0.8 if (data["source"] == "paper").any() else 0.5)
    x = alt.X("where:Q", title="number of boxes", scale=alt.Scale(domain=[max(lo - 0.5, 0), right]),
              axis=alt.Axis(values=_int_ticks(data["boxes"]), format="d"))
    base = alt.Chart(data).transform_filter(shown).encode(
        x=x,
        y=alt.Y("accuracy:Q", title="accuracy", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("model:N", scale=colours, sort=domain, title="model", legend=legend),
        tooltip=["model:N", alt.Tooltip("source_words:N", title="source"), "boxes:Q",
                 alt.Tooltip("accuracy:Q", format=".3f")],
    )
    shape = alt.Shape("model:N", scale=shapes, sort=domain, title="model", legend=legend)
    ours = base.transform_filter(alt.datum.source == "ours")
    paper = base.transform_filter(alt.datum.source == "paper")
    layers = [
        ours.mark_line(),
        ours.mark_point(filled=True, size=50).encode(shape=shape),
        paper.mark_point(filled=True, size=90, stroke="black", strokeWidth=0.8).encode(shape=shape),
    ]
    if show_chance:
        layers.insert(0, alt.Chart(data).transform_filter("datum.boxes <= max_boxes")
                      .transform_aggregate(chance="min(chance)", groupby=["boxes"])
                      .mark_line(strokeDash=[2, 3], color="gray")
                      .encode(x=alt.X("boxes:Q", scale=alt.Scale(domain=[max(lo - 0.5, 0), right])),
                              y="chance:Q",
                              tooltip=[alt.Tooltip("chance:Q", format=".3f", title="chance (1/boxes)")]))
    return (alt.layer(*layers).add_params(variant, max_boxes)
            .properties(title=title, width=DEFAULT_WIDTH, height=DEFAULT_HEIGHT))


# --------------------------------------------------------------------------------------------------
# Bars
# --------------------------------------------------------------------------------------------------

def summarise_draws(df: pd.DataFrame, by: Sequence[str], value: str) -> pd.DataFrame:
    """Mean and standard deviation of ``value`` over repeated draws (rows) per ``by`` group:
    the input `grouped_bar_chart` wants for its error bars. Explained in chapter 4."""
    out = df.groupby(list(by), sort=False)[value].agg(["mean", "std", "count"]).reset_index()
    return out.rename(columns={"mean": value, "std": f"{value}_sd", "count": "draws"}).fillna({f"{value}_sd": 0.0})


def _mixed_scales(values: Iterable) -> bool:
    """A model column holding both 7B models and organisms (then bars need more than colour)."""
    values = [v for v in dict.fromkeys(values) if isinstance(v, str)]
    return bool(values) and _is_model_column(values) and len({is_7b(v) for v in values}) == 2


def _facet(chart, column: str, n_panels: int, columns: int, sort=alt.Undefined):
    """One panel per value of ``column`` (in the data's order unless ``sort`` says otherwise), in
    one row, or wrapped into ``columns`` when fewer than ``n_panels``; headers in words."""
    if sort is alt.Undefined and chart.data is not alt.Undefined and column in getattr(chart.data, "columns", []):
        sort = list(dict.fromkeys(chart.data[column]))
    header = alt.Header(labelExpr=_label_expr(), labelFontWeight="bold", labelLimit=0)
    if columns < n_panels:
        return chart.facet(facet=alt.Facet(f"{column}:N", title=None, header=header, sort=sort), columns=columns,
                           spacing=FACET_SPACING)
    return chart.facet(column=alt.Column(f"{column}:N", title=None, header=header, sort=sort),
                       spacing=FACET_SPACING)


def grouped_bar_chart(df: pd.DataFrame, x: str, y: str, color: str, column: str | None = None,
                      error: str | None = None, title: str = "", y_title: str | None = None,
                      y_domain: Sequence[float] | None = None, width: int = 220,
                      x_title: str | None = None, color_title: str | None = None) -> alt.Chart:
    """Bars of ``y`` per ``x``, side by side per ``color`` (and one panel per ``column``).

    ``error`` names a column holding the spread over draws (e.g. the sd from `summarise_draws`),
    drawn as ±error bars. Clicking a legend entry highlights that series; that works in the static
    page too. ``width`` is a panel's width at most: panels shrink (and wrap) so the chart fits the
    article column; the legend sits underneath. Raw names become words (`WORDS`). When the bars
    mix 7B models and organisms, the 7B bars are faded with a dashed outline. Explained in chapter 4."""
    _require(df, [c for c in (x, y, color, column, error) if c], "grouped_bar_chart")
    data = df.copy()
    pick = alt.selection_point(fields=[color], bind="legend", name="series")
    x_order = _ordered(data[x], (*GROUP_ORDER, *OTHER_COLORS, *FAMILY_ORDER))
    y_scale = alt.Scale(domain=list(y_domain)) if y_domain is not None else alt.Undefined
    n_panels = data[column].nunique() if column else 1
    panel, columns = fit_panels(n_panels, width) if column else (min(width, CHART_WIDTH - AXIS_PX), 1)
    scale = color_scale(data[color])
    n_series = data[color].nunique()
    enc = dict(
        x=alt.X(f"{x}:N", title=x_title if x_title is not None else words(x), sort=x_order,
                axis=alt.Axis(labelAngle=-30, labelExpr=_label_expr(), labelLimit=110)),
        xOffset=alt.XOffset(f"{color}:N", sort=list(scale.domain) if scale is not None else alt.Undefined),
        y=alt.Y(f"{y}:Q", title=y_title or words(y), scale=y_scale),
    )
    tooltip = [alt.Tooltip(f"{x}:N", title=words(x)), alt.Tooltip(f"{color}:N", title=words(color)),
               alt.Tooltip(f"{y}:Q", format=".3f", title=y_title or words(y))]
    if error:
        tooltip.append(alt.Tooltip(f"{error}:Q", format=".3f", title="± spread over draws"))
    if column:
        tooltip.insert(0, alt.Tooltip(f"{column}:N", title=words(column)))
    drawn = AXIS_PX + columns * panel + FACET_SPACING * (columns - 1)
    legend = _bottom_legend(n_series, title=color_title if color_title is not None else words(color),
                            label_chars=max(len(str(words(v))) for v in data[color].unique()), width=drawn)
    marks = {}
    mixed = next((c for c in (color, x) if _mixed_scales(data[c])), None)
    if mixed:
        data["scale"] = data[mixed].map(_scale_word)
        domain = ["organism (ours)", "7B (paper)"]
        scale_legend = _bottom_legend(2, title="bars", label_chars=15, width=drawn, symbolType="square",
                                      symbolStrokeColor="#333333", symbolFillColor="#777777")
        marks = dict(fillOpacity=alt.FillOpacity("scale:N", scale=alt.Scale(domain=domain, range=[1.0, 0.45]),
                                                 title="bars", legend=scale_legend),
                     strokeDash=alt.StrokeDash("scale:N", scale=alt.Scale(domain=domain, range=[[1, 0], [3, 2]]),
                                               title="bars", legend=scale_legend))
        tooltip.append(alt.Tooltip("scale:N", title="scale"))
    bars = alt.Chart().mark_bar(stroke="#333333", strokeWidth=0.6 if mixed else 0).encode(
        **enc, color=_color(color, data[color], title=color_title, legend=legend),
        opacity=alt.condition(pick, alt.value(1.0), alt.value(0.25)),
        tooltip=tooltip, **marks,
    ).add_params(pick)
    layers = [bars]
    if error:
        layers.append(alt.Chart().transform_calculate(
            lower=f"datum['{y}'] - datum['{error}']", upper=f"datum['{y}'] + datum['{error}']",
        ).mark_errorbar(ticks=True, color="black").encode(
            x=enc["x"], xOffset=enc["xOffset"], y=alt.Y("lower:Q", title=y_title or words(y), scale=y_scale),
            y2="upper:Q",
        ))
    chart = alt.layer(*layers, data=data).properties(width=panel, height=DEFAULT_HEIGHT)
    if column:
        chart = _facet(chart, column, n_panels, columns)
    return chart.properties(title=title)


def cmap_bars(df: pd.DataFrame, reference_lines: Mapping[str, float] | Mapping[str, Mapping[str, float]],
              x: str = "group", y: str = "accuracy", column: str | None = "pair",
              title: str = "CMAP: fine-tuned head outputs patched into the base model",
              width: int = 260, y_title: str = "accuracy of the base model") -> alt.Chart:
    """Accuracy of the base model with one group's outputs taken from the fine-tuned model, per
    group (bars coloured by group, "ours" solid and "paper" faded with a dashed outline), with dashed
    reference lines. Panels shrink to fit the article column; legends sit underneath.

    ``reference_lines`` maps a label ("Llama-7B", "Goat-7B") to an accuracy drawn in every panel,
    or a panel value of ``column`` to such a mapping when the panels need different lines. A line's
    colour follows its model family (red LLaMA, green Goat, as in the paper's figure). Explained in chapter 6."""
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
    bar_rows = data.loc[data["_kind"] == "bar"]
    x_order = _ordered(bar_rows[x], (*GROUP_ORDER, "full_circuit"))
    panel_width, columns = fit_panels(len(panels), width) if column else (min(width, CHART_WIDTH - AXIS_PX), 1)
    sources = [s for s in SOURCE_OPACITY if s in set(bar_rows["source"])]
    bars_legend = _bottom_legend(len(sources), "bars", label_chars=10, symbolType="square",
                                 symbolStrokeColor="#333333", symbolFillColor="#777777",
                                 labelExpr="datum.value == 'paper' ? 'paper (7B)' : "
                                           "(datum.value == 'ours' ? 'ours (organism)' : datum.value)")
    bars = alt.Chart().transform_filter(alt.datum._kind == "bar").mark_bar(stroke="#333333").encode(
        x=alt.X(f"{x}:N", title=None, sort=x_order, axis=alt.Axis(labelAngle=-30, labelExpr=_label_expr())),
        xOffset=alt.XOffset("source:N", sort=["paper", "ours"]),
        y=alt.Y(f"{y}:Q", title=y_title, scale=alt.Scale(domain=[0, 1])),
        color=_color(x, bar_rows[x], title="patched heads", legend=False),
        opacity=alt.Opacity("source:N", sort=sources, title="bars", legend=bars_legend,
                            scale=alt.Scale(domain=sources, range=[SOURCE_OPACITY[s] for s in sources])),
        strokeDash=alt.StrokeDash("source:N", sort=sources, title="bars", legend=bars_legend,
                                  scale=alt.Scale(domain=sources, range=[[1, 0] if s == "ours" else [3, 2]
                                                                         for s in sources])),
        strokeWidth=alt.condition("datum.source == 'paper'", alt.value(0.8), alt.value(0)),
        tooltip=[alt.Tooltip(f"{x}:N", title="patched heads"), "source:N", alt.Tooltip(f"{y}:Q", format=".3f")],
    )
    rule = alt.Chart().transform_filter(alt.datum._kind == "rule").mark_rule(strokeDash=[6, 4], size=1.5).encode(
        y=f"{y}:Q", color=alt.Color("_color:N", scale=None),
        tooltip=["reference:N", alt.Tooltip(f"{y}:Q", format=".3f")],
    )
    label = rule.mark_text(align="right", dy=-6, fontSize=10).encode(
        x=alt.value(panel_width - 2), text="reference:N")
    chart = alt.layer(bars, rule, label, data=data).properties(width=panel_width, height=DEFAULT_HEIGHT)
    if column:
        chart = _facet(chart, column, len(panels), columns, sort=panels)
    return chart.properties(title=title)


def _is_nested(mapping: Mapping) -> bool:
    return any(isinstance(v, Mapping) for v in mapping.values())


# --------------------------------------------------------------------------------------------------
# Completeness and knockout
# --------------------------------------------------------------------------------------------------

def completeness_scatter(df: pd.DataFrame, title: str = "Completeness: circuit vs model with K removed",
                         column: str | None = None, width: int = DEFAULT_HEIGHT) -> alt.Chart:
    """x = F(C\\K) (circuit with K also ablated), y = F(M\\K) (whole model with only K ablated),
    random K as round dots and each whole group as a diamond; a complete circuit sits on the dashed
    line y = x. The paper's points are hollow, ours filled.

    Columns: ``K`` ("random" or a group name), ``circuit_without_K``, ``model_without_K``,
    optionally ``source`` ("ours"/"paper": paper points hollow) and ``column`` for one panel per
    circuit. Clicking a legend entry highlights that kind of K. Explained in chapter 4."""
    _require(df, ["K", "circuit_without_K", "model_without_K"], "completeness_scatter")
    data = df.copy()
    if "source" not in data.columns:
        data["source"] = "ours"
    data["kind"] = ["random" if k == "random" else "group" for k in data["K"]]
    data["source_words"] = data["source"].map({"ours": "ours (filled)", "paper": "paper (hollow)"}).fillna(
        data["source"])
    pick = alt.selection_point(fields=["K"], bind="legend", name="K_pick")
    axis_scale = alt.Scale(domain=[0, 1])
    n_panels = data[column].nunique() if column else 1
    panel, columns = (fit_panels(n_panels, width, min_width=200) if column
                      else (min(width, CHART_WIDTH - AXIS_PX), 1))
    legend = _bottom_legend(data["K"].nunique(), "K removed", label_chars=22,
                            width=AXIS_PX + columns * panel + FACET_SPACING * (columns - 1))
    points = alt.Chart().mark_point(size=90).encode(
        x=alt.X("circuit_without_K:Q", title="circuit without K (accuracy)", scale=axis_scale),
        y=alt.Y("model_without_K:Q", title="whole model without K (accuracy)", scale=axis_scale),
        color=_color("K", data["K"], title="K removed", legend=legend),
        shape=alt.Shape("kind:N", scale=alt.Scale(domain=["random", "group"], range=["circle", "diamond"]),
                        legend=None),
        fill=alt.condition("datum.source == 'paper'", alt.value("white"), _color("K", data["K"], title="K",
                                                                                  legend=False)),
        size=alt.condition("datum.kind == 'group'", alt.value(160), alt.value(60)),
        opacity=alt.condition(pick, alt.value(0.95), alt.value(0.15)),
        tooltip=[alt.Tooltip("K:N", title="K removed"), alt.Tooltip("source_words:N", title="source"),
                 alt.Tooltip("circuit_without_K:Q", format=".3f", title="circuit without K"),
                 alt.Tooltip("model_without_K:Q", format=".3f", title="model without K")],
    ).add_params(pick)
    diagonal = alt.Chart().transform_aggregate(
        n="count()").transform_calculate(lo="0", hi="1").mark_rule(strokeDash=[5, 4], color="gray").encode(
        x=alt.X("lo:Q", scale=axis_scale), y=alt.Y("lo:Q", scale=axis_scale), x2="hi:Q", y2="hi:Q")
    chart = alt.layer(diagonal, points, data=data).properties(width=panel, height=panel)
    if column:
        chart = _facet(chart, column, n_panels, columns)
    return chart.properties(title=title)


def _edge_color(edges: Iterable[str], legend: alt.Legend | None = None) -> alt.Color:
    """Fixed colours for the paper's edges; Altair's default palette for any other edge."""
    present = list(dict.fromkeys(edges))
    legend = legend if legend is not None else alt.Undefined
    if all(e in EDGE_COLORS for e in present):
        domain = [e for e in EDGE_COLORS if e in present]
        return alt.Color("edge:N", title="edge cut", sort=domain, legend=legend,
                         scale=alt.Scale(domain=domain, range=[EDGE_COLORS[e] for e in domain]))
    return alt.Color("edge:N", title="edge cut", legend=legend)


def knockout_lines(df: pd.DataFrame, model_accuracy: float | None = None,
                   title: str = "Attention knockout from a starting layer onwards") -> alt.Chart:
    """Accuracy when one attention edge is cut in every layer from ``start_layer`` on (1-based, as
    the paper's "Knockout Starting Layer"), one line per edge; dashed red line = the model's own
    accuracy. Columns: ``edge``, ``start_layer``, ``accuracy``, optionally ``source`` ("paper"
    dashed, ours solid). Edges are written in words ("last → query label"); legends underneath. Explained in appendix A2."""
    _require(df, ["edge", "start_layer", "accuracy"], "knockout_lines")
    data = df.copy()
    if "source" not in data.columns:
        data["source"] = "ours"
    pick = alt.selection_point(fields=["edge"], bind="legend", name="edge_pick")
    sources = [s for s in ("ours", "paper") if s in set(data["source"])] or list(dict.fromkeys(data["source"]))
    lines = alt.Chart(data).mark_line(point=True).encode(
        x=alt.X("start_layer:Q", title="knockout starting layer",
                axis=alt.Axis(values=_int_ticks(data["start_layer"]), format="d")),
        y=alt.Y("accuracy:Q", title="accuracy", scale=alt.Scale(domain=[0, 1])),
        color=_edge_color(data["edge"], _bottom_legend(data["edge"].nunique(), "edge cut", label_chars=34,
                                                                 width=DEFAULT_WIDTH + AXIS_PX)),
        strokeDash=alt.StrokeDash("source:N", title="", legend=_bottom_legend(len(sources), ""),
                                  scale=alt.Scale(domain=sources, range=[[1, 0] if s == "ours" else [4, 3]
                                                                         for s in sources])),
        detail="source:N",
        opacity=alt.condition(pick, alt.value(1.0), alt.value(0.15)),
        tooltip=["edge:N", "source:N", alt.Tooltip("start_layer:Q", title="starting layer"),
                 alt.Tooltip("accuracy:Q", format=".3f")],
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

def minimality_score_text(score) -> str:
    """A minimality score for a reader: "+0.125", "removing it leaves 0" (the infinite score: with
    the head gone, accuracy falls to 0) or "—" (not measured). Explained in chapter 4."""
    try:
        value = float(score)
    except (TypeError, ValueError):
        return "—"
    if value != value:
        return "—"
    if value == float("inf"):
        return "removing it leaves 0"
    return f"{value:+.3f}".replace("-", "−")


def minimality_bars(df: pd.DataFrame, thresholds: Sequence[float] = (0.01, 0.0),
                    title: str = "Minimality: relative drop when a head is removed on top of K",
                    height: int = 110) -> alt.Chart:
    """One bar per head (``layer``, ``head``, written ``L2H0``), one panel per ``group`` stacked
    (titled "A · value fetchers", each as wide as the article column allows): its minimality score
    before/after − 1. A radio button picks the threshold (it works in the static page): heads at or
    above it are solid (kept), the others faded (pruned); the dashed line marks it. Infinite
    scores (removing the head takes accuracy to 0) are drawn at the top of the axis and say so in
    their tooltip; a group without candidates gets no panel (the subtitle says so). Explained in chapter 4."""
    _require(df, ["group", "layer", "head", "score"], "minimality_bars")
    data = df.copy()
    scores = pd.to_numeric(data["score"], errors="coerce")
    finite = scores[scores.abs() != float("inf")].dropna()
    top = max([*finite.tolist(), *thresholds, 0.05]) * 1.15
    data["infinite"] = scores == float("inf")
    data["shown"] = scores.clip(upper=top).fillna(0.0)
    data["score_text"] = [minimality_score_text(s) for s in scores]
    data["node"] = [f"L{int(layer)}H{int(head)}" for layer, head in zip(data["layer"], data["head"])]
    options = list(dict.fromkeys(float(t) for t in thresholds))
    pick = alt.param(name="threshold", value=options[0],
                     bind=alt.binding_radio(options=options, labels=[f"{t:.0%}" for t in options], name="threshold "))
    groups = [g for g in _ordered(data["group"], GROUP_ORDER)]
    most = max([int((data["group"] == g).sum()) for g in groups] or [1])
    width = int(min(CHART_WIDTH - AXIS_PX - 24, max(18 * most, 180)))
    step = width / most
    axis = alt.Axis(labelAngle=0 if step >= 34 else (-60 if step >= 11 else -90),
                    labelFontSize=10 if step >= 11 else 7)
    panels = []
    for group in groups:
        bars = alt.Chart().transform_filter(alt.datum.group == group).mark_bar().encode(
            x=alt.X("node:N", title=None, sort=None, axis=axis),
            y=alt.Y("shown:Q", title="score (log)",  # the 1 % line stays visible beside a score of 50
                    scale=alt.Scale(type="symlog", constant=0.01, domainMax=top),
                    axis=alt.Axis(values=[v for v in (0, 0.01, 0.1, 1, 10, 100) if v <= top], format="~g")),
            color=_color("group", data["group"], legend=False),
            opacity=alt.condition("datum.infinite || datum.shown >= threshold", alt.value(1.0), alt.value(0.25)),
            tooltip=[alt.Tooltip("node:N", title="head"), alt.Tooltip("score_text:N", title="score"),
                     *[alt.Tooltip(f"{c}:Q", format=".3f") for c in ("before", "after") if c in data.columns],
                     *([alt.Tooltip("K:N", title="K (heads removed first)")] if "K" in data.columns else [])],
        )
        rule = alt.Chart().transform_filter(alt.datum.group == group).transform_aggregate(
            n="count()").transform_calculate(level="threshold").mark_rule(
            strokeDash=[5, 4], color="black").encode(y="level:Q")
        n = int((data["group"] == group).sum())
        panels.append(alt.layer(bars, rule).properties(
            width=max(round(width * n / most), 60), height=height,
            title=alt.TitleParams(GROUP_SHORT.get(group, str(group)), fontSize=11, anchor="start")))
    missing = [GROUP_SHORT[g] for g in GROUP_ORDER if g not in groups]
    subtitle = ["Score: before / after − 1 (log scale); the dashed line is the threshold.",
                *([f"No candidates: {', '.join(missing)}."] if missing else [])]
    chart = alt.vconcat(*panels, data=data, spacing=10).add_params(pick)
    return chart.properties(title=alt.TitleParams(title, subtitle=subtitle, anchor="start"))


# --------------------------------------------------------------------------------------------------
# Learning curves
# --------------------------------------------------------------------------------------------------

def learning_curves_chart(df: pd.DataFrame, x: str = "step", value: str = "value", measure: str = "measure",
                          title: str = "Learning curves on validation prompts", width: int = 200,
                          height: int = 160) -> alt.Chart:
    """One panel per measure (``answer_loss`` shown as "loss on answer words", ``acc_2`` as
    "accuracy, 2 boxes", ...), one line per model in the family colours, each panel's y axis its
    own; panels shrink to fit the article column and the legend sits underneath. Explained in
    appendix A1."""
    _require(df, ["model", x, value, measure], "learning_curves_chart")
    data = df.copy()
    n_panels = data[measure].nunique()
    panel, columns = fit_panels(n_panels, width, axis=44, axis_each=True)
    models = list(dict.fromkeys(data["model"]))
    scale = model_scale(models, shade_7b=True)
    lines = alt.Chart(data).mark_line(point=alt.OverlayMarkDef(size=20)).encode(
        x=alt.X(f"{x}:Q", title="training step"),
        y=alt.Y(f"{value}:Q", title=None),
        color=alt.Color("model:N", scale=scale, sort=list(scale.domain), title="model",
                        legend=_bottom_legend(len(models), "model", label_chars=15,
                                              width=columns * (panel + 44) + FACET_SPACING * (columns - 1))),
        tooltip=["model:N", alt.Tooltip(f"{x}:Q", title="step"), alt.Tooltip(f"{measure}:N", title="measure"),
                 alt.Tooltip(f"{value}:Q", format=".3f")],
    ).properties(width=panel, height=height)
    chart = _facet(lines, measure, n_panels, columns, sort=list(dict.fromkeys(data[measure])))
    return chart.resolve_scale(y="independent").properties(title=title)


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
