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


GROUPS = {"value_fetcher", "position_transmitter", "position_detector", "structure_reader"}


def test_circuit_prints_the_groups_and_reads_them_back_the_second_time(tiny_dir):
    args = ("circuit", "--model", str(tiny_dir), "--boxes", "3", "--samples", "12", "--seed", "1")
    out = run_cli(*args)
    assert out.returncode == 0, out.stderr
    (row,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert set(row["groups"]) == GROUPS
    assert all(h.startswith("L") and "H" in h for heads in row["groups"].values() for h in heads)
    again = run_cli(*args)
    assert again.returncode == 0 and again.stdout == out.stdout


def test_faithfulness_prints_the_paper_quantities(tiny_dir):
    out = run_cli("faithfulness", "--model", str(tiny_dir), "--boxes", "3", "--samples", "12", "--seed", "1",
                  "--random-draws", "2")
    assert out.returncode == 0, out.stderr
    (row,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert {"full_model", "circuit", "random_circuit", "faithfulness", "random_faithfulness"} <= set(row)
    assert all(0.0 <= row[k] <= 1.0 for k in ("full_model", "circuit", "random_circuit"))


def test_experiment_commands_reject_bad_box_counts_clearly(tiny_dir):
    for command in ("circuit", "faithfulness", "knockout"):
        out = run_cli(command, "--model", str(tiny_dir), "--boxes", "50")
        assert out.returncode == 2 and "from 1 to 26" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_dcm_prints_one_row_per_group_and_desideratum(tiny_dir):
    out = run_cli("dcm", "--model", str(tiny_dir), "--boxes", "3", "--samples", "40", "--seed", "1")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert rows and {r["group"] for r in rows} <= GROUPS
    assert all(0.0 <= r["test_accuracy"] <= 1.0 and isinstance(r["heads"], list) for r in rows)


def test_cmap_of_a_model_into_itself_leaves_every_row_at_its_accuracy(tiny_dir):
    out = run_cli("cmap", "--source", str(tiny_dir), "--target", str(tiny_dir), "--boxes", "3", "--samples", "12",
                  "--seed", "1", "--selection", "circuit")
    assert out.returncode == 0, out.stderr
    (row,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert row["source_accuracy"] == row["target_accuracy"]
    assert all(abs(acc - row["target_accuracy"]) < 1e-9 for acc in row["rows"].values()), row


def test_knockout_prints_one_curve_per_edge(tiny_dir):
    out = run_cli("knockout", "--model", str(tiny_dir), "--boxes", "3", "--samples", "12", "--seed", "1")
    assert out.returncode == 0, out.stderr
    (row,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert row["curves"] and all(all(0.0 <= a <= 1.0 for a in c.values()) for c in row["curves"].values())
