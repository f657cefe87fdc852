"""The plotting helper and the paper's reference numbers: every chart's Vega-Lite spec carries its
data inline and its interactions as params (so they work in the static book), and the reference
tables say what shared/paper.md says."""

import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from entity_tracking import paper_reference as R
from entity_tracking import plots as P

PAPER_MD = Path(__file__).resolve().parents[2] / "shared" / "paper.md"


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
# charts
# --------------------------------------------------------------------------------------------------

def test_heatmap_has_head_on_x_layer_on_y_a_tooltip_and_inline_scores():
    scores = torch.arange(12, dtype=torch.float32).reshape(3, 4) - 6
    spec = P.layer_head_heatmap(scores, "step A", highlight=[(1, 2)]).to_dict()
    rect = encodings(spec)[0]
    assert (field_of(rect, "x"), field_of(rect, "y"), field_of(rect, "color")) == ("head", "layer", "score")
    assert {t["field"] for t in rect["tooltip"]} >= {"layer", "head", "score"}
    rows = inline_rows(spec)
    assert len(rows) == 12
    assert {(r["layer"], r["head"]): r["score"] for r in rows}[(2, 3)] == 5.0
    assert [(r["layer"], r["head"]) for r in rows if r["highlighted"]] == [(1, 2)]
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
# paper reference numbers
# --------------------------------------------------------------------------------------------------

def test_every_reference_frame_is_tagged_paper_with_its_provenance():
    frames = [R.table1(), R.accuracy(), R.circuit_sizes(), R.top_heads(), R.minimality(),
              R.own_circuit_faithfulness(), R.overlap(), R.completeness(), R.completeness_random(), R.dcm(),
              R.activation_patching(), R.additional_desiderata(), R.cmap(), R.cmap_input(), R.knockout()]
    for frame in frames:
        assert (frame["source"] == "paper").all()
        assert frame["provenance"].str.contains("paper.md §").all()
    assert R.provenance("table1").startswith("[nb] experiment_1/circuit_eval.ipynb")


def test_reference_sizes_and_faithfulness_are_consistent_with_each_other():
    sizes = R.circuit_sizes().groupby("circuit")["heads"].sum().to_dict()
    assert sizes == {c: info["total"] for c, info in R.CIRCUIT_SIZES.items()}
    t1 = R.table1().set_index("model")
    # faithfulness = circuit accuracy / model accuracy, up to the paper's 2-decimal rounding
    assert ((t1.llama_circuit / t1.full_model - t1.faithfulness).abs() <= 0.01).all()
    ap = R.activation_patching()
    assert len(ap) == 3 * 4 * 4 * 3 and (ap.query("desideratum == 'box_label_value'").accuracy == 0).all()
    ko = R.knockout().set_index(["edge", "start_layer"]).accuracy
    assert (ko["last->object", 21], ko["last->query_label", 13], ko["query_label->prev_query_label", 10]) == (
        0.21, 0.51, 0.51)


@pytest.mark.skipif(not PAPER_MD.is_file(), reason="shared/paper.md is not beside the repository")
def test_transcribed_tables_match_shared_paper_md():
    md = PAPER_MD.read_text()
    ap = R.activation_patching().set_index(["circuit", "model", "group", "desideratum"])
    checked = 0
    for circuit in ("llama", "goat", "float"):
        start = md.index(f"**Heads = DCM-selected heads of the {circuit} circuit**")
        for line in md[start:].split("\n\n")[1].splitlines():
            m = re.match(r"\| (\w+) \| (\w+)" + r" \| ([\d.]+) \(([\d.]+)\)" * 3 + r" \|", line)
            if not m:
                continue
            values = [float(v) / 100 for v in m.groups()[2:]]
            for k, d in enumerate(R.DESIDERATA):
                row = ap.loc[(R._AUTHORS_MODEL[circuit], R._AUTHORS_MODEL[m[1]], R._AUTHORS_GROUP[m[2]], d)]
                assert (row.accuracy, row.sd) == (pytest.approx(values[2 * k]), pytest.approx(values[2 * k + 1]))
                checked += 1
    assert checked == 144
    dcm = R.dcm().set_index(["circuit", "group", "desideratum"])
    rows = re.findall(r"\| (llama|goat|float) \| (\w+) \((\d+)\)" + r" \| (\d+) / ([\d.]+)" * 3 + r" \|", md)
    assert len(rows) == 12
    for circuit, group, size, *cells in rows:
        for k, d in enumerate(R.DESIDERATA):
            row = dcm.loc[(R._AUTHORS_MODEL[circuit], R._AUTHORS_GROUP[group], d)]
            assert (row.heads, row.test_accuracy, row.circuit_heads) == (int(cells[2 * k]), float(cells[2 * k + 1]),
                                                                         int(size))
    table1 = re.findall(r"\| (Llama|Vicuna|Goat|FLoat)-7B \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", md)
    assert len(table1) == 4
    for model, full, circuit, random_, faith in table1:
        assert R.TABLE1[model.lower() + "-7b"] == tuple(float(v) for v in (full, circuit, random_, faith))


def test_comparison_sentence_says_which_fine_tuned_gains_match_the_paper():
    ours = pd.DataFrame({"model": ["organism-base", "organism-goat", "organism-float"], "boxes": 7,
                         "accuracy": [0.50, 0.70, 0.52], "n_samples": 500})
    table = R.accuracy_beside_paper(ours).set_index("model")
    assert table.loc["organism-goat", "paper"] == 0.82 and table.loc["organism-goat", "paper_model"] == "goat-7b"
    assert table.loc["organism-goat", "ours_gain"] == pytest.approx(0.20)
    assert table.loc["organism-goat", "ours_se"] == pytest.approx((0.7 * 0.3 / 500) ** 0.5)
    text = R.describe_accuracy_comparison(table.reset_index())
    assert text.startswith("At 7 boxes, 1 of 2 fine-tuned variants reproduce")
    assert "organism-goat is higher than its base (+0.20" in text
    assert "organism-float is about equal to its base (+0.02" in text and "does not match" in text
    assert "-0.16 (organism-base vs Llama-7B)" in text


def test_the_papers_own_numbers_reproduce_every_direction_of_the_paper():
    text = R.describe_accuracy_comparison(R.accuracy_beside_paper(R.accuracy()))
    assert "3 of 3" in text and "within noise" in text
