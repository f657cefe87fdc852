"""A hand-built LLaMA whose entity-tracking circuit is known: one head per group, weights set by hand.

It solves the boxes task with the paper's four-step chain, so path patching has a ground truth:

* D = L0H0 (structure reader): at a box label, attends to itself and copies the letter (LCOPY);
* binder = L0H1: at a box label, attends to the nearest earlier object and copies it (OBJB);
* C = L1H0 (position detector): at the query label, attends to the earlier copy of the same letter
  and copies what D wrote there (POINTER);
* B = L2H0 (position transmitter): at the last token, attends to the nearest box label (the query
  label) and copies C's pointer (LABELQ);
* A = L3H0 (value fetcher): at the last token, queries with B's letter, finds the box label with that
  letter and copies the object bound there to the output (OBJOUT), which the unembedding reads.

Every other head has a zero output matrix and MLPs are zero, so no other path exists. Features live
in separate residual dimensions on top of a large constant one, which keeps RMSNorm's scale nearly
fixed. Rotary embedding is made almost inert (a huge base) except one slow pair that gives the
binder and B their preference for near tokens.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from entity_tracking.data import LABELS, OBJECTS, task_words
from entity_tracking.testing import build_word_tokenizer

PLANTED = {"value_fetcher": (3, 0), "position_transmitter": (2, 0), "position_detector": (1, 0),
           "structure_reader": (0, 0)}
N_OBJECTS = 10
D_MODEL, N_HEADS, D_HEAD, N_LAYERS = 144, 4, 36, 4
K = 20.0                      # the constant dimension's size
OMEGA = 0.05                  # rotation per token of the one rotary pair used for recency


def _layout(n_obj: int) -> dict[str, int]:
    out, start = {}, 3
    for name, size in (("LETTER", 26), ("LCOPY", 26), ("POINTER", 26), ("LABELQ", 26),
                       ("OBJ", n_obj), ("OBJB", n_obj), ("OBJOUT", n_obj)):
        out[name] = start
        start += size
    assert start <= D_MODEL
    return out


def save_planted_llama(directory: str | Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    objects = list(OBJECTS[:N_OBJECTS])
    words = [w for w in task_words() if w not in OBJECTS or w in objects]
    tok = build_word_tokenizer(words, directory)
    at = _layout(len(objects))
    half = D_HEAD // 2
    content = [*range(2, half), *range(half + 2, D_HEAD)]          # rotary pairs that barely turn
    recency = (1, half + 1)                                        # the pair turning OMEGA per token
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=D_MODEL, intermediate_size=8, num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS, num_key_value_heads=N_HEADS, max_position_embeddings=256,
        rope_theta=(1 / OMEGA) ** (D_HEAD / 2), rms_norm_eps=1e-6, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    scale = math.sqrt(D_HEAD)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        norm = K / math.sqrt(D_MODEL)            # RMSNorm then returns the residual nearly unscaled
        emb, unembed = model.model.embed_tokens.weight, model.lm_head.weight
        emb[:, 0] = K
        for j, letter in enumerate(LABELS):
            t = tok.convert_tokens_to_ids("▁" + letter)
            emb[t, 1] = 1.0
            emb[t, at["LETTER"] + j] = 1.0
        for j, obj in enumerate(objects):
            t = tok.convert_tokens_to_ids("▁" + obj)
            emb[t, 2] = 1.0
            emb[t, at["OBJ"] + j] = 1.0
            unembed[t, at["OBJOUT"] + j] = 10.0
        model.model.norm.weight.fill_(norm)

        def head(layer, h):
            attn = model.model.layers[layer].self_attn
            rows = slice(h * D_HEAD, (h + 1) * D_HEAD)
            return attn.q_proj.weight[rows], attn.k_proj.weight[rows], attn.v_proj.weight[rows], \
                attn.o_proj.weight[:, rows]

        def match(q, k, src_q: int, src_k: int, n: int, beta: float):
            for j in range(n):
                q[content[j], src_q + j] = beta * scale
                k[content[j], src_k + j] = 1.0

        def copy(v, o, src: int, dst: int, n: int):
            for j in range(n):
                v[j, src + j] = 1.0
                o[dst + j, j] = 1.0

        def near(q, k, flag: int, amplitude: float = 37.4, bonus: float = 30.0):
            q[recency[0], 0] = amplitude / K * math.sqrt(scale)
            k[recency[0], 0] = amplitude / K * math.sqrt(scale)
            q[content[0], 0] = bonus * scale / K
            k[content[0], flag] = 1.0

        for layer in range(N_LAYERS):
            model.model.layers[layer].input_layernorm.weight.fill_(norm)
            model.model.layers[layer].post_attention_layernorm.weight.fill_(norm)
        q, k, v, o = head(0, 0)                 # D: a label attends to itself, copies its letter
        match(q, k, at["LETTER"], at["LETTER"], 26, 30.0)
        copy(v, o, at["LETTER"], at["LCOPY"], 26)
        q, k, v, o = head(0, 1)                 # binder: nearest earlier object
        near(q, k, flag=2)
        copy(v, o, at["OBJ"], at["OBJB"], len(objects))
        q, k, v, o = head(1, 0)                 # C: same letter earlier, copies D's letter
        match(q, k, at["LETTER"], at["LETTER"], 26, 30.0)
        copy(v, o, at["LCOPY"], at["POINTER"], 26)
        q, k, v, o = head(2, 0)                 # B: nearest box label, copies C's pointer
        near(q, k, flag=1)
        copy(v, o, at["POINTER"], at["LABELQ"], 26)
        q, k, v, o = head(3, 0)                 # A: the label named by B, copies its bound object
        match(q, k, at["LABELQ"], at["LETTER"], 26, 30.0)
        copy(v, o, at["OBJB"], at["OBJOUT"], len(objects))
    model.save_pretrained(directory)
    return directory
