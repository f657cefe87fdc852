"""Circuit evaluation on tiny random LLaMAs: mean ablation, faithfulness, completeness, minimality.

A random model rarely names the right object, so most tests score the model against its *own*
unablated predictions: the full model then has accuracy 1 and every ablation measures how much of
the model's behaviour survives, which is what faithfulness compares.
"""

from dataclasses import replace

from entity_tracking.data import TaskConfig

import pytest
import torch

from entity_tracking import circuit_eval as E
from entity_tracking import models
from entity_tracking import patching as P
from entity_tracking.circuit import GROUPS, Circuit
from entity_tracking.testing import save_tiny_llama

torch.set_num_threads(1)

from tiny import tiny, tiny_dir  # noqa: F401  (fixtures)

SMALL = E.EvalConfig(task=TaskConfig(n_boxes=3, n_samples=24), n_reference=20, batch_size=12, max_rows=48, random_draws=3,
                     completeness_draws=3, minimality_samples=24)


def own_predictions(setup: E.AblationSetup) -> E.AblationSetup:
    """The same setup scored against the unablated model's own next-token predictions."""
    with torch.no_grad():
        predicted = P.last_logits(setup.model(setup.batch.tokens)).argmax(-1)
    return setup.with_batch(replace(setup.batch, answer_ids=predicted))


@pytest.fixture(scope="module")
def setup(tiny):  # noqa: F811
    return own_predictions(E.ablation_setup(tiny, SMALL))


def small_circuit() -> Circuit:
    return Circuit("tiny", {"value_fetcher": [(1, 0), (1, 2)], "position_transmitter": [(1, 1), (0, 3)],
                            "position_detector": [(0, 1), (1, 3)], "structure_reader": [(0, 0)]})


def all_heads_circuit(lm) -> Circuit:
    heads = [(layer, head) for layer in range(lm.n_layers) for head in range(lm.n_heads)]
    return Circuit("all", {g: heads for g in GROUPS})


def test_keeping_every_head_reproduces_the_model(setup):
    keep = E.keep_mask(setup.model, setup.batch, E.model_without(setup.model))
    assert bool(keep.all())
    with torch.no_grad():
        plain = setup.model(setup.batch.tokens)
        ablated = P.ablate_heads(setup.model, setup.batch.tokens, setup.means, keep)
    torch.testing.assert_close(ablated, plain)
    assert E.ablation_accuracy(setup, E.model_without(setup.model)) == 1.0


def test_full_circuit_has_faithfulness_one(setup, tiny):  # noqa: F811
    result = E.faithfulness(setup, all_heads_circuit(tiny), draws=2, ablate_other_positions=False)
    assert result["full_model"] == 1.0
    assert result["circuit"] == 1.0
    assert result["faithfulness"] == 1.0


def test_empty_circuit_equals_fully_mean_ablated_model(setup):
    empty = Circuit("empty", {})
    means = setup.means

    def to_mean(layer, z):  # an independent route: overwrite every head output with its mean
        return means[layer].unsqueeze(0).expand_as(z).to(z.dtype)

    with torch.no_grad():
        reference = P.run_with_hooks(setup.model, setup.batch.tokens, P.z_edit_hooks(setup.model, to_mean))
        keep = E.keep_mask(setup.model, setup.batch, E.circuit_only(empty.nodes()))
        ablated = P.ablate_heads(setup.model, setup.batch.tokens, means, keep)
    assert not bool(keep.any())
    torch.testing.assert_close(ablated, reference)
    expected = (P.last_logits(reference).argmax(-1) == setup.batch.answer_ids).double().mean().item()
    assert E.faithfulness(setup, empty, draws=1)["circuit"] == pytest.approx(expected)


def test_circuit_keeps_only_its_nodes_at_their_positions(setup):
    circuit = small_circuit()
    keep = E.keep_mask(setup.model, setup.batch[:2], E.circuit_only(circuit.nodes()))
    last = int(setup.batch.positions["last"][0])
    query = int(setup.batch.positions["query_label"][0])
    prev = int(setup.batch.positions["prev_query_label"][0])
    assert keep[1, 0, last, 0] and keep[0, 0, last, 3] and keep[0, 0, query, 1] and keep[0, 0, prev, 0]
    assert int(keep[:, 0].sum()) == len(set(circuit.nodes()))
    assert not keep[1, 0, query, 0]  # a value fetcher is not kept at the query label


def test_stacked_ablations_equal_one_at_a_time(setup):
    circuit = small_circuit()
    ablations = [E.circuit_only(circuit.nodes()), E.model_without(setup.model, circuit.nodes(["value_fetcher"])),
                 E.circuit_only(circuit.nodes(["structure_reader"]))]
    stacked = E.ablation_accuracies(setup, ablations)
    one_by_one = E.ablation_accuracies(setup.with_config(replace(SMALL, max_rows=1)), ablations)
    assert stacked == one_by_one


def test_random_circuit_has_the_requested_sizes():
    circuit = Circuit("c", {"value_fetcher": [(3, 1), (4, 2), (5, 0)], "position_transmitter": [(4, 2), (2, 2)],
                            "position_detector": [(1, 1), (2, 3)], "structure_reader": [(1, 0)]})
    for seed in range(5):
        rand = E.random_circuit(circuit, n_layers=6, n_heads=4, seed=seed)
        assert rand.sizes() == circuit.sizes()
        for g, heads in rand.groups.items():
            assert len(set(heads)) == len(heads)
            assert all(0 <= layer < 6 and 0 <= head < 4 for layer, head in heads)
        shared_last = set(rand.groups["value_fetcher"]) & set(rand.groups["position_transmitter"])
        assert len(shared_last) == 1  # as many heads shared at `last` as in the circuit


def test_random_circuit_is_deterministic_with_seed():
    circuit = small_circuit()
    assert E.random_circuit(circuit, 2, 4, seed=3).groups == E.random_circuit(circuit, 2, 4, seed=3).groups
    draws = {tuple(map(tuple, E.random_circuit(circuit, 2, 4, seed=s).groups["value_fetcher"])) for s in range(6)}
    assert len(draws) > 1


def test_random_circuit_refuses_more_heads_than_the_model():
    with pytest.raises(ValueError, match="more heads"):
        E.random_circuit(small_circuit(), n_layers=1, n_heads=1)


def test_faithfulness_is_deterministic_with_seed(setup):
    circuit = small_circuit()
    first = E.faithfulness(setup, circuit, seed=7)
    second = E.faithfulness(setup, circuit, seed=7)
    assert first == second
    assert len(first["random_draws"]) == SMALL.random_draws
    assert first["faithfulness"] == pytest.approx(first["circuit"] / first["full_model"])


def test_completeness_rows_and_group_subsets(setup):
    circuit = small_circuit()
    table = E.completeness(setup, circuit)
    assert list(table["K"]) == ["random"] * SMALL.completeness_draws + list(GROUPS)
    group_a = table[table["K"] == "value_fetcher"].iloc[0]
    nodes = set(circuit.nodes())
    expect_c = E.ablation_accuracy(setup, E.circuit_only(nodes - set(circuit.nodes(["value_fetcher"]))))
    expect_m = E.ablation_accuracy(setup, E.model_without(setup.model, circuit.nodes(["value_fetcher"])))
    assert group_a["circuit_without_K"] == expect_c and group_a["model_without_K"] == expect_m
    assert (table["incompleteness"] == (table["circuit_without_K"] - table["model_without_K"]).abs()).all()
    summary = E.completeness_summary(table)
    assert summary["draws"].iloc[0] == SMALL.completeness_draws
    assert table.equals(E.completeness(setup, circuit))


def test_empty_K_leaves_the_full_model(setup):
    assert E.ablation_accuracy(setup, E.model_without(setup.model, ())) == 1.0


def test_minimality_score_definition():
    assert E.minimality_score(0.5, 0.4) == pytest.approx(0.25)
    assert E.minimality_score(0.3, 0.3) == 0.0
    assert E.minimality_score(0.3, 0.0) == float("inf")
    assert E.minimality_score(0.0, 0.0) == 0.0


@pytest.fixture(scope="module")
def silent_head_model(tmp_path_factory):
    """A tiny LLaMA whose head 2 of layer 1 writes nothing (its slice of o_proj is zero)."""
    from transformers import LlamaForCausalLM

    directory = save_tiny_llama(tmp_path_factory.mktemp("silent-head"), n_layers=2, n_heads=4, d_model=32, seed=3)
    hf = LlamaForCausalLM.from_pretrained(directory)
    d_head = hf.config.hidden_size // hf.config.num_attention_heads
    with torch.no_grad():
        hf.model.layers[1].self_attn.o_proj.weight[:, 2 * d_head: 3 * d_head] = 0
    hf.save_pretrained(directory)
    return models.load_model(str(directory))


def test_minimality_of_a_head_that_does_nothing_is_zero(silent_head_model):
    setup = own_predictions(E.ablation_setup(silent_head_model, SMALL))
    circuit = Circuit("tiny", {"value_fetcher": [(1, 2), (1, 0), (0, 1), (1, 3)], "position_transmitter": [(0, 2)],
                               "position_detector": [(0, 3)], "structure_reader": [(0, 0)]})
    table = E.minimality_group(setup, circuit, "value_fetcher")
    assert len(table) == 4
    silent = table[(table["layer"] == 1) & (table["head"] == 2)].iloc[0]
    assert silent["before"] == silent["after"]
    assert silent["drop"] == 0 and silent["score"] == 0
    assert "1.2" not in " ".join(table["K"])  # never part of the set K that makes another head matter
    judged = E.with_threshold(table, 0.0)
    assert bool(judged[(judged["layer"] == 1) & (judged["head"] == 2)]["kept"].iloc[0])  # 0 >= 0: the authors' Goat rule
    pruned = E.prune_circuit(circuit, table, threshold=0.01)
    assert (1, 2) not in pruned.groups["value_fetcher"]
    assert pruned.groups["structure_reader"] == circuit.groups["structure_reader"]
    assert pruned.params["minimality_threshold"] == 0.01


def test_minimality_matches_its_definition(setup):
    circuit = small_circuit()
    table = E.minimality_group(setup, circuit, "value_fetcher")
    for row in table.itertuples():
        k = [tuple(map(int, s.split("."))) for s in row.K.split()]
        assert len(k) <= 1  # ceil(0.3 * 2)
        before = E.ablation_accuracy(setup, E.circuit_only(E.without_heads(circuit, "value_fetcher", k).nodes()))
        after = E.ablation_accuracy(setup, E.circuit_only(
            E.without_heads(circuit, "value_fetcher", [*k, (row.layer, row.head)]).nodes()))
        assert (row.before, row.after) == (before, after)


def test_removing_a_head_shared_with_another_group_at_the_same_position_keeps_the_node():
    circuit = Circuit("c", {"value_fetcher": [(1, 1)], "position_transmitter": [(1, 1)]})
    assert (1, 1, "last") in E.without_heads(circuit, "value_fetcher", [(1, 1)]).nodes()


def test_stored_results_are_reread_without_the_model(tiny, tmp_path, monkeypatch):  # noqa: F811
    from entity_tracking import variants

    monkeypatch.setenv("ET_RESULTS_DIR", str(tmp_path))
    circuit = small_circuit()
    first = E.stored_faithfulness(tiny, circuit, SMALL)
    direct = E.faithfulness(E.ablation_setup(tiny, SMALL), circuit)
    assert (first["full_model"], first["circuit"]) == (direct["full_model"], direct["circuit"])
    assert len(list(tmp_path.glob("faithfulness-*.json"))) == 1
    monkeypatch.setattr(variants, "load", lambda *a, **k: pytest.fail("a stored result needs no model"))
    assert E.stored_faithfulness(tiny, circuit, SMALL)["circuit_heads"] == first["circuit_heads"]
    monkeypatch.undo()
    monkeypatch.setenv("ET_RESULTS_DIR", str(tmp_path))
    E.stored_faithfulness(tiny, E.random_circuit(circuit, 2, 4, seed=1), SMALL)
    assert len(list(tmp_path.glob("faithfulness-*.json"))) == 2


def test_overlap_table_counts_shared_heads():
    a = small_circuit()
    b = Circuit("b", {"value_fetcher": [(1, 0)], "structure_reader": [(0, 0), (1, 1)]})
    table = E.overlap_table(a, {"b": b}).set_index("group")
    assert table.loc["value_fetcher", "shared"] == 1 and table.loc["value_fetcher", "frac_llama_in_other"] == 0.5
    assert table.loc["all", "llama_heads"] == len(set(a.nodes())) and table.loc["all", "shared"] == 2


def test_minimality_bars_draw_infinite_scores_at_the_top_and_bind_the_threshold():
    import json
    import math

    import pandas as pd

    from entity_tracking import plots

    table = pd.DataFrame({"group": ["value_fetcher", "value_fetcher", "structure_reader"], "layer": [1, 2, 0],
                          "head": [3, 4, 5], "score": [0.2, math.inf, 0.005], "before": [0.5, 0.4, 0.3],
                          "after": [0.4, 0.0, 0.29]})
    spec = plots.minimality_bars(table, thresholds=(0.01, 0.0)).to_dict()
    text = json.dumps(spec)
    assert '"threshold"' in text and "binding_radio" not in text and '"radio"' in text
    values = next(iter(spec["datasets"].values()))
    shown = {(v["layer"], v["head"]): v["shown"] for v in values}
    assert shown[(2, 4)] > shown[(1, 3)] > shown[(0, 5)]
    assert all(math.isfinite(v) for v in shown.values())


def test_repeated_ablations_are_run_once_and_answered_in_order(setup, monkeypatch):
    circuit = small_circuit()
    a, b = E.circuit_only(circuit.nodes()), E.model_without(setup.model, circuit.nodes(["position_detector"]))
    expected = E.ablation_accuracies(setup, [a, b])
    calls = []
    real, real_after = P.ablate_heads, P.ablate_heads_after
    monkeypatch.setattr(P, "ablate_heads", lambda *args: calls.append(args[1].shape[0]) or real(*args))
    monkeypatch.setattr(P, "ablate_heads_after", lambda *args: calls.append(args[1].shape[0]) or real_after(*args))
    assert E.ablation_accuracies(setup, [b, a, b, a]) == [expected[1], expected[0], expected[1], expected[0]]
    assert sum(calls) == 2 * len(setup.batch)


def test_sharing_the_first_tokens_gives_the_every_token_accuracies(setup, monkeypatch):
    """Ablations that agree on a prompt's first tokens run those tokens once per chunk; the answers
    must be those of running every token of every ablation."""
    circuit = small_circuit()
    heads = circuit.nodes()
    ablations = [E.circuit_only(heads), E.circuit_only(heads[:2]), E.circuit_only(heads, False),
                 E.model_without(setup.model), E.model_without(setup.model, heads[:3]),
                 E.circuit_only([], True)]
    fast = E.ablation_accuracies(setup, ablations)
    monkeypatch.setattr(P, "supports_prefix_reuse", lambda model: False)
    assert E.ablation_accuracies(setup, ablations) == fast


def test_stored_minimality_keeps_infinite_scores(tiny, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("ET_RESULTS_DIR", str(tmp_path))
    fresh = E.minimality(E.ablation_setup(tiny, SMALL), small_circuit())
    E.stored_minimality(tiny, small_circuit(), SMALL)
    reread = E.stored_minimality(tiny, small_circuit(), SMALL)
    assert list(reread["score"]) == pytest.approx(list(fresh["score"]), rel=1e-12)
    assert E.minimality_score(0.3, 0.0) == float("inf")  # JSON has no infinity: recomputed from before/after


def test_faithfulness_across_gives_one_row_per_model_and_circuit(tiny, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("ET_RESULTS_DIR", str(tmp_path))
    circuits = [small_circuit(), Circuit("other", {"value_fetcher": [(1, 1)]})]
    table = E.faithfulness_table([tiny, tiny], circuits, SMALL)
    assert len(table) == 4 and list(table["circuit_of"]) == ["tiny", "other", "tiny", "other"]
    direct = E.faithfulness(E.ablation_setup(tiny, SMALL), circuits[0])
    row = table.iloc[0]
    assert (row["full_model"], row["circuit"]) == pytest.approx((direct["full_model"], direct["circuit"]))
    beside = E.table1_beside_paper(table, "tiny")
    assert len(beside) == 2 and beside["paper_circuit"].isna().all()  # a local model stands for no paper model
