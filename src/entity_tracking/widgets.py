"""Interactive views of the task: one prompt with its named positions, the model's top next tokens,
and its accuracy at that setting.

Every view is first a plain function with defaults (`show_prediction`, `prompt_positions_html`),
so the static book shows its default state and nbval checks it; `prediction_explorer` wraps the same
function in ipywidgets, which only recompute with a kernel (Colab or Jupyter). Models come from
`variants.load` (one resident at a time). Explained in chapter 2.
"""

from __future__ import annotations

import html
import random
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import pandas as pd
import torch

from . import models, variants
from .data import MAX_BOXES, PAPER_BOXES, Example, TaskConfig
from .metrics import stored_accuracy_table
from .plots import GROUP_COLORS

@dataclass(frozen=True)
class ExplorerConfig:
    """Settings of the prediction views. Defaults are the paper's evaluation: 500 prompts
    (the first 500 lines of its dataset), 7 boxes, batch 50. Explained in chapter 2."""

    samples: int = 500          # prompts the accuracy is measured on (paper: 500)
    eval_seed: int = 0          # seed of that evaluation set (one set for every model)
    top_k: int = 5              # next tokens listed
    batch_size: int = 50        # paper: 50
    min_boxes: int = 1
    max_boxes: int = PAPER_BOXES  # the slider's range; the paper uses 7


def setting_accuracy(variant: str, n_boxes: int = PAPER_BOXES, config: ExplorerConfig = ExplorerConfig()) -> float:
    """Accuracy of a variant on the evaluation prompts with ``n_boxes`` boxes (stored: the slider
    revisits settings, and the book reads it back). Explained in chapter 2."""
    task = TaskConfig(n_boxes=n_boxes, n_samples=config.samples, dataset_seed=config.eval_seed)
    table = stored_accuracy_table([variant], [n_boxes], task, config.batch_size)
    return float(table["accuracy"].iloc[0])


def missing_variants_html(missing: dict[str, str]) -> str:
    """A short note listing the variants left out of the dropdown, each with its reason. Explained in chapter 2."""
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
    object_<i>) for one prompt of a `TaskBatch`. Explained in chapter 2."""
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
    figures; hover a token for its name. ``·`` marks a token's leading space. Explained in chapter 2."""
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
    """The example a seed shows: one fresh context of ``n_boxes`` boxes, a seed-chosen box queried.
    Explained in chapter 2."""
    context = lm.dataset(n_boxes, n_boxes, seed)
    return context[random.Random(seed).randrange(n_boxes)]


@torch.no_grad()
def top_next_tokens(lm: models.LoadedModel, batch, k: int = 5, index: int = 0) -> pd.DataFrame:
    """The ``k`` most probable next tokens after one prompt: rank, token, probability, is_answer.
    Explained in chapter 2."""
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
    """What `show_prediction` shows; renders as HTML in a notebook and as text elsewhere. Explained in chapter 2."""

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

    def _shown(self) -> pd.DataFrame:
        """The top tokens as a reader reads them: a check mark on the answer, not a boolean column."""
        return self.top.assign(is_answer=self.top["is_answer"].map({True: "✓", False: ""})).rename(
            columns={"is_answer": "the answer?"})

    def __str__(self) -> str:
        shown = self._shown()
        table = shown.assign(probability=shown["probability"].round(3)).to_string(index=False)
        return (f"{self.variant}, {self.n_boxes} boxes, example seed {self.seed}\n{self.prompt}\n"
                f"{self._verdict()}\n{table}\n"
                f"accuracy at {self.n_boxes} boxes: {self.accuracy:.3f} on {self.samples} prompts")

    def _repr_html_(self) -> str:
        table = self._shown().to_html(index=False, float_format=lambda p: f"{p:.3f}", border=0)
        notes = "".join(f"<p><small>{n}</small></p>" for n in self.notes)
        return (f"<div><b>{html.escape(self.variant)}</b>, {self.n_boxes} boxes, example seed {self.seed}"
                f"{self.positions_html}<p>{html.escape(self._verdict())}</p>{table}"
                f"<p>Accuracy at {self.n_boxes} boxes: <b>{self.accuracy:.3f}</b> on {self.samples} prompts</p>"
                f"{notes}</div>")


def show_prediction(variant: str | None = None, n_boxes: int = PAPER_BOXES, seed: int = 0,
                    config: ExplorerConfig = ExplorerConfig()) -> PredictionView:
    """One example with its named positions, the model's top next tokens and the model's accuracy
    at this number of boxes. Defaults: the machine's default variant, the paper's 7 boxes. Explained in chapter 2."""
    variant = variant or variants.DEFAULT_VARIANT
    lm = variants.load(variant)
    example = example_for(lm, n_boxes, seed)
    batch = lm.tokenize([example])
    return PredictionView(
        variant=variants.label(variant),
        n_boxes=n_boxes, seed=seed, prompt=example.prompt, answer=example.answer,
        positions_html=prompt_positions_html(batch, lm.tokenizer),
        top=top_next_tokens(lm, batch, config.top_k),
        accuracy=setting_accuracy(variant, n_boxes, config), samples=config.samples,
    )


def prediction_explorer(choices: Sequence[str] | None = None, n_boxes: int = PAPER_BOXES, seed: int = 0,
                        config: ExplorerConfig = ExplorerConfig(), extra: Iterable[str] = ()):
    """The live widget: a dropdown of the variants that can run here, a slider for the number of
    boxes and one for the example, redrawing `show_prediction`. Needs a kernel (Colab/Jupyter);
    the static book shows it frozen at its first state. Explained in chapter 2."""
    import ipywidgets as W
    from IPython.display import display

    runnable, missing = variants.options(extra)
    options = list(choices) if choices is not None else runnable
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
