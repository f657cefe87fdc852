"""Settings for every test session, whatever command starts it (scripts/test.sh sets them too).

Set before any test imports torch: one thread (two shared cores; more threads made a 2 ms forward
take 200 ms, tooling.md pitfall 12) and no progress bars (a bar's text is not part of any result).
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ET_PROGRESS", "0")


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def results_in_a_temporary_folder(tmp_path_factory, monkeypatch):
    """No test writes into the book's results/: a stored result there is what a chapter shows."""
    if "ET_RESULTS_DIR" not in os.environ:
        monkeypatch.setenv("ET_RESULTS_DIR", str(tmp_path_factory.getbasetemp() / "results"))
