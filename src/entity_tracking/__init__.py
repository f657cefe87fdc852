"""Companion code for "Fine-Tuning Enhances Existing Mechanisms: A Case Study on Entity Tracking".

One package serves every chapter: task data (`data`), model loading (`models`), hooks and
patching (`patching`), the paper's metrics (`metrics`), and one module per method.
"""

__version__ = "0.1.0"
