"""The model organism: tiny LLaMA models trained here, on CPU, that tell the paper's story in miniature.

`corpus` writes the synthetic languages, `train` trains a checkpoint from a `recipes.Recipe`, and
``python -m entity_tracking.organism train --variant base`` reproduces a shipped checkpoint
(``checkpoints/<variant>``), which `models.load_model("organism-base")` then loads exactly like LLaMA-7B.
"""
