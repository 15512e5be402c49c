"""Evaluation: metrics, the registry of baselines, and the one runner that both
``tagllm run`` and ``tagllm evaluate`` use.

The modules sit in different import layers (docs/architecture.md): ``metrics`` and
``baselines`` are low (numpy, scikit-learn), ``runner`` is above the model. This file
imports none of them, so importing one never imports the others.
"""
