import random

import pytest
import torch

from entity_tracking import data as D
from tiny import tiny, tiny_dir, tiny_tokenizer  # noqa: F401  (fixtures)


def decode(tokenizer, ids):
    return [tokenizer.convert_ids_to_tokens(int(i)).lstrip("▁") for i in ids]


def test_answer_is_the_object_in_the_queried_box():
    for ex in D.make_dataset(7, 100, seed=3):
        assert ex.answer == ex.objects[ex.labels.index(ex.query_label)]
        assert f"Box {ex.query_label} contains the" in ex.prompt
        assert f"the {ex.answer} is in Box {ex.query_label}".lower() in ex.prompt.lower()


def test_prompt_format_matches_the_paper():
    ex = D.Example(("apple", "computer"), ("F", "Q"), 1)
    assert ex.prompt == "The apple is in Box F, the computer is in Box Q. Box Q contains the"
    assert ex.answer == "computer"


def test_dataset_queries_every_box_of_a_context_in_order():
    ds = D.make_dataset(7, 70, seed=0)
    for c in range(10):
        lines = ds[7 * c: 7 * c + 7]
        assert [ex.query_index for ex in lines] == list(range(7))
        assert len({(ex.objects, ex.labels) for ex in lines}) == 1
        assert len(set(lines[0].objects)) == 7 and len(set(lines[0].labels)) == 7


def test_dataset_is_reproducible_from_its_seed():
    assert D.make_dataset(5, 50, seed=1) == D.make_dataset(5, 50, seed=1)
    assert D.make_dataset(5, 50, seed=1) != D.make_dataset(5, 50, seed=2)


@pytest.mark.parametrize("bad", [0, -1, 27, 50, 7.0, "7", True])
def test_bad_number_of_boxes_names_the_allowed_range(bad):
    with pytest.raises(ValueError, match="from 1 to 26"):
        D.make_dataset(bad, 10)


def test_bad_sample_count_is_refused():
    with pytest.raises(ValueError, match="n_samples"):
        D.make_dataset(3, 0)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 10])
def test_positions_point_at_the_named_tokens(tiny_tokenizer, n):
    ds = D.make_dataset(n, 3 * n, seed=n)
    batch = D.tokenize_examples(ds, tiny_tokenizer)
    assert batch.tokens.shape[1] == 7 * n + 5  # BOS + 7 per segment + ". Box L contains the"
    for b, ex in enumerate(ds):
        toks = decode(tiny_tokenizer, batch.tokens[b])
        assert toks[batch.positions["last"][b]] == "the"
        assert toks[batch.positions["query_label"][b]] == ex.query_label
        assert toks[batch.positions["prev_query_label"][b]] == ex.query_label
        assert batch.positions["prev_query_label"][b] < batch.positions["query_label"][b]
        assert [toks[i] for i in batch.positions["object"][b]] == list(ex.objects)
        assert [toks[i] for i in batch.positions["label"][b]] == list(ex.labels)
        assert decode(tiny_tokenizer, [batch.answer_ids[b]]) == [ex.answer]


def test_path_patching_corruption_moves_the_query_and_names_no_box():
    ds = D.make_dataset(7, 300, seed=0)
    base, corrupt = D.path_patching_pairs(ds, n_base=100, pool=300, seed=1)
    for b, c in zip(base, corrupt):
        assert c.query_index == (b.query_index + 1) % 7
        assert c.query_label not in c.labels and c.answer is None


def test_authors_path_patching_letter_can_name_a_box():
    ds = D.make_dataset(7, 300, seed=0)
    _, corrupt = D.path_patching_pairs(ds, n_base=300, pool=300, seed=1, authors_compat=True)
    hits = sum(c.query_label in c.labels for c in corrupt)
    assert 0 < hits < 300  # about 7/26 of them


def test_corrupted_prompt_has_no_previous_query_label(tiny_tokenizer):
    ds = D.make_dataset(7, 50, seed=0)
    _, corrupt = D.path_patching_pairs(ds, 20, 50, seed=0)
    batch = D.tokenize_examples(corrupt, tiny_tokenizer)
    assert (batch.positions["prev_query_label"] == -1).all() and (batch.answer_ids == -1).all()


def test_mean_ablation_reference_has_no_answers():
    ref = D.mean_ablation_reference(7, 40, seed=0)
    assert len(ref) == 40 and len({r.context_id for r in ref}) == 40
    assert all(r.answer is None for r in ref)


def test_object_value_source_queries_another_position_and_target_is_its_answer():
    ds = D.make_dataset(7, 500, seed=0)
    pairs = D.desideratum_pairs("object_value", ds, 200, seed=0)
    for b, s, t in zip(pairs.base, pairs.source, pairs.targets):
        assert s.query_index != b.query_index and t == s.answer


def test_positional_target_is_the_base_object_at_the_source_position():
    ds = D.make_dataset(7, 500, seed=0)
    pairs = D.desideratum_pairs("positional", ds, 200, seed=0)
    for b, s, t in zip(pairs.base, pairs.source, pairs.targets):
        assert s.query_index != b.query_index
        assert t == b.objects[s.query_index] and t != b.answer


def test_authors_b1_lets_a_seventh_of_positional_pairs_be_trivial():
    ds = D.make_dataset(7, 500, seed=0)
    pairs = D.desideratum_pairs("positional", ds, 500, seed=0, authors_compat=True)
    trivial = sum(t == b.answer for b, t in zip(pairs.base, pairs.targets))
    assert all(s.query_index != 0 for s in pairs.source)
    assert 0.08 < trivial / 500 < 0.2  # ≈ 1/7 of the bases query position > 0 ... and are hit 1/6 of the time


def test_box_label_value_target_is_the_base_object_in_the_source_query_box():
    ds = D.make_dataset(7, 500, seed=0)
    pairs = D.desideratum_pairs("box_label_value", ds, 200, seed=0)
    for b, s, t in zip(pairs.base, pairs.source, pairs.targets):
        assert s.query_label in b.labels and s.query_label != b.query_label
        assert t == b.objects[b.labels.index(s.query_label)]


def test_authors_b2_box_label_target_is_never_the_predicted_token(tiny_tokenizer):
    ds = D.make_dataset(7, 500, seed=0)
    good = D.tokenize_pairs(D.desideratum_pairs("box_label_value", ds, 50, seed=0), tiny_tokenizer)
    bad = D.tokenize_pairs(D.desideratum_pairs("box_label_value", ds, 50, seed=0, authors_compat=True), tiny_tokenizer)
    assert (good.target_ids != bad.target_ids).all()
    assert (bad.target_ids == tiny_tokenizer.unk_token_id).all()


@pytest.mark.parametrize("name", sorted(D.ADDITIONAL_DESIDERATA))
def test_additional_desiderata_rewrite_only_the_source(name, tiny_tokenizer):
    ds = D.make_dataset(7, 200, seed=0)
    pairs = D.desideratum_pairs(name, ds, 30, seed=0)
    batch = D.tokenize_pairs(pairs, tiny_tokenizer)
    assert [ex.prompt for ex in pairs.base] == [ex.prompt for ex in ds[:30]]
    for b, s, t in zip(pairs.base, pairs.source, pairs.targets):
        shift = 1 if name == "incorrect_segment" else 0
        assert t == b.objects[(s.query_index + shift) % 7]
    src = batch.source
    for b in range(len(src)):
        toks = decode(tiny_tokenizer, src.tokens[b])
        assert toks[src.positions["query_label"][b]] == pairs.source[b].query_label
        assert toks[src.positions["prev_query_label"][b]] == pairs.source[b].query_label
    if name not in ("incorrect_segment",):
        assert pairs.source[0].prompt != D.Example(pairs.source[0].objects, pairs.source[0].labels,
                                                   pairs.source[0].query_index).prompt


def test_unknown_desideratum_lists_the_valid_ones():
    with pytest.raises(ValueError, match="positional"):
        D.desideratum_pairs("colour", D.make_dataset(3, 30), 5)


def test_a_word_that_is_several_tokens_is_refused(tmp_path):
    from entity_tracking.testing import build_word_tokenizer

    tok = build_word_tokenizer([w for w in D.task_words() if w != "apple"], tmp_path)
    ex = D.Example(("apple", "car"), ("A", "B"), 0)
    with pytest.raises(D.NotSingleTokenError, match="apple"):
        D.tokenize_examples([ex], tok)
    assert "apple" not in D.single_token_words(D.OBJECTS, tok)


def test_batches_slice_every_field(tiny_tokenizer):
    batch = D.tokenize_examples(D.make_dataset(3, 30), tiny_tokenizer)
    parts = list(batch.batches(7))
    assert [len(p) for p in parts] == [7, 7, 7, 7, 2]
    assert torch.equal(torch.cat([p.positions["object"] for p in parts]), batch.positions["object"])
