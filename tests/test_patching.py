import pytest
import torch

from entity_tracking import data as D
from entity_tracking import metrics as M
from entity_tracking import patching as P
from tiny import tiny, tiny_dir  # noqa: F401  (fixtures)


@pytest.fixture(scope="module")
def pair(tiny):
    ds = tiny.dataset(4, 40, seed=0)
    base, corrupt = D.path_patching_pairs(ds, 16, 40, seed=0)
    return tiny.tokenize(base), tiny.tokenize(corrupt)


@torch.no_grad()
def test_patching_a_run_with_itself_changes_nothing(tiny, pair):
    base, _ = pair
    logits, z = P.head_outputs(tiny.model, base.tokens)
    mask = P.empty_mask(tiny.model, base)
    mask[:] = True
    assert torch.equal(P.patch_heads(tiny.model, base.tokens, z, mask), logits)


@torch.no_grad()
def test_patching_every_head_mlp_and_embedding_from_corrupt_reproduces_corrupt_logits(tiny, pair):
    base, corrupt = pair
    n = tiny.n_layers
    names = [P.EMBED_NAME, *(P.z_name(l) for l in range(n)), *(P.mlp_out_name(l) for l in range(n))]
    corrupt_logits, store = P.cache_activations(tiny.model, corrupt.tokens, names)
    mask = P.empty_mask(tiny.model, base)
    mask[:] = True
    z = torch.stack([store[P.z_name(l)] for l in range(n)])
    hooks = [*P.patch_hooks(tiny.model, z, mask), P.replace_hooks(P.EMBED_NAME, store[P.EMBED_NAME]),
             *(P.replace_hooks(P.mlp_out_name(l), store[P.mlp_out_name(l)]) for l in range(n))]
    patched = P.run_with_hooks(tiny.model, base.tokens, hooks)
    assert torch.allclose(patched, corrupt_logits, atol=1e-5)
    assert not torch.allclose(tiny.model(base.tokens), corrupt_logits, atol=1e-2)


def test_nodes_mask_marks_each_named_position(tiny, pair):
    base, _ = pair
    mask = P.nodes_mask(tiny.model, base, [(1, 2, "last"), (0, 3, "prev_query_label")])
    assert mask.sum() == 2 * len(base)
    rows = torch.arange(len(base))
    assert mask[1, rows, base.positions["last"], 2].all()
    assert mask[0, rows, base.positions["prev_query_label"], 3].all()


def test_unknown_position_name_is_refused(tiny, pair):
    with pytest.raises(ValueError, match="unknown position"):
        P.nodes_mask(tiny.model, pair[0], [(0, 0, "middle")])


@torch.no_grad()
def test_activation_patch_changes_only_positions_from_the_node_on(tiny, pair):
    base, corrupt = pair
    clean = tiny.model(base.tokens)
    patched = P.activation_patch(tiny.model, base, corrupt, [(0, 1, "query_label")])
    q = int(base.positions["query_label"][0])
    assert torch.allclose(patched[:, :q], clean[:, :q], atol=1e-6)
    assert not torch.allclose(patched[:, q:], clean[:, q:], atol=1e-4)


@torch.no_grad()
def test_mean_ablation_keeping_every_head_changes_nothing(tiny, pair):
    base, _ = pair
    ref = tiny.tokenize(D.mean_ablation_reference(4, 20, objects=tiny.objects))
    means = P.mean_head_outputs(tiny.model, ref, batch_size=7)
    assert means.shape == (tiny.n_layers, ref.seq_len, tiny.n_heads, tiny.d_head)
    keep = P.empty_mask(tiny.model, base)
    assert not torch.allclose(P.ablate_heads(tiny.model, base.tokens, means, keep), tiny.model(base.tokens))
    keep[:] = True
    assert torch.equal(P.ablate_heads(tiny.model, base.tokens, means, keep), tiny.model(base.tokens))


@torch.no_grad()
def test_mean_is_the_position_wise_average(tiny):
    ref = tiny.tokenize(D.mean_ablation_reference(3, 12, objects=tiny.objects))
    _, z = P.head_outputs(tiny.model, ref.tokens)
    assert torch.allclose(P.mean_head_outputs(tiny.model, ref, batch_size=5), z.mean(1), atol=1e-6)


def test_path_patching_score_is_the_mean_relative_change():
    p_clean = torch.tensor([0.5, 0.2])
    p_patch = torch.tensor([0.25, 0.3])
    assert M.path_patching_score(p_patch, p_clean).item() == pytest.approx(0.0, abs=1e-6)
    assert M.path_patching_score(torch.tensor([0.1]), torch.tensor([0.4])).item() == pytest.approx(-0.75)


def test_accuracy_and_probabilities():
    logits = torch.tensor([[[0.0, 2.0, 1.0]], [[3.0, 0.0, 0.0]]])
    answers = torch.tensor([1, 2])
    assert M.accuracy(logits, answers) == 0.5
    assert torch.allclose(M.answer_probs(logits, answers), logits[:, -1].softmax(-1)[[0, 1], [1, 2]])
