"""Result files named by their parameters, so an expensive experiment runs once and a chapter rereads it.

A method's stored entry point (``path_patching.stored_circuit``, ``circuit_eval.stored_faithfulness``, ...)
calls ``cached("circuit", params, compute)``: the file name holds the experiment's name and a
hash of its parameters (which include the model's weight hash where a model is involved, see
`model_fingerprint`), so changing any parameter or retraining a model computes afresh instead of
reading a stale file. Files are JSON (tables as records, dicts, lists) written atomically, so an
interrupted run never leaves half a file that a later run would trust.

The directory is ``results/`` at the repository root (``ET_RESULTS_DIR`` overrides it). The book commits
these files: nbval then checks that each chapter still runs and prints the same numbers, within the CI
budget, while ``scripts/execute_chapters.sh --fresh`` (``ET_CACHE=0``) recomputes everything.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

ENV_DIR = "ET_RESULTS_DIR"
ENV_SWITCH = "ET_CACHE"  # "0": ignore stored files (recompute and overwrite)


def results_dir() -> Path:
    """Where result files live: $ET_RESULTS_DIR, else results/ at the repository root. Explained in chapter 3."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR])
    return Path(__file__).resolve().parents[2] / "results"


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        return _canonical(asdict(value))
    return str(value)


def params_key(params: dict) -> str:
    """A short stable hash of the parameters (order of keys does not matter). Explained in chapter 3."""
    text = json.dumps(_canonical(params), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def result_path(name: str, params: dict) -> Path:
    return results_dir() / f"{name}-{params_key(params)}.json"


def model_fingerprint(lm) -> str:
    """Identifies the weights a result was computed with (`variants.fingerprint`: the manifest hash
    for an organism, the hub id otherwise; authors' hooks are part of it). Computed once per variant
    and process, without re-reading the weight files. Explained in chapter 3."""
    from .variants import fingerprint

    return fingerprint(lm)


def _encode(value: Any) -> Any:
    if isinstance(value, pd.DataFrame):
        return {"__frame__": json.loads(value.to_json(orient="split", double_precision=15))}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__frame__"}:
            frame = value["__frame__"]
            return pd.DataFrame(frame["data"], index=frame["index"], columns=frame["columns"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def save_json(path: Path, payload: Any) -> None:
    """Write atomically: a temp file in the same directory, then rename. Explained in chapter 3."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _stored(path: Path) -> Any:
    return _decode(json.loads(path.read_text())["result"])


def _store(path: Path, name: str, params: dict, result: Any) -> Any:
    payload = {"name": name, "params": _canonical(params), "result": _encode(result)}
    save_json(path, payload)
    # Return what a later run will read back, so a chapter prints the same whether it computed or read.
    return _decode(json.loads(json.dumps(payload["result"])))


def _fresh() -> bool:
    return os.environ.get(ENV_SWITCH, "1") == "0"


def cached(name: str, params: dict, compute: Callable[[], Any]) -> Any:
    """The stored result of ``compute()`` for these parameters, computing and storing it if absent.

    The result may be a DataFrame, or dicts/lists of DataFrames and JSON values (tuples come back as
    lists, floats rounded to 15 significant digits). Explained in chapter 3."""
    path = result_path(name, params)
    if path.is_file() and not _fresh():
        return _stored(path)
    return _store(path, name, params, compute())


def cached_many(name: str, params: Sequence[dict], compute_missing: Callable[[list[int]], Sequence[Any]]) -> list:
    """`cached` for a list of experiments that are cheaper computed together (one batched run per
    model): ``compute_missing(indices)`` gets the positions in ``params`` of every result not stored
    (all of them under ``ET_CACHE=0``) and returns their results in that order; each is stored under
    its own parameters, so a later call that needs only some of them reads them back one by one.
    Explained in chapter 4."""
    paths = [result_path(name, p) for p in params]
    fresh = _fresh()
    todo = [i for i, path in enumerate(paths) if fresh or not path.is_file()]
    computed = dict(zip(todo, compute_missing(todo))) if todo else {}
    if len(computed) != len(todo):
        raise ValueError(f"compute_missing returned {len(computed)} results for {len(todo)} experiments")
    return [_store(path, name, p, computed[i]) if i in computed else _stored(path)
            for i, (p, path) in enumerate(zip(params, paths))]
