"""Chapter 6's tables and readings (`cmap_views`) on hand-made CMAP results: the share of the gap
is said in words when there is no gain, the one-prompt table shows the queried box, and the
input-CMAP comparison measures the last token's own key and value."""

import pandas as pd

from entity_tracking import cmap_views as V
from entity_tracking import data as D
from entity_tracking.cmap import CMAP_ROWS


def _result(target: float, source: float, rows: dict) -> dict:
    table = pd.DataFrame([{"row": r, "n_heads": 1, "accuracy": rows.get(r, target)} for r in CMAP_ROWS])
    return {"table": table, "target_accuracy": target, "source_accuracy": source, "target_passes": 3}


def test_no_gain_to_recover_when_the_fine_tune_is_not_better_than_the_base():
    text = V.share_lines({"organism-goat": _result(0.6, 0.55, {"value_fetcher": 0.58})})
    first = text.splitlines()[0]
    assert "no gain to recover" in first and "%" not in first


def test_shares_of_the_gap_for_a_real_gain():
    text = V.share_lines({"organism-goat": _result(0.5, 0.7, {"value_fetcher": 0.7, "position_transmitter": 0.6,
                                                             "full_circuit": 0.7})})
    first = text.splitlines()[0]
    assert "A 100%" in first and "B 50%" in first and "C 0%" in first and "-0%" not in first
    assert "Value fetcher (A)" in first
    assert "Goat-7B: A 100%" in text  # the paper's line: (0.82 - 0.66) / (0.82 - 0.66)


def test_one_prompt_table_shows_the_queried_box_its_segment_and_answer():
    ex = D.Example(objects=("apple", "map", "cup"), labels=("F", "Q", "D"), query_index=1)
    table = V.one_prompt_table([ex], {"base": ["map"]})
    row = table.loc[1]
    assert row["queried segment"] == "the map is in Box Q"
    assert row["segment"] == "2nd of 3"
    assert row["answer"] == "map" and row["base"] == "map"


def test_cmap_table_puts_the_papers_pairs_beside_ours():
    table = V.cmap_table({"organism-goat": _result(0.5, 0.7, {})}, "organism-base")
    assert list(table.columns) == ["organism-goat", "paper: Goat-7B", "paper: FLoat-7B"]
    assert table.loc["base + Value fetcher (A)", "paper: Goat-7B"] == "0.82"
    assert table.loc["base alone", "paper: Goat-7B"] == "0.66"
    assert not table.isna().any().any()


def test_cmap_table_says_when_a_row_patches_no_heads():
    result = _result(0.5, 0.7, {"value_fetcher": 0.6})
    result["table"].loc[result["table"]["row"] == "structure_reader", "n_heads"] = 0
    table = V.cmap_table({"organism-goat": result}, "organism-base")
    assert table.loc["base + Structure reader (D)", "organism-goat"] == "0.50 (no heads)"
    assert table.loc["base + Value fetcher (A)", "organism-goat"] == "0.60"


def test_cmap_chart_stacks_one_panel_per_fine_tune_within_the_column():
    chart = V.cmap_chart({"organism-goat": _result(0.5, 0.7, {}), "organism-vicuna": _result(0.5, 0.5, {})},
                         "organism-base", title="t")
    spec = chart.to_dict()
    assert len(spec["vconcat"]) == 2
    assert all(panel["width"] <= 400 for panel in spec["vconcat"])


def test_input_table_measures_the_difference_of_patching_through_the_last_token():
    rows = [{"row": g, "patched": p, "accuracy": 0.5} for g in ("value_fetcher", "position_transmitter")
            for p in ("Q", "K", "V", "QK", "QKV")]
    before = pd.DataFrame(rows)
    through = before.assign(accuracy=[0.5 if p == "Q" else 0.52 for p in before["patched"]])
    table = V.input_table(before, through)
    assert abs(table.loc[("A value fetcher", "K"), "difference"] - 0.02) < 1e-9
    assert table.loc[("A value fetcher", "Q"), "difference"] == 0
    assert table.loc[("B position transmitter", "QKV"), "paper (Goat-7B)"] == 0.67
    line = V.input_difference_line(table)
    assert "at most 0.020" in line and "Q-only rows" in line


def test_passes_line_counts_the_stacked_passes():
    line = V.passes_line({"organism-goat": _result(0.5, 0.7, {})}, n_prompts=500, batch_size=32)
    assert "organism-goat 3" in line and "5 × 16 = 80" in line


def test_budget_table_names_its_rows_in_words():
    table = V.budget_table(7e9, n_nodes=175, n_prompts=500, d_head=128, n_layers=32, seq_len=54,
                           d_model=4096)
    assert "both models resident (GB)" in table.index
    assert not any("_gb" in name for name in table.index)
    assert table.loc["weights of one model (GB)", "float16"] < table.loc["weights of one model (GB)",
                                                                           "float32 (the paper)"]
