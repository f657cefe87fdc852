"""The paper's reference numbers (`paper_reference`): every frame says where its numbers come from,
they are consistent with each other, and the transcribed tables say what shared/paper.md says."""

import re
from pathlib import Path

import pandas as pd
import pytest

from entity_tracking import paper_reference as R

PAPER_MD = Path(__file__).resolve().parents[2] / "shared" / "paper.md"

def test_every_reference_frame_is_tagged_paper_with_its_provenance():
    frames = [R.table1(), R.accuracy(), R.circuit_sizes(), R.top_heads(), R.minimality(),
              R.own_circuit_faithfulness(), R.overlap(), R.completeness(), R.completeness_random(), R.dcm(),
              R.activation_patching(), R.additional_desiderata(), R.cmap(), R.cmap_input(), R.knockout()]
    for frame in frames:
        assert (frame["source"] == "paper").all()
        assert frame["provenance"].str.match(r"\[(repo|nb|page|hist [^\]]+)\] \S").all()
    assert R.provenance("table1").startswith("[nb] experiment_1/circuit_eval.ipynb")


def test_reference_sizes_and_faithfulness_are_consistent_with_each_other():
    sizes = R.circuit_sizes().groupby("circuit")["heads"].sum().to_dict()
    assert sizes == {c: info["total"] for c, info in R.CIRCUIT_SIZES.items()}
    t1 = R.table1().set_index("model")
    # faithfulness = circuit accuracy / model accuracy, up to the paper's 2-decimal rounding
    assert ((t1.llama_circuit / t1.full_model - t1.faithfulness).abs() <= 0.01).all()
    ap = R.activation_patching()
    assert len(ap) == 3 * 4 * 4 * 3 and (ap.query("desideratum == 'box_label_value'").accuracy == 0).all()
    ko = R.knockout().set_index(["edge", "start_layer"]).accuracy
    assert (ko["last->object", 21], ko["last->query_label", 13], ko["query_label->prev_query_label", 10]) == (
        0.21, 0.51, 0.51)


@pytest.mark.skipif(not PAPER_MD.is_file(), reason="shared/paper.md is not beside the repository")
def test_transcribed_tables_match_shared_paper_md():
    md = PAPER_MD.read_text()
    ap = R.activation_patching().set_index(["circuit", "model", "group", "desideratum"])
    checked = 0
    for circuit in ("llama", "goat", "float"):
        start = md.index(f"**Heads = DCM-selected heads of the {circuit} circuit**")
        for line in md[start:].split("\n\n")[1].splitlines():
            m = re.match(r"\| (\w+) \| (\w+)" + r" \| ([\d.]+) \(([\d.]+)\)" * 3 + r" \|", line)
            if not m:
                continue
            values = [float(v) / 100 for v in m.groups()[2:]]
            for k, d in enumerate(R.DESIDERATA):
                row = ap.loc[(R._AUTHORS_MODEL[circuit], R._AUTHORS_MODEL[m[1]], R._AUTHORS_GROUP[m[2]], d)]
                assert (row.accuracy, row.sd) == (pytest.approx(values[2 * k]), pytest.approx(values[2 * k + 1]))
                checked += 1
    assert checked == 144
    dcm = R.dcm().set_index(["circuit", "group", "desideratum"])
    rows = re.findall(r"\| (llama|goat|float) \| (\w+) \((\d+)\)" + r" \| (\d+) / ([\d.]+)" * 3 + r" \|", md)
    assert len(rows) == 12
    for circuit, group, size, *cells in rows:
        for k, d in enumerate(R.DESIDERATA):
            row = dcm.loc[(R._AUTHORS_MODEL[circuit], R._AUTHORS_GROUP[group], d)]
            assert (row.heads, row.test_accuracy, row.circuit_heads) == (int(cells[2 * k]), float(cells[2 * k + 1]),
                                                                         int(size))
    table1 = re.findall(r"\| (Llama|Vicuna|Goat|FLoat)-7B \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", md)
    assert len(table1) == 4
    for model, full, circuit, random_, faith in table1:
        assert R.TABLE1[model.lower() + "-7b"] == tuple(float(v) for v in (full, circuit, random_, faith))


def test_comparison_sentence_says_which_fine_tuned_gains_match_the_paper():
    ours = pd.DataFrame({"model": ["organism-base", "organism-goat", "organism-float"], "boxes": 7,
                         "accuracy": [0.50, 0.70, 0.52], "n_samples": 500})
    table = R.accuracy_beside_paper(ours).set_index("model")
    assert table.loc["organism-goat", "paper"] == 0.82 and table.loc["organism-goat", "paper_model"] == "goat-7b"
    assert table.loc["organism-goat", "ours_gain"] == pytest.approx(0.20)
    assert table.loc["organism-goat", "ours_se"] == pytest.approx((0.7 * 0.3 / 500) ** 0.5)
    text = R.describe_accuracy_comparison(table.reset_index())
    assert text.startswith("At 7 boxes, 1 of 2 fine-tuned variants reproduce")
    assert "organism-goat is higher than its base (+0.20" in text
    assert "organism-float is about equal to its base (+0.02" in text and "does not match" in text
    assert "-0.16 (organism-base vs Llama-7B)" in text


def test_the_papers_own_numbers_reproduce_every_direction_of_the_paper():
    text = R.describe_accuracy_comparison(R.accuracy_beside_paper(R.accuracy()))
    assert "3 of 3" in text and "within noise" in text
