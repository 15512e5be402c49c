"""The methods tags are compared against: one class each, registered here in the order
result tables list them.

A baseline is a class with a registry ``key`` (the name recipes and flags use), the kind of
evaluation it serves (``needs``: ``"label"`` for a head's targets, ``"reference"`` for
generated text), whether it learns from training rows, and ``fit`` / ``predict``. Its
predictions have the form of the tags' own (values, class probabilities, or texts), so the
runner (:mod:`tagllm.scoring`) scores both with the same metrics. The methods live by what
they need: :mod:`~tagllm.evaluation.classical` (no language model),
:mod:`~tagllm.evaluation.model_based` (the frozen model, no training),
:mod:`~tagllm.evaluation.peft` (fine-tuning it) and :mod:`~tagllm.evaluation.generation`
(text); the registry is :mod:`~tagllm.evaluation.registry`. A new method is one more class
in one of them, added to the list below.
"""

from __future__ import annotations

from tagllm.evaluation.classical import (
    AMINO_ACIDS,
    INPUT_FEATURES,
    KNN,
    PAIR,
    Chemprop,
    Composition,
    Mean,
    RandomForest,
    composition_features,
    forest_baseline,
    kmer_profiles,
    knn_baseline,
    mean_baseline,
    morgan_fingerprints,
    pair_features,
)
from tagllm.evaluation.generation import CopySource, PlainPrompt
from tagllm.evaluation.model_based import LinearProbe, TagsAsText, tags_as_words, untagged
from tagllm.evaluation.peft import LoRA, PeftBaseline, PromptTuning
from tagllm.evaluation.registry import (
    BASELINES,
    Baseline,
    FineTune,
    Rows,
    Task,
    baseline_keys,
    linear_fit_predict,
    linear_size,
    register_baseline,
)

for _method in (KNN, RandomForest, Composition, Chemprop, LinearProbe, TagsAsText, LoRA,
                PromptTuning, Mean, CopySource, PlainPrompt):
    register_baseline(_method)

__all__ = ["AMINO_ACIDS", "BASELINES", "INPUT_FEATURES", "KNN", "PAIR", "Baseline", "Chemprop",
           "Composition", "CopySource", "FineTune", "LinearProbe", "LoRA", "Mean",
           "PeftBaseline", "PlainPrompt", "PromptTuning", "RandomForest", "Rows", "TagsAsText",
           "Task", "baseline_keys", "composition_features", "forest_baseline", "kmer_profiles",
           "knn_baseline", "linear_fit_predict", "linear_size", "mean_baseline",
           "morgan_fingerprints", "pair_features", "register_baseline", "tags_as_words",
           "untagged"]
