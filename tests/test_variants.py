"""Which variants run here, the one resident model, and the fingerprint that names stored results."""

import pandas as pd
import pytest
import torch

from entity_tracking import metrics, models, variants
from entity_tracking.data import TaskConfig
from tiny import tiny, tiny_dir  # noqa: F401  (fixtures)


@pytest.fixture(autouse=True)
def no_resident_model_between_tests():
    yield
    variants.release()


def test_7b_variants_are_offered_on_a_large_gpu(monkeypatch):
    monkeypatch.setattr(models, "gpu_memory_gb", lambda: 80.0)
    runnable, missing = variants.options()
    assert {"llama-7b", "vicuna-7b", "goat-7b", "float-7b"} <= set(runnable)
    assert not any(name.endswith("-7b") for name in missing)


def test_only_one_model_stays_loaded(tiny_dir, tmp_path):
    from entity_tracking.testing import save_tiny_llama

    other = save_tiny_llama(tmp_path / "other", n_layers=1, n_heads=2, d_model=16, seed=1)
    first = variants.load(str(tiny_dir))
    assert variants.load(str(tiny_dir)) is first  # kept
    second = variants.load(str(other))
    assert variants.resident() is second and second is not first
    assert variants.load(first) is first  # a loaded model passes through


def test_requested_families_and_runnable_variants_say_why_one_is_skipped(capsys):
    assert variants.requested("organism") == [s.name for s in models.ORGANISM_MODELS]
    assert variants.requested("organism-goat") == ["organism-goat"]
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine may run llama-7b")
    assert variants.runnable(["organism-base", "llama-7b"]) == ["organism-base"]
    assert "skipping llama-7b: needs a CUDA GPU" in capsys.readouterr().out
    with pytest.raises(RuntimeError, match="llama-7b cannot run here"):
        variants.runnable(["organism-goat"], required=["llama-7b"])
    with pytest.raises(RuntimeError, match="none of"):
        variants.runnable(["llama-7b"])


def test_fingerprint_needs_no_load_and_is_computed_once(tiny_dir, monkeypatch):
    variants.forget_fingerprints()
    name = variants.fingerprint("llama-7b")
    assert name == "huggyllama/llama-7b"
    assert variants.fingerprint("goat-7b", authors_compat=True).endswith(":authors")
    reads = []
    original = models.Path.read_text
    monkeypatch.setattr(models.Path, "read_text", lambda self, *a, **k: reads.append(self) or original(self, *a, **k))
    first = variants.fingerprint("organism-base")
    again = variants.fingerprint("organism-base")
    assert first == again and len(reads) <= 1
    assert variants.load("organism-base").fingerprint == first


def test_accuracy_table_is_stored_by_the_weights_and_read_back_without_a_model(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ET_RESULTS_DIR", str(tmp_path))
    task = TaskConfig(n_samples=12, dataset_seed=1)
    table = metrics.stored_accuracy_table([str(tiny_dir)], boxes=[2, 3], task=task)
    assert list(table.columns) == ["model", "boxes", "accuracy", "n_samples", "seed", "source"]
    assert list(table["boxes"]) == [2, 3] and (table["source"] == "ours").all()
    assert len(list(tmp_path.glob("accuracy-*.json"))) == 1

    def must_not_load(*args, **kwargs):
        raise AssertionError("a stored result must be read, not recomputed")

    monkeypatch.setattr(variants, "load", must_not_load)
    again = metrics.stored_accuracy_table([str(tiny_dir)], boxes=[2, 3], task=task)
    pd.testing.assert_frame_equal(again, table)
