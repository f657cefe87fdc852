"""The figures and tables of chapter 7 (the conclusion): each of the paper's three findings, ours
beside the paper's, from the results the earlier chapters stored, and the claims' check table
(`claims.reproduction_checks`) laid out for reading. Nothing here runs a model. Explained in
chapter 7.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from . import paper_reference as ref
from .plots import FAMILY_LABELS, grouped_bar_chart, model_family

#: How a facet says whose numbers it shows.
OURS, PAPER = "ours (organism)", "paper (7B)"


def family_title(model: str) -> str:
    """"Goat" for organism-goat and goat-7b: the model family, so ours and the paper's share an axis.
    Explained in chapter 7."""
    family = model_family(model)
    return FAMILY_LABELS.get(family, model)


def finding1_frame(table1: pd.DataFrame) -> pd.DataFrame:
    """Tidy rows for the first finding: per model family, the whole model's accuracy and the base
    circuit's inside it, ours (`circuit_eval.faithfulness_table`) and the paper's Table 1.
    Explained in chapter 7."""
    paper = ref.table1().set_index("model")
    rows = []
    for r in table1.itertuples():
        rows += [{"model": family_title(r.model), "measured": "whole model", "accuracy": r.full_model, "source": OURS},
                 {"model": family_title(r.model), "measured": "base circuit alone", "accuracy": r.circuit,
                  "source": OURS}]
    for model, r in paper.iterrows():
        rows += [{"model": family_title(model), "measured": "whole model", "accuracy": r["full_model"],
                  "source": PAPER},
                 {"model": family_title(model), "measured": "base circuit alone", "accuracy": r["llama_circuit"],
                  "source": PAPER}]
    return pd.DataFrame(rows)


def finding1_chart(table1: pd.DataFrame, width: int = 210) -> alt.FacetChart:
    """The first finding as bars: the base circuit alone against the whole model, in every model,
    ours | the paper's. Explained in chapter 7."""
    return grouped_bar_chart(finding1_frame(table1), x="model", y="accuracy", color="measured", column="source",
                             y_domain=(0, 1), width=width, y_title="accuracy",
                             title="Finding 1: the base model's circuit inside every model")


def finding1_table(table1: pd.DataFrame) -> pd.DataFrame:
    """Finding 1 in numbers, compact: per variant, whole model, base circuit, random circuit and
    faithfulness as ``ours | paper``. Explained in chapter 7."""
    paper = ref.table1().set_index("model")
    rows = []
    for r in table1.itertuples():
        pm = ref.paper_model_of(r.model)
        p = paper.loc[pm] if pm in paper.index else None

        def cell(ours, column):
            return f"{ours:.2f} | " + (f"{p[column]:.2f}" if p is not None else "—")

        rows.append({"model": f"{r.model} ({ref.MODEL_TITLES[pm]})" if pm else r.model,
                     "whole model": cell(r.full_model, "full_model"),
                     "base circuit": cell(r.circuit, "llama_circuit"),
                     "random circuit": cell(r.random_circuit, "random_circuit"),
                     "faithfulness": cell(r.faithfulness, "faithfulness")})
    return pd.DataFrame(rows).set_index("model")


def finding2_frame(ours: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Tidy rows for the second finding: per group and model family, the accuracy of the target of
    the group's own variable with its DCM heads patched (draws summarised), ours and the paper's.
    Explained in chapter 7."""
    columns = ["group", "model", "accuracy", "accuracy_sd", "source"]
    mine = ours.assign(model=ours["model"].map(family_title), source=OURS)
    theirs = paper.rename(columns={"sd": "accuracy_sd"}).assign(model=paper["model"].map(family_title),
                                                                source=PAPER)
    return pd.concat([mine[columns], theirs[columns]], ignore_index=True)


def finding2_chart(ours: pd.DataFrame, paper: pd.DataFrame, width: int = 210) -> alt.FacetChart:
    """The second finding as bars with ± one sd over draws, ours | the paper's.
    Explained in chapter 7."""
    return grouped_bar_chart(finding2_frame(ours, paper), x="group", y="accuracy", color="model",
                             column="source", error="accuracy_sd", y_domain=(0, 1), width=width,
                             title="Finding 2: each group's own variable, patched in every model",
                             y_title="target accuracy (A: object; B, C, D: position)")


def checks_table(checks: pd.DataFrame) -> pd.DataFrame:
    """The claims' check table for reading: every claim in full, the chapter that measures it, the
    paper's evidence, whether the organism reproduces it and the organism's numbers.
    Explained in chapter 7."""
    table = checks.assign(organism=checks["organism"].map({"yes": "✓ yes", "no": "✗ no"}))
    table = table.rename(columns={"claim": "claim", "paper": "the paper (7B)", "organism": "organism",
                                  "numbers": "organism's numbers"})
    return table.set_index("claim")[["chapter", "the paper (7B)", "organism", "organism's numbers"]]
