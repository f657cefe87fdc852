import json
import shutil
from types import SimpleNamespace

from dataclasses import replace

import pytest
import torch

from entity_tracking.data import TaskConfig

from entity_tracking import models
from entity_tracking import path_patching as PP
from entity_tracking.circuit import GROUPS, Circuit
from entity_tracking.metrics import answer_probs
from entity_tracking.testing import save_tiny_llama

from planted import PLANTED, save_planted_llama

SMALL = PP.PathPatchingConfig(task=TaskConfig(n_boxes=3, n_samples=12), pool=12, batch_size=5, max_rows=7,
                              receivers=(2, 2, 2), candidates=(3, 2, 2, 2), min_effect=0.0,
                              minimality_threshold=None)


@pytest.fixture(scope="module")
def three_layer_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny3"), n_layers=3, n_heads=4, d_model=32, seed=3)


@pytest.fixture(scope="module")
def lm(three_layer_dir):
    return models.load_model(str(three_layer_dir))


@pytest.fixture(scope="module")
def pairs(lm):
    return PP.pair_batches(lm, SMALL)


RECEIVERS = {"value_fetcher": [], "position_transmitter": [(2, 1), (1, 3)],
             "position_detector": [(2, 0), (1, 1)], "structure_reader": [(1, 2), (2, 2)]}


def scores_of(lm, base, corrupt, group, receivers=None, **kwargs):
    step = PP.STEP_OF[group]
    receivers = RECEIVERS[group] if receivers is None else receivers
    src = PP.source_positions(corrupt, step.position, seed=0)
    return PP.path_patching_scores(lm, base, corrupt, step.position, receivers, step.receiver_input, src,
                                   **{"batch_size": 5, "max_rows": 7, **kwargs})


@pytest.mark.parametrize("group", list(GROUPS))
def test_batched_scores_equal_the_one_head_per_forward_definition(lm, pairs, group):
    base, corrupt = pairs
    step = PP.STEP_OF[group]
    src = PP.source_positions(corrupt, step.position, seed=0)
    batched = scores_of(lm, base, corrupt, group)
    one = PP.path_patching_scores_one_head_per_forward(lm, base, corrupt, step.position, RECEIVERS[group],
                                                       step.receiver_input, src)
    assert batched.shape == (lm.n_layers, lm.n_heads)
    assert batched.abs().max() > 1e-3, "the comparison is empty if nothing has an effect"
    assert (batched - one).abs().max() <= 1e-6


def test_chunking_does_not_change_scores(lm, pairs):
    base, corrupt = pairs
    small = scores_of(lm, base, corrupt, "position_transmitter", batch_size=5, max_rows=7)
    large = scores_of(lm, base, corrupt, "position_transmitter", batch_size=100, max_rows=10_000)
    assert (small - large).abs().max() <= 1e-6


def test_a_head_with_zero_output_projection_scores_zero(three_layer_dir, tmp_path):
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(three_layer_dir)
    d_head = hf.config.hidden_size // hf.config.num_attention_heads
    silent = [(0, 1), (1, 2)]
    with torch.no_grad():
        for layer, head in silent:
            hf.model.layers[layer].self_attn.o_proj.weight[:, head * d_head:(head + 1) * d_head] = 0
    target = tmp_path / "muted"
    shutil.copytree(three_layer_dir, target)  # tokenizer files too
    hf.save_pretrained(target)
    muted = models.load_model(str(target))
    base, corrupt = PP.pair_batches(muted, SMALL)
    for group in GROUPS:
        scores = scores_of(muted, base, corrupt, group)
        for layer, head in silent:
            # exact on the logits path; pass 2 splits the attention softmax in two, so float rounding remains
            assert abs(float(scores[layer, head])) < 1e-6, (group, layer, head)
            if group == "value_fetcher":
                assert scores[layer, head] == 0.0
        if group != "structure_reader":  # D's receivers may see too little here; the rest must move
            assert scores.abs().max() > 1e-4


def test_senders_at_or_after_the_receivers_layer_score_zero(lm, pairs):
    base, corrupt = pairs
    scores = scores_of(lm, base, corrupt, "position_transmitter", receivers=[(1, 0), (1, 3)])
    assert torch.equal(scores[1:], torch.zeros_like(scores[1:]))
    assert scores[0].abs().max() > 1e-4


def test_no_receivers_chosen_means_no_effect(lm, pairs):
    base, corrupt = pairs
    assert torch.equal(scores_of(lm, base, corrupt, "position_detector", receivers=[]), torch.zeros(3, 4))


@torch.no_grad()
def test_patching_every_head_at_the_last_token_from_the_corrupted_run_gives_its_output(lm, pairs):
    """The last token is the same word in both prompts; with all its head outputs corrupted, its
    residual stream (embedding + heads + MLPs of that position) is the corrupted run's."""
    base, corrupt = pairs
    every = PP.sender_masks(lm, [[(l, h) for l in range(lm.n_layers) for h in range(lm.n_heads)]])
    p_clean, p_patch = PP.path_patched_probs(lm, base, corrupt, "last", every, batch_size=5, max_rows=7)
    p_corrupt = answer_probs(lm.model(corrupt.tokens)[:, -1], base.answer_ids)
    assert torch.allclose(p_patch[0], p_corrupt, atol=1e-5)
    assert not torch.allclose(p_clean, p_corrupt, atol=1e-3)


def test_sender_masks_one_set_per_head_or_per_list(lm):
    per_head = PP.sender_masks(lm, [(0, 1), (2, 3)])
    assert per_head.shape == (2, 3, 4) and per_head.sum() == 2 and per_head[1, 2, 3]
    sets = PP.sender_masks(lm, [[(0, 1), (1, 1)], [(2, 0)]])
    assert sets[0].sum() == 2 and sets[1].sum() == 1


def test_step4_reads_the_corrupted_sender_at_one_of_its_box_labels(pairs):
    _, corrupt = pairs
    assert (corrupt.positions["prev_query_label"] == -1).all(), "corrected corrupt letters name no box"
    src = PP.source_positions(corrupt, "prev_query_label", seed=1)
    assert all(int(s) in corrupt.positions["label"][i].tolist() for i, s in enumerate(src))
    assert torch.equal(src, PP.source_positions(corrupt, "prev_query_label", seed=1))


def test_top_heads_are_the_most_negative_beyond_the_minimum_effect():
    scores = torch.tensor([[0.1, -0.5, -0.01], [-0.2, 0.0, -0.3]])
    assert PP.top_heads(scores, 2) == [(0, 1), (1, 2)]
    assert PP.top_heads(scores, 10) == [(0, 1), (1, 2), (1, 0), (0, 2)]
    assert PP.top_heads(scores, 10, min_effect=0.05) == [(0, 1), (1, 2), (1, 0)]


def test_batched_path_patching_recovers_a_planted_circuit(tmp_path):
    """A hand-built model that solves the task with one known head per group (tests/planted.py)."""
    planted = models.load_model(str(save_planted_llama(tmp_path)))
    config = PP.PathPatchingConfig(task=TaskConfig(n_boxes=4, n_samples=40), pool=40, receivers=(1, 1, 1), candidates=(1, 1, 1, 1),
                                   minimality_threshold=None)
    circuit = PP.discover_circuit(planted, config)
    assert circuit.groups == {g: [head] for g, head in PLANTED.items()}
    for group, scores in PP.score_maps(circuit).items():
        layer, head = PLANTED[group]
        assert scores[layer, head] < -0.03
        others = scores.clone()
        others[layer, head] = 0
        assert others.abs().max() < 1e-3, group


def test_candidate_circuit_keeps_receivers_scores_and_drops_b_from_a(lm):
    circuit = PP.candidate_circuit(lm, SMALL)
    assert set(circuit.scores) == set(GROUPS)
    assert all(len(s) == lm.n_layers and len(s[0]) == lm.n_heads for s in circuit.scores.values())
    assert not set(circuit.groups["value_fetcher"]) & set(circuit.groups["position_transmitter"])
    assert circuit.params["receivers"]["value_fetcher"] == []
    assert [tuple(h) for h in circuit.params["receivers"]["position_transmitter"]] == \
        PP.top_heads(PP.score_maps(circuit)["value_fetcher"], 2)
    assert PP.candidates_of(circuit) == circuit.groups


def test_a_prune_rule_is_applied_after_path_patching(lm):
    def keep_first(_, circuit):
        return Circuit(circuit.model, {g: hs[:1] for g, hs in circuit.groups.items()}, circuit.params, circuit.scores)

    pruned = PP.discover_circuit(lm, SMALL, prune=keep_first)
    full = PP.candidate_circuit(lm, SMALL)
    assert pruned.groups == {g: hs[:1] for g, hs in full.groups.items()}
    assert PP.candidates_of(pruned) == full.groups


def test_minimality_is_skipped_when_the_candidates_alone_cannot_do_the_task(lm, tmp_path, monkeypatch):
    monkeypatch.setenv("ET_RESULTS_DIR", str(tmp_path))
    config = PP.PathPatchingConfig(**{**SMALL.__dict__, "minimality_threshold": 0.01, "minimality_samples": 12})
    circuit = PP.discover_circuit(lm, config)  # a random model: its candidates alone score ~0
    assert circuit.params["minimality"]["skipped"]
    assert circuit.params["minimality"]["candidates_alone"] < 1 / SMALL.task.n_boxes
    assert circuit.groups == PP.candidates_of(circuit)


def test_minimality_threshold_prunes_with_circuit_eval(lm, monkeypatch):
    import pandas as pd

    from entity_tracking import circuit_eval as ce

    candidates = PP.candidate_circuit(lm, SMALL)
    (l0, h0), (l1, h1) = candidates.groups["value_fetcher"][:2]
    table = pd.DataFrame([{"group": "value_fetcher", "layer": l0, "head": h0, "before": 0.5, "after": 0.5},
                          {"group": "value_fetcher", "layer": l1, "head": h1, "before": 0.6, "after": 0.3}])
    monkeypatch.setattr(ce, "ablation_setup", lambda lm, config: None)
    monkeypatch.setattr(ce, "ablation_accuracy", lambda setup, ablation: 0.9)
    monkeypatch.setattr(ce, "stored_minimality", lambda model, circuit, config: table)
    config = PP.PathPatchingConfig(**{**SMALL.__dict__, "minimality_threshold": 0.01})
    circuit = PP.discover_circuit(lm, config)
    assert (l0, h0) not in circuit.groups["value_fetcher"] and (l1, h1) in circuit.groups["value_fetcher"]
    assert circuit.groups["position_transmitter"] == candidates.groups["position_transmitter"]
    assert circuit.params["minimality_threshold"] == 0.01 and not circuit.params["minimality"]["skipped"]


def test_load_or_discover_stores_the_circuit_and_reads_it_back(lm, tmp_path, monkeypatch):
    monkeypatch.setenv("ET_RESULTS_DIR", str(tmp_path))
    first = PP.stored_circuit(lm, SMALL)
    files = list((tmp_path / "circuits").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["params"]["config"]["pairing_seed"] == SMALL.pairing_seed

    def fail(*args, **kwargs):
        raise AssertionError("should have been read from the stored file")

    monkeypatch.setattr(PP, "discover_circuit", fail)
    again = PP.stored_circuit(lm, SMALL)
    assert again.groups == first.groups and again.scores == first.scores
    faster = PP.PathPatchingConfig(**{**SMALL.__dict__, "max_rows": 100, "batch_size": 12})
    assert PP.stored_circuit(lm, faster).groups == first.groups  # speed settings share the file
    with pytest.raises(AssertionError, match="stored file"):
        PP.stored_circuit(lm, replace(SMALL, pairing_seed=1))


def test_config_refuses_wrong_counts_and_offers_the_papers_top_k():
    with pytest.raises(ValueError, match="receivers"):
        PP.PathPatchingConfig(receivers=(1, 2))
    assert PP.PathPatchingConfig.paper("goat-7b").candidates == (101, 30, 50, 40)
    assert PP.PathPatchingConfig.paper().receivers_of("position_transmitter") == 5
    with pytest.raises(ValueError, match="resolve"):
        PP.PathPatchingConfig().receivers_of("value_fetcher")


def test_top_k_left_open_is_chosen_per_model():
    def fake(name):
        return SimpleNamespace(spec=SimpleNamespace(name=name))

    goat = PP.PathPatchingConfig().resolve(fake("goat-7b"))
    assert goat.receivers == (50, 20, 30) and goat.min_effect == 0.0
    small = PP.PathPatchingConfig(candidates=(1, 1, 1, 1)).resolve(fake("organism-base"))
    assert small.candidates == (1, 1, 1, 1) and small.receivers == PP.SMALL_MODEL_TOP_K["receivers"]


def test_memory_budget_gives_more_rows_for_more_memory(lm):
    small, large = PP.rows_for_memory(lm, 30, 0.01), PP.rows_for_memory(lm, 30, 1.0)
    assert 1 <= small < large


# Receivers that send pass 2 down each of its routes: all in the last layer (only the last token is
# run), all in a middle layer (the prompt from the receivers' position on), and spread over every
# layer (senders in layer 0 take the second route, senders in layer 1 the first).
ROUTES = {"last layer": [(2, 0), (2, 3)], "middle layer": [(1, 1), (1, 2)], "every layer": [(0, 2), (1, 3), (2, 1)]}


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("group", list(GROUPS)[1:])
def test_every_route_of_pass_2_equals_the_definition_in_float32(lm, pairs, group, route):
    assert next(lm.model.parameters()).dtype == torch.float32
    base, corrupt = pairs
    step = PP.STEP_OF[group]
    src = PP.source_positions(corrupt, step.position, seed=0)
    fast = scores_of(lm, base, corrupt, group, receivers=ROUTES[route])
    one = PP.path_patching_scores_one_head_per_forward(lm, base, corrupt, step.position, ROUTES[route],
                                                       step.receiver_input, src)
    assert one.abs().max() > 1e-3, "the comparison is empty if nothing has an effect"
    assert (fast - one).abs().max() <= 1e-6


def test_step_1_equals_the_definition_in_float32(lm, pairs):
    base, corrupt = pairs
    fast = scores_of(lm, base, corrupt, "value_fetcher")
    one = PP.path_patching_scores_one_head_per_forward(lm, base, corrupt, "last")
    assert (fast - one).abs().max() <= 1e-6


def token_shapes(monkeypatch):
    """The token tensor of every forward pass from here on."""
    from entity_tracking import patching

    shapes, run = [], patching.run_with_hooks

    def counting(model, tokens, hooks=()):
        shapes.append(tuple(tokens.shape))
        return run(model, tokens, hooks)

    monkeypatch.setattr(patching, "run_with_hooks", counting)
    return shapes


def test_pass_2_runs_no_token_before_the_receivers_position(lm, pairs, monkeypatch):
    base, corrupt = pairs
    records = PP.Records(lm, base, corrupt, batch_size=12)
    records.chunk(0)
    shapes = token_shapes(monkeypatch)
    scores_of(lm, base, corrupt, "structure_reader", receivers=ROUTES["middle layer"], batch_size=12,
              max_rows=10_000, records=records)
    senders = 4  # only layer 0 is below the receivers
    prev = base.positions["prev_query_label"]
    firsts = sorted(set(prev.tolist()))
    assert shapes[0] == (senders * 12, 1)  # pass 1: the sender's token
    assert shapes[1:] == [(senders * int((prev == p).sum()), base.seq_len - p) for p in firsts]


def test_pass_2_runs_only_the_last_token_when_every_reached_receiver_is_in_the_last_layer(lm, pairs, monkeypatch):
    base, corrupt = pairs
    records = PP.Records(lm, base, corrupt, batch_size=12)
    records.chunk(0)
    shapes = token_shapes(monkeypatch)
    for group in ("position_transmitter", "position_detector", "structure_reader"):
        scores_of(lm, base, corrupt, group, receivers=ROUTES["last layer"], batch_size=12, max_rows=10_000,
                  records=records)
    assert shapes == [(8 * 12, 1)] * 6  # per step: pass 1 and pass 2, one token for each of 8 senders x 12 prompts


def test_records_are_shared_by_the_steps_and_belong_to_their_prompts(lm, pairs, monkeypatch):
    base, corrupt = pairs
    records = PP.Records(lm, base, corrupt, batch_size=5)
    shared = [scores_of(lm, base, corrupt, g, records=records) for g in GROUPS]
    shapes = token_shapes(monkeypatch)
    again = [scores_of(lm, base, corrupt, g, records=records) for g in GROUPS]
    assert all(torch.equal(a, b) for a, b in zip(shared, again))
    assert all(shape[1] < base.seq_len for shape in shapes), "the clean and corrupted runs are not repeated"
    assert all(torch.allclose(a, scores_of(lm, base, corrupt, g), atol=1e-6) for a, g in zip(shared, GROUPS))
    with pytest.raises(ValueError, match="other prompts"):
        scores_of(lm, base[:6], corrupt[:6], "value_fetcher", records=records)


def test_a_mismatch_with_the_models_attention_fails_loudly(lm, pairs):
    base, corrupt = pairs
    records = PP.Records(lm, base, corrupt)
    records.scale *= 2
    with pytest.raises(RuntimeError, match="cannot be reused"):
        records.chunk(0)


def test_search_cost_counts_fewer_passes_and_positions_than_one_sender_per_pass(lm, pairs):
    base, _ = pairs
    cost = PP.search_cost(lm, SMALL, base).set_index("step")
    senders = lm.n_layers * lm.n_heads
    assert cost.loc["value_fetcher", "authors' passes"] == 3 * senders  # 12 prompts in chunks of 5
    assert cost.loc["position_transmitter", "authors' passes"] == 2 * 3 * senders
    steps = cost.loc[list(GROUPS)]
    assert (steps["our passes"] < steps["authors' passes"]).all()
    assert (steps["our token positions"] < steps["authors' token positions"]).all()
    assert (cost.loc["total"] == cost.drop(index="total").sum()).all()


def test_search_cost_gives_the_authors_21510_passes_at_their_shape(lm):
    """paper.md §6: 3 batches x (1,024 senders x [1 pass in step A + 2 in each of B, C, D]) + 6 cache passes."""
    llama_shape = SimpleNamespace(n_layers=32, n_heads=32, spec=SimpleNamespace(name="llama-7b"))
    config = PP.PathPatchingConfig(task=TaskConfig(n_boxes=7, n_samples=300), pool=300, batch_size=100)
    base, _ = PP.pair_batches(lm, config)
    cost = PP.search_cost(llama_shape, config, base).set_index("step")
    assert cost.loc["total", "authors' passes"] == 21_510
    assert cost.loc["total", "our passes"] < cost.loc["total", "authors' passes"] / 10
