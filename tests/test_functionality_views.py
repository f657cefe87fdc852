"""Chapter 5's tables and readings (`functionality_views`), and chapter 7's (`conclusion_views`), on
small hand-made frames: heads written L2H0, no NaN or None shown, the paper beside ours."""

import math

import pandas as pd

from entity_tracking import conclusion_views as CV
from entity_tracking import data as D
from entity_tracking import functionality_views as V
from entity_tracking.circuit import GROUPS, Circuit
from tiny import tiny, tiny_dir  # noqa: F401  (fixtures; tiny needs tiny_dir)


def _frame(values: dict) -> pd.DataFrame:
    """Mean accuracies (model, group, desideratum, accuracy) from {(model, group, desideratum): acc}."""
    return pd.DataFrame([{"model": m, "group": g, "desideratum": d, "accuracy": a}
                         for (m, g, d), a in values.items()])


def _grid(model: str, named: float, other: float) -> dict:
    """Every group x desideratum: `named` on each group's own variable, `other` elsewhere."""
    return {(model, g, d): (named if d == V.NAMED[g] else other) for g in GROUPS for d in D.DESIDERATA}


def test_heads_are_written_layer_head_and_an_empty_group_in_words():
    assert V.heads_text([(2, 0), (1, 2)]) == "L2H0 L1H2"
    assert V.heads_text([]) == "none"
    table = V.circuit_table(Circuit("m", {"value_fetcher": [(2, 0)], "position_transmitter": [(1, 3)]}))
    assert table.loc["A value fetcher", "which"] == "L2H0"
    assert table.loc["D structure reader", "which"] == "none found"
    assert "2.0" not in table.to_string()


def test_dcm_table_puts_the_papers_llama_runs_beside_ours_with_head_names():
    summary = pd.DataFrame([{"group": "value_fetcher", "desideratum": "object_value", "candidates": 3,
                             "n_heads": 2, "heads": [[2, 0], [1, 1]], "test_accuracy": 0.5},
                            {"group": "structure_reader", "desideratum": "positional", "candidates": 0,
                             "n_heads": 0, "heads": [], "test_accuracy": 0.1}])
    table = V.dcm_beside_paper(summary)
    row = table.loc[("A value fetcher", "object value")]
    assert row["heads (ours)"] == "2 of 3: L2H0 L1H1"
    assert row["heads (paper)"] == "40 of 40"  # LLaMA-7B's value fetchers, all kept by DCM
    assert table.loc[("D structure reader", "position"), "heads (ours)"] == "no candidates"


def test_claims_hold_where_the_named_variable_wins_and_say_no_number_for_a_missing_group():
    frame = _frame({**_grid("organism-base", 0.5, 0.1), **_grid("organism-goat", 0.7, 0.1)})
    frame = frame[~((frame.model == "organism-base") & (frame.group == "position_detector"))]
    claims = V.functionality_claims(frame, "organism-base").set_index(["model", "key"])
    assert claims.loc[("organism-base", "A_object"), "holds"]
    assert claims.loc[("organism-base", "B_position"), "holds"]
    assert not claims.loc[("organism-base", "C_position"), "holds"]
    assert "no number" in claims.loc[("organism-base", "C_position"), "numbers"]
    assert claims.loc[("organism-goat", "B_gain"), "holds"]  # 0.7 vs 0.5
    assert "nan" not in claims["numbers"].str.cat().lower()


def test_claims_beside_paper_is_one_row_per_variant_with_ours_and_the_papers_verdict():
    ours = V.functionality_claims(_frame(_grid("organism-base", 0.5, 0.1)), "organism-base")
    paper = V.functionality_claims(_frame(_grid("llama-7b", 0.1, 0.1)), "llama-7b")
    table = V.claims_beside_paper(ours, paper)
    assert list(table.index) == ["organism-base (Llama-7B)"]
    assert set(table.iloc[0]) == {"yes | no"}


def test_survival_never_prints_nan_when_there_is_no_baseline():
    assert V.survival_text(0.4, 0.5) == "kept (0.80)"
    assert V.survival_text(0.1, 0.5) == "lost (0.20)"
    text = V.survival_text(0.1, 0.0)
    assert "nan" not in text.lower() and "not measurable" in text
    table = V.survival_table({"add_seg_end": 0.1}, {}, 0.5, 0.3)
    assert table.loc["add_seg_end", "paper"] == "not run"


def test_position_reading_names_a_count_from_the_end_when_only_text_after_the_context_hurts():
    ours = {"random_text_start": 0.5, "add_seg_start": 0.5, "random_text_end": 0.1, "add_seg_end": 0.1}
    paper = {k: 0.3 for k in ours}
    text = V.position_reading(ours, paper, 0.5, 0.3)
    assert "from the end of the context" in text and "keeps the signal under both" in text
    assert "nothing" in V.position_reading(ours, paper, 0.0, 0.3)


def test_compat_table_and_reading_compare_corrected_and_authors_data():
    rows = []
    for data, floor, box in (("corrected", 0.02, 0.3), ("authors (B1, B2, W3)", 0.15, 0.0)):
        for g, d, acc in (("none (floor)", "positional", floor), ("value_fetcher", "box_label_value", box),
                          ("none (floor)", "box_label_value", 0.0)):
            rows += [{"data": data, "group": g, "desideratum": d, "draw": i, "accuracy": acc} for i in range(2)]
    compat = pd.DataFrame(rows)
    table = V.compat_table(compat)
    assert table.loc["none (floor)", "position (corrected | authors')"] == "0.02 | 0.15"
    text = V.compat_reading(compat)
    assert "0.020" in text and "0.150" in text and "0.300 corrected" in text


def test_mean_over_draws_gives_a_zero_sd_for_a_single_draw():
    frame = pd.DataFrame({"model": ["m"], "group": ["value_fetcher"], "desideratum": ["positional"],
                          "accuracy": [0.3]})
    out = V.mean_over_draws(frame)
    assert out["accuracy_sd"].iloc[0] == 0.0 and not math.isnan(out["accuracy"].iloc[0])


def test_conclusion_frames_share_family_axes_between_ours_and_the_paper():
    table1 = pd.DataFrame([{"model": "organism-base", "full_model": 0.6, "circuit": 0.5, "random_circuit": 0.1,
                            "faithfulness": 0.83}])
    frame = CV.finding1_frame(table1)
    assert set(frame.loc[frame.source == CV.OURS, "model"]) == {"LLaMA"}
    assert "LLaMA" in set(frame.loc[frame.source == CV.PAPER, "model"])
    assert CV.finding1_table(table1).loc["organism-base (Llama-7B)", "faithfulness"].startswith("0.83 | ")


def test_checks_table_keeps_every_claim_whole():
    checks = pd.DataFrame([{"key": "cmap", "claim": "a long claim " * 10, "chapter": 6, "paper": "p",
                            "organism": "no", "numbers": "n"}])
    table = CV.checks_table(checks)
    assert table.index[0] == "a long claim " * 10
    assert table.iloc[0]["organism"] == "✗ no"


def test_facets_follow_the_papers_order_of_desiderata():
    from entity_tracking import plots

    frame = pd.DataFrame({"group": ["value_fetcher"] * 3, "model": ["organism-base"] * 3,
                          "desideratum": ["box label", "object value", "position"], "accuracy": [0.1, 0.2, 0.3]})
    order = list(V.DESIDERATUM_WORDS.values())
    for width in (140, 400):  # side by side, or wrapped
        chart = V.facets_in_order(plots.grouped_bar_chart(frame, x="group", y="accuracy", color="model",
                                                          column="desideratum", width=width), order)
        spec = chart.to_dict()["facet"]
        assert spec.get("column", spec)["sort"] == order


def test_one_pair_predictions_patch_each_group_and_leave_an_empty_group_unpatched(tiny):
    examples = tiny.examples(D.TaskConfig(n_boxes=3, n_samples=20, dataset_seed=0))
    pairs = {name: D.desideratum_pairs(name, examples, 1, pool=20, seed=0) for name in D.DESIDERATA}
    circuit = Circuit("tiny", {"value_fetcher": [(1, 0)], "position_transmitter": [(0, 1)],
                               "position_detector": [], "structure_reader": []})
    table = V.one_pair_predictions(tiny, pairs, circuit)
    assert list(table.index) == list(D.DESIDERATA)
    assert (table[V.GROUP_LABELS["structure_reader"]] == table["unpatched"]).all()  # no heads, no change
    assert table["target"].tolist() == [pairs[n].targets[0] for n in D.DESIDERATA]
