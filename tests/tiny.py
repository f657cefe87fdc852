"""Shared fixtures: tiny random LLaMAs (and a LoRA adapter) saved like the 7B checkpoints."""

import pytest

from entity_tracking import models
from entity_tracking.testing import save_tiny_llama, save_tiny_lora


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), n_layers=2, n_heads=4, d_model=32)


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_dir, tmp_path_factory):
    return save_tiny_lora(tiny_dir, tmp_path_factory.mktemp("tiny-lora"))


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    return models.load_model(str(tiny_dir))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny):
    return tiny.tokenizer
