"""Task heads on the last hidden state of a function tag.

A head kind is one class registered with :func:`register_head`. ``lm`` reuses the frozen
model's own output embedding (it owns no parameters); ``regression`` and ``classification``
are linear layers hidden -> n.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

HEADS: dict[str, type[Head]] = {}


def register_head(kind: str) -> Callable[[type[Head]], type[Head]]:
    """Class decorator adding a head kind to the registry."""

    def wrap(cls: type[Head]) -> type[Head]:
        cls.kind = kind
        HEADS[kind] = cls
        return cls

    return wrap


def default_loss(kind: str) -> str:
    return {"regression": "mse", "classification": "cross_entropy", "lm": "lm"}[kind]


class Head(nn.Module):
    """Base class: maps hidden states (B, H) to outputs (B, n)."""

    kind: str = ""
    has_parameters: bool = True

    def __init__(self, hidden_size: int, num_outputs: int, loss: str) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.num_outputs = num_outputs
        self.loss_name = loss

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def postprocess(self, outputs: torch.Tensor) -> torch.Tensor:
        """Turn raw outputs into user-facing predictions."""
        return outputs


@register_head("regression")
class RegressionHead(Head):
    """Linear hidden -> num_outputs. Targets are standardised with stored mean/std."""

    def __init__(self, hidden_size: int, num_outputs: int = 1, loss: str = "mse") -> None:
        super().__init__(hidden_size, num_outputs, loss)
        self.linear = nn.Linear(hidden_size, num_outputs)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        # Target scaling: the head predicts standardised targets (well-conditioned for any
        # label scale); these buffers are saved with the tag.
        self.register_buffer("target_mean", torch.zeros(num_outputs))
        self.register_buffer("target_std", torch.ones(num_outputs))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, H) -> (B, n)
        return self.linear(hidden)

    def standardise(self, targets: torch.Tensor) -> torch.Tensor:
        return (targets - self.target_mean) / self.target_std

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z = self.standardise(targets.to(outputs.dtype).view_as(outputs))
        if self.loss_name == "l1":
            return F.l1_loss(outputs, z)
        return F.mse_loss(outputs, z)

    def postprocess(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs * self.target_std + self.target_mean


def not_class_indices(labels, classes: int) -> list[int]:
    """Positions of the labels that are not a class index 0 .. classes - 1."""
    return [i for i, v in enumerate(torch.as_tensor(labels).reshape(-1).tolist())
            if v != int(v) or not 0 <= v < classes]


@register_head("classification")
class ClassificationHead(Head):
    """Linear hidden -> num_classes with cross-entropy; predictions are probabilities."""

    def __init__(self, hidden_size: int, num_outputs: int = 2, loss: str = "cross_entropy"):
        super().__init__(hidden_size, num_outputs, loss)
        self.linear = nn.Linear(hidden_size, num_outputs)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, H) -> (B, C)
        return self.linear(hidden)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets.long().view(-1))

    def check_targets(self, targets: torch.Tensor, where: str) -> None:
        """Targets must be class indices 0 .. num_outputs - 1 (one per input)."""
        t = targets.reshape(len(targets), -1)
        bad = not_class_indices(t, self.num_outputs) if t.shape[1] == 1 else [0]
        if bad:
            raise ValueError(f"{where}: classification labels must be one class index in 0.."
                             f"{self.num_outputs - 1} per input; entry {bad[0]} is "
                             f"{t[bad[0]].tolist()}")

    def postprocess(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.softmax(-1)


@register_head("lm")
class LMHead(Head):
    """The frozen model's own LM head: generation. Owns no parameters."""

    has_parameters = False

    def __init__(self, hidden_size: int, num_outputs: int = 1, loss: str = "lm") -> None:
        super().__init__(hidden_size, num_outputs, loss)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the lm head is applied by TaggedModel through the base model")


def build_head(kind: str, hidden_size: int, num_outputs: int, loss: str) -> Head:
    if kind not in HEADS:
        raise ValueError(f"unknown head kind {kind!r}; known: {sorted(HEADS)}")
    return HEADS[kind](hidden_size, num_outputs, loss)
