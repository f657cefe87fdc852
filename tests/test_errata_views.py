"""Appendix A3's own measurements (`entity_tracking.errata_views`): the authors' substring segment
test, their object list, the W4 split of clean and hooked runs, W5 and the CMAP head lists."""

from __future__ import annotations

import pytest
import torch

from entity_tracking import data as D
from entity_tracking import errata_views as errata
from entity_tracking.circuit import Circuit


def _example(labels, query_index):
    objects = D.OBJECTS[:len(labels)]
    return D.Example(tuple(objects), tuple(labels), query_index)


def test_substring_test_puts_b_and_t_in_the_first_segment_and_reads_other_labels_right():
    labels = ("C", "T", "B", "K")
    assert [errata.authors_segment_index(_example(labels, i)) for i in range(4)] == [0, 0, 0, 3]
    assert errata.authors_segment_index(_example(labels, 0), "K") == 3


def test_substring_misreads_count_only_b_and_t_outside_the_first_segment():
    prompts = D.make_dataset(7, 700, seed=3)
    frame = errata.substring_misreads(prompts).set_index("label")
    assert set(frame.index[frame["misread"] > 0]) <= {"B", "T"}
    assert frame.loc["B", "misread"] > 0 and frame.loc["T", "misread"] > 0
    assert frame["prompts"].sum() == 700


def test_authors_sampler_would_redraw_exactly_the_b_and_t_sources_of_the_b1_data():
    prompts = D.make_dataset(7, 500, seed=0)
    pairs = D.desideratum_pairs("positional", prompts, 500, pool=500, seed=20, authors_compat=True)
    redraws = errata.substring_redraws(pairs)
    expected = sum(s.query_label in {"B", "T"} and s.query_index != 0 for s in pairs.source) / len(pairs)
    assert redraws["share"] == pytest.approx(expected) and 0 < expected < 0.2
    assert set(redraws["labels"]) <= {"B", "T"}


def test_same_segment_share_is_zero_for_corrected_pairs_and_about_one_in_n_with_b1():
    prompts = D.make_dataset(7, 500, seed=0)
    fixed = D.desideratum_pairs("positional", prompts, 500, pool=500, seed=20)
    b1 = D.desideratum_pairs("positional", prompts, 500, pool=500, seed=20, authors_compat=True)
    assert errata.same_segment_share(fixed) == 0.0
    assert 0.08 < errata.same_segment_share(b1) < 0.25


def test_object_lists_share_51_nouns():
    overlap = errata.object_overlap()
    assert (overlap["ours"], overlap["theirs"], overlap["shared"]) == (84, 85, 51)
    assert len(overlap["only_ours"]) == 84 - 51 and "television" in overlap["only_theirs"]


def test_step1_maps_score_the_authors_split_against_the_merged_clean_probability():
    merged = {"n_layers": 1, "n_heads": 2, "p_clean": [0.5, 0.25], "p_patch": [[0.5, 0.25], [0.25, 0.25]]}
    compat = {"n_layers": 1, "n_heads": 2, "p_clean": [0.4, 0.2], "p_patch": [[0.4, 0.2], [0.2, 0.2]]}
    maps = errata.step1_score_maps(merged, compat)
    assert torch.allclose(maps["corrected"], torch.tensor([[0.0, -0.25]]))
    assert torch.allclose(maps["compat"], torch.tensor([[0.0, -0.25]]))
    # every head, even one that changes nothing, is shifted by the clean runs' difference
    assert torch.allclose(maps["authors"], torch.tensor([[-0.2, -0.4]]))
    assert errata.clean_probability_change(merged, compat) == pytest.approx(-0.2)
    summary = errata.step1_summary(maps)
    assert summary.loc["top head", "authors"] == "L0H1"
    floored = errata.step1_score_maps(merged, compat, p_floor=0.5)  # denominators 0.5 and 0.5
    assert torch.allclose(floored["corrected"], torch.tensor([[0.0, -0.25]]))
    assert torch.allclose(floored["authors"], torch.tensor([[-0.15, -0.35]], dtype=floored["authors"].dtype))


def test_authors_split_faithfulness_divides_the_hooked_circuit_by_the_plain_model():
    merged = {"full_model": 0.4, "circuit": 0.2, "random_circuit": 0.0}
    compat = {"full_model": 0.5, "circuit": 0.1, "random_circuit": 0.01}
    split = errata.authors_split_faithfulness(merged, compat)
    assert split == {"full_model": 0.4, "circuit": 0.1, "random_circuit": 0.01, "faithfulness": 0.25}


def test_is_not_pairs_are_the_pairs_with_equal_head_index_in_different_layers():
    circuit = Circuit("m", {"value_fetcher": [(0, 1), (2, 1), (2, 0)], "position_transmitter": [(1, 3)]})
    assert errata.is_not_pairs(circuit) == (1, 3)


def test_flat_index_decoding_is_right_only_for_square_models():
    assert errata.flat_index_decoding(32, 32) == (0, 0)
    wrong, beyond = errata.flat_index_decoding(3, 4)
    assert wrong > 0 and beyond == sum(i // 3 >= 3 for i in range(12))


def test_leaked_rows_extend_the_value_fetcher_row_by_the_transmitters():
    rows = errata.leaked_rows([(2, 0), (1, 1)], [(1, 1), (1, 2)])
    fresh, leaked = rows.values()
    assert fresh == ((2, 0, "last"), (1, 1, "last"))
    assert leaked == ((2, 0, "last"), (1, 1, "last"), (1, 2, "last"))
