import json
import subprocess
import sys

from tiny import tiny_dir  # noqa: F401  (fixture)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "entity_tracking", *args], capture_output=True, text=True, timeout=300)


def test_accuracy_prints_one_json_line_per_setting(tiny_dir):
    out = run_cli("accuracy", "--model", str(tiny_dir), "--boxes", "2", "3", "--samples", "20", "--seed", "1")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["boxes"], r["samples"], r["model"]) for r in rows] == [(2, 20, str(tiny_dir)), (3, 20, str(tiny_dir))]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    again = run_cli("accuracy", "--model", str(tiny_dir), "--boxes", "2", "3", "--samples", "20", "--seed", "1")
    assert again.stdout == out.stdout


def test_models_lists_every_variant():
    out = run_cli("models", "--json")
    names = [json.loads(line)["name"] for line in out.stdout.splitlines()]
    assert {"llama-7b", "goat-7b", "organism-base"} <= set(names)


def test_bad_arguments_give_a_clear_error_and_no_traceback(tiny_dir):
    for args, message in [(["--boxes", "50"], "from 1 to 26"), (["--boxes", "0"], "from 1 to 26")]:
        out = run_cli("accuracy", "--model", str(tiny_dir), *args)
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    out = run_cli("accuracy", "--model", "no-such-model")
    assert out.returncode == 2 and "organism-base" in out.stderr
