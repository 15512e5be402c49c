"""Task heads on the last hidden state of a function tag, each owning its behaviour.

A head kind is one class registered with :func:`register_head`. The class says everything
the rest of tagllm needs to know about the kind, so nothing outside this module branches on
it: which losses it takes and how many outputs it needs (:meth:`Head.config_error`), what a
label column must look like (:meth:`Head.label_columns_error`, :meth:`Head.label_errors`,
:meth:`Head.check_targets`), the target statistics it keeps (:meth:`Head.prepare`), its
closed-form warm start (:meth:`Head.warm_start`), its loss, its predictions and their column
names, the metrics that score them, and what a baseline must predict to be comparable
(:attr:`Head.classes`). ``lm`` reuses the frozen model's own output embedding (it owns no
parameters); ``regression`` and ``classification`` are linear layers hidden -> n.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tagllm.errors import ConfigError, DataError
from tagllm.evaluation.metrics import classification_metrics, regression_metrics

HEADS: dict[str, type[Head]] = {}


def register_head(kind: str) -> Callable[[type[Head]], type[Head]]:
    """Class decorator adding a head kind to the registry."""

    def wrap(cls: type[Head]) -> type[Head]:
        cls.kind = kind
        HEADS[kind] = cls
        return cls

    return wrap


def head_class(kind: str) -> type[Head]:
    """The registered class of ``kind``."""
    if kind not in HEADS:
        raise ConfigError(f"unknown head kind {kind!r}; known: {sorted(HEADS)}")
    return HEADS[kind]


class Head(nn.Module):
    """Base class: maps hidden states (B, H) to outputs (B, n)."""

    kind: ClassVar[str] = ""
    has_parameters: ClassVar[bool] = True  # trained on labels at the tag's position
    losses: ClassVar[tuple[str, ...]] = ()  # the first is the default
    min_outputs: ClassVar[int] = 1
    #: bumped when the closed-form warm start fits differently; part of the store key of
    #: the stages that train this kind (when non-zero), so their stored tags are retrained
    fit_version: ClassVar[int] = 0

    def __init__(self, hidden_size: int, num_outputs: int, loss: str) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.num_outputs = num_outputs
        self.loss_name = loss

    # ------------------------------------------------------------- the kind's rules
    @classmethod
    def config_error(cls, num_outputs: int, loss: str) -> str | None:
        """Why ``(num_outputs, loss)`` cannot configure this kind (None if it can)."""
        if num_outputs < cls.min_outputs:
            return f"a {cls.kind} head needs num_outputs >= {cls.min_outputs}"
        if loss not in cls.losses:
            return f"a {cls.kind} head takes loss {list(cls.losses)}, not {loss!r}"
        return None

    @classmethod
    def label_columns_error(cls, num_outputs: int, columns: Sequence[str], tag: str
                            ) -> str | None:
        """Why these label columns cannot feed ``tag``'s head (None if they can)."""
        return None

    @classmethod
    def label_errors(cls, targets: np.ndarray, num_outputs: int) -> list[tuple[int, str]]:
        """(row, reason) of each (finite) label this kind cannot take."""
        return []

    @property
    def classes(self) -> int:
        """What comparable predictions are: 0 for values, n for probabilities over n
        classes (baselines predict the same form)."""
        return 0

    # ------------------------------------------------------------- training
    def check_targets(self, targets: torch.Tensor, where: str) -> None:
        """Refuse targets this head cannot train on, naming ``where``."""
        if not torch.isfinite(targets).all():
            raise DataError(f"{where}: targets contain NaN or infinite values")

    def prepare(self, targets: torch.Tensor) -> None:
        """Set statistics of the training targets before any fitting (default: none)."""

    def warm_start(self, features: torch.Tensor, targets: np.ndarray, alpha: float) -> dict:
        """Fit the head in closed form on frozen features (N, H); returns what was done."""
        raise DataError(f"a {self.kind} head has no closed-form warm start")

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------- predictions
    def postprocess(self, outputs: torch.Tensor) -> torch.Tensor:
        """Turn raw outputs into user-facing predictions."""
        return outputs

    def output_names(self) -> list[str]:
        """Column names of the predictions in a CSV."""
        if self.num_outputs == 1:
            return ["prediction"]
        return [f"prediction_{k}" for k in range(self.num_outputs)]

    def metrics(self, targets: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
        """The kind's metrics of ``predictions`` (as :meth:`postprocess` gives them)."""
        raise NotImplementedError


def _standardised(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Z, mean, sd): features standardised so one penalty suits every dimension."""
    X = features.double().numpy()
    mu, sd = X.mean(0), X.std(0) + 1e-6
    return (X - mu) / sd, mu, sd


class LinearHead(Head):
    """A linear layer hidden -> num_outputs, zero-initialised."""

    def __init__(self, hidden_size: int, num_outputs: int, loss: str) -> None:
        super().__init__(hidden_size, num_outputs, loss)
        self.linear = nn.Linear(hidden_size, num_outputs)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, H) -> (B, n)
        return self.linear(hidden)

    def _set_linear(self, W: np.ndarray, b: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> None:
        """Load a fit on standardised features as weights on the raw features."""
        W_raw = W / sd
        b_raw = b - W_raw @ mu
        with torch.no_grad():
            self.linear.weight.copy_(torch.as_tensor(W_raw, dtype=torch.float32))
            self.linear.bias.copy_(torch.as_tensor(b_raw, dtype=torch.float32))


@register_head("regression")
class RegressionHead(LinearHead):
    """Linear hidden -> num_outputs. Targets are standardised with stored mean/std."""

    losses = ("mse", "l1")

    def __init__(self, hidden_size: int, num_outputs: int = 1, loss: str = "mse") -> None:
        super().__init__(hidden_size, num_outputs, loss)
        # Target scaling: the head predicts standardised targets (well-conditioned for any
        # label scale); these buffers are saved with the tag.
        self.register_buffer("target_mean", torch.zeros(num_outputs))
        self.register_buffer("target_std", torch.ones(num_outputs))

    @classmethod
    def label_columns_error(cls, num_outputs: int, columns: Sequence[str], tag: str
                            ) -> str | None:
        if len(columns) != num_outputs:
            return (f"label names {len(columns)} column(s) {list(columns)} but {tag}'s "
                    f"regression head has num_outputs {num_outputs}")
        return None

    def check_targets(self, targets: torch.Tensor, where: str) -> None:
        super().check_targets(targets, where)
        if targets.numel() != len(targets) * self.num_outputs:
            raise DataError(f"{where}: targets of shape {tuple(targets.shape)} for "
                            f"{len(targets)} texts and a head with {self.num_outputs} output(s)")

    def prepare(self, targets: torch.Tensor) -> None:
        y = targets.view(len(targets), -1)
        with torch.no_grad():
            self.target_mean.copy_(y.mean(0))
            self.target_std.copy_(y.std(0).clamp_min(1e-8) if len(y) > 1
                                  else torch.ones_like(y[0]))

    def standardise(self, targets: torch.Tensor) -> torch.Tensor:
        return (targets - self.target_mean) / self.target_std

    def warm_start(self, features: torch.Tensor, targets: np.ndarray, alpha: float) -> dict:
        """Ridge regression (alpha chosen by RidgeCV around ``alpha``) on the standardised
        targets."""
        from sklearn.linear_model import RidgeCV

        Z, mu, sd = _standardised(features)
        y = torch.as_tensor(targets, dtype=torch.float32).view(len(Z), -1)  # on the CPU
        y = ((y - self.target_mean.cpu()) / self.target_std.cpu()).double().numpy()
        reg = RidgeCV(alphas=np.logspace(-2, 4, 13) * max(alpha, 1e-6)).fit(Z, y)
        self._set_linear(np.atleast_2d(reg.coef_), np.atleast_1d(reg.intercept_), mu, sd)
        return {"examples": len(Z), "alpha": float(reg.alpha_)}

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        z = self.standardise(targets.to(outputs.dtype).view_as(outputs))
        if self.loss_name == "l1":
            return F.l1_loss(outputs, z)
        return F.mse_loss(outputs, z)

    def postprocess(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs * self.target_std + self.target_mean

    def metrics(self, targets: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
        """MSE, MAE, Pearson, Spearman (averaged over the outputs)."""
        return regression_metrics(targets, predictions)


def not_class_indices(labels, classes: int) -> list[int]:
    """Positions of the labels that are not a class index 0 .. classes - 1."""
    return [i for i, v in enumerate(torch.as_tensor(labels).reshape(-1).tolist())
            if v != int(v) or not 0 <= v < classes]


@register_head("classification")
class ClassificationHead(LinearHead):
    """Linear hidden -> num_classes with cross-entropy; predictions are probabilities."""

    losses = ("cross_entropy",)
    min_outputs = 2
    fit_version = 1  # 1: the penalty chosen by cross-validation (was C = 1 / ridge_alpha)

    def __init__(self, hidden_size: int, num_outputs: int = 2, loss: str = "cross_entropy"):
        super().__init__(hidden_size, num_outputs, loss)

    @classmethod
    def label_columns_error(cls, num_outputs: int, columns: Sequence[str], tag: str
                            ) -> str | None:
        if len(columns) != 1:
            return f"a classification head takes one label column of class indices, got " \
                   f"{list(columns)}"
        return None

    @classmethod
    def label_errors(cls, targets: np.ndarray, num_outputs: int) -> list[tuple[int, str]]:
        flat = np.asarray(targets).reshape(-1)
        return [(i, f"{flat[i]:g} is not a class index 0..{num_outputs - 1}")
                for i in not_class_indices(targets, num_outputs)]

    @property
    def classes(self) -> int:
        return self.num_outputs

    def check_targets(self, targets: torch.Tensor, where: str) -> None:
        """Targets must be class indices 0 .. num_outputs - 1 (one per input)."""
        super().check_targets(targets, where)
        t = targets.reshape(len(targets), -1)
        bad = not_class_indices(t, self.num_outputs) if t.shape[1] == 1 else [0]
        if bad:
            raise DataError(f"{where}: classification labels must be one class index in 0.."
                            f"{self.num_outputs - 1} per input; entry {bad[0]} is "
                            f"{t[bad[0]].tolist()}")

    def warm_start(self, features: torch.Tensor, targets: np.ndarray, alpha: float) -> dict:
        """L2 logistic regression with its penalty chosen by stratified cross-validation on
        the log loss (C = 1 / a for a in ``alpha`` x 10^-2 .. 10^4; 5 folds, fewer if a class
        has fewer rows, none below 2), as the linear probe chooses its own."""
        from sklearn.linear_model import LogisticRegression, LogisticRegressionCV

        Z, mu, sd = _standardised(features)
        y = np.asarray(targets).reshape(-1).astype(int)
        present = np.unique(y)  # a class may be absent (its only rows in validation)
        W = np.zeros((self.num_outputs, Z.shape[1]))
        # an absent class starts as rarer than one example in the rows seen: log(1 / (n + 1))
        b = np.full(self.num_outputs, -np.log(len(y) + 1.0))
        if len(present) == 1:
            b[present[0]] = 0.0
        else:
            folds = int(np.bincount(y)[present].min().clip(max=5))  # each fold needs each class
            grid = np.logspace(-2, 4, 7) * max(alpha, 1e-6)
            clf = (LogisticRegressionCV(Cs=1.0 / grid, cv=folds, scoring="neg_log_loss",
                                        max_iter=2000) if folds >= 2
                   else LogisticRegression(C=1.0 / max(alpha, 1e-6), max_iter=2000))
            with warnings.catch_warnings():  # sklearn 1.9's notices of 1.10's new defaults
                warnings.simplefilter("ignore", FutureWarning)
                clf.fit(Z, y)
            alpha = float(1.0 / np.ravel(clf.C_ if folds >= 2 else clf.C)[0])
            Wp, bp = clf.coef_, clf.intercept_
            if Wp.shape[0] == 1:  # two classes: sklearn gives one row, the head has two logits
                Wp, bp = np.concatenate([-Wp / 2, Wp / 2]), np.concatenate([-bp / 2, bp / 2])
            if len(present) < self.num_outputs:  # put the absent classes' logits on one scale
                bp = bp - np.logaddexp.reduce(bp)
            W[clf.classes_], b[clf.classes_] = Wp, bp
        self._set_linear(W, b, mu, sd)
        return {"examples": len(Z), "alpha": alpha,
                "absent_classes": [int(k) for k in range(self.num_outputs) if k not in present]}

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets.long().view(-1))

    def postprocess(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.softmax(-1)

    def output_names(self) -> list[str]:
        return [f"prob_{k}" for k in range(self.num_outputs)]

    def metrics(self, targets: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
        """Accuracy and AUROC from the class probabilities."""
        return classification_metrics(targets, predictions)


@register_head("lm")
class LMHead(Head):
    """The frozen model's own LM head: generation. Owns no parameters."""

    has_parameters = False
    losses = ("lm",)

    def __init__(self, hidden_size: int, num_outputs: int = 1, loss: str = "lm") -> None:
        super().__init__(hidden_size, num_outputs, loss)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the lm head is applied by TaggedModel through the base model")


def build_head(kind: str, hidden_size: int, num_outputs: int, loss: str) -> Head:
    return head_class(kind)(hidden_size, num_outputs, loss)
