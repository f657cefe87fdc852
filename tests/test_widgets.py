"""The prediction views: the plain function the static book shows, the live widget around it, and
the variant list that only offers what can run on this machine."""

import pandas as pd
import pytest
import torch

from entity_tracking import metrics, models
from entity_tracking import widgets as W
from tiny import tiny, tiny_dir  # noqa: F401  (fixtures)

SMALL = W.ExplorerConfig(samples=24, batch_size=12)


@pytest.fixture(autouse=True)
def no_resident_model_between_tests():
    yield
    W.release_model()
    W._ACCURACY.clear()


def find(widget, kind):
    """Every descendant widget of one class."""
    out = [widget] if isinstance(widget, kind) else []
    for child in getattr(widget, "children", ()):
        out += find(child, kind)
    return out


def test_show_prediction_lists_top5_tokens_whose_probabilities_sum_to_at_most_one(tiny_dir):
    view = W.show_prediction(str(tiny_dir), n_boxes=4, seed=3, config=SMALL)
    top = view.top
    assert list(top["rank"]) == [1, 2, 3, 4, 5]
    assert 0 < top["probability"].sum() <= 1 + 1e-6
    assert top["probability"].is_monotonic_decreasing
    assert view.answer in view.prompt and view.prompt.endswith("contains the")
    assert 0.0 <= view.accuracy <= 1.0 and view.samples == SMALL.samples
    text, page = str(view), view._repr_html_()
    assert "accuracy at 4 boxes" in text and "<table" in page and view.prediction in page


def test_top_tokens_start_with_the_models_argmax_and_flag_the_answer(tiny):
    example = W.example_for(tiny, 3, seed=1)
    batch = tiny.tokenize([example])
    top = W.top_next_tokens(tiny, batch, k=5)
    with torch.no_grad():
        logits = tiny.model(batch.tokens)
    argmax = int(metrics.predictions(logits)[0])
    assert top["token"].iloc[0] == tiny.tokenizer.decode([argmax]).strip()
    assert top["is_answer"].iloc[0] == (argmax == int(batch.answer_ids[0]))
    p_answer = float(metrics.answer_probs(logits, batch.answer_ids)[0])
    assert not top["is_answer"].any() or top.loc[top["is_answer"], "probability"].item() == pytest.approx(p_answer)


def test_the_same_seed_shows_the_same_example_and_another_seed_another(tiny):
    assert W.example_for(tiny, 5, seed=7) == W.example_for(tiny, 5, seed=7)
    assert len({W.example_for(tiny, 5, seed=s).prompt for s in range(4)}) == 4


def test_setting_accuracy_is_the_models_accuracy_on_the_evaluation_prompts(tiny, tiny_dir):
    expected = metrics.model_accuracy(tiny, tiny.tokenize(tiny.dataset(3, SMALL.samples, SMALL.eval_seed)))
    assert W.setting_accuracy(str(tiny_dir), 3, SMALL) == pytest.approx(expected)


def test_dropdown_excludes_7b_variants_without_a_gpu_and_says_why(monkeypatch, tiny_dir):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    runnable, missing = W.variant_options(extra=[str(tiny_dir)])
    assert str(tiny_dir) in runnable
    assert not {"llama-7b", "vicuna-7b", "goat-7b", "float-7b"} & set(runnable)
    assert "needs a CUDA GPU" in missing["goat-7b"] and "none found" in missing["goat-7b"]

    explorer = W.prediction_explorer(n_boxes=3, config=SMALL, extra=[str(tiny_dir)])
    import ipywidgets

    (dropdown,) = find(explorer, ipywidgets.Dropdown)
    assert str(tiny_dir) in dropdown.options and "llama-7b" not in dropdown.options
    note = " ".join(h.value for h in find(explorer, ipywidgets.HTML))
    assert "llama-7b" in note and "needs a CUDA GPU" in note
    (boxes,) = [s for s in find(explorer, ipywidgets.IntSlider) if s.description == "boxes"]
    assert (boxes.min, boxes.max, boxes.value) == (1, 7, 3)


def test_dropdown_offers_7b_variants_on_a_large_gpu(monkeypatch):
    monkeypatch.setattr(models, "gpu_memory_gb", lambda: 80.0)
    runnable, missing = W.variant_options()
    assert {"llama-7b", "vicuna-7b", "goat-7b", "float-7b"} <= set(runnable)
    assert not any(name.endswith("-7b") for name in missing)


def test_only_one_model_stays_loaded(tiny_dir, tmp_path):
    from entity_tracking.testing import save_tiny_llama

    other = save_tiny_llama(tmp_path / "other", n_layers=1, n_heads=2, d_model=16, seed=1)
    first = W.resident_model(str(tiny_dir))
    assert W.resident_model(str(tiny_dir)) is first  # cached
    W.resident_model(str(other))
    assert list(W._RESIDENT) == [str(other)]


def test_named_positions_are_coloured_with_their_groups_colours(tiny):
    example = W.example_for(tiny, 4, seed=2)
    batch = tiny.tokenize([example])
    roles = W.token_roles(batch)
    pos = {name: int(batch.positions[name][0]) for name in ("last", "query_label", "prev_query_label")}
    assert {roles[t]: t for t in pos.values()} == {name: t for name, t in pos.items()}
    answer_slot = example.objects.index(example.answer)
    assert roles[int(batch.positions["object"][0, answer_slot])] == "answer"
    page = W.prompt_positions_html(batch, tiny.tokenizer)
    for name, t in pos.items():
        colour = W.POSITION_STYLES[name][0]
        assert f'title="{t}: {name}" style="display:inline-block;text-align:center;margin:1px;padding:0 2px;' \
               f'border-radius:3px;background:{colour}' in page
    assert page.count("<span title=") == batch.seq_len


def test_accuracy_table_is_saved_under_its_parameters_and_read_back(tiny_dir, tmp_path, monkeypatch):
    table = W.variant_accuracy_table([str(tiny_dir)], boxes=[2, 3], samples=12, seed=1, results_dir=tmp_path)
    assert list(table.columns) == ["model", "boxes", "accuracy", "n_samples", "seed", "source"]
    assert list(table["boxes"]) == [2, 3] and (table["source"] == "ours").all()
    (saved,) = tmp_path.iterdir()
    assert saved.name == f"accuracy_{tiny_dir.name}_boxes2-3_n12_seed1.csv"

    def must_not_run(*args, **kwargs):
        raise AssertionError("a saved result must be read, not recomputed")

    monkeypatch.setattr(W, "setting_accuracy", must_not_run)
    again = W.variant_accuracy_table([str(tiny_dir)], boxes=[2, 3], samples=12, seed=1, results_dir=tmp_path)
    pd.testing.assert_frame_equal(again, table)


def test_chapter_2_runs_with_its_parameters_pointed_at_a_tiny_model(tiny_dir, tmp_path):
    """The chapter end to end (as papermill would run it), on a tiny model instead of the organism."""
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    from pathlib import Path

    chapter = Path(__file__).resolve().parents[1] / "chapters" / "02_entity_tracking.py"
    nb = jupytext.read(chapter)
    (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert {"model", "boxes", "samples", "seed"} <= {line.split("=")[0].strip() for line in params.source.splitlines()}
    params.source = f'model = "{tiny_dir}"\nboxes = [2, 3]\nsamples = 20\nseed = 1'
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "\n".join(str(o.get("data", o.get("text", ""))) for c in nb.cells if c.cell_type == "code"
                        for o in c.outputs)
    assert '"max_boxes"' in outputs and "paper numbers: [nb] experiment_1/circuit_eval.ipynb" in outputs
    assert "nothing to set beside Table 1" in outputs  # a tiny model stands for no paper model
    assert not list(tmp_path.glob("results/**/*.csv"))  # only 7B runs are cached to files


def test_runnable_variants_skips_what_cannot_run_and_says_why(capsys):
    assert W.requested_variants("organism") == [s.name for s in models.ORGANISM_MODELS]
    assert W.requested_variants("organism-goat") == ["organism-goat"]
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine may run llama-7b")
    assert W.runnable_variants(["organism-base", "llama-7b"]) == ["organism-base"]
    assert "skipping llama-7b: needs a CUDA GPU" in capsys.readouterr().out
    with pytest.raises(RuntimeError, match="llama-7b cannot run here"):
        W.runnable_variants(["organism-goat"], required=["llama-7b"])
    with pytest.raises(RuntimeError, match="none of"):
        W.runnable_variants(["llama-7b"])
