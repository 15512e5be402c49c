"""Tag training: the data (:mod:`~tagllm.training.batching`), the closed-form warm start
(:mod:`~tagllm.training.warm_start`) and the loop (:mod:`~tagllm.training.loop`)."""

from tagllm.training.batching import Part, length_bucketed_batches, mixed_batches
from tagllm.training.loop import (
    TrainResult,
    fit_tag,
    fit_tags,
    frozen_prefix,
    stage_prefixes,
)

__all__ = ["Part", "TrainResult", "fit_tag", "fit_tags", "frozen_prefix", "length_bucketed_batches",
           "mixed_batches", "stage_prefixes"]
