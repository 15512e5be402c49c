"""Evaluation's low half: the metrics and the registry of baselines (numpy, scikit-learn;
nothing above the data layer). The one runner that scores tags beside these baselines,
for ``tagllm run`` and ``tagllm evaluate``, sits above training in :mod:`tagllm.scoring`,
so the packages' imports run one way. This file imports none of its modules.
"""
