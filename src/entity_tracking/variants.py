"""Which model variant runs, and the one copy of it in memory: how every chapter and every method gets a model.

A chapter names variants ("organism-base", "goat-7b", a local directory, or a whole family:
"organism", "7b"); `runnable` keeps those this machine can run and says why it skips the others.
`load` returns the resident model, loading it only if it is not the one in memory already and
releasing the previous one first, because one 7B model fills a Colab GPU on its own. Every method
module takes a variant name or a loaded model and goes through `load`, so a stored result can be read
back without loading anything (`fingerprint` names the weights without a load).

Explained in chapter 2 (the models) and appendix A1 (the organism's variants).
"""

from __future__ import annotations

import gc
import hashlib
import json
from pathlib import Path
from typing import Iterable, Sequence

import torch

from . import models

#: What a chapter's ``model`` parameter may name besides one variant: every variant of a scale.
FAMILIES: dict[str, list[str]] = {"organism": [s.name for s in models.ORGANISM_MODELS],
                                  "7b": [s.name for s in models.PAPER_MODELS]}

_RESIDENT: dict[tuple[str, bool], models.LoadedModel] = {}
_FINGERPRINTS: dict[tuple[str, str | None, bool], str] = {}


def hardware_default() -> str:
    """The variant a chapter runs by default: LLaMA-7B on a big enough GPU, else the organism's base.
    Explained in chapter 1."""
    return models.default_variant()


DEFAULT_VARIANT = hardware_default()


def label(variant: str | models.ModelSpec | models.LoadedModel) -> str:
    """How tables and charts name a variant: its registry name, or a local directory's folder name.
    Explained in chapter 2."""
    if isinstance(variant, models.LoadedModel):
        return variant.spec.name
    if isinstance(variant, models.ModelSpec):
        return variant.name
    return variant if variant in models.REGISTRY else Path(str(variant)).name


def requested(choice: str | Sequence[str]) -> list[str]:
    """A parameters cell's choice ("organism", "7b", one name or directory, or a list) as names.
    Explained in chapter 2."""
    if isinstance(choice, str):
        return list(FAMILIES.get(choice, [choice]))
    return list(choice)


def options(extra: Iterable[str] = ()) -> tuple[list[str], dict[str, str]]:
    """The variants that can run on this machine (plus ``extra`` local model directories) and, for
    every other registry variant, why it cannot. Explained in chapter 2."""
    availability = models.variant_availability()
    can = [name for name, why in availability.items() if why is None]
    cannot = {name: why for name, why in availability.items() if why is not None}
    can += [str(v) for v in extra if str(v) not in can]
    return can, cannot


def runnable(choice: str | Sequence[str], required: Sequence[str] = ()) -> list[str]:
    """The requested variants that can run here. Prints why each other one is skipped, and stops with
    what to do when a required one, or every one, cannot run. Explained in chapter 2."""
    wanted = requested(choice)
    can, why_not = options(extra=[v for v in [*required, *wanted] if v not in models.REGISTRY])
    for name in required:
        if name not in can:
            raise RuntimeError(f"{name} cannot run here: {why_not.get(name, 'unknown variant')}; "
                               "see `python -m entity_tracking models`")
    chosen = [v for v in wanted if v in can]
    for v in wanted:
        if v not in chosen:
            print(f"skipping {v}: {why_not.get(v, 'not available here')}")
    if not chosen:
        raise RuntimeError(f"none of {wanted} can run here; see `python -m entity_tracking models`")
    return chosen


def load(variant: str | models.ModelSpec | models.LoadedModel, authors_compat: bool = False) -> models.LoadedModel:
    """The loaded model for a variant, reusing the one in memory; loading another releases it first,
    so two 7B models never share a GPU. A `LoadedModel` passes through unchanged. Explained in
    chapter 2."""
    if isinstance(variant, models.LoadedModel):
        return variant
    key = (variant.name if isinstance(variant, models.ModelSpec) else str(variant), bool(authors_compat))
    if key not in _RESIDENT:
        release()
        _RESIDENT[key] = models.load_model(variant, authors_compat=authors_compat)
    return _RESIDENT[key]


def load_unmanaged(variant, authors_compat: bool = False) -> models.LoadedModel:
    """A second copy, outside the one-resident rule: only for measuring what keeping two models
    costs (CMAP's ``both_resident``). Explained in chapter 6."""
    if isinstance(variant, models.LoadedModel):
        return variant
    return models.load_model(variant, authors_compat=authors_compat)


def resident() -> models.LoadedModel | None:
    """The model in memory now, if any. Explained in chapter 2."""
    return next(iter(_RESIDENT.values()), None)


def release() -> None:
    """Drop the resident model (and its GPU memory, once nothing else holds a reference to it).
    Explained in chapter 2."""
    _RESIDENT.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def fingerprint(variant: str | models.ModelSpec | models.LoadedModel, authors_compat: bool = False) -> str:
    """What names a variant's weights in stored results: the sha256 listed in each checkpoint's
    manifest for an organism (or any local checkpoint with one), the hub id otherwise, and whether
    the authors' hooks are on. Needs no load: a 7B load only to name a result file would cost
    minutes. Computed once per process and variant; the weights themselves are checked against the
    manifest when they are loaded (`models.load_model`). Explained in chapter 3."""
    if isinstance(variant, models.LoadedModel):
        authors_compat = variant.authors_compat
        spec = variant.spec
    else:
        spec = models.resolve(variant)
    key = (spec.base, spec.adapter, bool(authors_compat))
    if key not in _FINGERPRINTS:
        parts = []
        for source in (spec.base, spec.adapter):
            if source is None:
                continue
            manifest = Path(source) / "manifest.json"
            if manifest.is_file():
                hashes = json.loads(manifest.read_text()).get("sha256", {})
                parts.append(hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:12])
            else:
                parts.append(str(source))
        _FINGERPRINTS[key] = "+".join(parts) + (":authors" if authors_compat else "")
    return _FINGERPRINTS[key]


def forget_fingerprints() -> None:
    """Forget the fingerprints computed so far (after retraining a checkpoint in this process).
    Explained in chapter 2."""
    _FINGERPRINTS.clear()
