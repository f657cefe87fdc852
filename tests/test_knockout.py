"""Attention knockout on a tiny random LLaMA."""

import pytest
import torch

from entity_tracking import knockout as K
from entity_tracking import patching as P
from entity_tracking.data import TaskConfig
from tiny import tiny, tiny_dir  # noqa: F401  (fixtures; tiny needs tiny_dir)


@pytest.fixture(scope="module")
def batch(tiny):
    return tiny.tokenize(tiny.dataset(4, 20, 0))


@torch.no_grad()
def test_knocking_out_nothing_is_the_model(tiny, batch):
    query, key = K.edge_positions(batch, "last->object")
    clean = P.last_logits(tiny.model(batch.tokens))
    assert K.knockout_hooks(tiny.model, query, key, tiny.n_layers) == []
    assert torch.equal(K.knockout_logits(tiny.model, batch, query, key, tiny.n_layers, batch_size=7), clean)


@torch.no_grad()
def test_knocked_out_edge_gets_zero_attention_and_rows_still_sum_to_one(tiny, batch):
    query, key = K.edge_positions(batch, "query_label->prev_query_label")
    names = [P.pattern_name(layer) for layer in range(tiny.n_layers)]
    store = {}

    def keep(name):
        def hook(x, hook):
            store[name] = x.detach()
            return x
        return hook

    hooks = [*K.knockout_hooks(tiny.model, query, key, 1), *((n, keep(n)) for n in names)]
    P.run_with_hooks(tiny.model, batch.tokens, hooks)
    rows = torch.arange(len(batch))
    assert (store[names[1]][rows, :, query, key] == 0).all()
    assert (store[names[0]][rows, :, query, key] > 0).all()  # layers before the start are untouched
    assert torch.allclose(store[names[1]].sum(-1), torch.ones(()), atol=1e-5)


@torch.no_grad()
def test_knockout_changes_only_the_query_token_and_later(tiny, batch):
    query, key = K.edge_positions(batch, "query_label->prev_query_label")
    clean = tiny.model(batch.tokens)
    cut = P.run_with_hooks(tiny.model, batch.tokens, K.knockout_hooks(tiny.model, query, key, 0))
    q = int(query[0])
    assert (query == q).all()
    assert torch.allclose(cut[:, :q], clean[:, :q], atol=1e-6)
    assert not torch.allclose(cut[:, q], clean[:, q], atol=1e-4)


def test_edges_point_at_the_named_tokens(tiny, batch):
    query, key = K.edge_positions(batch, "last->object")
    for b, ex in enumerate(batch.examples):
        assert tiny.tokenizer.decode([int(batch.tokens[b, key[b]])]).strip() == ex.answer
    query, key = K.edge_positions(batch, "query_label->prev_query_label")
    assert torch.equal(batch.tokens[torch.arange(len(batch)), query], batch.tokens[torch.arange(len(batch)), key])
    q1, k1 = K.edge_positions(batch, "last->random", seed=5)
    _, k2 = K.edge_positions(batch, "last->random", seed=5)
    assert torch.equal(k1, k2) and (k1 < batch.positions["query_label"]).all()


def test_unknown_edge_is_refused(batch):
    with pytest.raises(ValueError, match="unknown edge"):
        K.edge_positions(batch, "last->nowhere")


def test_curves_have_one_row_per_edge_and_start_layer_and_are_reproducible(tiny):
    config = K.KnockoutConfig(task=TaskConfig(n_samples=12, n_boxes=3), batch_size=5)
    df = K.knockout_curves(tiny, ["last->object", "last->query_label"], config)
    assert len(df) == 2 * tiny.n_layers
    assert sorted(df["start_layer"].unique()) == list(range(1, tiny.n_layers + 1))
    assert df["accuracy"].between(0, 1).all()
    assert df.equals(K.knockout_curves(tiny, ["last->object", "last->query_label"], config))


def _recovery_summary(object_layer):
    import pandas as pd

    return pd.DataFrame([
        {"edge": "last->object", "ours: recovered from layer": object_layer, "ours: layers": 3,
         "ours: cut everywhere": 0.0, "paper: recovered from layer": 30, "paper: layers": 32},
        {"edge": "last->query_label", "ours: recovered from layer": 3, "ours: layers": 3,
         "ours: cut everywhere": 0.14, "paper: recovered from layer": 16, "paper: layers": 32},
        {"edge": "query_label->prev_query_label", "ours: recovered from layer": 2, "ours: layers": 3,
         "ours: cut everywhere": 0.15, "paper: recovered from layer": 15, "paper: layers": 32},
        {"edge": "last->random", "ours: recovered from layer": 3, "ours: layers": 3,
         "ours: cut everywhere": 0.676, "paper: recovered from layer": None, "paper: layers": 32},
        {"edge": "query_label->random", "ours: recovered from layer": 2, "ours: layers": 3,
         "ours: cut everywhere": 0.70, "paper: recovered from layer": None, "paper: layers": 32},
    ]).astype({"ours: recovered from layer": "Int64", "paper: recovered from layer": "Int64"})


def test_an_edge_that_never_recovers_is_said_so_and_counts_as_last_in_the_order():
    summary = _recovery_summary(None)
    view = K.recovery_view(summary)
    assert view.at["last->object", "ours: recovered from layer"].startswith("never")
    assert view.at["last->random", "paper: recovered from layer"] == "not in the paper's curves"
    text = K.describe_recovery(summary, "m", 0.708)
    assert "the order is the same" in text and "last->object never recovers" in text
    assert "+0.032 (last->random)" in text


def test_an_edge_recovering_before_an_earlier_stage_breaks_the_order():
    text = K.describe_recovery(_recovery_summary(1), "m", 0.708)
    assert "the order is different" in text and "last->object from layer 1" in text
