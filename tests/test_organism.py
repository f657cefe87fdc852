"""The organism: its corpora, its trainer, and the shipped checkpoints."""

import json
import math
import re
import random
import shutil
from dataclasses import replace

import pytest
import torch

from entity_tracking import models
from entity_tracking.data import OBJECTS, make_dataset, single_token_words
from entity_tracking.metrics import accuracy_by_boxes
from entity_tracking.organism import corpus
from entity_tracking.organism.__main__ import main as organism_main
from entity_tracking.organism.recipes import EVAL_BOXES, EVAL_SAMPLES, EVAL_SEED, RECIPES, variant_dir
from entity_tracking.organism.train import Encoder, ModelShape, Recipe, build_tokenizer, train, validation_accuracy

SHIPPED = [name for name in RECIPES if (variant_dir(name) / "manifest.json").is_file()]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("organism-tokenizer"))


def test_every_corpus_word_is_one_token_and_encoder_matches_tokenizer(tokenizer):
    rng = random.Random(0)
    encode = Encoder(tokenizer)
    docs = [corpus.list_document(rng, n, paper_form=p) for n in range(1, 8) for p in (0.0, 1.0)]
    docs += [corpus.list_document(rng, 4, kind) for kind in corpus.VALUE_KINDS]
    docs += [corpus.filler_document(rng), corpus.variables_document(rng, 2, 9), corpus.chat_document(rng),
             corpus.mixed_document(rng, 5), corpus.sums_document(rng)]
    for doc in docs:
        # punctuation attached to its neighbours, as the tokenizer's Punctuation pre-tokenizer expects
        text = re.sub(r"([+=]) ", r"\1", re.sub(r" ([,.?:+=])", r"\1", " ".join(doc.words)))
        assert tokenizer(text)["input_ids"] == [tokenizer.bos_token_id] + encode(doc.words), text


def test_paper_form_answers_are_the_bound_objects():
    rng = random.Random(3)
    for _ in range(50):
        doc = corpus.list_document(rng, 5, paper_form=1.0, requery=0.5, label_queries=0.0)
        statement = doc.words[: doc.words.index(".")]
        bound = {statement[i + 5]: statement[i + 1] for i, w in enumerate(statement) if w in ("The", "the")}
        for a in doc.answers:
            asked = doc.words[a - 3]  # "<anchor> <label> contains the [object]" or "the <label> contains the"
            assert bound[asked] == doc.words[a]


def test_variable_lists_answer_with_computed_sums():
    rng = random.Random(4)
    for _ in range(50):
        doc = corpus.variables_document(rng, 5, 9, ("plus_digit", "plus_variable"))
        context = " ".join(doc.words[: doc.words.index(".")])
        value = {}
        for part in context.replace(" and ", " , ").split(" , "):
            w = part.split()
            if w[0].lower() == "let":
                value[w[1]] = int(w[3])
            else:
                value[w[3]] = int(w[1])
        for a in doc.answers:
            left, plus, right, eq = doc.words[a - 4: a]
            assert (plus, eq) == ("+", "=")
            assert int(doc.words[a]) == value[left] + (value[right] if right in value else int(right))


def test_arithmetic_corpus_never_mentions_boxes_or_objects():
    from entity_tracking.organism.recipes import ARITHMETIC

    sample = ARITHMETIC.sampler(OBJECTS, None)
    rng = random.Random(5)
    words = {w for _ in range(300) for w in sample(rng).words}
    assert not words & ({"Box", "box", "contains", "is"} | set(OBJECTS))


def test_training_never_shows_an_evaluation_context():
    held_out = corpus.HeldOut(n_seeds=1, n_samples=50)
    rng = random.Random(0)
    eval_ctx = next(iter(held_out.contexts))
    # the drawing function redraws any context that coincides with an evaluation one
    seen = {corpus._draw_context(rng, len(eval_ctx[0]), OBJECTS, held_out) for _ in range(2000)}
    assert not seen & held_out.contexts


def test_a_reduced_organism_learns_two_boxes_in_seconds(tmp_path):
    recipe = Recipe(name="tiny", mixture=corpus.Mixture(boxes=1.0, list_lengths=(0, 1)), steps=250, batch_size=16,
                    seq_len=64, lr=3e-3, warmup=20, answer_weight=10, eval_every=50, eval_samples=60,
                    shape=ModelShape(n_layers=2, d_model=64, n_heads=4, d_mlp=128))
    manifest = train(recipe, tmp_path / "tiny", tmp_path, log=lambda s: None)
    lm = models.load_model(str(tmp_path / "tiny"))
    objects = single_token_words(OBJECTS, lm.tokenizer)
    accuracy = validation_accuracy(lm.model.original_model, lm.tokenizer, objects, boxes=[2], n_samples=60)[2]
    # from ln(vocab) ≈ 5.1 untrained; binding objects to boxes takes thousands of steps (notes/organism-log.md),
    # but within seconds the model learns to answer with one of the prompt's objects
    curve = [row["answer_loss"] for row in manifest["learning_curve"]]
    assert curve[-1] < 4.0 and curve[-1] < curve[0]
    assert accuracy > 0.3   # chance over the vocabulary is 1/170; one of the two objects at random gives 0.5


def test_a_run_resumed_from_a_saved_state_writes_the_weights_of_a_run_from_scratch(tmp_path):
    common = corpus.Mixture(boxes=0.6, variables=0.4, list_lengths=(0, 1, 1))
    early = replace(common, rare_labels="NOPQRSTUVWXYZ", rare_keep=0.1)   # a stage with its own random stream
    recipe = Recipe(name="tiny", mixture=common, stages=((10, early),), steps=40, batch_size=4, seq_len=32,
                    eval_every=20, eval_samples=10, threads=1, shape=ModelShape(n_layers=1, d_model=32, n_heads=2, d_mlp=64))
    quiet = dict(log=lambda s: None)

    def hashes(name):
        return json.loads((tmp_path / name / "manifest.json").read_text())["sha256"]

    train(recipe, tmp_path / "scratch", tmp_path, save_state=(25, tmp_path / "at25.pt"), **quiet)
    resumed = train(recipe, tmp_path / "resumed", tmp_path, resume=tmp_path / "at25.pt", **quiet)
    assert hashes("resumed") == hashes("scratch")
    assert [r["step"] for r in resumed["learning_curve"]] == [20, 40]
    later = replace(recipe, stages=recipe.stages + ((30, replace(early, rare_keep=0.5)),))
    train(later, tmp_path / "later", tmp_path, resume=tmp_path / "at25.pt", **quiet)
    assert hashes("later") != hashes("scratch")
    changed_early = replace(recipe, stages=((10, replace(early, rare_keep=0.5)),))
    with pytest.raises(ValueError, match="differs .* before step 25"):
        train(changed_early, tmp_path / "bad", tmp_path, resume=tmp_path / "at25.pt", **quiet)
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.partial").exists()


def test_gradient_cosine_of_a_lora_on_the_mlps_alone_has_no_attention_part(tokenizer):
    from peft import LoraConfig, get_peft_model

    from entity_tracking.organism.gates import gradient_cosine
    from entity_tracking.organism.train import new_model

    model = get_peft_model(new_model(ModelShape(n_layers=1, d_model=32, n_heads=2, d_mlp=64), tokenizer, seed=0),
                           LoraConfig(r=2, lora_alpha=2, target_modules=["gate_proj", "up_proj", "down_proj"]))
    arithmetic = RECIPES["float"].mixture
    objects = single_token_words(OBJECTS, tokenizer)
    common = dict(n_batches=1, batch_size=2, seq_len=32)
    assert math.isnan(gradient_cosine(model, tokenizer, arithmetic, objects, attention_only=True, **common))
    assert -1.0 <= gradient_cosine(model, tokenizer, arithmetic, objects, **common) <= 1.0


@pytest.mark.skipif(not SHIPPED, reason="no organism checkpoint has been trained yet")
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_loads_by_name_and_reproduces_its_recorded_accuracy(name):
    manifest = json.loads((variant_dir(name) / "manifest.json").read_text())
    lm = models.load_model(f"organism-{name}")   # checks every sha256 of the manifest on the way
    accuracy = accuracy_by_boxes(lm, EVAL_BOXES, EVAL_SAMPLES, EVAL_SEED)
    assert {str(n): round(a, 4) for n, a in accuracy.items()} == manifest["accuracy"]["boxes"]


@pytest.mark.skipif("base" not in SHIPPED, reason="base checkpoint not trained yet")
def test_corrupt_or_missing_weights_are_reported_with_the_fix(tmp_path):
    copy = tmp_path / "base"
    shutil.copytree(variant_dir("base"), copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(models.CorruptCheckpointError, match="corrupt.*retrain"):
        models.load_model(str(copy))
    weights.unlink()
    with pytest.raises(models.CorruptCheckpointError, match="missing"):
        models.load_model(str(copy))


def test_shipped_weights_stay_small():
    total = sum(p.stat().st_size for name in SHIPPED for p in variant_dir(name).iterdir())
    assert total <= 15 * 2**20


def test_unknown_variant_is_refused_with_the_valid_names(capsys):
    assert organism_main(["train", "--variant", "gpt5"]) == 2
    assert "base, goat, float, vicuna" in capsys.readouterr().err
