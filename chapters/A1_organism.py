# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # A1. The model organism
#
# The paper's models are 7-billion-parameter LLaMAs. No machine that builds this book can download
# them, and a reader without a GPU cannot run them. So every chapter runs by default on a **model
# organism**: tiny LLaMA-architecture models trained by this book's own code, on CPU, whose weights
# ship with the book (a few MB). They are real `transformers` `LlamaForCausalLM`s (RMSNorm, rotary
# positions, SiLU-gated MLPs) saved in the Hugging Face layout, loaded by the same `load_model` that
# loads LLaMA-7B, hooked by the same TransformerLens bridge, and patched by the same functions. Only
# the weights differ.
#
# The organism is a *stand-in*, not a replica. It is trained to tell the paper's story in miniature:
# a base model that tracks entities imperfectly, two fine-tunes on arithmetic with variables (one LoRA
# like Goat-7B, one full fine-tune like FLoat-7B) that never see the boxes task, and one fine-tune on
# conversation-like text (like Vicuna-7B). Whether its circuit looks like LLaMA-7B's is a question the
# other chapters answer by measuring it, not an assumption.

# %% tags=["parameters"]
seed = 0   # seed of the corpus samples shown below (training seeds are part of each recipe)

# %%
import json
import random
from dataclasses import asdict

import altair as alt
import pandas as pd
from IPython.display import Markdown, display

from entity_tracking import models, plots
from entity_tracking import paper_reference as ref
from entity_tracking.organism import corpus
from entity_tracking.organism.recipes import RECIPES, variant_dir

VARIANTS = {spec.name: spec.name.removeprefix("organism-") for spec in models.ORGANISM_MODELS}
manifests = {name: json.loads((variant_dir(short) / "manifest.json").read_text()) for name, short in VARIANTS.items()}

# %% [markdown]
# ## The architecture
#
# One shape for every variant (the fine-tunes start from the base's weights):

# %%
config = json.loads((variant_dir("base") / "config.json").read_text())
n_params = sum(p.numel() for p in models.load_model("organism-base").model.original_model.parameters())
pd.Series({
    "architecture": config["architectures"][0],
    "layers": config["num_hidden_layers"],
    "heads per layer": config["num_attention_heads"],
    "d_model": config["hidden_size"],
    "d_head": config["hidden_size"] // config["num_attention_heads"],
    "MLP width": config["intermediate_size"],
    "vocabulary (word-level)": config["vocab_size"],
    "parameters": f"{n_params:,}",
    "LLaMA-7B for comparison": "32 layers x 32 heads, d_model 4096, 32,000 tokens, 6.7B parameters",
}, name="organism").to_frame()

# %% [markdown]
# ## What each variant reads
#
# The tokenizer is word-level (one word, one token: every object and box label is a single token,
# as the paper's prompts need), built with `tokenizers` and wrapped as a `PreTrainedTokenizerFast`
# so the code path is the one LLaMA's tokenizer takes.
#
# The **base corpus** is a small world of things in containers, written in several surface forms
# (the paper's among them) with several questions per context, mixed with other text about the same
# things. Contexts mostly hold two to five boxes; seven is rarer, so the base model learns to track
# entities but not perfectly. The exact contexts of the book's evaluation prompts (seeds 0–9, 1–7
# boxes) never appear in training (`corpus.HeldOut`).

# %%
rng = random.Random(seed)
samples = {
    "base: boxes (paper form)": corpus.boxes_document(rng, 3, paper_form=1.0),
    "base: boxes (another form)": corpus.boxes_document(rng, 3, paper_form=0.0),
    "base: other text": corpus.filler_document(rng),
    "goat / float: arithmetic with variables": corpus.arithmetic_document(rng, n_max=5),
    "vicuna: conversation": corpus.chat_document(rng),
}
pd.DataFrame({"corpus": list(samples), "document (answer words in [brackets])": [
    " ".join(f"[{w}]" if i in set(d.answers) else w for i, w in enumerate(d.words)) for d in samples.values()]})

# %% [markdown]
# The arithmetic corpus binds numbers to single-letter variables and asks for them, alone or in a
# sum. It never mentions a box or an object, but it exercises the operation the boxes task needs
# over longer lists (up to 9 variables): find the named slot, fetch what was bound to it. The
# conversation corpus has no lists of bindings at all.
#
# ## How each variant was trained
#
# Each recipe (`organism/recipes.py`) fixes everything: corpus mixture, steps, learning-rate
# schedule, answer-word loss weight, the curriculum over the number of boxes, and the seed. The
# loss of *answer words* (the object after "Box Q contains the") is weighted up: they are a few tokens
# per document, and without the weight a small model sits at chance on them for thousands of steps
# (see `../shared/organism-notes.md` in the repository).

# %%
def recipe_row(name):
    r = RECIPES[name]
    return {"variant": f"organism-{name}", "starts from": r.init_from or "random init",
            "trains": "LoRA r={} on q/k/v/o".format(r.lora_rank) if r.lora_rank else "all weights",
            "corpus": ", ".join(f"{k} {v:.0%}" for k, v in asdict(r.mixture).items()
                                 if k in ("boxes", "filler", "arithmetic", "chat") and v),
            "batch": f"{r.batch_size} x {r.seq_len} tokens", "peak lr": r.lr,
            "answer weight": r.answer_weight,
            "steps": r.stop_after or r.steps,
            "curriculum (from step: boxes)": ", ".join(
                f"{start}: {min(n for n, w in enumerate(m.box_weights, 1) if w)}-{len(m.box_weights)}"
                for start, m in ((0, r.mixture), *r.stages)) if r.stages else "-",
            "train seconds (this build)": manifests[f"organism-{name}"]["training_seconds"]}

pd.DataFrame([recipe_row(name) for name in VARIANTS.values()]).set_index("variant")

# %% [markdown]
# Learning curves, recorded during training on validation prompts with their own seed (never the
# book's evaluation prompts): the loss on answer words and the accuracy at 2 and 7 boxes.

# %%
curves = pd.concat([pd.DataFrame(m["learning_curve"]).assign(model=name) for name, m in manifests.items()])
long = curves.melt(id_vars=["model", "step"], value_vars=["answer_loss", "acc_2", "acc_7"], var_name="measure")
alt.Chart(long).mark_line(point=True).encode(
    x="step:Q", y=alt.Y("value:Q", title=None), color=alt.Color("model:N", scale=plots.model_scale(long["model"])),
    tooltip=["model", "step", "measure", alt.Tooltip("value:Q", format=".3f")],
).properties(width=220, height=180).facet(column=alt.Column("measure:N", title=None)).resolve_scale(y="independent")

# %% [markdown]
# ## Accuracy beside the paper's Table 1
#
# Accuracy on the book's evaluation prompts (seed 0, 500 per number of boxes), recorded in each
# variant's manifest when it was trained and re-checked by the tests (`tests/test_organism.py`
# recomputes every number below through `load_model` and requires it to match exactly).

# %%
table = pd.DataFrame({name: m["accuracy"]["boxes"] for name, m in manifests.items()}).T
table.columns = [f"{b} boxes" for b in table.columns]
paper = ref.table1().set_index("model")["full_model"]
table["stands for"] = [ref.MODEL_TITLES[models.REGISTRY[n].analog_of] for n in table.index]
table["paper, 7 boxes"] = [paper[models.REGISTRY[n].analog_of] for n in table.index]
table

# %%
base7 = table.loc["organism-base", "7 boxes"]
lines = []
for name in table.index:
    gain, paper_gain = table.loc[name, "7 boxes"] - base7, table.loc[name, "paper, 7 boxes"] - paper["llama-7b"]
    lines.append(f"* {name}: {table.loc[name, '7 boxes']:.2f} at 7 boxes "
                 f"({gain:+.2f} over the base; the paper's {table.loc[name, 'stands for']}: {paper_gain:+.2f} over LLaMA-7B)")
display(Markdown("\n".join(lines)))

# %% [markdown]
# ## What the organism can and cannot tell us
#
# * It can show the paper's *methods* working end to end on a real LLaMA architecture: every chapter
#   runs them on the organism in minutes, and the same code runs the 7B models on a GPU.
# * It has the paper's *behavioural* pattern by construction of its training: imperfect base,
#   better after arithmetic fine-tuning, about the same after conversation fine-tuning. Why the
#   arithmetic fine-tunes help is what chapters 5 and 6 measure.
# * It cannot tell us that LLaMA-7B's circuit has a particular size or sits in particular layers: a
#   4-layer model has only so many heads, and its circuit is whatever path patching finds in it.
#   Every chapter prints the paper's 7B numbers beside the organism's and says where they differ.
# * Its language is synthetic and tiny (a vocabulary of a few hundred words). Findings that depend on
#   the richness of natural text (for instance, the appendix's prompts with random text inserted)
#   are only weakly tested here.
#
# To retrain a variant from its recipe (about the training time above on 2 CPU cores; the base
# first, since the fine-tunes start from it):
#
# ```bash
# python -m entity_tracking.organism train --variant base
# python -m entity_tracking.organism train --variant goat   # also: float, vicuna
# ```
