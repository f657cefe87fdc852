import json

import pytest
import torch
from safetensors.torch import load_file

from entity_tracking import models
from tiny import tiny, tiny_adapter_dir, tiny_dir  # noqa: F401  (fixtures)


def hf_of(lm):
    return lm.model.original_model


def test_registry_lists_the_paper_and_organism_variants():
    assert {"llama-7b", "vicuna-7b", "goat-7b", "float-7b"} <= set(models.REGISTRY)
    assert {"organism-base", "organism-goat", "organism-float", "organism-vicuna"} <= set(models.REGISTRY)
    assert models.REGISTRY["goat-7b"].adapter == "tiedong/goat-lora-7b"
    assert models.REGISTRY["organism-goat"].adapter is not None  # the organism Goat goes through peft too
    assert {s.analog_of for s in models.ORGANISM_MODELS} == {s.name for s in models.PAPER_MODELS}


def test_local_tiny_llama_loads_as_a_bridge_with_hf_logits(tiny, tiny_dir):
    from transformers import LlamaForCausalLM

    reference = LlamaForCausalLM.from_pretrained(tiny_dir, attn_implementation="eager").eval()
    tokens = tiny.tokenize(tiny.dataset(3, 6)).tokens
    with torch.no_grad():
        assert torch.allclose(tiny.model(tokens), reference(tokens).logits, atol=1e-5)
    assert (tiny.n_layers, tiny.n_heads) == (2, 4)


def test_goat_lora_merge_matches_manual_sum(tiny_dir, tiny_adapter_dir):
    spec = models.with_local_weights("goat-7b", tiny_dir, adapter=tiny_adapter_dir, needs_gpu=False)
    merged = hf_of(models.load_model(spec))
    base = load_file(tiny_dir / "model.safetensors")
    lora = load_file(tiny_adapter_dir / "adapter_model.safetensors")
    config = json.loads((tiny_adapter_dir / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    for layer in range(2):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            key = f"model.layers.{layer}.self_attn.{proj}"
            a = next(v for k, v in lora.items() if f"layers.{layer}.self_attn.{proj}.lora_A" in k)
            b = next(v for k, v in lora.items() if f"layers.{layer}.self_attn.{proj}.lora_B" in k)
            expected = base[key + ".weight"] + scale * b @ a
            actual = merged.get_parameter(key + ".weight")
            assert torch.allclose(actual, expected, atol=1e-6), key


def test_authors_compat_drops_goats_o_proj_update(tiny_dir, tiny_adapter_dir):
    spec = models.with_local_weights("goat-7b", tiny_dir, adapter=tiny_adapter_dir, needs_gpu=False)
    fixed, authors = hf_of(models.load_model(spec)), hf_of(models.load_model(spec, authors_compat=True))
    base = load_file(tiny_dir / "model.safetensors")
    o = "model.layers.0.self_attn.o_proj.weight"
    q = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(authors.get_parameter(o), base[o])
    assert not torch.equal(fixed.get_parameter(o), base[o])
    assert torch.equal(authors.get_parameter(q), fixed.get_parameter(q))


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(ValueError, match="llama-7b.*organism-base|organism-base"):
        models.load_model("gpt-17")


def test_7b_model_without_cuda_says_how_much_memory_it_needs(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(models.NoGPUError, match=r"needs a CUDA GPU with at least \d+ GB"):
        models.load_model("llama-7b")
    with pytest.raises(models.NoGPUError, match="organism"):
        models.load_model("goat-7b", device="cpu")


def test_missing_hub_access_says_how_to_log_in(monkeypatch, tiny_dir):
    from huggingface_hub.errors import GatedRepoError
    from transformers import LlamaForCausalLM

    def gated(*args, **kwargs):
        raise OSError("You are trying to access a gated repo. Make sure to have access to it.")

    monkeypatch.setattr(LlamaForCausalLM, "from_pretrained", gated)
    spec = models.with_local_weights("llama-7b", "meta-llama/some-gated-model", needs_gpu=False)
    with pytest.raises(models.HubAccessError, match="hf auth login"):
        models.load_model(spec)
    assert issubclass(GatedRepoError, OSError)  # the hub's own error takes the same path


def test_corrupt_or_missing_checkpoint_is_reported(tmp_path, tiny_dir):
    import shutil

    from entity_tracking.models import _sha256

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, ckpt)
    (ckpt / "manifest.json").write_text(json.dumps({"sha256": {"model.safetensors": _sha256(ckpt / "model.safetensors")}}))
    models.load_model(str(ckpt))  # intact: loads
    with open(ckpt / "model.safetensors", "r+b") as fh:
        fh.seek(-8, 2)
        fh.write(b"\x00" * 8)
    with pytest.raises(models.CorruptCheckpointError, match="corrupt"):
        models.load_model(str(ckpt))
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(models.CorruptCheckpointError, match="missing"):
        models.load_model(str(ckpt))


def test_missing_organism_checkpoint_says_how_to_rebuild(tmp_path):
    spec = models.with_local_weights("organism-base", tmp_path / "nowhere")
    spec = models.ModelSpec(**{**spec.__dict__, "scale": "organism"})
    with pytest.raises(models.CorruptCheckpointError, match="entity_tracking.organism train"):
        models.load_model(spec)


def test_default_variant_without_gpu_is_the_organism(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.default_variant() == "organism-base"
    assert "none found" in models.variant_availability()["llama-7b"]


def test_tiny_model_uses_the_task_vocabulary(tiny):
    from entity_tracking.data import OBJECTS

    assert set(tiny.objects) == set(OBJECTS)
