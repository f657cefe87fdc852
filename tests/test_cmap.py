"""CMAP on tiny random LLaMAs: a base and a LoRA fine-tune of it, saved and loaded like the 7B models."""

import pytest
import torch

from entity_tracking import cmap as C
from entity_tracking import models
from entity_tracking import patching as P
from entity_tracking.circuit import Circuit
from entity_tracking.data import TaskConfig
from entity_tracking.testing import save_tiny_lora
from tiny import tiny, tiny_adapter_dir, tiny_dir  # noqa: F401  (fixtures)

CONFIG = C.CMAPConfig(task=TaskConfig(n_samples=24, n_boxes=4), batch_size=10, max_rows=30)


def _spec(name, base, adapter=None):
    return models.ModelSpec(name=name, base=str(base), adapter=None if adapter is None else str(adapter),
                            scale="local", dtype="float32", n_params=0, needs_gpu=False)


@pytest.fixture(scope="module")
def qkv_adapter_dir(tiny_dir, tmp_path_factory):
    """A fine-tune that changes only q/k/v: it shares W_O, MLPs, norms and embeddings with the base."""
    return save_tiny_lora(tiny_dir, tmp_path_factory.mktemp("tiny-lora-qkv"),
                          target_modules=("q_proj", "k_proj", "v_proj"))


@pytest.fixture(scope="module")
def qkv_tuned(tiny_dir, qkv_adapter_dir):
    return models.load_model(_spec("tiny-qkv-tuned", tiny_dir, qkv_adapter_dir))


@pytest.fixture(scope="module")
def qkvo_tuned(tiny_dir, tiny_adapter_dir):
    return models.load_model(_spec("tiny-qkvo-tuned", tiny_dir, tiny_adapter_dir))


@pytest.fixture(scope="module")
def batch(tiny):
    return tiny.batch(CONFIG.task)


CIRCUIT = Circuit("tiny", {"value_fetcher": [[1, 0], [1, 2]], "position_transmitter": [[1, 2], [0, 1]],
                           "position_detector": [[0, 3]], "structure_reader": [[0, 0]]})


@torch.no_grad()
def test_cmap_from_a_model_into_itself_changes_nothing(tiny, batch):
    nodes = C.all_nodes(tiny.n_layers, tiny.n_heads)
    source = C.source_node_outputs(tiny, batch, nodes, batch_size=7)
    clean = P.last_logits(tiny.model(batch.tokens))
    assert torch.allclose(C.cmap_logits(tiny, batch, source, nodes, batch_size=10), clean, atol=1e-5)
    circuit_nodes = C.cmap_head_sets(CIRCUIT)["full_circuit"]
    source = C.source_node_outputs(tiny, batch, circuit_nodes, batch_size=7)
    assert torch.allclose(C.cmap_logits(tiny, batch, source, circuit_nodes), clean, atol=1e-5)


@torch.no_grad()
def test_cmap_of_every_head_at_every_position_reproduces_a_finetune_that_only_changed_qkv(tiny, qkv_tuned, batch):
    """What CMAP moves is z, the input of W_O. When the fine-tune changed only q/k/v (so W_O, MLPs, norms
    and embeddings are shared), z of every head at every token is *all* that differs, and patching it
    turns the base into the fine-tuned model exactly."""
    nodes = C.all_nodes(tiny.n_layers, tiny.n_heads)
    source = C.source_node_outputs(qkv_tuned, batch, nodes)
    tuned = P.last_logits(qkv_tuned.model(batch.tokens))
    base = P.last_logits(tiny.model(batch.tokens))
    assert not torch.allclose(base, tuned, atol=1e-2)
    assert torch.allclose(C.cmap_logits(tiny, batch, source, nodes), tuned, atol=1e-4)


@torch.no_grad()
def test_cmap_of_every_head_does_not_carry_a_finetuned_output_matrix(tiny, qkvo_tuned, batch):
    """With o_proj fine-tuned too (Goat's LoRA targets), the same patch leaves the base's own W_O in
    place, so the result is *not* the fine-tuned model: the paper's CMAP cannot carry an o_proj update."""
    nodes = C.all_nodes(tiny.n_layers, tiny.n_heads)
    source = C.source_node_outputs(qkvo_tuned, batch, nodes)
    tuned = P.last_logits(qkvo_tuned.model(batch.tokens))
    assert not torch.allclose(C.cmap_logits(tiny, batch, source, nodes), tuned, atol=1e-3)


def test_head_sets_are_fresh_and_the_full_circuit_is_their_union():
    dcm = {("value_fetcher", "object_value"): [[1, 0]], ("position_transmitter", "positional"): [[1, 2]],
           ("position_detector", "positional"): [[0, 3]]}
    rows = C.cmap_head_sets(CIRCUIT, dcm)
    assert list(rows) == list(C.CMAP_ROWS)
    assert rows["value_fetcher"] == ((1, 0, "last"),)
    assert rows["structure_reader"] == ((0, 0, "prev_query_label"),)  # every D head, not DCM-filtered
    assert set(rows["full_circuit"]) == {(1, 0, "last"), (1, 2, "last"), (0, 3, "query_label"), (0, 0, "prev_query_label")}
    assert all(isinstance(r, tuple) for r in rows.values())  # no row can be extended in place
    assert CIRCUIT.groups["value_fetcher"] == [(1, 0), (1, 2)]  # the circuit itself is untouched
    unfiltered = C.cmap_head_sets(CIRCUIT)
    assert len(unfiltered["full_circuit"]) == 5  # (1, 2) at "last" in both A and B counts once


def test_rows_stacked_in_one_pass_equal_each_row_alone(tiny, qkvo_tuned, batch):
    rows = C.cmap_head_sets(CIRCUIT)
    source = C.source_node_outputs(qkvo_tuned, batch, rows["full_circuit"])
    stacked, passes = C.cmap_accuracies(tiny, batch, source, rows, batch_size=10, max_rows=30)
    assert passes == 2 + 2 + 1  # chunks of 10, 10 and 4 prompts: 3 of the 5 rows per pass, then all 5
    for name, nodes in rows.items():
        assert stacked[name] == C.cmap_accuracy(tiny, batch, source, nodes, batch_size=7)


def test_one_model_at_a_time_protocol_matches_both_models_resident(tiny_dir, tiny_adapter_dir):
    rows = C.cmap_head_sets(CIRCUIT)
    source, target = _spec("tiny-tuned", tiny_dir, tiny_adapter_dir), _spec("tiny-base", tiny_dir)
    one = C.cross_model_patching(source, target, rows, CONFIG)
    both = C.cross_model_patching(source, target, rows, CONFIG, both_resident=True)
    assert one["table"].equals(both["table"])
    assert list(one["table"]["row"]) == list(C.CMAP_ROWS)
    assert one["table"]["n_heads"].tolist() == [1, 1, 2, 2, 5]
    w = one["memory"]["target_weights_bytes"]
    assert one["memory"]["peak_weights_and_cache_bytes"] == w + one["memory"]["cache_bytes"]
    assert both["memory"]["peak_weights_and_cache_bytes"] == 2 * w + both["memory"]["cache_bytes"]
    # 5 nodes x 24 prompts x d_head 8 x 4 bytes
    assert one["memory"]["cache_bytes"] == 5 * 24 * 8 * 4


def test_cmap_into_itself_through_the_protocol_gives_the_model_accuracy(tiny_dir):
    spec = _spec("tiny-base", tiny_dir)
    out = C.cross_model_patching(spec, spec, C.cmap_head_sets(CIRCUIT), CONFIG)
    assert out["source_accuracy"] == out["target_accuracy"]
    assert (out["table"]["accuracy"] == out["target_accuracy"]).all()


@torch.no_grad()
def test_input_cmap_of_all_qkv_at_the_last_token_equals_output_cmap_at_the_last_token(tiny, qkvo_tuned, batch):
    """q, k and v of a head fix its output at the last token, and the reset keeps every other token the
    target's own: so patching all three for every head (keys and values up to and including the last
    token) is output CMAP of every head at the last token. The authors' cmap_in leaves the last
    token's own key and value to the target, which is not the same."""
    nodes = C.all_nodes(tiny.n_layers, tiny.n_heads, position="last")
    qkv = C.source_qkv(qkvo_tuned, batch, nodes)
    z = C.source_node_outputs(qkvo_tuned, batch, nodes)
    via_inputs = C.input_cmap_logits(tiny, batch, qkv, nodes, "qkv", kv_through_last=True)
    via_outputs = C.cmap_logits(tiny, batch, z, nodes)
    assert torch.allclose(via_inputs, via_outputs, atol=1e-4)
    assert not torch.allclose(via_inputs, P.last_logits(tiny.model(batch.tokens)), atol=1e-3)
    authors = C.input_cmap_logits(tiny, batch, qkv, nodes, "qkv")
    assert not torch.allclose(authors, via_outputs, atol=1e-4)


@torch.no_grad()
def test_input_cmap_from_a_model_into_itself_changes_nothing(tiny, batch):
    nodes = C.all_nodes(tiny.n_layers, tiny.n_heads, position="last")
    qkv = C.source_qkv(tiny, batch, nodes)
    clean = P.last_logits(tiny.model(batch.tokens))
    for which in C.INPUTS:
        assert torch.allclose(C.input_cmap_logits(tiny, batch, qkv, nodes, which), clean, atol=1e-5)


def test_input_cmap_refuses_nodes_away_from_the_last_token(tiny, batch):
    with pytest.raises(ValueError, match="last token only"):
        C.source_qkv(tiny, batch, [(0, 1, "query_label")])


def test_memory_budget_of_7b_one_model_resident_is_half_of_both():
    budget = C.memory_budget(6.74e9, 4, n_nodes=175, n_prompts=500, d_head=128, n_layers=32, seq_len=54, d_model=4096)
    assert budget["both_resident_weights_gb"] == pytest.approx(2 * budget["one_resident_weights_gb"])
    assert budget["weights_per_model_gb"] == pytest.approx(25.1, abs=0.1)
    assert budget["node_cache_gb"] < 0.05 < budget["authors_full_z_cache_gb"]


def test_cached_cmap_is_stored_by_parameters_and_read_back_unchanged(tiny_dir, tiny_adapter_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ET_RESULTS_DIR", str(tmp_path))
    rows = C.cmap_head_sets(CIRCUIT)
    source, target = _spec("tiny-tuned", tiny_dir, tiny_adapter_dir), _spec("tiny-base", tiny_dir)
    first = C.stored_cmap(source, target, rows, CONFIG)
    assert len(list(tmp_path.glob("cmap-*.json"))) == 1
    again = C.stored_cmap(source, target, rows, CONFIG)
    assert again["table"].equals(first["table"]) and again["source_accuracy"] == first["source_accuracy"]
    C.stored_cmap(target, source, rows, CONFIG)  # the reverse direction is another result
    assert len(list(tmp_path.glob("cmap-*.json"))) == 2


def test_unknown_head_selection_is_refused(tiny):
    with pytest.raises(ValueError, match="selection"):
        C.finetuned_head_sets(tiny, selection="random")
