"""Tiny stand-ins for the 7B models, saved in the Hugging Face layout.

No machine here can download LLaMA-7B, so the paper-scale loading path (full weights, or base plus a
LoRA adapter merged with peft) is exercised on tiny randomly initialised `LlamaForCausalLM`s and a
tiny adapter written to a local folder. They go through exactly the code that loads the real models.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .data import task_words


def build_word_tokenizer(words, directory: str | Path):
    """A LLaMA-like word-level tokenizer ("▁word" pieces, "<s>" prepended), saved and reloaded from
    disk (TransformerLens needs a tokenizer that knows its own path)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for piece in [",", ".", *sorted({"▁" + w for w in words})]:
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Punctuation(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


def save_tiny_llama(directory: str | Path, n_layers: int = 2, n_heads: int = 4, d_model: int = 32,
                    seed: int = 0, tokenizer=None):
    """A randomly initialised `LlamaForCausalLM` plus tokenizer in ``directory``; returns the path."""
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    if tokenizer is None:
        tokenizer = build_word_tokenizer(task_words(), directory)
    else:
        tokenizer.save_pretrained(directory)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=d_model, intermediate_size=2 * d_model,
        num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_heads,
        max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # Random init gives near-uniform logits; larger weights make patching effects visible in tests.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    model.save_pretrained(directory)
    return directory


def save_tiny_lora(base_directory: str | Path, directory: str | Path, r: int = 4, alpha: int = 8, seed: int = 1,
                   target_modules=("q_proj", "k_proj", "v_proj", "o_proj")):
    """A LoRA adapter on q/k/v/o_proj (Goat's targets, unless ``target_modules`` says otherwise) with
    non-zero B, so merging changes the model."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    base = LlamaForCausalLM.from_pretrained(base_directory)
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(target_modules),
                        lora_dropout=0.0, bias="none")
    peft_model = get_peft_model(base, config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    peft_model.save_pretrained(directory)
    return Path(directory)
