"""The paper's five claims, checked on the organism with the book's own stored results.

Every chapter that compares the organism with the paper opens with a "what reproduces here" box, and
the conclusion ends with the whole table; all of them come from `reproduction_checks`, which reads the
same stored results the chapters show (`path_patching.stored_circuit`,
`circuit_eval.stored_faithfulness`, `dcm.stored_patching_check`, `cmap.stored_cmap`), computing
what is missing. A claim holds for the organism when its effect exceeds the noise of 500 prompts
(`paper_reference.PAPER_NOISE`). Explained in chapter 7.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Sequence

import pandas as pd

from .circuit import GROUP_LETTERS

#: Which chapter measures each claim.
CLAIM_CHAPTERS = {"accuracy": 2, "faithful": 4, "beats_base": 4, "functionality": 5, "cmap": 6}


@dataclass(frozen=True)
class ClaimsSetup:
    """The variants and the settings every chapter uses (their defaults are the chapters'). Explained in chapter 7."""

    base: str = "organism-base"
    finetuned: tuple[str, ...] = ("organism-vicuna", "organism-goat", "organism-float")
    arithmetic: tuple[str, ...] = ("organism-goat", "organism-float")
    configs: dict = field(default_factory=dict)   # optional: "path_patching", "eval", "dcm", "check", "cmap"


def _configs(setup: ClaimsSetup):
    from .circuit_eval import EvalConfig
    from .cmap import CMAPConfig
    from .dcm import DCMConfig, PatchingCheckConfig
    from .path_patching import PathPatchingConfig

    c = setup.configs
    return (c.get("path_patching", PathPatchingConfig()), c.get("eval", EvalConfig()), c.get("dcm", DCMConfig()),
            c.get("check", PatchingCheckConfig()), c.get("cmap", CMAPConfig()))


def cmap_shares(table: pd.DataFrame, target: float, source: float, noise: float) -> dict[str, float] | None:
    """Each row's share of the accuracy gap recovered, (row − target) / (source − target); None when
    the source is not better than the target by more than the noise (there is no gain to locate).
    Explained in chapter 7."""
    if source - target <= noise:
        return None
    return {r: (a - target) / (source - target) for r, a in table.set_index("row")["accuracy"].items()}


def reproduction_checks(setup: ClaimsSetup = ClaimsSetup(), keys: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per claim: ``key``, ``claim``, ``chapter``, ``paper`` (its 7B evidence), ``organism``
    ("yes"/"no") and ``numbers`` (the organism's, in words). ``keys`` limits the check to some claims
    (chapter 2 needs only the accuracies, which need no circuit)."""
    keys = list(CLAIM_CHAPTERS) if keys is None else list(keys)
    if keys == ["accuracy"]:
        return _accuracy_only(setup)
    from . import cmap, dcm
    from . import paper_reference as ref
    from .circuit_eval import faithfulness_table
    from .path_patching import stored_circuit
    from .variants import label

    pp, ev, dc, ch, cm = _configs(setup)
    noise = ref.PAPER_NOISE
    variants = [setup.base, *setup.finetuned]
    base_circuit = stored_circuit(setup.base, pp)
    t1 = faithfulness_table(variants, [base_circuit], ev).set_index("model")
    name = {v: label(v) for v in variants}
    base_acc = t1.loc[name[setup.base], "full_model"]
    rows = []

    if "accuracy" in keys:
        rows.append(_accuracy_row({v: t1.loc[name[v], "full_model"] for v in variants}, setup, noise))
    if "faithful" in keys:
        faith = {v: t1.loc[name[v], "faithfulness"] for v in variants}
        rows.append({"key": "faithful", "claim": "the base model's circuit alone is faithful in every model",
                     "paper": "faithfulness 0.88–1.00 in the four 7B models",
                     "organism": _yes(all(f >= 0.8 for f in faith.values())),
                     "numbers": ", ".join(f"{name[v]} {f:.2f}" for v, f in faith.items())})
    if "beats_base" in keys:
        inside = {v: t1.loc[name[v], "circuit"] for v in setup.arithmetic}
        rows.append({"key": "beats_base",
                     "claim": "the base circuit inside the arithmetic fine-tunes beats the whole base model",
                     "paper": "0.73 / 0.72 inside Goat / FLoat vs 0.66",
                     "organism": _yes(all(a > base_acc + noise for a in inside.values())),
                     "numbers": ", ".join(f"inside {name[v]} {a:.2f}" for v, a in inside.items())
                     + f" vs {base_acc:.2f}"})

    if "functionality" in keys:
        summary, _ = dcm.stored_circuit_dcm(setup.base, base_circuit, dc)
        heads = {name[setup.base]: dcm.heads_of(summary)}
        named = {"value_fetcher": "object_value", "position_transmitter": "positional",
                 "position_detector": "positional", "structure_reader": "positional"}
        sem = {}
        for v in variants:
            frame = dcm.stored_patching_check(v, heads, ch)
            frame = frame[frame["desideratum"] == frame["group"].map(named)]
            sem[v] = frame.groupby("group")["accuracy"].mean().to_dict()

        def semantics_hold(s):
            return (s.get("value_fetcher", 0) > noise and
                    min(s.get("position_transmitter", 0), s.get("position_detector", 0))
                    > s.get("structure_reader", 0) + noise)

        rows.append({"key": "functionality", "claim": "in every model A carries the object, B and C the position",
                     "paper": "A object 0.46–0.66; B and C position 0.35–0.55; D at the 0.13 floor",
                     "organism": _yes(all(semantics_hold(sem[v]) for v in variants)),
                     "numbers": "; ".join(f"{name[v]}: " + " ".join(f"{GROUP_LETTERS[g]} {sem[v].get(g, 0):.2f}"
                                                                    for g in named) for v in variants)})

    if "cmap" in keys:
        parts, ok = [], True
        for v in setup.arithmetic:
            result = cmap.stored_cmap(v, setup.base, cmap.finetuned_head_sets(v, pp, dc), cm)
            shares = cmap_shares(result["table"], result["target_accuracy"], result["source_accuracy"], noise)
            if shares is None:
                ok = False
                gap = result["source_accuracy"] - result["target_accuracy"]
                parts.append(f"{name[v]}: no gain to locate ({gap:+.2f})")
                continue
            ok &= max(shares["value_fetcher"], shares["position_transmitter"]) >= 0.5
            ok &= max(shares["position_detector"], shares["structure_reader"]) < 0.5
            parts.append(f"{name[v]}: " + ", ".join(f"{GROUP_LETTERS[g]} {shares[g]:.0%}" for g in GROUP_LETTERS))
        rows.append({"key": "cmap", "claim": "CMAP: the gain comes from A or B (≥ 50 % of it), not from C or D",
                     "paper": "B or A recovers most of Goat's and FLoat's gap; C and D little",
                     "organism": _yes(ok), "numbers": "; ".join(parts)})
    out = pd.DataFrame(rows, columns=["key", "claim", "paper", "organism", "numbers"])
    out.insert(2, "chapter", out["key"].map(CLAIM_CHAPTERS))
    return out


def _accuracy_row(accuracy: dict, setup: ClaimsSetup, noise: float) -> dict:
    base_acc = accuracy[setup.base]
    gains = {v: accuracy[v] - base_acc for v in setup.arithmetic}
    from .variants import label

    return {"key": "accuracy", "claim": "the arithmetic fine-tunes track entities better than their base",
            "paper": "Goat-7B and FLoat-7B 0.82 vs LLaMA-7B 0.66 (+0.16)",
            "organism": _yes(all(g > noise for g in gains.values())),
            "numbers": ", ".join(f"{label(v)} {accuracy[v]:.2f} ({g:+.2f})" for v, g in gains.items())
            + f" vs {label(setup.base)} {base_acc:.2f}"}


def _accuracy_only(setup: ClaimsSetup) -> pd.DataFrame:
    from . import paper_reference as ref
    from .metrics import stored_accuracy_table

    _, ev, _, _, _ = _configs(setup)
    variants = [setup.base, *setup.arithmetic]
    table = stored_accuracy_table(variants, [ev.task.n_boxes], ev.task)
    accuracy = dict(zip(variants, table["accuracy"]))
    out = pd.DataFrame([_accuracy_row(accuracy, setup, ref.PAPER_NOISE)])
    out.insert(2, "chapter", out["key"].map(CLAIM_CHAPTERS))
    return out


def _yes(ok: bool) -> str:
    return "yes" if ok else "no"


def reproduction_box(checks: pd.DataFrame, keys: Sequence[str] | None = None, title: str = "What reproduces here") -> "HTMLBox":
    """The box at the top of a chapter: each claim (or only ``keys``) with ✓ or ✗ for the organism,
    its numbers and the paper's, computed from `reproduction_checks`. Explained in chapter 7."""
    rows = checks if keys is None else checks[checks["key"].isin(keys)]
    items = []
    for r in rows.itertuples():
        mark = "✓" if r.organism == "yes" else "✗"
        verdict = "reproduces" if r.organism == "yes" else "does not reproduce"
        items.append(f"<li><b>{mark} {html.escape(r.claim)}</b> — {verdict} at organism scale "
                     f"(chapter {r.chapter}). <br><small>Organism: {html.escape(r.numbers)}. "
                     f"Paper: {html.escape(r.paper)}.</small></li>")
    held = int((rows["organism"] == "yes").sum())
    body = (f'<div class="admonition note reproduces-box" id="what-reproduces"><p class="admonition-title">{html.escape(title)}'
            f": {held} of {len(rows)} claim{'s hold' if len(rows) != 1 else ' holds'} on the organism</p>"
            f"<ul>{''.join(items)}</ul><p><small>Organism numbers are measured here on the tiny CPU models "
            "(appendix A1); paper numbers are the authors' 7B results.</small></p></div>")
    return HTMLBox(body)


class HTMLBox:
    """HTML for a notebook cell's output (rich display) with a plain-text fallback. Explained in chapter 7."""

    def __init__(self, body: str):
        self.body = body

    def _repr_html_(self) -> str:
        return self.body

    def __repr__(self) -> str:
        import re

        return re.sub(r"<[^>]+>", "", self.body.replace("</li>", "\n")).strip()


def setup_for(names: Sequence[str]) -> ClaimsSetup:
    """The claims' variants from a chapter's list: the one standing for LLaMA-7B is the base, the
    others its fine-tunes, those standing for Goat-7B and FLoat-7B the arithmetic ones. Explained in chapter 7."""
    from . import paper_reference as ref
    from .variants import label

    paper = {v: ref.paper_model_of(label(v)) for v in names}
    base = next((v for v in names if paper[v] == "llama-7b"), names[0])
    finetuned = tuple(v for v in names if v != base)
    arithmetic = tuple(v for v in finetuned if paper[v] in ("goat-7b", "float-7b")) or finetuned
    return ClaimsSetup(base=base, finetuned=finetuned, arithmetic=arithmetic)
