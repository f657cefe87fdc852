"""The result store: what is computed, what is read back, and that batched storing matches one-by-one."""

import pandas as pd
import pytest

from entity_tracking import cache


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("ET_RESULTS_DIR", str(tmp_path))
    monkeypatch.delenv("ET_CACHE", raising=False)
    return tmp_path


def test_cached_many_computes_only_what_is_missing_and_stores_each_under_its_own_key(store):
    cache.cached("square", {"x": 2}, lambda: {"y": 4})
    asked = []

    def compute(todo):
        asked.append(list(todo))
        return [{"y": [1, 2, 3][i] ** 2, "frame": pd.DataFrame({"a": [i]})} for i in todo]

    params = [{"x": 1}, {"x": 2}, {"x": 3}]
    results = cache.cached_many("square", params, compute)
    assert asked == [[0, 2]]  # x = 2 was stored already
    assert [r["y"] for r in results] == [1, 4, 9]
    assert cache.cached("square", {"x": 3}, lambda: pytest.fail("should be read back"))["y"] == 9
    again = cache.cached_many("square", params, lambda todo: pytest.fail(f"recomputed {todo}"))
    assert [r["y"] for r in again] == [1, 4, 9]
    pd.testing.assert_frame_equal(again[0]["frame"], results[0]["frame"])  # computed == read back


def test_cached_many_recomputes_everything_together_when_the_cache_is_off(store, monkeypatch):
    cache.cached_many("square", [{"x": 1}, {"x": 2}], lambda todo: [{"y": -1} for _ in todo])
    monkeypatch.setenv("ET_CACHE", "0")
    asked = []
    results = cache.cached_many("square", [{"x": 1}, {"x": 2}], lambda todo: asked.append(todo) or [{"y": i} for i in todo])
    assert asked == [[0, 1]] and [r["y"] for r in results] == [0, 1]
    monkeypatch.delenv("ET_CACHE")
    assert cache.cached("square", {"x": 2}, lambda: pytest.fail("stored"))["y"] == 1


def test_cached_many_refuses_a_short_answer_and_stores_nothing(store):
    with pytest.raises(ValueError, match="2 experiments"):
        cache.cached_many("square", [{"x": 1}, {"x": 2}], lambda todo: [{"y": 0}])
    assert not list(store.glob("square-*.json"))
