"""The composite figures: the circuit diagram (the paper's Figure 1, drawn from data), the authors'
32 x 32 path-patching maps beside ours, and the attention rows of each group's top heads. Each is
checked through its Vega-Lite spec (what the static page carries), and every one must fit the
book's 688 px article column."""

import hashlib
import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from entity_tracking import figures as F
from entity_tracking import paper_reference as R
from entity_tracking.circuit import GROUPS, Circuit
from tiny import tiny, tiny_dir  # noqa: F401  (fixtures)

SHARED = Path(__file__).resolve().parents[2] / "shared"
PAPER_MD = SHARED / "paper.md"
HEAD_NAME = re.compile(r"^L\d+H\d+$")


# --------------------------------------------------------------------------------------------------
# helpers: walk a Vega-Lite spec
# --------------------------------------------------------------------------------------------------

def walk(spec):
    if isinstance(spec, dict):
        yield spec
        for value in spec.values():
            yield from walk(value)
    elif isinstance(spec, list):
        for value in spec:
            yield from walk(value)


def rows_with(spec, *keys) -> list[dict]:
    """Inline data rows that have all of ``keys`` (one figure carries several small tables)."""
    return [row for rows in spec.get("datasets", {}).values() for row in rows if all(k in row for k in keys)]


def layout_width(spec) -> float:
    """Pixel width a spec asks for: side-by-side charts add up (plus spacing), stacked ones don't."""
    if "hconcat" in spec:
        parts = spec["hconcat"]
        return sum(layout_width(p) for p in parts) + spec.get("spacing", 20) * (len(parts) - 1)
    if "vconcat" in spec:
        return max(layout_width(p) for p in spec["vconcat"])
    if "layer" in spec:
        return max([spec.get("width", 0), *(layout_width(p) for p in spec["layer"])])
    width = spec.get("width", 0)
    assert isinstance(width, (int, float)), f"width must be fixed pixels, got {width!r}"
    return width


def color_scales(spec) -> list[dict]:
    return [d["color"]["scale"] for d in walk(spec)
            if isinstance(d.get("color"), dict) and d["color"].get("field") == "score"]


def organism_circuit() -> Circuit:
    """A discovered 3-layer x 4-head circuit with one empty group, as the organism's search gives."""
    scores = {g: (torch.arange(12, dtype=torch.float32).reshape(3, 4) / 20 - 0.3).tolist() for g in GROUPS}
    return Circuit("organism-base", {"value_fetcher": [(2, 0), (2, 3)], "position_transmitter": [(1, 2)],
                                     "position_detector": [(0, 0), (0, 2), (1, 1)], "structure_reader": []},
                   scores=scores)


# --------------------------------------------------------------------------------------------------
# Figure 1: the circuit diagram
# --------------------------------------------------------------------------------------------------

def test_circuit_diagram_lists_every_group_with_its_position_and_head_count():
    spec = F.paper_circuit_diagram("llama-7b").to_dict()
    boxes = {r["letter"]: r for r in rows_with(spec, "label", "lane", "reads")}
    assert {k: v["label"] for k, v in boxes.items()} == {
        "A": "A · value fetchers · last token · 40 heads · layers 14–29",
        "B": "B · position transmitters · last token · 7 heads · layers 11–19",
        "C": "C · position detectors · query label · 20 heads · layers 1–13",
        "D": "D · structure readers · previous query label · 5 heads · layers 8–12",
    }
    # D -> C -> B -> A from left to right along the token axis; each box spans its layers in depth
    assert [boxes[g]["lane"] for g in "DCBA"] == [0, 1, 2, 3]
    assert boxes["C"]["y"] < 1 < 13 < boxes["C"]["y2"] and boxes["A"]["y"] < 14 < 29 < boxes["A"]["y2"]
    assert all(boxes[g]["reads"] and boxes[g]["writes"] for g in boxes)
    arrows = [(r["source"], r["target"], r["composition"]) for r in rows_with(spec, "composition", "angle")]
    assert arrows == [("structure_reader", "position_detector", "V-composition"),
                      ("position_detector", "position_transmitter", "V-composition"),
                      ("position_transmitter", "value_fetcher", "Q-composition"),
                      ("value_fetcher", "logits", "writes the object")]
    cards = {r["heading"]: r["body"] for r in rows_with(spec, "heading", "body")}
    assert "5 heads · layers 8–12" in cards["D · structure readers"]
    assert "Figure 1 head: L14H27" in cards["B · position transmitters"]


def test_paper_circuit_diagram_says_which_groups_are_drawn_from_size_and_layers_only():
    summary = R.circuit_summary("llama-7b")
    assert [summary[g]["n_heads"] for g in GROUPS] == [40, 7, 20, 5]
    assert summary["position_transmitter"]["heads"][0] == (14, 27) and summary["value_fetcher"]["heads"] is None
    spec = F.paper_circuit_diagram("llama-7b").to_dict()
    assert "A and C: head lists not transcribed" in " ".join(spec["title"]["subtitle"])
    dots = rows_with(spec, "head", "prominent")
    # B and D: every listed head; A and C: only the paper's Figure 1 head
    assert {r["head"] for r in dots if r["letter"] == "B"} == {"L14H27", "L11H23", "L12H23", "L19H12", "L13H0",
                                                               "L16H2", "L13H14"}
    assert len([r for r in dots if r["letter"] == "D"]) == 5
    assert {r["head"] for r in dots if r["letter"] in "AC"} == {"L21H3", "L10H3"}
    assert {(r["letter"], r["head"]) for r in dots if r["prominent"]} == {
        ("A", "L21H3"), ("B", "L14H27"), ("C", "L10H3"), ("D", "L8H21")}


def test_circuit_diagram_of_a_discovered_circuit_draws_an_empty_group_with_a_note():
    spec = F.circuit_diagram(organism_circuit(), 3).to_dict()
    boxes = {r["letter"]: r for r in rows_with(spec, "label", "lane", "reads")}
    assert boxes["D"]["empty"] and boxes["D"]["label"] == "D · structure readers · previous query label · no heads found"
    assert boxes["D"]["note"] == "no heads found"
    assert boxes["C"]["label"] == "C · position detectors · query label · 3 heads · layers 0–1"
    assert boxes["B"]["label"] == "B · position transmitters · last token · 1 head · layer 1"
    dots = rows_with(spec, "head", "prominent")
    assert sorted(r["head"] for r in dots) == ["L0H0", "L0H2", "L1H1", "L1H2", "L2H0", "L2H3"]
    arrows = {r["source"]: r for r in rows_with(spec, "composition", "angle")}
    assert arrows["structure_reader"]["dashed"] and not arrows["position_transmitter"]["dashed"]
    assert "No heads found for D" in " ".join(spec["title"]["subtitle"])
    assert F.circuit_diagram(organism_circuit()).to_dict()["vconcat"][0]["layer"]  # depth from its score maps


def test_a_circuit_with_no_heads_at_all_still_draws():
    spec = F.circuit_diagram({g: [] for g in "ABCD"}, 3).to_dict()
    assert all(r["empty"] for r in rows_with(spec, "label", "lane", "reads"))
    json.dumps(spec, allow_nan=False)
    with pytest.raises(ValueError, match="layer 5 but the diagram has n_layers=3"):
        F.circuit_diagram({"A": [(5, 0)]}, 3)


def test_heads_are_always_written_LxHy():
    specs = [F.paper_circuit_diagram().to_dict(), F.circuit_diagram(organism_circuit(), 3).to_dict(),
             F.score_maps_beside_paper(organism_circuit(), "organism-base").to_dict()]
    for spec in specs:
        for row in rows_with(spec, "head"):
            if isinstance(row["head"], str):
                assert HEAD_NAME.match(row["head"]), row
        for row in rows_with(spec, "head_name"):
            assert HEAD_NAME.match(row["head_name"]), row
        assert not re.search(r'"L?\d+\.\d+ ?H|"\d+ / \d+"', json.dumps(spec))  # never "2.0" or "2 / 0"
    assert F.head_name(2, 0) == "L2H0"


def test_circuit_diagram_html_puts_the_chart_inside_an_element_with_the_id():
    chart = F.circuit_diagram(organism_circuit(), 3)
    shown = F.circuit_diagram_html(chart)
    page = shown._repr_mimebundle_()["text/html"]
    assert page.startswith('<div id="circuit-diagram">') and page.rstrip().endswith("</div>")
    # the inner HTML is Altair's own: the book's browser check finds and renders it like any chart
    assert re.search(r'<div id="altair-viz-[0-9a-f]{32}"></div>', page) and "vega-embed" in page
    from IPython.core.interactiveshell import InteractiveShell

    data, _ = InteractiveShell.instance().display_formatter.format(shown)  # what a notebook cell stores
    assert '<div id="circuit-diagram">' in data["text/html"]
    assert F.circuit_diagram_html(chart, "circuit-diagram-paper").to_html().startswith('<div id="circuit-diagram-paper">')


# --------------------------------------------------------------------------------------------------
# The paper's score maps beside ours
# --------------------------------------------------------------------------------------------------

def _paper_md_top_heads() -> dict[tuple[str, str], list[tuple[int, int, float]]]:
    """The 'Top path-patching heads' table of paper.md §4.3, parsed."""
    md = PAPER_MD.read_text()
    out = {}
    for model, *cells in re.findall(r"^\| (Llama|Goat|FLoat) \| ([^|]+) \| ([^|]+) \| ([^|]+) \| ([^|]+) \|$", md,
                                    flags=re.M):
        for group, cell in zip(GROUPS, cells):
            heads = re.findall(r"L(\d+)H(\d+) ([−-][\d.]+)", cell)
            if heads:
                out[(f"{model.lower()}-7b", group)] = [(int(l), int(h), float(s.replace("−", "-")))
                                                       for l, h, s in heads]
    return out


def test_paper_score_maps_are_32_by_32_with_the_authors_top_heads():
    scores = R.path_patching_scores()
    assert (scores["source"] == "paper").all() and scores["provenance"].str.startswith("[repo] experiment_1/results/path_patching/").all()
    assert scores.groupby(["model", "group"]).size().to_dict() == {(m, g): 1024 for m in ("llama-7b", "goat-7b",
                                                                                        "float-7b") for g in GROUPS}
    maps = R.path_patching_score_maps("llama-7b")
    assert {g: tuple(m.shape) for g, m in maps.items()} == {g: (32, 32) for g in GROUPS}
    assert maps["position_transmitter"][14, 27].item() == pytest.approx(-0.326, abs=5e-4)
    assert maps["position_transmitter"].argmin().item() == 14 * 32 + 27
    top = R.top_heads()
    for (model, group), expected in top.groupby(["model", "group"]):
        ranked = scores.query("model == @model and group == @group").nsmallest(len(expected), "score")
        assert list(zip(ranked["layer"], ranked["head"])) == list(zip(expected["layer"], expected["head"])), (
            model, group)
        # paper.md rounds to 3 decimals (half up: Goat's L8H21 -0.1085 is printed -0.109)
        assert ranked["score"].tolist() == pytest.approx(expected["score"].tolist(), abs=5e-4 + 1e-9)


@pytest.mark.skipif(not PAPER_MD.is_file(), reason="shared/paper.md is not beside the repository")
def test_paper_score_maps_agree_with_the_table_in_paper_md():
    table = _paper_md_top_heads()
    assert len(table) == 12 and table[("llama-7b", "position_transmitter")][0] == (14, 27, -0.326)
    scores = R.path_patching_scores().set_index(["model", "group", "layer", "head"])["score"]
    for (model, group), heads in table.items():
        for layer, head, score in heads:
            assert scores[(model, group, layer, head)] == pytest.approx(score, abs=5e-4 + 1e-9), (model, group, layer,
                                                                                                   head)


@pytest.mark.skipif(not (SHARED / "paper-data").is_dir(), reason="shared/paper-data is not beside the repository")
def test_the_packaged_score_file_is_the_authors_file_unchanged():
    packaged = Path(R.__file__).parent / R.PATH_PATCHING_SCORES_FILE
    original = SHARED / "paper-data" / "path_patching_scores.json"
    assert hashlib.sha256(packaged.read_bytes()).hexdigest() == hashlib.sha256(original.read_bytes()).hexdigest()
    readme = (packaged.parent / "README.md").read_text()
    assert "Nix07/finetuning" in readme and "379765d" in readme
    assert "experiment_1/results/path_patching/{model}_circuit/{group}.pt" in readme


def test_score_maps_share_one_symmetric_scale_per_step():
    ours = {"A": torch.tensor([[0.0, -0.5, 0.1, 0.0], [0.2, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, -0.05]]),
            "B": [[0.01] * 4, [0.0] * 4, [-0.02] * 4], "C": torch.zeros(3, 4), "D": torch.full((3, 4), -0.01)}
    spec = F.score_maps_beside_paper(ours, "organism-base").to_dict()
    paper = R.path_patching_score_maps("llama-7b")
    assert len(spec["vconcat"]) == 4
    for row, group in zip(spec["vconcat"], F.GROUP_ORDER):
        domains = [tuple(s["domain"]) for s in color_scales(row)]
        assert len(domains) == 2 and domains[0] == domains[1], group  # paper and ours: one scale
        lo, hi = domains[0]
        assert lo == -hi and hi > 0
        ours_max = float(torch.as_tensor(ours[F.GROUP_LETTERS[group]]).abs().max())
        assert hi == pytest.approx(max(float(paper[group].abs().max()), ours_max), abs=1e-5)
        assert {s.get("scheme") for s in color_scales(row)} == {"redblue"}
        assert {s.get("type") for s in color_scales(row)} == {"symlog"}  # small paper scores stay visible
    assert spec["vconcat"][0]["resolve"]["scale"]["color"] == "shared"
    assert spec["resolve"]["scale"]["color"] == "independent"
    assert hi == pytest.approx(0.101, abs=5e-4)  # step D: the paper's L8H21 sets the scale


def test_score_map_titles_axes_and_tooltips_are_in_words():
    spec = F.score_maps_beside_paper(organism_circuit(), "organism-base").to_dict()
    titles = [d["title"]["text"] for d in walk(spec) if isinstance(d.get("title"), dict) and "text" in d["title"]
              and isinstance(d["title"]["text"], list)]
    assert ["Value fetchers (A)", "paper, LLaMA-7B"] in titles
    assert ["Structure readers (D)", "ours, organism-base"] in titles
    axes = {(d["x"]["title"], d["y"]["title"]) for d in walk(spec) if isinstance(d.get("x"), dict)
            and d["x"].get("field") == "head" and isinstance(d.get("y"), dict)}
    assert axes == {("head", "layer")}
    tooltips = {t["field"] for d in walk(spec) for t in d.get("tooltip", []) if isinstance(t, dict)}
    assert {"head_name", "score_text"} <= tooltips
    ours_rows = [r for r in rows_with(spec, "head_name", "score_text") if r["layer"] < 3 and r["head"] < 4]
    assert {"L2H3", "L0H0"} <= {r["head_name"] for r in ours_rows}


def test_an_empty_or_all_zero_map_of_ours_draws_without_nan():
    ours = {"A": torch.zeros(3, 4), "B": [[float("nan")] * 4] * 3, "C": [[float("inf"), 0.1, 0, 0]] * 3}
    spec = F.score_maps_beside_paper(ours, "organism-base").to_dict()
    text = json.dumps(spec, allow_nan=False)  # raises on NaN or inf
    assert "every score is 0" in text and "not measured" in text
    scores = [r["score"] for r in rows_with(spec, "score_text")]
    assert all(s is None or math.isfinite(s) for s in scores)
    missing = [r for r in rows_with(spec, "score_text") if r["score"] is None]
    assert len(missing) == 12 + 3 and {r["score_text"] for r in missing} == {"not measured"}
    assert F.score_maps_beside_paper({}, "organism-base").to_dict()  # nothing of ours: grey panels


# --------------------------------------------------------------------------------------------------
# Attention of each group's top heads
# --------------------------------------------------------------------------------------------------

TINY_HEADS = {"A": [(1, 0), (1, 3)], "B": [(1, 2)], "C": [(0, 1)], "D": [(0, 0), (1, 1), (0, 3)]}


@pytest.fixture(scope="module")
def attention(tiny):
    batch = tiny.tokenize(tiny.dataset(4, 6, seed=0))
    chart, frame = F.attention_view(tiny, batch, TINY_HEADS, index=2)
    return batch, chart, frame


def test_attention_view_rows_sum_to_one(attention):
    batch, _, frame = attention
    sums = frame.groupby("row")["weight"].sum()
    assert len(sums) == 2 + 1 + 1 + 2  # two heads per group at most
    assert ((sums - 1).abs() <= 0.0005 * batch.seq_len).all(), sums
    assert (frame.loc[~frame["attendable"], "weight"] == 0).all()  # causal: nothing after the query token
    assert frame["weight"].round(3).equals(frame["weight"])


def test_attention_view_reads_each_group_at_its_position_and_marks_the_papers_token(attention, tiny):
    batch, _, frame = attention
    pos = {k: v[2] for k, v in batch.positions.items()}
    ex = batch.examples[2]
    query = frame.groupby("letter")["query_pos"].unique().map(list).to_dict()
    assert query == {"A": [int(pos["last"])], "B": [int(pos["last"])], "C": [int(pos["query_label"])],
                     "D": [int(pos["prev_query_label"])]}
    targets = frame[frame["paper_target"]].groupby("letter")["token"].unique().map(sorted).to_dict()
    assert targets["A"] == [ex.answer]
    assert targets["B"] == targets["C"] == [ex.query_label]
    assert targets["D"] == sorted([ex.answer, "is"])
    assert set(frame["row"]) >= {"A · L1H0 at the last token", "C · L0H1 at the query label",
                                 "D · L0H0 at the previous query label"}
    # the model's own pattern, unrounded, for one cell
    from entity_tracking.patching import cache_activations, pattern_name

    _, store = cache_activations(tiny.model, batch.tokens[2:3], [pattern_name(1)])
    cell = frame.query("row == 'B · L1H2 at the last token' and key_pos == 0")["weight"].item()
    assert cell == round(store[pattern_name(1)][0, 2, int(pos["last"]), 0].item(), 3)


def test_attention_view_titles_and_token_labels_are_words(attention):
    batch, chart, frame = attention
    spec = chart.to_dict()
    titles = [d["title"]["text"] for d in walk(spec["vconcat"]) if isinstance(d.get("title"), dict)]
    assert any(t.startswith("A · value fetchers at the last token") for t in titles)
    assert any(t.startswith("D · structure readers at the previous query label") for t in titles)
    label_exprs = [d["labelExpr"] for d in walk(spec) if "labelExpr" in d and d["labelExpr"].startswith("[")]
    assert label_exprs and all('"Box"' in e and "contains" in e for e in label_exprs)
    assert len(frame) == len(set(frame["row"])) * batch.seq_len


def test_attention_view_skips_a_group_without_heads(tiny):
    batch = tiny.tokenize(tiny.dataset(4, 2, seed=0))
    chart, frame = F.attention_view(tiny, batch, {"A": [(1, 0)], "D": []})
    assert set(frame["letter"]) == {"A"}
    assert "No heads to show for B, C, D." in chart.to_dict()["title"]["subtitle"]


# --------------------------------------------------------------------------------------------------
# Every figure fits the book's article column
# --------------------------------------------------------------------------------------------------

def test_charts_fit_the_article_column(attention):
    _, attention_chart, _ = attention
    ours_32 = {g: torch.randn(32, 32) for g in GROUPS}
    charts = {
        "paper circuit": F.paper_circuit_diagram(),
        "organism circuit": F.circuit_diagram(organism_circuit(), 3),
        "score maps 3x4": F.score_maps_beside_paper(organism_circuit(), "organism-base"),
        "score maps 32x32": F.score_maps_beside_paper(ours_32, "llama-7b (ours)"),
        "attention": attention_chart,
        "wide request": F.circuit_diagram(organism_circuit(), 3, width=2000),
    }
    for name, chart in charts.items():
        width = layout_width(chart.to_dict())
        assert 0 < width <= F.ARTICLE_WIDTH, (name, width)
