"""Interactive views of the task: one prompt with its named positions, the model's top next tokens,
and its accuracy at that setting.

Every view is first a plain function with defaults (`show_prediction`, `prompt_positions_html`),
so the static book shows its default state and nbval checks it; `prediction_explorer` wraps the same
function in ipywidgets, which only recompute with a kernel (Colab or Jupyter). Models are loaded
once and kept, one at a time, because a 7B model fills a Colab GPU on its own.
"""

from __future__ import annotations

import html
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd
import torch

from . import models
from .data import MAX_BOXES, PAPER_BOXES, Example
from .metrics import model_accuracy
from .plots import GROUP_COLORS

try:  # the team's progress bar, quiet in CI and nbval
    from .progress import progress
except ImportError:  # pragma: no cover - until entity_tracking.progress lands
    def progress(iterable, desc: str = "", total: int | None = None):
        """tqdm in a terminal only: a notebook's stored outputs must not depend on a progress bar."""
        import sys

        from tqdm import tqdm

        return tqdm(iterable, desc=desc, total=total, disable=bool(os.environ.get("CI")) or not sys.stderr.isatty())


@dataclass(frozen=True)
class ExplorerConfig:
    """Settings of the prediction views. Defaults are the paper's evaluation: 500 prompts
    (the first 500 lines of its dataset, paper.md §2.3), 7 boxes, batch 50."""

    samples: int = 500          # prompts the accuracy is measured on (paper: 500)
    eval_seed: int = 0          # seed of that evaluation set (one set for every model)
    top_k: int = 5              # next tokens listed
    batch_size: int = 50        # paper: 50
    min_boxes: int = 1
    max_boxes: int = PAPER_BOXES  # the slider's range; the paper uses 7


# --------------------------------------------------------------------------------------------------
# One model resident at a time
# --------------------------------------------------------------------------------------------------

_RESIDENT: dict[str, models.LoadedModel] = {}
_ACCURACY: dict[tuple, float] = {}


def resident_model(variant: str | models.ModelSpec) -> models.LoadedModel:
    """The loaded model for a variant, reusing the one in memory; loading another frees it first,
    so two 7B models never share a GPU."""
    key = variant.name if isinstance(variant, models.ModelSpec) else str(variant)
    if key not in _RESIDENT:
        release_model()
        _RESIDENT[key] = models.load_model(variant)
    return _RESIDENT[key]


def release_model() -> None:
    """Drop the resident model (and its GPU memory, once no one else holds a reference to it)."""
    import gc

    _RESIDENT.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def setting_accuracy(variant: str, n_boxes: int = PAPER_BOXES, config: ExplorerConfig = ExplorerConfig()) -> float:
    """Accuracy of a variant on the evaluation prompts with ``n_boxes`` boxes (memoised: the slider
    revisits settings)."""
    key = (str(variant), n_boxes, config.samples, config.eval_seed)
    if key not in _ACCURACY:
        lm = resident_model(variant)
        batch = lm.tokenize(lm.dataset(n_boxes, config.samples, config.eval_seed))
        _ACCURACY[key] = model_accuracy(lm, batch, config.batch_size)
    return _ACCURACY[key]


# --------------------------------------------------------------------------------------------------
# Which variants can run here
# --------------------------------------------------------------------------------------------------

def variant_options(extra: Iterable[str] = ()) -> tuple[list[str], dict[str, str]]:
    """Variants the dropdown offers (those that can run on this machine, plus ``extra`` local
    model directories) and, for every other registry variant, why it cannot run here."""
    availability = models.variant_availability()
    runnable = [name for name, why in availability.items() if why is None]
    missing = {name: why for name, why in availability.items() if why is not None}
    runnable += [str(v) for v in extra if str(v) not in runnable]
    return runnable, missing


#: What a chapter's ``model`` parameter may name besides one variant: every variant of a scale.
FAMILIES: dict[str, list[str]] = {"organism": [s.name for s in models.ORGANISM_MODELS],
                                  "7b": [s.name for s in models.PAPER_MODELS]}


def requested_variants(choice: str | Sequence[str]) -> list[str]:
    """A parameters cell's choice ("organism", "7b", one name or directory, or a list) as names."""
    if isinstance(choice, str):
        return list(FAMILIES.get(choice, [choice]))
    return list(choice)


def runnable_variants(requested: Sequence[str], required: Sequence[str] = ()) -> list[str]:
    """The requested variants that can run on this machine. Prints why each other one is skipped,
    and stops with what to do when a required one, or every one, cannot run."""
    runnable, why_not = variant_options(extra=[v for v in [*required, *requested] if v not in models.REGISTRY])
    for name in required:
        if name not in runnable:
            raise RuntimeError(f"{name} cannot run here: {why_not.get(name, 'unknown variant')}; "
                               "see `python -m entity_tracking models`")
    chosen = [v for v in requested if v in runnable]
    for v in requested:
        if v not in chosen:
            print(f"skipping {v}: {why_not.get(v, 'not available here')}")
    if not chosen:
        raise RuntimeError(f"none of {list(requested)} can run here; see `python -m entity_tracking models`")
    return chosen


def missing_variants_html(missing: dict[str, str]) -> str:
    """A short note listing the variants left out of the dropdown, each with its reason."""
    if not missing:
        return ""
    items = "".join(f"<li><code>{html.escape(n)}</code>: {html.escape(why)}</li>" for n, why in missing.items())
    return f"<details><summary>{len(missing)} variant(s) cannot run here</summary><ul>{items}</ul></details>"


# --------------------------------------------------------------------------------------------------
# The prompt with its named positions
# --------------------------------------------------------------------------------------------------

#: Colours of the named positions: each position in the colour of the group that reads there.
POSITION_STYLES: dict[str, tuple[str, str]] = {
    "last": (GROUP_COLORS["value_fetcher"], "last token: the prediction; groups A and B read here"),
    "query_label": (GROUP_COLORS["position_detector"], "query label: group C reads here"),
    "prev_query_label": (GROUP_COLORS["structure_reader"], "previous query label: group D reads here"),
    "answer": ("#fbe3a1", "the correct object (the answer)"),
    "object": ("#e6e6e6", "other objects"),
}


def token_roles(batch, index: int = 0) -> dict[int, str]:
    """Token index -> the name of its position (last, query_label, prev_query_label, answer,
    object_<i>) for one prompt of a `TaskBatch`."""
    pos = batch.positions
    example = batch.examples[index]
    roles: dict[int, str] = {}
    for i, t in enumerate(pos["object"][index].tolist()):
        roles[t] = "answer" if example.answer == example.objects[i] else f"object_{i}"
    for name in ("prev_query_label", "query_label", "last"):
        t = int(pos[name][index])
        if t >= 0:
            roles[t] = name
    return roles


def _token_text(tokenizer, token_id: int) -> str:
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    return piece.replace("▁", "·") if piece.startswith("▁") else piece


def prompt_positions_html(batch, tokenizer, index: int = 0, legend: bool = True) -> str:
    """The prompt token by token (index underneath), named positions coloured as in the circuit
    figures; hover a token for its name. ``·`` marks a token's leading space."""
    roles = token_roles(batch, index)
    cells = []
    for t, token_id in enumerate(batch.tokens[index].tolist()):
        role = roles.get(t)
        style_key = "object" if role and role.startswith("object_") else role
        colour = POSITION_STYLES[style_key][0] if style_key else "transparent"
        dark = style_key in ("last", "query_label", "prev_query_label")
        title = f"{t}: {role}" if role else str(t)
        cells.append(
            f'<span title="{html.escape(title)}" style="display:inline-block;text-align:center;margin:1px;'
            f'padding:0 2px;border-radius:3px;background:{colour};color:{"white" if dark else "black"}">'
            f'{html.escape(_token_text(tokenizer, token_id))}<br><small style="opacity:.6">{t}</small></span>'
        )
    out = f'<div style="font-family:monospace;line-height:1.1">{"".join(cells)}</div>'
    if legend:
        keys = ["last", "query_label", "prev_query_label", "answer", "object"]
        out += "<div style='font-size:small;margin-top:4px'>" + " ".join(
            f'<span style="background:{POSITION_STYLES[k][0]};color:'
            f'{"white" if k in ("last", "query_label", "prev_query_label") else "black"};'
            f'padding:0 4px;border-radius:3px">{html.escape(POSITION_STYLES[k][1])}</span>' for k in keys
        ) + "</div>"
    return out


# --------------------------------------------------------------------------------------------------
# The prediction view
# --------------------------------------------------------------------------------------------------

def example_for(lm: models.LoadedModel, n_boxes: int, seed: int) -> Example:
    """The example a seed shows: one fresh context of ``n_boxes`` boxes, a seed-chosen box queried."""
    context = lm.dataset(n_boxes, n_boxes, seed)
    return context[random.Random(seed).randrange(n_boxes)]


@torch.no_grad()
def top_next_tokens(lm: models.LoadedModel, batch, k: int = 5, index: int = 0) -> pd.DataFrame:
    """The ``k`` most probable next tokens after one prompt: rank, token, probability, is_answer."""
    probs = lm.model(batch.tokens[index: index + 1])[0, -1].float().softmax(-1)
    values, ids = probs.topk(k)
    answer = int(batch.answer_ids[index])
    return pd.DataFrame({
        "rank": range(1, k + 1),
        "token": [lm.tokenizer.decode([i]).strip() or repr(lm.tokenizer.decode([i])) for i in ids.tolist()],
        "probability": values.tolist(),
        "is_answer": [i == answer for i in ids.tolist()],
    })


@dataclass(repr=False)
class PredictionView:
    """What `show_prediction` shows; renders as HTML in a notebook and as text elsewhere."""

    variant: str
    n_boxes: int
    seed: int
    prompt: str
    answer: str
    positions_html: str
    top: pd.DataFrame
    accuracy: float
    samples: int
    notes: list[str] = field(default_factory=list)

    @property
    def prediction(self) -> str:
        return str(self.top["token"].iloc[0])

    @property
    def correct(self) -> bool:
        return bool(self.top["is_answer"].iloc[0])

    def _verdict(self) -> str:
        return f"predicts {self.prediction!r}: {'correct' if self.correct else 'wrong'} (answer {self.answer!r})"

    def __repr__(self) -> str:
        return str(self)

    def __str__(self) -> str:
        table = self.top.assign(probability=self.top["probability"].round(3)).to_string(index=False)
        return (f"{self.variant}, {self.n_boxes} boxes, example seed {self.seed}\n{self.prompt}\n"
                f"{self._verdict()}\n{table}\n"
                f"accuracy at {self.n_boxes} boxes: {self.accuracy:.3f} on {self.samples} prompts")

    def _repr_html_(self) -> str:
        table = self.top.to_html(index=False, float_format=lambda p: f"{p:.3f}", border=0)
        notes = "".join(f"<p><small>{n}</small></p>" for n in self.notes)
        return (f"<div><b>{html.escape(self.variant)}</b>, {self.n_boxes} boxes, example seed {self.seed}"
                f"{self.positions_html}<p>{html.escape(self._verdict())}</p>{table}"
                f"<p>Accuracy at {self.n_boxes} boxes: <b>{self.accuracy:.3f}</b> on {self.samples} prompts</p>"
                f"{notes}</div>")


def show_prediction(variant: str | None = None, n_boxes: int = PAPER_BOXES, seed: int = 0,
                    config: ExplorerConfig = ExplorerConfig()) -> PredictionView:
    """One example with its named positions, the model's top next tokens and the model's accuracy
    at this number of boxes. Defaults: the machine's default variant, the paper's 7 boxes."""
    variant = variant or models.default_variant()
    lm = resident_model(variant)
    example = example_for(lm, n_boxes, seed)
    batch = lm.tokenize([example])
    return PredictionView(
        variant=variant_label(variant),
        n_boxes=n_boxes, seed=seed, prompt=example.prompt, answer=example.answer,
        positions_html=prompt_positions_html(batch, lm.tokenizer),
        top=top_next_tokens(lm, batch, config.top_k),
        accuracy=setting_accuracy(variant, n_boxes, config), samples=config.samples,
    )


def prediction_explorer(variants: Sequence[str] | None = None, n_boxes: int = PAPER_BOXES, seed: int = 0,
                        config: ExplorerConfig = ExplorerConfig(), extra: Iterable[str] = ()):
    """The live widget: a dropdown of the variants that can run here, a slider for the number of
    boxes and one for the example, redrawing `show_prediction`. Needs a kernel (Colab/Jupyter);
    the static book shows it frozen at its first state."""
    import ipywidgets as W
    from IPython.display import display

    runnable, missing = variant_options(extra)
    options = list(variants) if variants is not None else runnable
    note = W.HTML(missing_variants_html({k: v for k, v in missing.items() if k not in options}))
    if not options:
        return W.VBox([W.HTML("<p>No model variant can run here yet.</p>"), note])
    dropdown = W.Dropdown(options=options, value=options[0], description="model")
    boxes = W.IntSlider(value=n_boxes, min=config.min_boxes, max=min(config.max_boxes, MAX_BOXES),
                        description="boxes")
    example = W.IntSlider(value=seed, min=0, max=99, description="example")
    out = W.Output()

    def redraw(variant, n, s):
        with out:
            out.clear_output(wait=True)
            display(show_prediction(variant, n, s, config))

    W.interactive_output(redraw, {"variant": dropdown, "n": boxes, "s": example})
    return W.VBox([W.HBox([dropdown, boxes, example]), note, out])


# --------------------------------------------------------------------------------------------------
# Accuracy of several variants (the chapter's chart and table)
# --------------------------------------------------------------------------------------------------

def variant_label(variant: str) -> str:
    """A registry name as is, a local model directory by its folder name."""
    return variant if variant in models.REGISTRY else Path(str(variant)).name


def _results_name(variants: Sequence[str], boxes: Sequence[int], samples: int, seed: int) -> str:
    names = "+".join(re.sub(r"[^A-Za-z0-9_.-]", "_", variant_label(v)) for v in variants)
    box_part = "-".join(str(b) for b in boxes)
    return f"accuracy_{names}_boxes{box_part}_n{samples}_seed{seed}.csv"


def variant_accuracy_table(variants: Sequence[str], boxes: Sequence[int] = range(2, PAPER_BOXES + 1),
                           samples: int = 500, seed: int = 0, batch_size: int = 50,
                           results_dir: str | Path | None = None) -> pd.DataFrame:
    """Accuracy of each variant at each number of boxes, on the same prompts for every variant:
    a tidy frame (model, boxes, accuracy, n_samples, seed, source="ours").

    With ``results_dir`` the frame is written to (and later read back from) a file named by these
    parameters, so a 7B run done once on a GPU can be shown by the book built without one."""
    boxes = [int(b) for b in boxes]
    path = Path(results_dir) / _results_name(variants, boxes, samples, seed) if results_dir else None
    if path is not None and path.is_file():
        return pd.read_csv(path)
    config = ExplorerConfig(samples=samples, eval_seed=seed, batch_size=batch_size)
    rows = [
        {"model": variant_label(v), "boxes": n, "accuracy": setting_accuracy(v, n, config),
         "n_samples": samples, "seed": seed, "source": "ours"}
        for v in progress(variants, desc="variants") for n in boxes
    ]
    table = pd.DataFrame(rows)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(path, index=False)
    return table
