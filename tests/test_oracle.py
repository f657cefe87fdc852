"""An independent oracle for every intervention: raw PyTorch hooks on a pristine Hugging Face LLaMA.

The package edits head outputs through TransformerLens hook names on a `TransformerBridge`. A test
that recomputed an expected value with the same hooks, masks or position look-ups would share every
bug it is meant to catch: a wrong head slice, an off-by-one position, a mask that freezes the wrong
tokens or a hook that silently never fires would be wrong identically on both sides, and the test
would pass. So the oracle here goes through none of that code. It reloads the saved weights into a
fresh `LlamaForCausalLM` (the bridge rewraps the modules of the model it is given, so hooking that
object would go through the bridge again), registers plain ``register_forward_pre_hook`` /
``register_forward_hook`` callbacks on each layer's ``self_attn.o_proj`` (whose input is the
concatenation of the head outputs z, ``[batch, pos, n_heads * d_head]``) and on ``q_proj`` /
``v_proj`` (the per-head queries and values before rotary), finds the named positions from the
token layout of the prompts, and writes each method down from its definition in the paper
(activation patching, mean ablation, the two passes of path patching, cross-model patching).
Only prompt building, tokenizing and model saving/loading are shared with the package.

Every comparison is to 1e-5 on tiny random LLaMAs in float32, and each one also checks that the
intervention changes something, so that agreement cannot come from both sides doing nothing.
"""

import contextlib
import random

import pytest
import torch
from transformers import LlamaForCausalLM

from entity_tracking import circuit_eval as CE
from entity_tracking import cmap as C
from entity_tracking import data as D
from entity_tracking import models
from entity_tracking import path_patching as PP
from entity_tracking import patching as P
from entity_tracking.testing import save_tiny_llama

N_BOXES = 4
ATOL = 1e-5


# --------------------------------------------------------------------------------------------------
# The oracle: a plain LlamaForCausalLM and torch hooks
# --------------------------------------------------------------------------------------------------

class RawLlama:
    """A pristine `LlamaForCausalLM` read from disk; every intervention is a torch hook on its modules."""

    def __init__(self, directory):
        self.hf = LlamaForCausalLM.from_pretrained(str(directory), dtype=torch.float32,
                                                   attn_implementation="eager").eval()
        cfg = self.hf.config
        self.n_layers = cfg.num_hidden_layers
        self.n_heads = cfg.num_attention_heads
        self.d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def module(self, layer, name):
        return getattr(self.hf.model.layers[layer].self_attn, name)

    def logits(self, tokens):
        return self.hf(tokens).logits


@contextlib.contextmanager
def hooked(raw, z_edit=None, proj_hooks=()):
    """``z_edit(layer, z[batch, pos, head, d_head]) -> z`` as a pre-hook on every ``o_proj``;
    ``proj_hooks``: (layer, "q_proj"/"v_proj", fn(out[batch, pos, head, d_head]) -> out or None)."""
    handles = []

    def pre(layer):
        def hook(module, args):
            x = args[0]
            b, p, _ = x.shape
            z = z_edit(layer, x.view(b, p, raw.n_heads, raw.d_head).clone())
            return (z.reshape(b, p, raw.n_heads * raw.d_head), *args[1:])
        return hook

    def post(fn):
        def hook(module, args, out):
            b, p, _ = out.shape
            new = fn(out.view(b, p, -1, raw.d_head).clone())
            return None if new is None else new.reshape(b, p, -1)
        return hook

    try:
        if z_edit is not None:
            for layer in range(raw.n_layers):
                handles.append(raw.module(layer, "o_proj").register_forward_pre_hook(pre(layer)))
        for layer, name, fn in proj_hooks:
            handles.append(raw.module(layer, name).register_forward_hook(post(fn)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def record_z(raw, tokens):
    """Logits and every layer's o_proj input as ``[layer, batch, pos, head, d_head]``."""
    store = {}

    def keep(layer, z):
        store[layer] = z.clone()
        return z

    with hooked(raw, keep):
        logits = raw.logits(tokens)
    return logits, torch.stack([store[layer] for layer in range(raw.n_layers)])


@torch.no_grad()
def run_with_z(raw, tokens, edit):
    with hooked(raw, edit):
        return raw.logits(tokens)


def named_position(tokens, name):
    """Token index of a named position in each prompt, from the prompt layout: BOS, then per box
    "the obj is in Box L ," (object at 7k+2, label at 7k+6), then ". Box Lq contains the" (query
    label at last-2); the previous query label is the earlier token equal to the query label
    (-1 if there is none)."""
    n, length = tokens.shape
    last = length - 1
    if name == "last":
        return torch.full((n,), last, dtype=torch.long)
    if name == "query_label":
        return torch.full((n,), last - 2, dtype=torch.long)
    if name == "prev_query_label":
        out = torch.full((n,), -1, dtype=torch.long)
        for i in range(n):
            hits = (tokens[i, : last - 2] == tokens[i, last - 2]).nonzero().flatten()
            assert len(hits) <= 1
            if len(hits):
                out[i] = hits[0]
        return out
    kind, index = name.rsplit("_", 1)
    offset = {"object": 2, "label": 6}[kind]
    return torch.full((n,), 7 * int(index) + offset, dtype=torch.long)


def answer_prob(logits, answers):
    return logits[:, -1].softmax(-1)[torch.arange(len(answers)), answers]


# --------------------------------------------------------------------------------------------------
# Models and prompts
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """Two tiny 3-layer LLaMAs with one tokenizer (different seeds: every weight differs)."""
    first = save_tiny_llama(tmp_path_factory.mktemp("oracle-a"), n_layers=3, n_heads=4, d_model=32, seed=11)
    lm = models.load_model(str(first))
    second = save_tiny_llama(tmp_path_factory.mktemp("oracle-b"), n_layers=3, n_heads=4, d_model=32, seed=12,
                             tokenizer=lm.tokenizer)
    return first, second


@pytest.fixture(scope="module")
def lm(dirs):
    return models.load_model(str(dirs[0]))


@pytest.fixture(scope="module")
def raw(dirs):
    return RawLlama(dirs[0])


@pytest.fixture(scope="module")
def other_lm(dirs):
    return models.load_model(str(dirs[1]))


@pytest.fixture(scope="module")
def other_raw(dirs):
    return RawLlama(dirs[1])


@pytest.fixture(scope="module")
def dataset(lm):
    return lm.dataset(N_BOXES, 40, seed=0)


@pytest.fixture(scope="module")
def pairs(lm, dataset):
    base, corrupt = D.path_patching_pairs(dataset, 6, 40, seed=0)
    return lm.tokenize(base), lm.tokenize(corrupt)


@pytest.fixture(scope="module")
def eval_batch(lm, dataset):
    return lm.tokenize(dataset[:8])


@torch.no_grad()
def test_oracle_model_is_the_same_model_as_the_bridge(lm, raw, other_lm, other_raw, eval_batch):
    tokens = eval_batch.tokens
    assert torch.allclose(raw.logits(tokens), lm.model(tokens), atol=ATOL)
    assert torch.allclose(other_raw.logits(tokens), other_lm.model(tokens), atol=ATOL)
    assert not torch.allclose(raw.logits(tokens), other_raw.logits(tokens), atol=1e-2)
    for name in ("last", "query_label", "prev_query_label", "object_1", "label_3"):
        kind, _, index = name.rpartition("_")
        expected = (eval_batch.positions[kind][:, int(index)] if kind in ("object", "label")
                    else eval_batch.positions[name])
        assert torch.equal(named_position(tokens, name), expected.cpu())


# --------------------------------------------------------------------------------------------------
# 1. Activation patching of head outputs
# --------------------------------------------------------------------------------------------------

NODES = [(0, 1, "query_label"), (1, 2, "last"), (2, 0, "last"), (1, 3, "prev_query_label"),
         (0, 2, "object_1"), (2, 3, "label_2")]


@torch.no_grad()
@pytest.mark.parametrize("source_position", [None, "label_0"])
def test_activation_patching_matches_raw_o_proj_hooks(lm, raw, dataset, source_position):
    base = lm.tokenize(dataset[:6])
    source = lm.tokenize(dataset[13:19])  # other contexts and other query boxes than the base lines
    _, z_src = record_z(raw, source.tokens)
    rows = torch.arange(len(base))

    def edit(layer, z):
        for l, h, position in NODES:
            if l == layer:
                b_idx = named_position(base.tokens, position)
                s_idx = named_position(source.tokens, source_position or position)
                z[rows, b_idx, h] = z_src[layer, rows, s_idx, h]
        return z

    expected = run_with_z(raw, base.tokens, edit)
    got = P.activation_patch(lm.model, base, source, NODES, source_nodes_position=source_position)
    assert (expected[:, -1] - raw.logits(base.tokens)[:, -1]).abs().max() > 1e-2
    assert torch.allclose(got[:, -1], expected[:, -1], atol=ATOL)
    assert torch.allclose(got, expected, atol=ATOL)


# --------------------------------------------------------------------------------------------------
# 2. Mean ablation (circuit evaluation)
# --------------------------------------------------------------------------------------------------

CIRCUIT_NODES = [(2, 0, "last"), (2, 3, "last"), (1, 1, "last"), (1, 2, "query_label"), (0, 3, "query_label"),
                 (0, 0, "prev_query_label"), (1, 0, "prev_query_label")]
VITAL = ("last", "query_label", "prev_query_label")


def oracle_keep(raw, tokens, nodes, ablate_other_positions):
    """``[layer, batch, pos, head]``: True where a head output keeps its own value (paper.md §4.5).
    Circuit evaluation keeps only the circuit's nodes; the model without K keeps everything but K."""
    n, length = tokens.shape
    rows = torch.arange(n)
    if ablate_other_positions:
        keep = torch.zeros(raw.n_layers, n, length, raw.n_heads, dtype=torch.bool)
        for layer, head, position in nodes:
            keep[layer, rows, named_position(tokens, position), head] = True
    else:
        keep = torch.ones(raw.n_layers, n, length, raw.n_heads, dtype=torch.bool)
        for layer, head, position in nodes:  # here ``nodes`` are the ablated K
            keep[layer, rows, named_position(tokens, position), head] = False
    return keep


@torch.no_grad()
def oracle_ablated_logits(raw, tokens, means, keep):
    return run_with_z(raw, tokens, lambda layer, z: torch.where(keep[layer][..., None], z, means[layer][None]))


@torch.no_grad()
def test_mean_ablation_matches_raw_o_proj_hooks(lm, raw, eval_batch):
    config = CE.EvalConfig(task=D.TaskConfig(n_boxes=N_BOXES, n_samples=len(eval_batch)), n_reference=9,
                           batch_size=4, max_rows=10)
    reference = lm.tokenize(D.mean_ablation_reference(N_BOXES, 9, 0, objects=lm.objects))
    _, z_ref = record_z(raw, reference.tokens)
    means = z_ref.mean(dim=1)  # [layer, pos, head, d_head]: position-wise mean over reference prompts

    got_means = P.mean_head_outputs(lm.model, reference, batch_size=4)
    assert torch.allclose(got_means, means, atol=ATOL)
    setup = CE.AblationSetup(lm, eval_batch, config)
    assert torch.allclose(setup.means, means, atol=ATOL)

    tokens = eval_batch.tokens
    clean = raw.logits(tokens)
    k_nodes = CIRCUIT_NODES[:3] + CIRCUIT_NODES[5:6]
    cases = [  # (package ablation, oracle keep)
        (CE.circuit_only(CIRCUIT_NODES), oracle_keep(raw, tokens, CIRCUIT_NODES, True)),
        (CE.circuit_only([]), oracle_keep(raw, tokens, [], True)),
        (CE.model_without(lm.model, k_nodes), oracle_keep(raw, tokens, k_nodes, False)),
        (CE.model_without(lm.model), oracle_keep(raw, tokens, [], False)),
    ]
    expected_acc = []
    for ablation, keep in cases:
        expected = oracle_ablated_logits(raw, tokens, means, keep)
        package_keep = CE.keep_mask(lm.model, eval_batch, ablation)
        assert torch.equal(package_keep.cpu(), keep)
        got = P.ablate_heads(lm.model, tokens, setup.means, package_keep)
        assert torch.allclose(got, expected, atol=ATOL)
        if not bool(keep.all()):
            assert (expected[:, -1] - clean[:, -1]).abs().max() > 1e-2
        expected_acc.append((expected[:, -1].argmax(-1) == eval_batch.answer_ids).double().mean().item())
    accs = CE.ablation_accuracies(setup, [ablation for ablation, _ in cases])
    assert accs == pytest.approx(expected_acc, abs=1e-12)
    assert expected_acc[-1] == (clean[:, -1].argmax(-1) == eval_batch.answer_ids).double().mean().item()


# --------------------------------------------------------------------------------------------------
# 3. Path patching: the two-pass definition of paper.md §4.3
# --------------------------------------------------------------------------------------------------

@torch.no_grad()
def oracle_path_patched_probs(raw, base, corrupt, position, senders, receivers, receiver_input, src_pos):
    """Answer probability per prompt with the sender heads path-patched.

    Pass 1: the base prompt with every head output at every position from the sender position on
    frozen to its clean value, except the senders at the sender position, which take their value on
    the corrupted prompt at ``src_pos``; the receivers' q (or v) are recorded there. Without
    receivers the probability is read from pass 1. Pass 2: a clean run with only the receivers'
    q (or v) at the sender position replaced by the recorded values."""
    _, clean_z = record_z(raw, base.tokens)
    _, corrupt_z = record_z(raw, corrupt.tokens)
    n, length = base.tokens.shape
    rows = torch.arange(n)
    pos = named_position(base.tokens, position)
    frozen = torch.arange(length)[None, :] >= pos[:, None]          # [prompt, token]

    def pass1_edit(layer, z):
        z = torch.where(frozen[:, :, None, None], clean_z[layer], z)
        for l, h in senders:
            if l == layer:
                z[rows, pos, h] = corrupt_z[layer, rows, src_pos, h]
        return z

    module = {"q": "q_proj", "v": "v_proj"}.get(receiver_input)
    layers = sorted({l for l, _ in receivers})
    recorded = {}

    def record(layer):
        def fn(out):
            recorded[layer] = out[rows, pos].clone()              # [prompt, head, d_head]
            return None
        return fn

    probes = [(layer, module, record(layer)) for layer in layers] if receiver_input else []
    with hooked(raw, pass1_edit, probes):
        logits = raw.logits(base.tokens)
    if not receiver_input:
        return answer_prob(logits, base.answer_ids)

    def write(layer):
        heads = [h for l, h in receivers if l == layer]

        def fn(out):
            for h in heads:
                out[rows, pos, h] = recorded[layer][:, h]
            return out
        return fn

    with hooked(raw, None, [(layer, module, write(layer)) for layer in layers]):
        logits = raw.logits(base.tokens)
    return answer_prob(logits, base.answer_ids)


def oracle_scores(raw, base, corrupt, position, receivers, receiver_input, src_pos):
    p_clean = answer_prob(raw.logits(base.tokens), base.answer_ids)
    scores = torch.zeros(raw.n_layers, raw.n_heads)
    for layer in range(raw.n_layers):
        for head in range(raw.n_heads):
            p = oracle_path_patched_probs(raw, base, corrupt, position, [(layer, head)], receivers,
                                          receiver_input, src_pos)
            scores[layer, head] = ((p - p_clean) / p_clean).mean()
    return scores


# (step, sender/receiver position, receivers, receiver input)
STEPS = [
    ("1 value fetcher", "last", [], None),
    ("2 position transmitter", "last", [(2, 1), (1, 3), (2, 2)], "q"),
    ("3 position detector", "query_label", [(2, 0), (1, 1)], "v"),
    ("4 structure reader", "prev_query_label", [(1, 2), (2, 3)], "v"),
]


def oracle_source_positions(corrupt_tokens, position, seed=5):
    """Where each corrupted prompt's sender value is read: the same named position, except for the
    previous query label, which a corrupted prompt lacks: a random box label of it."""
    if position != "prev_query_label":
        return named_position(corrupt_tokens, position)
    rng = random.Random(seed)
    return torch.tensor([7 * rng.randrange(N_BOXES) + 6 for _ in range(len(corrupt_tokens))])


@torch.no_grad()
@pytest.mark.parametrize("step,position,receivers,receiver_input", STEPS, ids=[s[0] for s in STEPS])
def test_path_patching_step_matches_two_pass_definition(lm, raw, pairs, step, position, receivers, receiver_input):
    base, corrupt = pairs
    src_pos = oracle_source_positions(corrupt.tokens, position)
    expected = oracle_scores(raw, base, corrupt, position, receivers, receiver_input, src_pos)
    got = PP.path_patching_scores(lm, base, corrupt, position, receivers=receivers, receiver_input=receiver_input,
                                  src_positions=src_pos, batch_size=4, max_rows=10)
    assert expected.abs().max() > 1e-3, "the comparison is empty if no sender has an effect"
    assert torch.allclose(got.float(), expected, atol=ATOL)


SENDER_SETS = [[(0, 1), (1, 2)], [(0, 0), (0, 3), (1, 1)], [(2, 2)]]


@torch.no_grad()
@pytest.mark.parametrize("step,position,receivers,receiver_input", STEPS[:3], ids=[s[0] for s in STEPS[:3]])
def test_path_patched_probs_of_sender_sets_match_two_pass_definition(lm, raw, pairs, step, position, receivers,
                                                                     receiver_input):
    base, corrupt = pairs
    src_pos = oracle_source_positions(corrupt.tokens, position)
    masks = torch.zeros(len(SENDER_SETS), raw.n_layers, raw.n_heads, dtype=torch.bool)
    for i, heads in enumerate(SENDER_SETS):
        for layer, head in heads:
            masks[i, layer, head] = True
    p_clean, p_patch = PP.path_patched_probs(lm, base, corrupt, position, masks, receivers, receiver_input,
                                             src_pos, batch_size=4, max_rows=5)
    assert torch.allclose(p_clean, answer_prob(raw.logits(base.tokens), base.answer_ids), atol=ATOL)
    for i, heads in enumerate(SENDER_SETS):
        expected = oracle_path_patched_probs(raw, base, corrupt, position, heads, receivers, receiver_input, src_pos)
        assert torch.allclose(p_patch[i], expected, atol=ATOL, rtol=1e-5)
    first = oracle_path_patched_probs(raw, base, corrupt, position, SENDER_SETS[0], receivers, receiver_input, src_pos)
    assert (first - p_clean).abs().max() > 1e-6


# --------------------------------------------------------------------------------------------------
# 4. Cross-model activation patching
# --------------------------------------------------------------------------------------------------

CMAP_NODES = [(2, 0, "last"), (2, 3, "last"), (1, 1, "last"), (1, 2, "query_label"), (0, 3, "query_label"),
              (0, 0, "prev_query_label")]


@torch.no_grad()
@pytest.mark.parametrize("every_position", [False, True], ids=["circuit nodes", "every head at every token"])
def test_cmap_matches_raw_o_proj_hooks(lm, raw, other_lm, other_raw, eval_batch, every_position):
    """Source = the other model, target = the first one: the target's o_proj inputs take the
    source's head slices at the nodes' positions, on the same prompts, in one forward pass."""
    tokens = eval_batch.tokens
    rows = torch.arange(len(eval_batch))
    _, z_src = record_z(other_raw, tokens)
    if every_position:
        nodes = [(l, h, "all") for l in range(raw.n_layers) for h in range(raw.n_heads)]

        def edit(layer, z):
            return z_src[layer].clone()
    else:
        nodes = CMAP_NODES

        def edit(layer, z):
            for l, h, position in nodes:
                if l == layer:
                    index = named_position(tokens, position)
                    z[rows, index, h] = z_src[layer, rows, index, h]
            return z

    expected = run_with_z(raw, tokens, edit)[:, -1]
    cached = C.source_node_outputs(other_lm, eval_batch, nodes, batch_size=3)
    if not every_position:
        for l, h, position in nodes:
            index = named_position(tokens, position)
            assert torch.allclose(cached.values[(l, h, position)].reshape(len(rows), -1),
                                  z_src[l, rows, index, h], atol=ATOL)
    got = C.cmap_logits(lm, eval_batch, cached, nodes, batch_size=5)
    assert (expected - raw.logits(tokens)[:, -1]).abs().max() > 1e-2
    assert torch.allclose(got, expected, atol=ATOL)
