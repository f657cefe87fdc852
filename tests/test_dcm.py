"""DCM and the activation-patching check, pinned on tiny random models through equivalences and a
planted head (a random model tracks no entities, so no test relies on its accuracy).

The mask follows the paper: ``m_h = 1`` keeps head h's base output, ``m_h = 0`` takes the source's.
Issue 6 states its checks in terms of the patched fraction ``1 - m``: "patch everything" is the
mask of zeros here, "patch nothing" the mask of ones."""

from dataclasses import replace

import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from entity_tracking import data as D
from entity_tracking import dcm
from entity_tracking import models
from entity_tracking import patching as P
from entity_tracking.circuit import GROUPS
from tiny import tiny, tiny_dir  # noqa: F401  (fixtures)

torch.set_num_threads(1)

N_BOXES = 3
SMALL = dcm.DCMConfig(task=D.TaskConfig(n_boxes=N_BOXES, n_samples=80), validation_share=0.2, test_share=0.2,
                      batch_size=16, eval_every=1)
ALL_HEADS = [(layer, head) for layer in range(2) for head in range(4)]


@pytest.fixture(scope="module")
def pairs(tiny):
    ds = tiny.dataset(N_BOXES, 24, seed=0)
    pairs = D.desideratum_pairs("positional", ds, 12, seed=1)
    return dcm.pairs_to(D.tokenize_pairs(pairs, tiny.tokenizer), tiny.device)


@pytest.mark.parametrize("group", list(GROUPS))
@torch.no_grad()
def test_mask_patching_nothing_reproduces_the_base_run(tiny, pairs, group):
    data = dcm.prepare_patch_data(tiny.model, pairs, ALL_HEADS, group)
    logits = dcm.blended_logits(tiny.model, [dcm.Blend(ALL_HEADS, torch.ones(len(ALL_HEADS)), data)])
    assert torch.equal(logits, tiny.model(pairs.base.tokens))


@pytest.mark.parametrize("group", list(GROUPS))
@torch.no_grad()
def test_mask_patching_everything_equals_full_activation_patching_of_the_group(tiny, pairs, group):
    heads = [(0, 1), (0, 3), (1, 0), (1, 2)]
    data = dcm.prepare_patch_data(tiny.model, pairs, heads, group)
    zeros = torch.zeros(len(heads))
    logits = dcm.blended_logits(tiny.model, [dcm.Blend(heads, zeros, data)])
    expected = P.activation_patch(tiny.model, pairs.base, pairs.source, P.heads_at(heads, GROUPS[group]))
    assert torch.allclose(logits, expected, atol=1e-6)
    assert not torch.allclose(logits, tiny.model(pairs.base.tokens), atol=1e-3)


@torch.no_grad()
def test_mask_mixes_base_and_source_head_outputs_linearly(tiny, pairs):
    heads, m = [(1, 1), (1, 3)], torch.tensor([0.25, 0.75])
    data = dcm.prepare_patch_data(tiny.model, pairs, heads, "position_detector")
    seen = {}
    record = (P.z_name(1), lambda z, hook: seen.setdefault("z", z.detach().clone()))
    blend = dcm.blend_hooks(tiny.model, [dcm.Blend(heads, m, data)])
    P.run_with_hooks(tiny.model, data.tokens, [*blend, record])
    _, clean = P.head_outputs(tiny.model, data.tokens)
    rows, pos = torch.arange(len(data)), data.base_index
    for k, (layer, head) in enumerate(heads):
        want = m[k] * clean[layer, rows, pos, head] + (1 - m[k]) * data.source_z[:, k]
        assert torch.allclose(seen["z"][rows, pos, head], want, atol=1e-6)
    untouched = torch.ones_like(seen["z"][..., 0], dtype=torch.bool)
    untouched[rows, pos, 1] = untouched[rows, pos, 3] = False
    assert torch.equal(seen["z"][untouched], clean[1][untouched])


def test_structure_readers_use_each_prompts_own_position_unless_authors_compat(tiny, pairs):
    base_idx, src_idx = dcm.patch_positions(pairs.base, pairs.source, "structure_reader")
    assert torch.equal(base_idx, pairs.base.positions["prev_query_label"])
    assert torch.equal(src_idx, pairs.source.positions["prev_query_label"])
    assert not torch.equal(base_idx, src_idx)
    _, src_w3 = dcm.patch_positions(pairs.base, pairs.source, "structure_reader", base_index_in_source=True)
    assert torch.equal(src_w3, base_idx)
    _, src_last = dcm.patch_positions(pairs.base, pairs.source, "value_fetcher", base_index_in_source=True)
    assert torch.equal(src_last, pairs.source.positions["last"])


def test_gradient_reaches_the_mask_and_not_the_model(tiny, pairs):
    data = dcm.prepare_patch_data(tiny.model, pairs, ALL_HEADS, "position_transmitter")
    mask = torch.ones(len(ALL_HEADS), requires_grad=True)
    logits = dcm.blended_logits(tiny.model, [dcm.Blend(ALL_HEADS, mask, data)])
    dcm.target_logits(logits, data.targets).mean().backward()
    assert mask.grad is not None and mask.grad.abs().sum() > 0
    assert not data.source_z.requires_grad
    assert all(p.grad is None and not p.requires_grad for p in tiny.model.parameters())


@pytest.fixture(scope="module")
def planted(tiny_dir, tmp_path_factory):
    """The tiny model with one route from the context to the logits: head L1H2. Every other head's
    W_O and every MLP are zeroed; L1H2 attends uniformly (W_Q zeroed) so its output carries the
    prompt's words, and its W_O is scaled up. Only its patch can change a logit, so it is the one
    component DCM should find."""
    directory = tmp_path_factory.mktemp("planted")
    hf = LlamaForCausalLM.from_pretrained(tiny_dir)
    d_model, n_heads = hf.config.hidden_size, hf.config.num_attention_heads
    d_head = d_model // n_heads
    with torch.no_grad():
        for layer, block in enumerate(hf.model.layers):
            block.mlp.down_proj.weight.zero_()
            w_o = block.self_attn.o_proj.weight.view(d_model, n_heads, d_head)
            planted_w_o = w_o[:, 2].clone() * 3
            w_o.zero_()
            if layer == 1:
                w_o[:, 2] = planted_w_o
                block.self_attn.q_proj.weight.view(n_heads, d_head, d_model)[2].zero_()
    hf.save_pretrained(directory)
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(directory)
    return models.load_model(str(directory))


def planted_pairs(lm, config):
    """Positional pairs whose target is what the model says with the planted head patched."""
    ds = lm.dataset(config.task.n_boxes, config.n_pairs, seed=0)
    pairs = dcm.pairs_to(D.tokenize_pairs(D.desideratum_pairs("positional", ds, config.n_pairs, seed=3), lm.tokenizer),
                         lm.device)
    with torch.no_grad():
        patched = P.activation_patch(lm.model, pairs.base, pairs.source, [(1, 2, "last")])
    return replace(pairs, target_ids=patched[:, -1].argmax(-1))


def test_dcm_recovers_a_planted_head(planted):
    config = replace(SMALL, epochs=3)
    pairs = planted_pairs(planted, config)
    with torch.no_grad():
        unpatched_agreement = (planted.model(pairs.base.tokens)[:, -1].argmax(-1) == pairs.target_ids).float().mean()
    assert unpatched_agreement < 0.5  # the target is not what the model says anyway
    result = dcm.run_dcm(planted, ALL_HEADS, "position_transmitter", "positional", config, pairs=pairs)
    assert result.heads == [(1, 2)]
    assert result.test_accuracy == 1.0 and result.validation_accuracy == 1.0
    others = [m for h, m in zip(ALL_HEADS, result.mask.tolist()) if h != (1, 2)]
    assert others == [1.0] * 7  # no logit gradient, only the sparsity term pushing them to 1


def test_dcm_is_identical_on_rerun_with_the_same_seed(tiny):
    config = replace(SMALL, epochs=1)
    first = dcm.run_dcm(tiny, ALL_HEADS, "value_fetcher", "object_value", config)
    second = dcm.run_dcm(tiny, ALL_HEADS, "value_fetcher", "object_value", config)
    assert torch.equal(first.mask, second.mask)
    assert first.heads == second.heads and first.test_accuracy == second.test_accuracy
    assert first.history.equals(second.history)
    assert first.history["val_accuracy"].notna().all()  # eval_every=1: every step validated


def test_authors_validation_reads_structure_reader_positions_from_the_training_batch(tiny, pairs):
    heads = [(0, 0), (1, 1)]
    data = dcm.prepare_patch_data(tiny.model, pairs, heads, "structure_reader", every_position=True)
    other = data[6:9]  # a three-row "training batch": evaluated rows take its positions in turn
    shifted = dcm._at_positions_of(data, other)
    assert torch.equal(shifted.base_index, other.base_index.repeat(4))
    with torch.no_grad():
        _, z = P.head_outputs(tiny.model, pairs.source.tokens)
    rows = torch.arange(len(data))
    for k, (layer, head) in enumerate(heads):
        assert torch.allclose(shifted.source_z[:, k], z[layer, rows, shifted.source_index, head], atol=1e-6)


def test_masks_trained_together_equal_masks_trained_alone(tiny):
    config = replace(SMALL, epochs=1, eval_every=2)
    jobs = [dcm.mask_job(tiny, heads, group, desideratum, config)
            for heads, group, desideratum in [(ALL_HEADS, "value_fetcher", "object_value"),
                                              (ALL_HEADS[:3], "position_detector", "positional"),
                                              (ALL_HEADS[2:], "structure_reader", "positional")]]
    together = dcm.train_masks(tiny.model, jobs, config)
    for job, (mask, history, val) in zip(jobs, together):
        alone_mask, alone_history, alone_val = dcm.train_mask(tiny.model, job.heads, job.train, job.val, config)
        assert torch.allclose(mask, alone_mask, atol=1e-5)
        assert dcm.selected_heads(job.heads, mask) == dcm.selected_heads(job.heads, alone_mask)
        assert val == alone_val
        pd.testing.assert_series_equal(history["n_heads"], alone_history["n_heads"])


def test_dcm_runs_on_the_authors_data_and_selection(tiny):
    config = replace(SMALL, epochs=1, task=replace(SMALL.task, authors_compat=True))
    result = dcm.run_dcm(tiny, ALL_HEADS[:3], "structure_reader", "box_label_value", config)
    assert result.config.task.authors_compat and 0.0 <= result.test_accuracy <= 1.0
    row = dcm.dcm_frame([result], circuit="tiny").iloc[0]
    assert (row["group"], row["desideratum"], row["candidates"]) == ("structure_reader", "box_label_value", 3)


CHECK = dcm.PatchingCheckConfig(task=D.TaskConfig(n_boxes=N_BOXES, n_samples=20), n_draws=2, batch_size=8)


def test_desideratum_accuracy_equals_activation_patching_of_a_fresh_pairing(tiny):
    heads = [(0, 2), (1, 0)]
    got = dcm.desideratum_accuracy(tiny, heads, "position_detector", "positional", CHECK)
    ds = tiny.dataset(N_BOXES, CHECK.task.n_samples, CHECK.task.dataset_seed)
    for draw, seed in enumerate(dcm.draw_seeds(CHECK.pairing_seed, CHECK.n_draws)):
        pairs = D.tokenize_pairs(D.desideratum_pairs("positional", ds, CHECK.task.n_samples, pool=CHECK.task.n_samples, seed=seed),
                                 tiny.tokenizer)
        with torch.no_grad():
            logits = P.activation_patch(tiny.model, pairs.base, pairs.source, P.heads_at(heads, "query_label"))
        assert got[draw].item() == pytest.approx((logits[:, -1].argmax(-1) == pairs.target_ids).float().mean().item())


def test_desideratum_accuracy_is_identical_on_rerun_with_the_same_seed(tiny):
    heads = [(0, 2), (1, 0), (1, 3)]
    first = dcm.desideratum_accuracy(tiny, heads, "value_fetcher", "object_value", CHECK)
    second = dcm.desideratum_accuracy(tiny, heads, "value_fetcher", "object_value", CHECK)
    assert torch.equal(first, second)
    other_seed = dcm.desideratum_accuracy(tiny, heads, "value_fetcher", "object_value",
                                          replace(CHECK, pairing_seed=CHECK.pairing_seed + 1))
    assert dcm.draw_seeds(CHECK.pairing_seed, 2) != dcm.draw_seeds(CHECK.pairing_seed + 1, 2)
    assert other_seed.shape == first.shape


def test_desideratum_accuracy_without_heads_is_the_unpatched_floor(tiny):
    got = dcm.desideratum_accuracy(tiny, [], "value_fetcher", "positional", replace(CHECK, n_draws=1))
    ds = tiny.dataset(N_BOXES, CHECK.task.n_samples, CHECK.task.dataset_seed)
    pairs = D.tokenize_pairs(D.desideratum_pairs("positional", ds, CHECK.task.n_samples, pool=CHECK.task.n_samples,
                                                 seed=dcm.draw_seeds(CHECK.pairing_seed, 1)[0]), tiny.tokenizer)
    with torch.no_grad():
        floor = (tiny.model(pairs.base.tokens)[:, -1].argmax(-1) == pairs.target_ids).float().mean().item()
    assert got.tolist() == pytest.approx([floor])


def test_patching_check_has_a_row_per_circuit_group_desideratum_and_draw(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("ET_RESULTS_DIR", str(tmp_path))
    head_sets = {"tiny-circuit": {("position_transmitter", "positional"): [(1, 1)],
                                  ("structure_reader", "random_text_start"): [(0, 1), (0, 2)]}}
    config = replace(CHECK, task=replace(CHECK.task, authors_compat=True))
    frame = dcm.stored_patching_check(tiny, head_sets, config)
    assert list(frame.columns) == dcm.CHECK_COLUMNS
    assert len(frame) == 2 * CHECK.n_draws
    assert frame["accuracy"].between(0, 1).all() and frame["authors_compat"].all()
    assert sorted(frame["draw"].unique()) == list(range(CHECK.n_draws))
    one = dcm.desideratum_accuracy(tiny, [(1, 1)], "position_transmitter", "positional", config)
    assert frame.query("group == 'position_transmitter'")["accuracy"].tolist() == pytest.approx(one.tolist())


@pytest.mark.parametrize("name", sorted(D.ADDITIONAL_DESIDERATA))
def test_rephrased_sources_are_read_at_their_own_named_positions(tiny, name):
    ds = tiny.dataset(N_BOXES, 12, seed=0)
    pairs = D.tokenize_pairs(D.desideratum_pairs(name, ds, 12, seed=2), tiny.tokenizer)
    rows = torch.arange(len(pairs))
    _, src_last = dcm.patch_positions(pairs.base, pairs.source, "position_transmitter")
    assert torch.equal(src_last, torch.full_like(src_last, pairs.source.seq_len - 1))
    _, src_prev = dcm.patch_positions(pairs.base, pairs.source, "structure_reader")
    query_letters = pairs.source.tokens[rows, pairs.source.positions["query_label"]]
    assert torch.equal(pairs.source.tokens[rows, src_prev], query_letters)
    assert (src_prev < pairs.source.positions["query_label"]).all()


def test_additional_desiderata_run_dcm_then_the_check_for_the_position_transmitters(tiny):
    config = replace(SMALL, epochs=1)
    names = ["add_seg_start", "altered_box_obj_order"]
    frame = dcm.stored_additional_desiderata(tiny, ALL_HEADS[:4], desiderata=names, dcm_config=config,
                                             check_config=CHECK)
    assert list(dict.fromkeys(frame["desideratum"])) == names
    assert len(frame) == len(names) * CHECK.n_draws
    assert set(frame["group"]) == {"position_transmitter"}
    alone = [dcm.run_dcm(tiny, ALL_HEADS[:4], "position_transmitter", d, config) for d in names]
    assert frame["dcm_n_heads"].tolist() == [len(r.heads) for r in alone for _ in range(CHECK.n_draws)]


def test_dcm_over_a_circuit_gives_one_row_per_group_and_desideratum(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("ET_RESULTS_DIR", str(tmp_path))
    from entity_tracking.circuit import Circuit

    circuit = Circuit("tiny", {"value_fetcher": [(1, 0), (1, 1)], "position_transmitter": [(0, 2)],
                               "position_detector": [(0, 0), (0, 1)], "structure_reader": [(0, 3)]})
    config = replace(SMALL, epochs=1)
    frame, _ = dcm.stored_circuit_dcm(tiny, circuit, config, desiderata=["object_value"])
    assert frame[["group", "candidates"]].values.tolist() == [[g, len(h)] for g, h in circuit.groups.items()]
    heads = dcm.heads_of(frame)
    assert set(heads) == {(g, "object_value") for g in GROUPS}
    assert all(set(h) <= set(circuit.groups[g]) for (g, _), h in heads.items())


def test_authors_check_reads_structure_readers_source_at_the_base_index(tiny):
    """W3: the authors' activation patching took group D's source output at the *base's* previous
    query label index, a different token of the source prompt."""
    heads = [(0, 1), (1, 3)]
    config = replace(CHECK, n_draws=1, task=replace(CHECK.task, authors_compat=True))
    got = dcm.desideratum_accuracy(tiny, heads, "structure_reader", "positional", config)
    ds = tiny.dataset(N_BOXES, CHECK.task.n_samples, CHECK.task.dataset_seed)
    seed = dcm.draw_seeds(CHECK.pairing_seed, 1)[0]
    pairs = D.tokenize_pairs(D.desideratum_pairs("positional", ds, CHECK.task.n_samples, pool=CHECK.task.n_samples, seed=seed,
                                                 authors_compat=True), tiny.tokenizer)
    base_idx = pairs.base.positions["prev_query_label"]
    assert not torch.equal(base_idx, pairs.source.positions["prev_query_label"])
    with torch.no_grad():
        _, z_src = P.head_outputs(tiny.model, pairs.source.tokens)
        source = torch.zeros_like(z_src)
        rows = torch.arange(len(pairs))
        for layer, head in heads:
            source[layer, rows, base_idx, head] = z_src[layer, rows, base_idx, head]
        mask = P.nodes_mask(tiny.model, pairs.base, P.heads_at(heads, "prev_query_label"))
        logits = P.patch_heads(tiny.model, pairs.base.tokens, source, mask)
    assert got.tolist() == pytest.approx([(logits[:, -1].argmax(-1) == pairs.target_ids).float().mean().item()])


def test_stored_dcm_runs_are_read_back_instead_of_retrained(tiny, tmp_path, monkeypatch):
    from entity_tracking.circuit import Circuit

    monkeypatch.setenv("ET_RESULTS_DIR", str(tmp_path))
    circuit = Circuit("tiny", {"value_fetcher": [(1, 0), (1, 1)], "position_transmitter": [(0, 2)]})
    config = replace(SMALL, epochs=1)
    summary, history = dcm.stored_circuit_dcm(tiny, circuit, config, desiderata=["positional"])
    assert len(list(tmp_path.glob("dcm/*.json"))) == len(GROUPS)

    def no_training(*args, **kwargs):
        raise AssertionError("a stored run was trained again")

    monkeypatch.setattr(dcm, "train_masks", no_training)
    again, again_history = dcm.stored_circuit_dcm(tiny, circuit, config, desiderata=["positional"])
    pd.testing.assert_frame_equal(summary, again)
    pd.testing.assert_frame_equal(history, again_history)
    assert dcm.heads_of(again) == {(g, "positional"): h for g, h in
                                   zip(summary["group"], [[tuple(x) for x in hs] for hs in summary["heads"]])}


def _with_prefix(model, data):
    return replace(data, prefix=P.record_prefix(model, data.tokens))


@pytest.mark.parametrize("group", list(GROUPS))
def test_runs_from_the_patched_token_on_give_the_full_runs_logits_and_mask_gradients(tiny, pairs, group):
    heads = [(0, 1), (0, 3), (1, 0), (1, 2)]
    data = dcm.prepare_patch_data(tiny.model, pairs, heads, group)
    fast = _with_prefix(tiny.model, data)
    assert dcm._first_patched([dcm.Blend(heads, torch.ones(4), fast)]) == int(data.base_index[data.base_index >= 0].min())
    results = []
    for d in (data, fast):
        mask = torch.tensor([0.2, 0.9, 0.5, 0.0], requires_grad=True)
        logits = dcm.blended_logits(tiny.model, [dcm.Blend(heads, mask, d)])
        last = P.last_logits(logits)
        dcm.target_logits(logits, d.targets).sum().backward()
        results.append((last.detach(), mask.grad.clone()))
    (full, g_full), (ours, g_ours) = results
    assert torch.allclose(ours, full, atol=1e-5) and torch.allclose(g_ours, g_full, atol=1e-5)


@torch.no_grad()
def test_a_blend_without_heads_before_a_patched_one_leaves_its_rows_alone(tiny, pairs):
    heads = [(0, 1), (1, 2)]
    data = dcm.prepare_patch_data(tiny.model, pairs, heads, "position_transmitter")
    for d in (data, _with_prefix(tiny.model, data)):
        floor = dcm.Blend([], torch.zeros(0), d)
        patched = dcm.Blend(heads, torch.zeros(2), d)
        alone = P.last_logits(dcm.blended_logits(tiny.model, [patched]))
        both = P.last_logits(dcm.blended_logits(tiny.model, [floor, patched]))
        assert torch.allclose(both[len(d):], alone, atol=1e-5)
        assert torch.allclose(both[:len(d)], P.last_logits(tiny.model(d.tokens)), atol=1e-5)


def test_jobs_sharing_one_recording_train_the_masks_of_jobs_recorded_alone(tiny):
    config = dcm.DCMConfig(task=D.TaskConfig(n_boxes=N_BOXES, n_samples=40), epochs=1, batch_size=8)
    runs = [([(0, 1), (1, 2), (1, 3)], "position_transmitter", "positional"),
            ([(0, 0), (1, 1)], "position_detector", "positional"),
            ([(1, 0), (1, 3)], "value_fetcher", "object_value")]
    shared = dcm.run_dcms(tiny, dcm.mask_jobs(tiny, runs, config), config)
    alone = [dcm.run_dcm(tiny, h, g, d, replace(config, prefix_budget_mb=0)) for h, g, d in runs]
    for a, b in zip(shared, alone):
        assert a.heads == b.heads and torch.allclose(a.mask, b.mask, atol=1e-4)
        assert a.test_accuracy == b.test_accuracy
