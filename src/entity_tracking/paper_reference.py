"""The paper's 7B reference numbers as data, each with where it comes from.

Chapters show "paper" beside "ours" from here and never type a paper number by hand. Every table is
read from the authors' repository github.com/Nix07/finetuning at ``379765d``: result files [repo],
saved notebook outputs at HEAD [nb], or saved outputs of an older commit [hist]. Each frame carries a
``provenance`` column, and `provenance(name)` gives the citation for a table. Explained in chapter 1.

Units: every accuracy is a fraction in [0, 1], also where the paper prints percent (activation
patching); model, group and desideratum names are the package's own (`models.REGISTRY`,
`circuit.GROUPS`, `data.DESIDERATA`), so frames join with our results without renaming.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

MODELS = ("llama-7b", "vicuna-7b", "goat-7b", "float-7b")
MODEL_TITLES = {"llama-7b": "Llama-7B", "vicuna-7b": "Vicuna-7B", "goat-7b": "Goat-7B", "float-7b": "FLoat-7B"}
GROUPS = ("value_fetcher", "position_transmitter", "position_detector", "structure_reader")
# The authors' file names for the groups (pos_transmitter, ...), as they appear in their result files.
_AUTHORS_GROUP = {"value_fetcher": "value_fetcher", "pos_transmitter": "position_transmitter",
                  "pos_detector": "position_detector", "struct_reader": "structure_reader"}
_AUTHORS_MODEL = {"llama": "llama-7b", "vicuna": "vicuna-7b", "goat": "goat-7b", "float": "float-7b"}

#: The paper's evaluation set: the first 500 lines of its dataset.
EVAL_SAMPLES = 500
#: The number of boxes of every paper number.
PAPER_BOXES = 7


@dataclass(frozen=True)
class Provenance:
    """Where a reference table comes from: the tag of the authors' file, the section."""

    tag: str        # "repo", "nb", "hist <commit>", "page"
    where: str      # the authors' file(s) the numbers were read from
    section: str    # the section of the book's specification that transcribes them

    def __str__(self) -> str:
        return f"[{self.tag}] {self.where}"


PROVENANCE: dict[str, Provenance] = {
    "table1": Provenance("nb", "experiment_1/circuit_eval.ipynb", "§3 Table 1, §5 rows 1-4"),
    "circuit_sizes": Provenance("repo", "experiment_1/results/circuits/{llama,goat,float}_circuit.json",
                                "§4.3 Final circuits, §5 rows 5-7"),
    "llama_circuit_heads": Provenance("repo", "experiment_1/results/circuits/llama_circuit.json", "§4.3"),
    "prominent_heads": Provenance("repo", "circuit_flow.png", "§4.1, §5 row 8"),
    "top_heads": Provenance("repo", "experiment_1/results/path_patching/{model}_circuit/*.pt",
                            "§4.3 Top path-patching heads, §5 row 9"),
    "minimality": Provenance("repo", "experiment_1/results/minimality/*/*_significance.json",
                             "§4.3-4.4, §5 rows 10-11"),
    "own_circuit_faithfulness": Provenance("hist adf3a17 / 519ca60", "experiment_1/circuit_eval.ipynb",
                                           "§4.5, §5 rows 12-13"),
    "overlap": Provenance("repo", "recomputed from experiment_1/results/circuits/*.json", "§4.7, §5 row 14"),
    "completeness": Provenance("hist e312b20 / 9b80331, nb HEAD", "experiment_1/completeness.ipynb",
                               "§4.6, §5 rows 15-17"),
    "dcm": Provenance("repo", "experiment_2/results/DCM/{model}_circuit/{group}/{desideratum}/0.01.txt",
                      "§4.8, §5 rows 18-22"),
    "activation_patching": Provenance(
        "repo", "experiment_2/results/activation_patching/{circuit}_circuit/{model}_semantic_results.json",
        "§4.9, §5 rows 23-27"),
    "additional_desiderata": Provenance("repo", "llama_circuit/llama_add_semantic_results.json and DCM txt files",
                                        "§4.10, §5 row 28"),
    "cmap": Provenance("nb", "experiment_3/cmap.ipynb (markdown) and CMAP.png", "§4.11, §5 rows 29-31"),
    "cmap_input": Provenance("hist 2f10331", "experiment_3/cmap.ipynb (markdown)", "§4.11 Input CMAP, §5 rows 32-33"),
    "knockout": Provenance("repo", "attn_knockout/results/*.json", "§4.12, §5 rows 34-37"),
}


def provenance(name: str) -> str:
    """The citation line for one reference table (for a chapter's caption)."""
    if name not in PROVENANCE:
        raise KeyError(f"no reference table {name!r}; choose from {sorted(PROVENANCE)}")
    return str(PROVENANCE[name])


def _frame(name: str, rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    df["source"] = "paper"
    df["provenance"] = str(PROVENANCE[name])
    return df


def _rows(text: str) -> list[list[str]]:
    """Whitespace-separated rows of a transcribed table (blank lines and '#' comments skipped)."""
    return [line.split() for line in text.strip().splitlines() if line.strip() and not line.lstrip().startswith("#")]


# --------------------------------------------------------------------------------------------------
# Table 1: accuracy and LLaMA-circuit faithfulness (first 500 examples, 7 boxes)
# --------------------------------------------------------------------------------------------------

#: model: (full model, LLaMA circuit, random circuit (mean of 10 draws), faithfulness)
TABLE1: dict[str, tuple[float, float, float, float]] = {
    "llama-7b": (0.66, 0.66, 0.00, 1.00),
    "vicuna-7b": (0.67, 0.65, 0.00, 0.97),
    "goat-7b": (0.82, 0.73, 0.01, 0.89),
    "float-7b": (0.82, 0.72, 0.01, 0.88),
}


def table1() -> pd.DataFrame:
    """The paper's Table 1, one row per model (accuracies as the paper rounds them: 2 decimals).
    The Goat row's circuit number was computed without Goat's o_proj LoRA update (W4, appendix A3)."""
    return _frame("table1", [
        {"model": m, "full_model": f, "llama_circuit": c, "random_circuit": r, "faithfulness": fa}
        for m, (f, c, r, fa) in TABLE1.items()
    ])


def accuracy() -> pd.DataFrame:
    """Full-model accuracy in the tidy layout of `metrics.accuracy_by_boxes` results
    (model, boxes, accuracy, n_samples, source): the paper measured 7 boxes only."""
    return _frame("table1", [
        {"model": m, "boxes": PAPER_BOXES, "accuracy": row[0], "n_samples": EVAL_SAMPLES} for m, row in TABLE1.items()
    ])


# --------------------------------------------------------------------------------------------------
# Circuits found by path patching + minimality
# --------------------------------------------------------------------------------------------------

#: circuit: heads per group A, B, C, D; total; unique heads; layer range per group.
CIRCUIT_SIZES: dict[str, dict] = {
    "llama-7b": {"sizes": (40, 7, 20, 5), "total": 72, "unique": 67,
                 "layers": ((14, 29), (11, 19), (1, 13), (8, 12))},
    "goat-7b": {"sizes": (68, 28, 40, 39), "total": 175, "unique": 151,
                "layers": ((11, 31), (10, 19), (1, 15), (6, 12))},
    "float-7b": {"sizes": (68, 29, 40, 38), "total": 175, "unique": 154,
                 "layers": ((12, 31), (10, 19), (4, 15), (5, 12))},
}


def circuit_sizes() -> pd.DataFrame:
    """Heads per group of each model's circuit (tidy: circuit, group, heads, first/last layer)."""
    return _frame("circuit_sizes", [
        {"circuit": c, "group": g, "heads": n, "first_layer": lo, "last_layer": hi}
        for c, info in CIRCUIT_SIZES.items()
        for g, n, (lo, hi) in zip(GROUPS, info["sizes"], info["layers"])
    ])


#: The LLaMA circuit's groups that the specification lists head by head (A and C are only in the JSON file).
LLAMA_CIRCUIT_HEADS: dict[str, tuple[tuple[int, int], ...]] = {
    "position_transmitter": ((14, 27), (11, 23), (12, 23), (19, 12), (13, 0), (16, 2), (13, 14)),
    "structure_reader": ((8, 21), (12, 23), (11, 9), (8, 12), (11, 23)),
}

#: One prominent head per group, drawn in the paper's Figure 1.
PROMINENT_HEADS: dict[str, tuple[int, int]] = {
    "value_fetcher": (21, 3),
    "position_transmitter": (14, 27),
    "position_detector": (10, 3),
    "structure_reader": (8, 21),
}

# model group: layer head score, ... (the five most negative path-patching scores; Goat D has four)
_TOP_HEADS = """
llama value_fetcher         15 13 -0.085  14 27 -0.083  16 2 -0.070  21 3 -0.065  24 5 -0.065
llama position_transmitter  14 27 -0.326  11 23 -0.192  12 23 -0.102  19 12 -0.093  13 0 -0.092
llama position_detector     10 3 -0.256   13 14 -0.184  9 2 -0.138   9 7 -0.129   11 23 -0.128
llama structure_reader      8 21 -0.101   12 23 -0.042  11 9 -0.039  8 12 -0.020  11 23 -0.020
goat  value_fetcher         14 27 -0.168  17 26 -0.152  15 13 -0.138  18 3 -0.127  24 5 -0.127
goat  position_transmitter  14 27 -0.369  12 23 -0.148  11 23 -0.109  19 12 -0.081  17 26 -0.079
goat  position_detector     10 3 -0.335   13 14 -0.321  9 2 -0.134   6 10 -0.120  11 23 -0.115
goat  structure_reader      8 21 -0.109   11 9 -0.060   12 23 -0.056  11 23 -0.011
float value_fetcher         14 27 -0.068  15 13 -0.061  17 26 -0.050  18 3 -0.040  11 23 -0.038
float position_transmitter  14 27 -0.324  11 23 -0.220  12 23 -0.120  13 0 -0.104  13 14 -0.095
float position_detector     10 3 -0.369   13 14 -0.242  7 17 -0.130  11 23 -0.128  9 2 -0.127
float structure_reader      8 21 -0.106   12 23 -0.083  11 9 -0.060  11 23 -0.035  9 21 -0.029
"""


def top_heads() -> pd.DataFrame:
    """The paper's highest-ranked path-patching heads per model and group (rank 1 = most negative
    score). Goat's value-fetcher map is shifted by the authors' LoRA defect W4."""
    rows = []
    for model, group, *cells in _rows(_TOP_HEADS):
        for rank, i in enumerate(range(0, len(cells), 3), start=1):
            rows.append({"model": _AUTHORS_MODEL[model], "group": group, "rank": rank,
                         "layer": int(cells[i]), "head": int(cells[i + 1]), "score": float(cells[i + 2])})
    return _frame("top_heads", rows)


#: Path-patching candidates kept per group before minimality, and the minimality threshold that
#: reproduces the shipped circuit (the paper states 1 %; Goat and FLoat used 0).
MINIMALITY: dict[str, dict] = {
    "llama-7b": {"candidates": (50, 10, 25, 5), "threshold": 0.01},
    "goat-7b": {"candidates": (80, 30, 50, 40), "threshold": 0.0},
    "float-7b": {"candidates": (80, 30, 50, 40), "threshold": 0.0},
}
#: Heads per group (A, B, C, D) the Goat and FLoat circuits would have kept at the paper's stated 1 %
#: (recomputed from the authors' significance files).
MINIMALITY_AT_1PCT: dict[str, tuple[int, int, int, int]] = {"goat-7b": (35, 18, 23, 14), "float-7b": (37, 18, 23, 19)}


def minimality() -> pd.DataFrame:
    return _frame("minimality", [
        {"circuit": c, "group": g, "candidates": n, "threshold": info["threshold"]}
        for c, info in MINIMALITY.items() for g, n in zip(GROUPS, info["candidates"])
    ])


# --------------------------------------------------------------------------------------------------
# Circuit evaluation: faithfulness of each model's own circuit, overlap, completeness
# --------------------------------------------------------------------------------------------------

#: circuit: {model: (circuit accuracy, faithfulness)}
OWN_CIRCUIT_FAITHFULNESS: dict[str, dict[str, tuple[float, float]]] = {
    "goat-7b": {"llama-7b": (0.77, 1.17), "vicuna-7b": (0.76, 1.13), "goat-7b": (0.81, 0.99),
                "float-7b": (0.79, 0.96)},
    "float-7b": {"llama-7b": (0.69, 1.05), "vicuna-7b": (0.70, 1.04), "goat-7b": (0.76, 0.93),
                 "float-7b": (0.82, 1.00)},
}


def own_circuit_faithfulness() -> pd.DataFrame:
    """Accuracy and faithfulness of the Goat and FLoat circuits inside each of the four models; the
    LLaMA circuit's row is Table 1."""
    rows = [{"circuit": c, "model": m, "circuit_accuracy": acc, "faithfulness": f}
            for c, by_model in OWN_CIRCUIT_FAITHFULNESS.items() for m, (acc, f) in by_model.items()]
    rows += [{"circuit": "llama-7b", "model": m, "circuit_accuracy": row[1], "faithfulness": row[3]}
             for m, row in TABLE1.items()]
    return _frame("own_circuit_faithfulness", rows)


# group: llama, other, shared heads (same head in the same group), for other = goat then float
_OVERLAP = """
value_fetcher         40 68 27  68 27
position_transmitter   7 28  6  29  7
position_detector     20 40 16  40 15
structure_reader       5 39  5  38  5
all                   72 175 54 175 54
"""


def overlap() -> pd.DataFrame:
    """How much of the LLaMA circuit each fine-tuned circuit contains (same head, same group)."""
    rows = []
    for group, n_llama, n_goat, s_goat, n_float, s_float in _rows(_OVERLAP):
        for other, n, shared in (("goat-7b", n_goat, s_goat), ("float-7b", n_float, s_float)):
            n_llama_i, n_i, shared_i = int(n_llama), int(n), int(shared)
            rows.append({"group": group, "other": other, "llama_heads": n_llama_i, "other_heads": n_i,
                         "shared": shared_i, "frac_llama_in_other": round(shared_i / n_llama_i, 2),
                         "frac_other_in_llama": round(shared_i / n_i, 2)})
    return _frame("overlap", rows)


#: circuit: {K: (F(C\K), F(M\K))} for K = each whole group
COMPLETENESS_GROUPS: dict[str, dict[str, tuple[float, float]]] = {
    "llama-7b": {"value_fetcher": (0.00, 0.19), "position_transmitter": (0.02, 0.23),
                 "position_detector": (0.02, 0.04), "structure_reader": (0.46, 0.58)},
    "goat-7b": {"value_fetcher": (0.21, 0.41), "position_transmitter": (0.11, 0.13),
                "position_detector": (0.11, 0.06), "structure_reader": (0.63, 0.62)},
    "float-7b": {"value_fetcher": (0.08, 0.51), "position_transmitter": (0.11, 0.15),
                 "position_detector": (0.07, 0.19), "structure_reader": (0.57, 0.68)},
}
#: circuit: random K summary: draws, F(M\K) mean, sd; F(C\K) mean, sd; incompleteness mean, sd
COMPLETENESS_RANDOM: dict[str, tuple] = {
    "llama-7b": (10, 0.11, 0.06, 0.00, 0.01, 0.10, 0.06),
    "goat-7b": (20, 0.13, 0.06, 0.16, 0.11, 0.06, 0.06),
    "float-7b": (20, 0.20, 0.07, 0.12, 0.10, 0.09, 0.04),
}


def completeness() -> pd.DataFrame:
    """Group points of the completeness scatter, in `plots.completeness_scatter`'s layout (the
    paper's individual random draws are not recorded; see `completeness_random`)."""
    return _frame("completeness", [
        {"circuit": c, "K": k, "circuit_without_K": cx, "model_without_K": mx,
         "incompleteness": round(abs(cx - mx), 2)}
        for c, by_k in COMPLETENESS_GROUPS.items() for k, (cx, mx) in by_k.items()
    ])


def completeness_random() -> pd.DataFrame:
    """Mean and sd over random K of F(M\\K), F(C\\K) and the incompleteness |F(C\\K) - F(M\\K)|."""
    cols = ("draws", "model_without_K", "model_without_K_sd", "circuit_without_K", "circuit_without_K_sd",
            "incompleteness", "incompleteness_sd")
    return _frame("completeness", [{"circuit": c, **dict(zip(cols, v))} for c, v in COMPLETENESS_RANDOM.items()])


# --------------------------------------------------------------------------------------------------
# DCM and activation patching (what each group's heads carry)
# --------------------------------------------------------------------------------------------------

# circuit group circuit_size | object_value heads acc | box_label_value heads acc | positional heads acc
_DCM = """
llama value_fetcher        40   40 0.468   4 0.000   0 0.134
llama pos_transmitter       7    6 0.034   5 0.000   5 0.362
llama pos_detector         20    9 0.020   9 0.000  14 0.412
llama struct_reader         5    3 0.012   3 0.000   3 0.140
goat  value_fetcher        68   56 0.518   7 0.000  10 0.116
goat  pos_transmitter      28   22 0.060  12 0.000  15 0.462
goat  pos_detector         40    9 0.016   9 0.000  18 0.438
goat  struct_reader        39    6 0.010   5 0.000  15 0.150
float value_fetcher        68   60 0.474   5 0.000   9 0.138
float pos_transmitter      29   14 0.044  11 0.000  13 0.496
float pos_detector         40    8 0.010   8 0.000  22 0.486
float struct_reader        38    7 0.012   6 0.000  17 0.182
"""
DESIDERATA = ("object_value", "box_label_value", "positional")


def dcm() -> pd.DataFrame:
    """Heads DCM selected and their test accuracy, per circuit x group x desideratum. Every
    box_label_value run is 0.000 because of the authors' target bug B2."""
    rows = []
    for circuit, group, size, *cells in _rows(_DCM):
        for d, (heads, acc) in zip(DESIDERATA, zip(cells[0::2], cells[1::2])):
            rows.append({"circuit": _AUTHORS_MODEL[circuit], "group": _AUTHORS_GROUP[group],
                         "circuit_heads": int(size), "desideratum": d, "heads": int(heads),
                         "test_accuracy": float(acc)})
    return _frame("dcm", rows)


# heads-from model group | object_value mean sd | box_label_value mean sd | positional mean sd  (percent)
_ACTIVATION_PATCHING = """
llama llama  value_fetcher    45.60 1.57  0.00 0.00  12.84 1.95
llama llama  pos_transmitter   2.92 0.45  0.00 0.00  36.86 2.18
llama llama  pos_detector      2.14 0.70  0.00 0.00  44.00 1.21
llama llama  struct_reader     1.48 0.42  0.00 0.00  13.40 1.49
llama vicuna value_fetcher    56.44 1.91  0.00 0.00  13.06 1.88
llama vicuna pos_transmitter   2.96 0.70  0.00 0.00  34.96 1.28
llama vicuna pos_detector      2.42 0.61  0.00 0.00  37.72 2.05
llama vicuna struct_reader     1.28 0.41  0.00 0.00  13.04 1.41
llama goat   value_fetcher    65.88 1.73  0.00 0.00  13.80 2.18
llama goat   pos_transmitter   3.04 0.56  0.00 0.00  38.56 1.85
llama goat   pos_detector      2.54 0.41  0.00 0.00  44.18 1.62
llama goat   struct_reader     1.50 0.41  0.00 0.00  13.88 1.40
llama float  value_fetcher    63.30 1.48  0.00 0.00  13.40 2.06
llama float  pos_transmitter   3.66 0.61  0.00 0.00  47.08 1.62
llama float  pos_detector      2.90 0.48  0.00 0.00  54.72 0.94
llama float  struct_reader     1.52 0.37  0.00 0.00  13.26 1.32
goat  llama  value_fetcher    39.32 2.57  0.00 0.00  12.88 1.92
goat  llama  pos_transmitter   5.38 0.64  0.00 0.00  40.06 2.29
goat  llama  pos_detector      1.86 0.51  0.00 0.00  40.94 1.61
goat  llama  struct_reader     1.44 0.45  0.00 0.00  13.36 1.59
goat  vicuna value_fetcher    48.32 2.22  0.00 0.00  12.86 2.40
goat  vicuna pos_transmitter   6.00 1.22  0.00 0.00  37.26 2.23
goat  vicuna pos_detector      1.48 0.34  0.00 0.00  35.96 2.11
goat  vicuna struct_reader     1.34 0.51  0.00 0.00  12.74 1.42
goat  goat   value_fetcher    54.72 1.59  0.00 0.00  13.88 2.15
goat  goat   pos_transmitter   7.04 1.11  0.00 0.00  43.42 2.23
goat  goat   pos_detector      2.04 0.56  0.00 0.00  42.30 1.89
goat  goat   struct_reader     1.44 0.40  0.00 0.00  13.92 1.43
goat  float  value_fetcher    48.94 2.05  0.00 0.00  13.80 1.93
goat  float  pos_transmitter   7.36 0.98  0.00 0.00  49.98 2.16
goat  float  pos_detector      2.04 0.50  0.00 0.00  48.14 1.29
goat  float  struct_reader     1.52 0.41  0.00 0.00  13.82 1.68
float llama  value_fetcher    35.06 2.35  0.00 0.00  13.14 1.76
float llama  pos_transmitter   4.12 0.66  0.00 0.00  40.58 2.82
float llama  pos_detector      1.58 0.41  0.00 0.00  37.88 2.02
float llama  struct_reader     1.48 0.47  0.00 0.00  13.44 1.41
float vicuna value_fetcher    49.24 2.30  0.00 0.00  12.76 2.10
float vicuna pos_transmitter   4.42 0.73  0.00 0.00  38.20 1.87
float vicuna pos_detector      1.48 0.30  0.00 0.00  31.86 2.63
float vicuna struct_reader     1.28 0.54  0.00 0.00  12.82 1.67
float goat   value_fetcher    53.50 2.69  0.00 0.00  13.66 2.00
float goat   pos_transmitter   5.78 0.85  0.00 0.00  44.84 1.58
float goat   pos_detector      1.74 0.59  0.00 0.00  38.14 1.74
float goat   struct_reader     1.50 0.38  0.00 0.00  13.94 1.61
float float  value_fetcher    49.44 1.54  0.00 0.00  13.92 2.28
float float  pos_transmitter   6.26 0.89  0.00 0.00  51.74 2.30
float float  pos_detector      1.92 0.44  0.00 0.00  49.52 1.86
float float  struct_reader     1.48 0.43  0.00 0.00  13.54 1.30
"""


def activation_patching() -> pd.DataFrame:
    """Accuracy of the desideratum's target after patching a circuit's DCM heads from the source
    prompt, mean and sd over 10 draws of 500 pairs (the paper prints percent; here fractions).
    ``circuit`` = whose DCM heads were patched, ``model`` = the model they were patched in."""
    rows = []
    for circuit, model, group, *cells in _rows(_ACTIVATION_PATCHING):
        for d, (mean, sd) in zip(DESIDERATA, zip(cells[0::2], cells[1::2])):
            rows.append({"circuit": _AUTHORS_MODEL[circuit], "model": _AUTHORS_MODEL[model],
                         "group": _AUTHORS_GROUP[group], "desideratum": d, "draws": 10,
                         "accuracy": round(float(mean) / 100, 4), "sd": round(float(sd) / 100, 4)})
    return _frame("activation_patching", rows)


#: The positional floor of bug B1: LLaMA value fetchers, no head patched.
POSITIONAL_FLOOR = 0.1284

# desideratum | DCM test accuracy | activation-patching mean sd (percent) | DCM heads (layer.head)
_ADDITIONAL = """
random_text_start              0.348 34.78 2.25  14.27 11.23 12.23 19.12 16.2
random_text_end                0.356 34.06 1.36  14.27 11.23 12.23 19.12 16.2
add_tokens_btw_box_and_obj     0.408 38.80 1.78  14.27 11.23 12.23 19.12 16.2
add_seg_start                  0.276 25.50 1.67  14.27 11.23 12.23 19.12 13.0 16.2
add_seg_end                    0.330 30.46 1.87  14.27 11.23 12.23 19.12 13.0 16.2
add_box_before_correct_segment 0.194 19.40 1.93  14.27 11.23 12.23 16.2
incorrect_segment              0.166 16.16 1.25  14.27 11.23 12.23 19.12 16.2
altered_box_obj_order          0.328 16.12 1.39  14.27 11.23 19.12 13.0 16.2
altered_box_obj_association    0.214 18.04 1.64  14.27 11.23 13.0 13.14
no_comma                       0.386 37.50 2.31  14.27 11.23 12.23 19.12 16.2
add_comma                      0.354 36.30 2.25  14.27 11.23 12.23 19.12 13.0 16.2
"""


def additional_desiderata() -> pd.DataFrame:
    """The appendix's rephrased sources for the LLaMA position transmitters: DCM heads and test
    accuracy, and the activation-patching accuracy (fraction, mean and sd of 10 draws)."""
    rows = []
    for name, dcm_acc, mean, sd, *heads in _rows(_ADDITIONAL):
        rows.append({"desideratum": name, "group": "position_transmitter", "circuit": "llama-7b",
                     "model": "llama-7b", "dcm_heads": [tuple(int(x) for x in h.split(".")) for h in heads],
                     "dcm_test_accuracy": float(dcm_acc), "accuracy": round(float(mean) / 100, 4),
                     "sd": round(float(sd) / 100, 4)})
    return _frame("additional_desiderata", rows)


# --------------------------------------------------------------------------------------------------
# CMAP
# --------------------------------------------------------------------------------------------------

#: fine-tuned model: accuracy of LLaMA with that group's outputs from the fine-tuned model
CMAP: dict[str, dict[str, float]] = {
    "goat-7b": {"structure_reader": 0.65, "position_detector": 0.62, "position_transmitter": 0.78,
                "value_fetcher": 0.82, "full_circuit": 0.82},
    "float-7b": {"structure_reader": 0.65, "position_detector": 0.56, "position_transmitter": 0.74,
                 "value_fetcher": 0.82, "full_circuit": 0.82},
}
#: Heads patched per group (fine-tuned circuit: DCM heads for A/B/C, all D heads).
CMAP_HEAD_COUNTS: dict[str, tuple[int, int, int, int]] = {"goat-7b": (56, 15, 18, 39), "float-7b": (60, 13, 22, 38)}
#: All circuit B heads, not DCM-filtered [hist 39d66c4] (FLoat: a pre-release checkpoint).
CMAP_ALL_B_HEADS: dict[str, float] = {"goat-7b": 0.81, "float-7b": 0.80}
#: Reference lines of the CMAP figure: LLaMA alone and each fine-tuned model alone.
CMAP_REFERENCE: dict[str, float] = {"llama-7b": 0.66, "goat-7b": 0.82, "float-7b": 0.82}


def cmap() -> pd.DataFrame:
    """Output CMAP into LLaMA, in `plots.cmap_bars`'s layout (pair, group, accuracy, heads)."""
    rows = []
    for ft, by_group in CMAP.items():
        counts = dict(zip(GROUPS, CMAP_HEAD_COUNTS[ft]))
        for group, acc in by_group.items():
            heads = sum(counts.values()) if group == "full_circuit" else counts[group]
            rows.append({"finetuned": ft, "pair": f"{MODEL_TITLES[ft]} → Llama-7B", "group": group,
                         "accuracy": acc, "heads": heads})
    return _frame("cmap", rows)


def cmap_reference_lines(finetuned: str) -> dict[str, float]:
    """The dashed lines of one CMAP panel: LLaMA alone and the fine-tuned model alone."""
    return {MODEL_TITLES["llama-7b"]: CMAP_REFERENCE["llama-7b"], MODEL_TITLES[finetuned]: CMAP_REFERENCE[finetuned]}


_CMAP_INPUT = """
value_fetcher         0.77 0.63 0.69 0.76 0.77
position_transmitter  0.66 0.65 0.69 0.65 0.67
"""
CMAP_INPUTS = ("Q", "K", "V", "QK", "QKV")


def cmap_input() -> pd.DataFrame:
    """Input CMAP Goat -> LLaMA: which of q, k, v of groups A and B carry the gain."""
    return _frame("cmap_input", [
        {"finetuned": "goat-7b", "group": group, "patched": p, "accuracy": float(v)}
        for group, *vals in _rows(_CMAP_INPUT) for p, v in zip(CMAP_INPUTS, vals)
    ])


# --------------------------------------------------------------------------------------------------
# Attention knockout (LLaMA-7B, appendix)
# --------------------------------------------------------------------------------------------------

KNOCKOUT_EDGES = {
    "last->object": "last token → correct object",
    "last->query_label": "last token → query label",
    "query_label->prev_query_label": "query label → previous query label",
}
#: edge: {start layer (1-based, as the paper's axis): accuracy}; "a-b" spans several layers.
_KNOCKOUT: dict[str, dict[str, float]] = {
    "last->object": {"1-16": 0.04, "17": 0.06, "18-19": 0.07, "20": 0.13, "21": 0.21, "22": 0.25, "23-24": 0.41,
                     "25": 0.56, "26": 0.60, "27-29": 0.61, "30": 0.63, "31-32": 0.65},
    # start layers 2-11 lie between 0.35 and 0.39 but the transcription does not list them one by one
    "last->query_label": {"1": 0.37, "12": 0.39, "13": 0.51, "14-15": 0.55, "16-17": 0.65, "18-22": 0.66,
                          "23-26": 0.65, "27-29": 0.66, "30": 0.65, "31": 0.66, "32": 0.65},
    "query_label->prev_query_label": {"1-2": 0.05, "3-5": 0.09, "6": 0.13, "7": 0.14, "8": 0.19, "9": 0.32,
                                      "10": 0.51, "11": 0.57, "12-14": 0.59, "15-16": 0.65, "17-32": 0.66},
}
#: Random-position edges: accuracy stays in this band at every start layer.
KNOCKOUT_RANDOM_RANGE: dict[str, tuple[float, float]] = {
    "last->random": (0.62, 0.66), "query_label->random": (0.61, 0.66),
}
#: LLaMA-7B's accuracy on the knockout examples (the red dashed line of the figure).
KNOCKOUT_MODEL_ACCURACY = 0.66


def knockout() -> pd.DataFrame:
    """Accuracy with one edge cut in all heads of every layer from ``start_layer`` (1-based) on, in
    `plots.knockout_lines`'s layout (edge, start_layer, accuracy)."""
    rows = []
    for edge, points in _KNOCKOUT.items():
        for span, acc in points.items():
            lo, _, hi = span.partition("-")
            for layer in range(int(lo), int(hi or lo) + 1):
                rows.append({"edge": edge, "start_layer": layer, "accuracy": acc})
    return _frame("knockout", rows).sort_values(["edge", "start_layer"], ignore_index=True)


# --------------------------------------------------------------------------------------------------
# Ours beside the paper
# --------------------------------------------------------------------------------------------------

#: Differences up to this size are noise at the paper's 500 examples (standard error of an accuracy
#: near 0.7 is about 0.02; statistical note).
PAPER_NOISE = 0.03


def paper_model_of(name: str) -> str | None:
    """The 7B model a variant is compared with: itself for a paper model, its analog for an
    organism variant, None for anything else (e.g. a local test model)."""
    if name in TABLE1:
        return name
    from .models import REGISTRY

    spec = REGISTRY.get(name)
    return spec.analog_of if spec is not None else None


def standard_error(accuracy: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on ``n`` prompts."""
    return (accuracy * (1 - accuracy) / n) ** 0.5 if n > 0 else float("nan")


def accuracy_beside_paper(ours: pd.DataFrame, boxes: int = PAPER_BOXES) -> pd.DataFrame:
    """Our accuracies at ``boxes`` boxes next to the paper's Table 1 number of the model each
    variant stands for, with our standard error and each model's gain over its base model
    (organism-base for organisms, LLaMA-7B for the paper)."""
    at = ours[ours["boxes"] == boxes]
    rows = []
    for r in at.itertuples():
        paper_model = paper_model_of(r.model)
        rows.append({
            "model": r.model, "paper_model": paper_model, "ours": r.accuracy,
            "ours_se": standard_error(r.accuracy, int(getattr(r, "n_samples", EVAL_SAMPLES))),
            "paper": TABLE1[paper_model][0] if paper_model in TABLE1 else float("nan"),
        })
    table = pd.DataFrame(rows, columns=["model", "paper_model", "ours", "ours_se", "paper"])
    base = table[table["paper_model"] == "llama-7b"]
    base_acc = base["ours"].iloc[0] if len(base) else float("nan")
    base_se = base["ours_se"].iloc[0] if len(base) else float("nan")
    table["ours_gain"] = table["ours"] - base_acc
    table["ours_gain_se"] = (table["ours_se"] ** 2 + base_se ** 2) ** 0.5
    table["paper_gain"] = table["paper"] - TABLE1["llama-7b"][0]
    return table


def _direction(gain: float, noise: float) -> str:
    if gain != gain:  # NaN
        return "unknown"
    return "higher" if gain > noise else ("lower" if gain < -noise else "about equal")


def _than(direction: str) -> str:
    return "about equal to" if direction == "about equal" else f"{direction} than"


def describe_accuracy_comparison(table: pd.DataFrame, boxes: int = PAPER_BOXES) -> str:
    """A sentence, computed from `accuracy_beside_paper`, on which of the paper's Table 1 findings
    our variants reproduce: whether each fine-tuned variant is higher, about equal or lower than
    its base (ours: beyond 2 standard errors; paper: beyond its noise level), and how far the
    absolute accuracies are from the 7B numbers."""
    known = table.dropna(subset=["paper_model"])
    if known.empty:
        return (f"None of these models stands for a paper model, so there is nothing to set beside Table 1 "
                f"(which reports {boxes}-box accuracy of the 7B models only).")
    parts, matches, total = [], 0, 0
    for r in known[known["paper_model"] != "llama-7b"].itertuples():
        ours_dir = _direction(r.ours_gain, 2 * r.ours_gain_se)
        paper_dir = _direction(r.paper_gain, PAPER_NOISE)
        same = ours_dir == paper_dir
        matches += same
        total += 1
        parts.append(f"{r.model} is {_than(ours_dir)} its base ({r.ours_gain:+.2f} ± {2 * r.ours_gain_se:.2f}) "
                     f"where {MODEL_TITLES[r.paper_model]} is {_than(paper_dir)} Llama-7B ({r.paper_gain:+.2f}): "
                     f"{'matches' if same else 'does not match'}")
    if total:
        summary = f"At {boxes} boxes, {matches} of {total} fine-tuned variants reproduce the paper's direction: " + \
            "; ".join(parts) + "."
    else:
        summary = f"At {boxes} boxes no fine-tuned variant was run, so the paper's gains cannot be compared."
    gaps = known.assign(gap=known["ours"] - known["paper"])
    far = gaps[gaps["gap"].abs() > 2 * gaps["ours_se"] + PAPER_NOISE]
    if far.empty:
        summary += " Every absolute accuracy is within noise of the 7B number."
    else:
        summary += (" Absolute accuracies differ from the 7B numbers by " +
                    ", ".join(f"{r.gap:+.2f} ({r.model} vs {MODEL_TITLES[r.paper_model]})" for r in far.itertuples()) +
                    "; only the pattern across models is comparable when the model is not the 7B one.")
    return summary


# --------------------------------------------------------------------------------------------------
# The authors' path-patching score maps and the circuits as the figures draw them
# --------------------------------------------------------------------------------------------------

PROVENANCE["path_patching_scores"] = Provenance(
    "repo", "experiment_1/results/path_patching/{model}_circuit/{group}.pt, copied to paper_data/",
    "§4.3 Top path-patching heads")

#: The authors' twelve 32 x 32 score maps, copied unchanged (provenance in paper_data/README.md).
PATH_PATCHING_SCORES_FILE = "paper_data/path_patching_scores.json"
#: Step of the circuit search that found each group (1 = value fetchers, read from the logits).
STEP_OF_GROUP = {"value_fetcher": 1, "position_transmitter": 2, "position_detector": 3, "structure_reader": 4}


_SCORE_FILE: dict = {}


def _score_file() -> dict:
    """The score file's contents, read once per session (several chapters draw these maps)."""
    if not _SCORE_FILE:
        import json
        from pathlib import Path

        _SCORE_FILE.update(json.loads((Path(__file__).parent / PATH_PATCHING_SCORES_FILE).read_text()))
    return _SCORE_FILE


def path_patching_scores(model: str | None = None) -> pd.DataFrame:
    """Every head's path-patching score in the authors' own circuit searches, tidy: one row per
    (model, group, layer, head) with the search ``step`` (1-4) and ``score`` (more negative = more
    important), for LLaMA-7B, Goat-7B and FLoat-7B (or one ``model``). Read from the authors' saved
    tensors rather than transcribed, so every one of the 1,024 heads per map is there, not only the
    top five of `top_heads`. Goat's step-1 map carries the authors' LoRA defect W4."""
    maps = _score_file()["scores"]
    if model is not None and model not in maps:
        raise KeyError(f"no path-patching scores for {model!r}; the authors saved {sorted(maps)}")
    rows = []
    for name in ([model] if model is not None else list(maps)):
        for authors_group, matrix in maps[name].items():
            group = _AUTHORS_GROUP[authors_group]
            rows += [{"model": name, "group": group, "step": STEP_OF_GROUP[group], "layer": layer, "head": head,
                      "score": float(score)}
                     for layer, row in enumerate(matrix) for head, score in enumerate(row)]
    frame = _frame("path_patching_scores", rows)
    return frame.sort_values(["model", "step", "layer", "head"], ignore_index=True)


def path_patching_score_maps(model: str = "llama-7b") -> dict:
    """One ``[layer, head]`` float tensor (32 x 32) per group, keyed by the package's group names:
    the shape `path_patching` returns for our own models, so both go to the same plotting code."""
    import torch

    maps = _score_file()["scores"]
    if model not in maps:
        raise KeyError(f"no path-patching scores for {model!r}; the authors saved {sorted(maps)}")
    return {_AUTHORS_GROUP[g]: torch.tensor(m, dtype=torch.float32) for g, m in maps[model].items()}


def circuit_summary(circuit: str = "llama-7b") -> dict[str, dict]:
    """Each group of a paper circuit as the circuit diagram needs it: ``n_heads``, ``layers``
    (first, last) and ``heads`` (the list where this module has it, else None).

    Only LLaMA's B and D heads are transcribed (`LLAMA_CIRCUIT_HEADS`); every other group is known
    by its size and layer range alone (`CIRCUIT_SIZES`), so a figure must say it draws those from
    the summary, not from a head list."""
    if circuit not in CIRCUIT_SIZES:
        raise KeyError(f"no paper circuit {circuit!r}; choose from {sorted(CIRCUIT_SIZES)}")
    info = CIRCUIT_SIZES[circuit]
    listed = LLAMA_CIRCUIT_HEADS if circuit == "llama-7b" else {}
    out = {}
    for group, n, layers in zip(GROUPS, info["sizes"], info["layers"]):
        heads = listed.get(group)
        out[group] = {"n_heads": n, "layers": tuple(layers),
                      "heads": None if heads is None or len(heads) != n else tuple(heads)}
    return out
