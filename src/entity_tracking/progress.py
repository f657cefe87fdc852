"""One progress bar for every module: a live bar for a reader, silence in stored outputs.

A chapter's executed notebook is the page readers see and the reference nbval compares against,
so a progress bar must never end up in it: its text changes from run to run (timings, rates) and
a notebook bar is a widget that renders as a frozen 100% in the static book. So:

* ``ET_PROGRESS=0`` (set by ``scripts/execute_chapters.sh``, ``scripts/test.sh`` and
  ``tests/conftest.py``): no bar at all.
* ``ET_PROGRESS=1``: always a bar.
* unset: a bar when someone is watching (a Jupyter kernel, e.g. Colab, or a terminal), none in CI
  (``CI`` set) or when stderr is a pipe or a file.

In a notebook the bar is ``tqdm.auto``'s widget bar; in a terminal the text bar. tqdm's own
``TQDM_*`` environment variables (``TQDM_MININTERVAL=5``, ``TQDM_DISABLE=1``) still apply.

Usage::

    from entity_tracking.progress import progress
    for batch in progress(batches, desc="patching heads"):
        ...
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")

ENV_VAR = "ET_PROGRESS"


def _in_jupyter_kernel() -> bool:
    """True inside a Jupyter/Colab kernel (where tqdm.auto draws a widget bar)."""
    if "IPython" not in sys.modules:
        return False
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython half-imported
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ in {"ZMQInteractiveShell", "Shell"}  # "Shell": Colab


def progress_enabled() -> bool:
    """Whether :func:`progress` draws a bar here (see the module docstring for the rules)."""
    setting = os.environ.get(ENV_VAR, "").strip().lower()
    if setting in {"0", "false", "no", "off"}:
        return False
    if setting in {"1", "true", "yes", "on"}:
        return True
    if os.environ.get("CI"):
        return False
    if _in_jupyter_kernel():
        return True
    stream = sys.stderr
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())


def progress(iterable: Iterable[T], desc: str = "", total: int | None = None, **kwargs) -> Iterable[T]:
    """``iterable`` wrapped in a tqdm bar that is shown only when someone is watching.

    Returns a tqdm object in every case (disabled ones draw nothing), so ``.set_postfix`` and
    friends work unconditionally. Extra keyword arguments go to tqdm.
    """
    enabled = progress_enabled()
    if enabled and _in_jupyter_kernel():
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm
    if not enabled:
        kwargs.setdefault("disable", True)  # when enabled, leave `disable` to tqdm (TQDM_DISABLE=1 still wins)
    # A finished inner bar (per layer, per batch) disappears instead of piling up one line per call;
    # in a terminal the outermost bar stays as the record of the run (tqdm's leave=None).
    kwargs.setdefault("leave", None)
    return tqdm(iterable, desc=desc, total=total, **kwargs)
