"""The prediction views: the plain function the static book shows, the live widget around it, and
the variant list that only offers what can run on this machine."""

import pandas as pd
import pytest
import torch

from entity_tracking import metrics, models, variants
from entity_tracking import widgets as W
from tiny import tiny, tiny_dir  # noqa: F401  (fixtures)

SMALL = W.ExplorerConfig(samples=24, batch_size=12)


@pytest.fixture(autouse=True)
def no_resident_model_between_tests(tmp_path, monkeypatch):
    monkeypatch.setenv("ET_RESULTS_DIR", str(tmp_path / "results"))
    yield
    variants.release()


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
    runnable, missing = variants.options(extra=[str(tiny_dir)])
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
