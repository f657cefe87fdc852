"""The plotting helper: every chart's Vega-Lite spec carries its data inline and its interactions as
params (so they work in the static book), and every chart fits the article column."""

import functools

import pandas as pd
import pytest
import torch

from entity_tracking import paper_reference as R
from entity_tracking import plots as P


# --------------------------------------------------------------------------------------------------
# helpers: walk a Vega-Lite spec
# --------------------------------------------------------------------------------------------------

def walk(spec):
    """Every dict inside a spec (depth first)."""
    if isinstance(spec, dict):
        yield spec
        for value in spec.values():
            yield from walk(value)
    elif isinstance(spec, list):
        for value in spec:
            yield from walk(value)


def marks(spec) -> list[str]:
    out = []
    for d in walk(spec):
        mark = d.get("mark")
        if mark is not None:
            out.append(mark if isinstance(mark, str) else mark["type"])
    return out


def params(spec) -> dict[str, dict]:
    return {p["name"]: p for d in walk(spec) for p in d.get("params", []) if isinstance(p, dict) and "name" in p}


def inline_rows(spec) -> list[dict]:
    datasets = spec.get("datasets", {})
    assert datasets, "chart data must be inline (the static book has no kernel to fetch it)"
    return [row for rows in datasets.values() for row in rows]


def encodings(spec) -> list[dict]:
    return [d["encoding"] for d in walk(spec) if "encoding" in d]


def field_of(enc: dict, channel: str):
    value = enc.get(channel)
    return value.get("field") if isinstance(value, dict) else None


# --------------------------------------------------------------------------------------------------
# width of a chart, from its spec
# --------------------------------------------------------------------------------------------------

CHAR_PX = 6.5          # an 11-px label character (Vega's default axis / legend label font)
TITLE_CHAR_PX = 7.6    # a 13-px bold title character
AXIS_ALLOWANCE = 62    # a left axis: labels such as "0.8" or "10" and a rotated title
ACTIONS_PX = 38        # vega-embed's "..." menu on the right of every chart in the book
OVERHANG_PX = 12       # the last tick label or point reaching past the last view


def _text_px(text, per_char=CHAR_PX) -> float:
    if isinstance(text, list):
        return max((_text_px(t, per_char) for t in text), default=0.0)
    return len(str(text)) * per_char if text else 0.0


def _title_px(node) -> float:
    title = node.get("title")
    if isinstance(title, dict):
        size = title.get("fontSize", 13) / 13
        return max(_text_px(title.get("text", ""), TITLE_CHAR_PX * size), _text_px(title.get("subtitle", "")))
    return _text_px(title or "", TITLE_CHAR_PX)


def _rows(spec, data) -> list[dict]:
    name = (data or {}).get("name")
    if name and name in spec.get("datasets", {}):
        return spec["datasets"][name]
    return (data or {}).get("values", [])


def _legend_px(node) -> float:
    """Width a legend adds beside the view: only legends on the right (Vega-Lite's default) do;
    bottom legends sit under the chart (their own width is checked against the view's)."""
    extra = 0.0
    for channel, enc in (node.get("encoding") or {}).items():
        if channel not in ("color", "fill", "stroke", "shape", "opacity", "fillOpacity", "strokeDash", "size"):
            continue
        if not isinstance(enc, dict) or "field" not in enc or enc.get("legend", {}) is None:
            continue
        if "scale" in enc and enc["scale"] is None:  # literal colours: no legend
            continue
        legend = enc.get("legend") or {}
        if legend.get("orient", "right") in ("bottom", "top", "none"):
            continue
        labels = (enc.get("scale") or {}).get("domain") or ["0.000"]
        extra = max(extra, 30 + max(_text_px(enc.get("title", enc["field"])), 20 + _text_px(max(map(str, labels),
                                                                                               key=len))))
    return extra


def _bottom_legends_px(node) -> float:
    out = 0.0
    for enc in (node.get("encoding") or {}).values():
        legend = enc.get("legend") if isinstance(enc, dict) else None
        if isinstance(legend, dict) and legend.get("orient") == "bottom":
            labels = [str(v) for v in ((enc.get("scale") or {}).get("domain") or [])] or ["x" * 16]
            columns = legend.get("columns", len(labels))
            out = max(out, _text_px(legend.get("title") or "") + 12
                      + columns * (20 + _text_px(max(labels, key=len))))
    return out


def _axis_px(units) -> float:
    """A left axis: labels and a rotated title, or labels only when the title is switched off."""
    for unit in units:
        y = (unit.get("encoding") or {}).get("y")
        if isinstance(y, dict) and "field" in y:
            return AXIS_ALLOWANCE if y.get("title", y["field"]) else AXIS_ALLOWANCE - 24
    return AXIS_ALLOWANCE


def _x_title_px(node) -> float:
    """An x-axis title wider than its view widens the chart (bold 11-px text)."""
    x = (node.get("encoding") or {}).get("x")
    if isinstance(x, dict) and "field" in x:
        return _text_px(x.get("title", x["field"]) or "", 7.0)
    return 0.0


def _view_width(node) -> float:
    width = node.get("width")
    if isinstance(width, (int, float)):
        return max(float(width), _x_title_px(node))
    if isinstance(width, dict) and "step" in width:
        raise AssertionError("a step width depends on the data: give the chart a fixed width")
    return 300.0  # Vega-Lite's default continuous width


def drawn_width(spec, node=None, data=None, axis=True) -> float:
    """The width a chart draws at, estimated from its Vega-Lite spec: views, facet columns and
    concatenations with their spacing, one left axis per view that has its own, legends on the
    right, and titles longer than what they sit over. Calibrated against Chromium (conservative)."""
    node = spec if node is None else node
    data = node.get("data", data)
    if "facet" in node:
        inner = node["spec"]
        facet = node["facet"]
        field = (facet.get("column") or facet).get("field") if isinstance(facet, dict) else None
        values = {r.get(field) for r in _rows(spec, data)} if field else {None}
        n = len(values)
        columns = min(node.get("columns", n), n) if "column" not in facet else n
        spacing = node.get("spacing", 20)
        spacing = spacing.get("column", 20) if isinstance(spacing, dict) else spacing
        each = (node.get("resolve", {}).get("scale", {}).get("y") == "independent"
                or node.get("resolve", {}).get("axis", {}).get("y") == "independent")
        panel = drawn_width(spec, inner, data, axis=False)
        axis_px = _axis_px(inner.get("layer", [inner]))
        width = columns * panel + (columns - 1) * spacing + axis_px * (columns if each else 1)
    elif "hconcat" in node:
        parts = [drawn_width(spec, c, data) for c in node["hconcat"]]
        width = sum(parts) + node.get("spacing", 20) * (len(parts) - 1)
    elif "vconcat" in node:
        width = max(drawn_width(spec, c, data) for c in node["vconcat"])
    elif "layer" in node:
        inner = max(_view_width({**c, "width": node.get("width", c.get("width"))}) for c in node["layer"])
        width = inner + (_axis_px(node["layer"]) if axis else 0) + max(_legend_px(c) for c in node["layer"])
    else:
        width = _view_width(node) + (_axis_px([node]) if axis else 0) + _legend_px(node)
    return max(width, _title_px(node))


def _all_nodes(node):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _all_nodes(value)
    elif isinstance(node, list):
        for value in node:
            yield from _all_nodes(value)


def total_width(chart) -> float:
    """What the book's page draws for a chart: the chart and vega-embed's menu beside it."""
    spec = chart.to_dict()
    legends = max((_bottom_legends_px(n) for n in _all_nodes(spec) if "encoding" in n), default=0.0)
    return max(drawn_width(spec) + OVERHANG_PX, legends) + ACTIONS_PX


# --------------------------------------------------------------------------------------------------
# charts
# --------------------------------------------------------------------------------------------------

def test_heatmap_has_head_on_x_layer_on_y_a_tooltip_and_inline_scores():
    scores = torch.arange(12, dtype=torch.float32).reshape(3, 4) - 6
    spec = P.layer_head_heatmap(scores, "step A", highlight=[(1, 2)]).to_dict()
    rect = encodings(spec)[0]
    assert (field_of(rect, "x"), field_of(rect, "y"), field_of(rect, "color")) == ("head", "layer", "score")
    assert {t["field"] for t in rect["tooltip"]} >= {"head_name", "score"}
    rows = inline_rows(spec)
    assert len(rows) == 12
    assert {(r["layer"], r["head"]): r["score"] for r in rows}[(2, 3)] == 5.0
    assert [(r["layer"], r["head"]) for r in rows if r["highlighted"]] == [(1, 2)]
    assert {r["head_name"] for r in rows} >= {"L0H0", "L2H3"}  # heads written as the book writes them
    assert marks(spec).count("rect") == 2  # the cells, and the outline of the highlighted head


def test_heatmap_of_a_tensor_equals_heatmap_of_its_tidy_frame():
    scores = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    frame = P.scores_frame(scores)
    assert list(frame.columns) == ["layer", "head", "score"]
    assert inline_rows(P.layer_head_heatmap(scores).to_dict()) == inline_rows(P.layer_head_heatmap(frame).to_dict())


def accuracy_frame():
    ours = pd.DataFrame({"model": ["organism-base"] * 3 + ["organism-goat"] * 3, "boxes": [2, 5, 7] * 2,
                         "accuracy": [0.9, 0.7, 0.5, 0.95, 0.85, 0.7], "source": "ours"})
    return pd.concat([ours, R.accuracy()[["model", "boxes", "accuracy", "source"]]], ignore_index=True)


def test_accuracy_chart_binds_a_model_dropdown_and_a_boxes_slider():
    spec = P.accuracy_by_boxes_chart(accuracy_frame()).to_dict()
    ps = params(spec)
    dropdown, slider = ps["variant"]["bind"], ps["max_boxes"]["bind"]
    assert dropdown["input"] == "select"
    assert dropdown["options"] == ["all", "llama", "vicuna", "goat", "float"]
    assert (slider["input"], slider["min"], slider["max"], slider["step"]) == ("range", 2, 7, 1)
    assert ps["max_boxes"]["value"] == 7
    filters = [t["filter"] for d in walk(spec) for t in d.get("transform", []) if "filter" in t]
    assert any("variant" in str(f) and "max_boxes" in str(f) for f in filters)
    rows = inline_rows(spec)
    assert {r["source"] for r in rows} == {"ours", "paper"}
    assert {r["family"] for r in rows if r["model"] in ("organism-goat", "goat-7b")} == {"goat"}


def test_a_7b_model_and_its_organism_share_one_colour():
    scale = P.model_scale(["goat-7b", "organism-goat", "llama-7b", "organism-base"])
    colours = dict(zip(scale.domain, scale.range))
    assert colours["goat-7b"] == colours["organism-goat"] == P.FAMILY_COLORS["goat"]
    assert colours["llama-7b"] == colours["organism-base"] == P.FAMILY_COLORS["llama"]


def test_grouped_bars_draw_error_bars_from_the_spread_column_in_one_panel_per_column():
    draws = pd.DataFrame({"group": ["value_fetcher", "position_transmitter"] * 6,
                          "model": ["llama-7b"] * 6 + ["goat-7b"] * 6, "desideratum": "positional",
                          "accuracy": [0.40, 0.30, 0.42, 0.34, 0.44, 0.32, 0.5, 0.6, 0.5, 0.6, 0.5, 0.6]})
    summary = P.summarise_draws(draws, ["model", "group", "desideratum"], "accuracy")
    row = summary.query("model == 'llama-7b' and group == 'value_fetcher'").iloc[0]
    assert (row["accuracy"], row["draws"]) == (pytest.approx(0.42), 3)
    assert row["accuracy_sd"] == pytest.approx(0.02)
    spec = P.grouped_bar_chart(summary, "group", "accuracy", "model", column="desideratum",
                               error="accuracy_sd").to_dict()
    assert spec["facet"]["column"]["field"] == "desideratum"
    assert {"bar", "errorbar"} <= set(marks(spec))
    calc = [t for d in walk(spec) for t in d.get("transform", []) if "calculate" in t]
    assert {t["as"] for t in calc} == {"lower", "upper"}
    assert params(spec)["series"]["bind"] == "legend"
    assert len(inline_rows(spec)) == 4


def test_group_colours_are_fixed_across_charts():
    scale = P.color_scale(["structure_reader", "value_fetcher"])
    assert list(scale.domain) == ["value_fetcher", "structure_reader"]  # the paper's order A..D
    assert list(scale.range) == [P.GROUP_COLORS["value_fetcher"], P.GROUP_COLORS["structure_reader"]]
    spec = P.cmap_bars(R.cmap(), R.cmap_reference_lines("goat-7b")).to_dict()
    colour = next(e["color"] for e in encodings(spec) if field_of(e, "color") == "group")
    by_group = dict(zip(colour["scale"]["domain"], colour["scale"]["range"]))
    assert by_group["position_detector"] == P.GROUP_COLORS["position_detector"]


def test_completeness_scatter_has_the_dashed_diagonal_and_diamonds_for_groups():
    ours = pd.DataFrame({"K": ["random", "random", "value_fetcher"], "circuit_without_K": [0.1, 0.2, 0.0],
                         "model_without_K": [0.12, 0.3, 0.2]})
    data = pd.concat([ours, R.completeness().query("circuit == 'llama-7b'")], ignore_index=True)
    spec = P.completeness_scatter(data).to_dict()
    rule = next(d for d in walk(spec) if d.get("mark", {}) and isinstance(d["mark"], dict)
                and d["mark"].get("type") == "rule")
    assert rule["mark"]["strokeDash"]
    assert {c["as"]: c["calculate"] for c in rule["transform"] if "calculate" in c} == {"lo": "0", "hi": "1"}
    point = next(e for e in encodings(spec) if field_of(e, "x") == "circuit_without_K")
    assert field_of(point, "y") == "model_without_K"
    assert point["shape"]["scale"] == {"domain": ["random", "group"], "range": ["circle", "diamond"]}
    assert len(inline_rows(spec)) == len(data)


def test_knockout_lines_draw_the_models_accuracy_as_a_dashed_rule():
    spec = P.knockout_lines(R.knockout(), model_accuracy=R.KNOCKOUT_MODEL_ACCURACY).to_dict()
    rule = next(d for d in walk(spec) if isinstance(d.get("mark"), dict) and d["mark"].get("type") == "rule")
    assert rule["mark"]["strokeDash"]
    assert any(r.get("accuracy") == 0.66 and r.get("reference") for r in inline_rows(spec))
    line = next(e for e in encodings(spec) if field_of(e, "x") == "start_layer")
    assert (field_of(line, "y"), field_of(line, "color")) == ("accuracy", "edge")


def test_cmap_bars_draw_one_dashed_line_per_reference_in_every_panel():
    spec = P.cmap_bars(R.cmap(), {"Llama-7B": 0.66, "fine-tuned": 0.82}).to_dict()
    assert spec["facet"]["column"]["field"] == "pair"
    rules = [r for r in inline_rows(spec) if r.get("_kind") == "rule"]
    assert len(rules) == 2 * 2  # two references x two panels
    assert {r["reference"] for r in rules} == {"Llama-7B", "fine-tuned"}
    assert {r["_color"] for r in rules if r["reference"] == "Llama-7B"} == {P.FAMILY_COLORS["llama"]}
    assert "bar" in marks(spec) and "rule" in marks(spec)


def test_charts_render_as_html_with_their_params_and_no_mimetype_renderer():
    import altair as alt

    assert alt.renderers.active == "default"
    page = P.accuracy_by_boxes_chart(accuracy_frame()).to_html()
    assert '"max_boxes"' in page and '"variant"' in page and "vega-embed" in page


def test_missing_columns_are_named_in_the_error():
    with pytest.raises(ValueError, match="missing \\['source'\\]"):
        P.accuracy_by_boxes_chart(pd.DataFrame({"model": ["x"], "boxes": [2], "accuracy": [0.5]}))


# --------------------------------------------------------------------------------------------------
# every chart fits the 688-px article column (legends and facets included)
# --------------------------------------------------------------------------------------------------

GROUPS4 = list(P.GROUP_ORDER)
ORGANISMS = ["organism-base", "organism-vicuna", "organism-goat", "organism-float"]
SEVEN_B = ["llama-7b", "vicuna-7b", "goat-7b", "float-7b"]
DESIDERATA = ["object value", "box label", "position"]
COLUMN = 680


def _random(seed=0):
    import numpy as np

    return np.random.default_rng(seed)


@functools.lru_cache(maxsize=1)
def realistic_charts() -> dict:
    """Each chart function on inputs of the size the book gives it: 4 models, 4 groups, 3
    desiderata, 5 CMAP rows, a 7B minimality table of 58/10/25/5 candidates, 32 x 32 maps."""
    rng = _random()
    out = {}
    patched = pd.DataFrame([{"group": g, "model": m, "desideratum": d, "accuracy": rng.uniform(),
                             "accuracy_sd": 0.05} for g in GROUPS4 for m in ORGANISMS for d in DESIDERATA])
    for width in (220, 140):  # the default, and chapter 5's
        out[f"bars: 4 groups x 4 models x 3 desiderata, width {width}"] = P.grouped_bar_chart(
            patched, x="group", y="accuracy", color="model", column="desideratum", error="accuracy_sd",
            width=width, y_domain=(0, 1), title="The organism-base circuit's DCM heads patched (ours)",
            y_title="accuracy of the desideratum's target")
    mixed = patched.assign(model=[m if i % 2 else dict(zip(ORGANISMS, SEVEN_B))[m]
                                  for i, m in enumerate(patched["model"])])
    out["bars: 7B and organisms together"] = P.grouped_bar_chart(
        mixed, x="group", y="accuracy", color="model", column="desideratum", error="accuracy_sd")
    out["bars: Table 1 (x measure)"] = P.grouped_bar_chart(
        R.table1().melt(id_vars="model", value_vars=["full_model", "llama_circuit"], var_name="measure",
                        value_name="accuracy"), x="measure", y="accuracy", color="model")
    inside = pd.DataFrame([{"model": m, "ablation": a, "measure": k, "accuracy": rng.uniform()} for m in ORGANISMS
                           for a in ("paper's ablation", "only at the circuit's positions")
                           for k in ("full_model", "circuit", "random_circuit")])
    out["bars: 4 models x 3 measures x 2 ablations"] = P.grouped_bar_chart(
        inside, x="model", y="accuracy", color="measure", column="ablation")
    out["bars: one panel, width 480"] = P.grouped_bar_chart(
        patched[patched["desideratum"] == "position"], x="group", y="accuracy", color="model", width=480)
    out["cmap: the paper's two pairs"] = P.cmap_bars(R.cmap(), R.cmap_reference_lines("goat-7b"))
    rows5 = pd.DataFrame([{"group": g, "accuracy": rng.uniform(), "source": s, "pair": p}
                          for g in [*GROUPS4, "full_circuit"] for s in ("ours", "paper")
                          for p in ("organism-goat → organism-base", "organism-float → organism-base",
                                    "organism-vicuna → organism-base")])
    out["cmap: 5 rows x 3 pairs, ours and paper"] = P.cmap_bars(rows5, {"organism-base": 0.5, "organism-goat": 0.7})
    out["cmap: one panel"] = P.cmap_bars(rows5[rows5["pair"] == rows5["pair"].iloc[0]], {"organism-base": 0.5},
                                         column=None)
    for name, sizes in (("organism 5/3/3/0", (5, 3, 3, 0)), ("7B 58/10/25/5", (58, 10, 25, 5))):
        table = pd.DataFrame([{"group": g, "layer": int(rng.integers(0, 32)), "head": i, "score": rng.normal(0, .2),
                               "before": 0.5, "after": 0.4} for g, n in zip(GROUPS4, sizes) for i in range(n)])
        out[f"minimality: {name}"] = P.minimality_bars(table)
    comp = pd.DataFrame({"K": ["random"] * 20 + GROUPS4, "circuit_without_K": rng.uniform(size=24),
                         "model_without_K": rng.uniform(size=24), "source": "ours"})
    comp = pd.concat([comp, R.completeness().query("circuit == 'llama-7b'")[list(comp.columns)]])
    out["completeness: one circuit"] = P.completeness_scatter(comp)
    out["completeness: 4 circuits"] = P.completeness_scatter(
        pd.concat([comp.assign(circuit=m) for m in ORGANISMS]), column="circuit")
    knock = R.knockout()
    out["knockout: ours and the paper's"] = P.knockout_lines(
        pd.concat([knock.assign(source="paper"), knock.assign(source="ours", start_layer=knock["start_layer"] % 4 + 1)]),
        model_accuracy=0.66)
    accuracy = pd.DataFrame([{"model": m, "boxes": b, "accuracy": rng.uniform(), "source": "ours"}
                             for m in ORGANISMS for b in range(2, 8)])
    out["accuracy by boxes: 4 organisms and the paper's 4"] = P.accuracy_by_boxes_chart(
        pd.concat([accuracy, R.accuracy()[["model", "boxes", "accuracy", "source"]]], ignore_index=True))
    out["heatmap: 32 x 32 at the default cell"] = P.layer_head_heatmap(torch.randn(32, 32), "Value fetchers (A)")
    out["heatmap: 32 x 32 asked for 22 px cells"] = P.layer_head_heatmap(torch.randn(32, 32), cell=22)
    curves = pd.DataFrame([{"model": m, "step": step, "measure": k, "value": rng.uniform()} for m in ORGANISMS
                           for step in range(0, 3000, 250) for k in ("answer_loss", "acc_2", "acc_7")])
    out["learning curves: 4 models x 3 measures"] = P.learning_curves_chart(curves)
    return out


@pytest.mark.parametrize("name", list(realistic_charts()))
def test_every_chart_fits_the_article_column(name):
    chart = realistic_charts()[name]
    assert total_width(chart) <= COLUMN, f"{name}: {total_width(chart):.0f} px > {COLUMN} px"


def test_the_width_estimate_counts_facets_legends_and_titles():
    import altair as alt

    frame = pd.DataFrame({"a": list("xyz"), "b": [1, 2, 3], "c": list("uvw")})
    one = alt.Chart(frame).mark_bar().encode(x="a:N", y="b:Q").properties(width=200)
    assert total_width(one) == 200 + AXIS_ALLOWANCE + OVERHANG_PX + ACTIONS_PX
    three = one.facet(column="c:N")
    assert total_width(three) == 3 * 200 + 2 * 20 + AXIS_ALLOWANCE + OVERHANG_PX + ACTIONS_PX
    legend = alt.Chart(frame).mark_bar().encode(x="a:N", y="b:Q", color="c:N").properties(width=200)
    assert total_width(legend) > total_width(one)  # a legend on the right adds its width
    titled = one.properties(title="x" * 100)
    assert total_width(titled) >= 100 * TITLE_CHAR_PX


def test_legends_sit_under_the_chart_and_raw_names_are_words():
    charts = realistic_charts()
    for name, chart in charts.items():
        spec = chart.to_dict()
        for enc in encodings(spec):
            for channel in ("color", "shape", "opacity", "fillOpacity", "strokeDash"):
                legend = enc.get(channel, {}).get("legend", {}) if isinstance(enc.get(channel), dict) else None
                if isinstance(legend, dict) and legend:
                    assert legend.get("orient") == "bottom", f"{name}: a {channel} legend on the side"
        text = str(spec)
        for raw in ("'title': 'full_model'", "'title': 'llama_circuit'", "'title': 'acc_2'",
                    "'title': 'answer_loss'", "'title': 'circuit_without_K'"):
            assert raw not in text, f"{name}: raw name as a title ({raw})"
    words = P._label_expr()
    assert "'full_model'" not in words and '"full_model": "full model"' in words
    assert P.words("llama_circuit") == "LLaMA circuit" and P.words("value_fetcher") == "A value fetcher"


def test_panels_shrink_and_wrap_to_fit():
    assert P.fit_panels(3, 220) == (int((P.CHART_WIDTH - P.AXIS_PX - 2 * P.FACET_SPACING) / 3), 3)
    assert P.fit_panels(2, 140) == (140, 2)
    width, columns = P.fit_panels(8, 200)
    assert columns < 8 and width >= 110
    assert P.fit_panels(1, 2000)[0] == P.CHART_WIDTH - P.AXIS_PX


def test_accuracy_chart_tells_7b_from_organism_by_shape_and_shade_and_keeps_goat_and_float_apart():
    spec = P.accuracy_by_boxes_chart(accuracy_frame()).to_dict()
    rows = inline_rows(spec)
    where = {r["model"]: r["where"] for r in rows if r["source"] == "paper"}
    assert where["goat-7b"] != where["float-7b"]             # both 0.82 at 7 boxes: side by side
    assert len(set(where.values())) == 4 and all(7 < w < 8 for w in where.values())
    assert all(r["where"] == r["boxes"] for r in rows if r["source"] == "ours")
    shape = next(e["shape"] for e in encodings(spec) if "shape" in e)
    shapes = dict(zip(shape["scale"]["domain"], shape["scale"]["range"]))
    assert shapes["organism-goat"] == "circle" and len({shapes[m] for m in SEVEN_B}) == 4
    colour = next(e["color"] for e in encodings(spec) if field_of(e, "color") == "model")
    colours = dict(zip(colour["scale"]["domain"], colour["scale"]["range"]))
    assert colours["goat-7b"] != colours["organism-goat"]
    assert colours["organism-goat"] == P.FAMILY_COLORS["goat"]


def test_bars_mixing_7b_and_organisms_fade_and_dash_the_7b_ones():
    frame = pd.DataFrame({"group": ["value_fetcher"] * 2, "model": ["organism-goat", "goat-7b"], "accuracy": [.5, .6]})
    spec = P.grouped_bar_chart(frame, x="group", y="accuracy", color="model").to_dict()
    bar = next(e for e in encodings(spec) if "fillOpacity" in e)
    assert bar["fillOpacity"]["field"] == "scale" and bar["strokeDash"]["field"] == "scale"
    assert {r["scale"] for r in inline_rows(spec)} == {"organism (ours)", "7B (paper)"}
    plain = P.grouped_bar_chart(frame.assign(model="organism-goat"), x="group", y="accuracy", color="model")
    assert not any("fillOpacity" in e for e in encodings(plain.to_dict()))


def test_minimality_panels_have_short_group_titles_and_infinite_scores_in_words():
    import math

    table = pd.DataFrame({"group": ["value_fetcher", "position_transmitter"], "layer": [1, 2], "head": [0, 3],
                          "score": [math.inf, float("nan")], "before": [0.5, 0.2], "after": [0.0, 0.2]})
    spec = P.minimality_bars(table).to_dict()
    titles = [c["title"]["text"] for c in spec["vconcat"]]
    assert titles == ["A · value fetchers", "B · position transmitters"]
    assert "No candidates: C · position detectors, D · structure readers." in spec["title"]["subtitle"]
    texts = {r["node"]: r["score_text"] for r in inline_rows(spec)}
    assert texts == {"L1H0": "removing it leaves 0", "L2H3": "—"}
    assert P.minimality_score_text(-0.25) == "−0.250"


def test_learning_curves_name_their_measures_in_words():
    curves = pd.DataFrame({"model": "organism-base", "step": [0, 1, 0, 1], "measure": ["answer_loss"] * 2 + ["acc_7"] * 2,
                           "value": [2.0, 1.0, 0.1, 0.5]})
    spec = P.learning_curves_chart(curves).to_dict()
    assert spec["facet"]["column"]["field"] == "measure"
    assert "loss on answer words" in spec["facet"]["column"]["header"]["labelExpr"]
    assert spec["resolve"]["scale"]["y"] == "independent"
