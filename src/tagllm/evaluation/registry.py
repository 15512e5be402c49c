"""The baseline registry: what every comparison method is (:class:`Baseline`), what it is
given (:class:`Task`, :class:`Rows`, and for fine-tuning :class:`FineTune`), the registry
itself and the closed-form linear fit that the linear methods share."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import numpy as np

from tagllm.records import JSONObject


class Rows(Protocol):
    """What a method sees of one split: a table of named columns (``table[col]``,
    ``table.columns``, ``table.render(template)``), the rendered inputs and the targets."""

    table: Any
    texts: list[str]
    targets: np.ndarray | None


@dataclass
class Task:
    """What is predicted. ``classes``: 0 for values (regression), n for probabilities over
    n classes; the generation fields serve the text baselines."""

    classes: int = 0
    source_column: str = "source"
    prompt: str | None = None
    generate: Callable[[list[str]], list[str]] | None = None  # the frozen model, no tags
    #: the frozen model's pooled hidden states of texts, no tags (N, F): the linear probe's
    features: Callable[[list[str]], np.ndarray] | None = None
    #: the tag names to strip from rendered inputs before the probe reads them
    tag_names: tuple[str, ...] = ()
    #: each tag written as plain words (``<SMILES>`` -> ``"SMILES:"``): the text_tags method
    tag_words: dict[str, str] | None = None
    #: the frozen base model and the training budget, for the methods that fine-tune it
    finetune: FineTune | None = None


@dataclass
class FineTune:
    """What a fine-tuning baseline (PEFT) gets: the frozen Hugging Face model (never
    modified: adapters go on a copy), its tokenizer, a maker of fresh heads of the tags'
    own kind (a :mod:`tagllm.heads` class, built by the caller), the training loop the tags
    run in (``train``: :func:`tagllm.training.steps.train_module`, given by the caller, which
    sits above this module), the tags' step budget and their selection protocol:
    ``validation`` of the training rows (seeded) held out, scored at step 0 and every
    ``eval_every`` steps, the best state kept."""

    model: Any
    tokenizer: Any
    new_head: Callable[[], Any]
    train: Callable[..., Any]
    steps: int = 200
    batch_size: int = 32
    seed: int = 0
    validation: float = 0.1
    eval_every: int = 50


class Baseline:
    """Base class of a comparison method (see the module docstring)."""

    key: ClassVar[str] = ""
    needs: ClassVar[Literal["label", "reference"]] = "label"
    needs_train: ClassVar[bool] = True
    #: runs the base model over the training rows (or trains it): only when asked by name
    uses_model: ClassVar[bool] = False
    #: trains for minutes on its own (Chemprop): also only when asked by name
    on_request: ClassVar[bool] = False
    #: the trainable parameters it fitted (None: non-parametric, e.g. k-NN or a forest)
    parameters: int | None = None

    def __init__(self, task: Task) -> None:
        self.task = task

    def name(self, train: Rows | None, test: Rows) -> str:
        """The row label in result tables."""
        raise NotImplementedError

    def unavailable(self, train: Rows | None, test: Rows) -> str | None:
        """Why this method cannot run on these splits (None: it can)."""
        return None

    def fit(self, train: Rows | None) -> None:
        """Learn from the training rows (by default: keep them for :meth:`predict`; methods
        that fit a closed form at prediction time need no more)."""
        self.train = train

    def predict(self, test: Rows) -> np.ndarray | list[str]:
        raise NotImplementedError

    def details(self) -> JSONObject:
        """What the method chose while fitting (for results files): e.g. a learning curve."""
        return {}

    def linear(self, train_x: np.ndarray, test_x: np.ndarray) -> np.ndarray:
        """:func:`linear_fit_predict` on the training targets, its size counted."""
        self.parameters = linear_size(train_x, self.train.targets, self.task.classes)
        return linear_fit_predict(train_x, self.train.targets, test_x, self.task.classes)


BASELINES: dict[str, type[Baseline]] = {}


def register_baseline(cls: type[Baseline]) -> type[Baseline]:
    """Class decorator adding a method to the registry under its ``key``."""
    BASELINES[cls.key] = cls
    return cls


def baseline_keys(needs: str, with_model: bool = True) -> list[str]:
    """The registered keys of one kind of evaluation, in registry order (without the
    methods that run the base model or train for minutes, unless ``with_model``)."""
    return [k for k, c in BASELINES.items() if c.needs == needs
            and (with_model or not (c.uses_model or c.on_request))]


def linear_size(train_x: np.ndarray, train_y: np.ndarray, classes: int = 0) -> int:
    """The coefficients and intercepts :func:`linear_fit_predict` fits."""
    y = np.asarray(train_y)
    outputs = (1 if classes == 2 else classes) if classes else (
        y.shape[1] if y.ndim > 1 else 1)
    return (np.asarray(train_x).shape[1] + 1) * outputs


def linear_fit_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                       classes: int = 0) -> np.ndarray:
    """A linear model on standardised features: ridge with its penalty chosen by efficient
    leave-one-out CV (RidgeCV) for values, L2 logistic regression with C chosen by
    stratified CV (5 folds, fewer if a class has fewer rows) on the log loss for classes
    (probabilities). Everything is chosen on the training rows alone."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(train_y)
    if classes:
        counts = np.bincount(y.astype(int).ravel())
        folds = int(min(5, counts[counts > 0].min()))  # stratified folds need members
        model = LogisticRegressionCV(Cs=10, cv=folds, scoring="neg_log_loss", max_iter=2000) \
            if folds >= 2 else LogisticRegression(max_iter=2000)
        clf = make_pipeline(StandardScaler(), model)
        with warnings.catch_warnings():  # sklearn 1.9's notices of 1.10's new defaults
            warnings.simplefilter("ignore", FutureWarning)
            clf.fit(train_x, y.astype(int).ravel())
        prob = np.zeros((len(test_x), classes))
        prob[:, clf.classes_] = clf.predict_proba(test_x)
        return prob
    reg = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 5, 17)))
    reg.fit(train_x, y if y.ndim > 1 and y.shape[1] > 1 else y.ravel())
    return reg.predict(test_x)
