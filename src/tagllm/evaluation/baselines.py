"""The methods tags are compared against: one registered class each.

A baseline is a class with a registry ``key`` (the name recipes and flags use), the kind of
evaluation it serves (``needs``: ``"label"`` for a head's targets, ``"reference"`` for
generated text), whether it learns from training rows, and ``fit`` / ``predict``. Its
predictions have the form of the tags' own (values, class probabilities, or texts), so the
runner (:mod:`tagllm.scoring`) scores both with the same metrics. A new method
(a linear probe, LoRA, a random forest) is one more class with :func:`register_baseline`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import numpy as np

from tagllm.errors import DataError
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


# ----------------------------------------------------------------- features
#: a drug-target row: the molecule and the protein together
PAIR = "smiles+sequence"


def morgan_fingerprints(smiles: Sequence[str], radius: int = 2, bits: int = 2048) -> np.ndarray:
    """(N, bits) boolean Morgan fingerprints (RDKit)."""
    from rdkit import Chem
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=bits)
    out = np.zeros((len(smiles), bits), dtype=bool)
    for i, s in enumerate(smiles):
        mol = Chem.MolFromSmiles(s)
        if mol is None:
            raise DataError(f"invalid SMILES {s!r} at position {i}")
        out[i] = gen.GetFingerprintAsNumPy(mol).astype(bool)
    return out


AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"


def composition_features(seqs: Sequence[str]) -> np.ndarray:
    """(N, 21): the fraction of each standard amino acid and log10 of the length. Most
    sequence descriptors (mass, GRAVY, charge, aliphatic index) are functions of these."""
    index = {a: i for i, a in enumerate(AMINO_ACIDS)}
    out = np.zeros((len(seqs), len(AMINO_ACIDS) + 1))
    for n, s in enumerate(seqs):
        for c in s:
            if c in index:
                out[n, index[c]] += 1
        out[n, :-1] /= max(len(s), 1)
        out[n, -1] = np.log10(max(len(s), 1))
    return out


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


def kmer_profiles(seqs: Sequence[str], k: int = 3) -> np.ndarray:
    """(N, 20**k) k-mer frequency vectors of protein sequences (standard residues only)."""
    alphabet = AMINO_ACIDS
    index = {a: i for i, a in enumerate(alphabet)}
    out = np.zeros((len(seqs), len(alphabet) ** k), dtype=np.float32)
    for n, s in enumerate(seqs):
        for i in range(len(s) - k + 1):
            code = 0
            for c in s[i:i + k]:
                if c not in index:
                    break
                code = code * len(alphabet) + index[c]
            else:
                out[n, code] += 1
        out[n] /= max(out[n].sum(), 1)
    return out


def pair_features(pairs: Sequence[tuple[str, str]]) -> np.ndarray:
    """(N, 2048 + 21) features of (SMILES, protein) pairs: the molecule's Morgan fingerprint
    beside the protein's amino-acid composition and log length (drug-target baselines)."""
    smiles, seqs = zip(*pairs, strict=True) if pairs else ((), ())
    return np.hstack([morgan_fingerprints(smiles), composition_features(seqs)])


#: The inputs the fingerprint baselines can use: a column (or the pair "smiles+sequence")
#: -> its features, the k-NN distance (None: no k-NN) and the features' name in tables.
INPUT_FEATURES: dict[str, tuple[Callable[[Sequence[Any]], np.ndarray], str | None, str]] = {
    "smiles": (morgan_fingerprints, "jaccard", "Morgan"),  # Tanimoto distance
    "sequence": (kmer_profiles, "cosine", "3-mer"),
    PAIR: (pair_features, None, "Morgan + composition"),
}


def knn_baseline(train_x: Sequence[str], train_y: np.ndarray, test_x: Sequence[str],
                 k: int = 5, column: str = "smiles", classes: int = 0) -> np.ndarray:
    """k-nearest-neighbour predictions, distance-weighted (scikit-learn): Morgan fingerprints
    with Tanimoto distance for SMILES, 3-mer profiles with cosine distance for proteins.
    Regression predicts values; with ``classes`` it predicts class probabilities."""
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

    features, distance, _ = INPUT_FEATURES[column]
    if classes:
        knn = KNeighborsClassifier(n_neighbors=k, metric=distance, algorithm="brute",
                                   weights="distance", n_jobs=-1)
        knn.fit(features(train_x), np.asarray(train_y).astype(int))
        prob = np.zeros((len(test_x), classes))
        prob[:, knn.classes_] = knn.predict_proba(features(test_x))
        return prob
    knn = KNeighborsRegressor(n_neighbors=k, metric=distance, algorithm="brute",
                              weights="distance", n_jobs=-1)
    knn.fit(features(train_x), np.asarray(train_y))
    return knn.predict(features(test_x))


def mean_baseline(train_y: np.ndarray, n: int, classes: int = 0) -> np.ndarray:
    """Predict the training mean of every output for every test example; with ``classes``,
    the training class frequencies."""
    y = np.asarray(train_y, dtype=np.float64)
    if classes:
        prior = np.bincount(y.astype(int).ravel(), minlength=classes) / len(y)
        return np.tile(prior, (n, 1))
    return np.broadcast_to(y.mean(0), (n, *y.shape[1:])).copy()


# ----------------------------------------------------------------- the registered methods
def forest_baseline(train_x: Sequence[str], train_y: np.ndarray, test_x: Sequence[str],
                    column: str = "smiles", classes: int = 0, trees: int = 200,
                    seed: int = 0) -> np.ndarray:
    """Random forest predictions (scikit-learn, ``trees`` trees, seeded) on Morgan
    fingerprints for SMILES, 3-mer profiles for proteins, or both (:func:`pair_features`)
    for drug-target pairs: the practitioner's first choice for a molecular property. With
    ``classes`` it predicts class probabilities."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    features = INPUT_FEATURES[column][0]
    y = np.asarray(train_y)
    if classes:
        rf = RandomForestClassifier(n_estimators=trees, n_jobs=-1, random_state=seed)
        rf.fit(features(train_x), y.astype(int).ravel())
        prob = np.zeros((len(test_x), classes))
        prob[:, rf.classes_] = rf.predict_proba(features(test_x))
        return prob
    rf = RandomForestRegressor(n_estimators=trees, n_jobs=-1, random_state=seed)
    rf.fit(features(train_x), y if y.ndim > 1 and y.shape[1] > 1 else y.ravel())
    return rf.predict(features(test_x))


def _named(table: Any, column: str) -> str | None:
    """The column of ``table`` named ``column`` in any case (``SMILES``), or None."""
    return next((c for c in table.columns if c.lower() == column), None)


class FingerprintBaseline(Baseline):
    """A method on the one molecule or protein column the rows have (INPUT_FEATURES)."""

    method = ""  # its name after the features' name, e.g. "k-NN (k=5)"
    #: (train_x, train_y, test_x, column=, classes=) -> predictions
    learner: ClassVar[Callable[..., np.ndarray]]

    @staticmethod
    def _input(train: Rows | None, test: Rows) -> list[str]:
        """The input: one molecule or protein column (its name in any case, e.g. SMILES),
        or the (SMILES, protein) pair."""
        cols = [c for c in ("smiles", "sequence") if train is not None
                and _named(train.table, c) and _named(test.table, c)]
        return [PAIR] if len(cols) == 2 else cols

    def unavailable(self, train: Rows | None, test: Rows) -> str | None:
        cols = self._input(train, test)
        if len(cols) != 1:
            return ("needs a 'smiles' or a 'sequence' input column (or both: a pair) in the "
                    f"training and test rows, found {cols}")
        if self.key == "knn" and INPUT_FEATURES[cols[0]][1] is None:
            return f"no k-NN distance for {cols[0]!r} inputs"
        return None

    def name(self, train: Rows | None, test: Rows) -> str:
        return f"{INPUT_FEATURES[self._input(train, test)[0]][2]} {self.method}"

    @staticmethod
    def _values(rows: Rows, col: str) -> list[Any]:
        if col == PAIR:
            return list(zip(rows.table[_named(rows.table, "smiles")],
                            rows.table[_named(rows.table, "sequence")], strict=True))
        return rows.table[_named(rows.table, col)]

    def predict(self, test: Rows) -> np.ndarray:
        col = self._input(self.train, test)[0]
        return type(self).learner(self._values(self.train, col), self.train.targets,
                                  self._values(test, col), column=col,
                                  classes=self.task.classes)


@register_baseline
class KNN(FingerprintBaseline):
    """Distance-weighted k-NN: Tanimoto on Morgan fingerprints, cosine on 3-mer profiles."""

    key, method, learner = "knn", "k-NN (k=5)", staticmethod(knn_baseline)


@register_baseline
class RandomForest(FingerprintBaseline):
    """A random forest of 200 trees on Morgan fingerprints, 3-mer profiles, or for
    drug-target pairs the fingerprint beside the protein's composition."""

    key, method, learner = "rf", "random forest (200 trees)", staticmethod(forest_baseline)


@register_baseline
class Composition(Baseline):
    """Ridge (or logistic regression) on amino-acid composition and log length: the
    natural baseline for sequence descriptors, many of which it computes exactly."""

    key = "composition"

    def unavailable(self, train: Rows | None, test: Rows) -> str | None:
        if train is None or "sequence" not in train.table.columns \
                or "sequence" not in test.table.columns:
            return "needs a protein 'sequence' column in the training and test rows"
        return None

    def name(self, train: Rows | None, test: Rows) -> str:
        return "amino-acid composition, linear"

    def predict(self, test: Rows) -> np.ndarray:
        return self.linear(composition_features(self.train.table["sequence"]),
                           composition_features(test.table["sequence"]))


@register_baseline
class Chemprop(Baseline):
    """Chemprop's D-MPNN (PyPI ``chemprop`` 2.2, the optional extra ``tagllm[chemprop]``) on
    the molecules' graphs: CPU, seeded, the epoch of lowest loss on a seeded validation
    fraction of the training molecules kept (the tags' own fraction and seed)."""

    key, on_request = "chemprop", True
    max_epochs: ClassVar[int] = 50
    patience: ClassVar[int] = 10

    def unavailable(self, train: Rows | None, test: Rows) -> str | None:
        if train is None or "smiles" not in train.table.columns \
                or "smiles" not in test.table.columns or "sequence" in test.table.columns:
            return "needs a 'smiles' column (molecules alone) in the training and test rows"
        import importlib.util

        if importlib.util.find_spec("chemprop") is None:
            return "needs the chemprop package (pip install 'tagllm[chemprop]')"
        return None

    def name(self, train: Rows | None, test: Rows) -> str:
        return "Chemprop (D-MPNN)"

    def fit(self, train: Rows | None) -> None:
        from tagllm.evaluation.chemprop_fit import fit_chemprop

        tune = self.task.finetune
        self.fitted = fit_chemprop(list(train.table["smiles"]), train.targets,
                                   self.task.classes, seed=tune.seed if tune else 0,
                                   validation=tune.validation if tune else 0.1,
                                   max_epochs=self.max_epochs, patience=self.patience)
        self.parameters = self.fitted.parameters

    def predict(self, test: Rows) -> np.ndarray:
        from tagllm.evaluation.chemprop_fit import predict_chemprop

        return predict_chemprop(self.fitted, list(test.table["smiles"]))

    def details(self) -> JSONObject:
        f = self.fitted
        return {"best_epoch": f.best_epoch, "epochs_run": f.epochs_run,
                "validation_rows": f.validation_rows, "validation_curve": f.curve}


def untagged(texts: Sequence[str], tag_names: Sequence[str]) -> list[str]:
    """The inputs with every tag removed (and spaces collapsed): what the frozen model reads
    without tags."""
    return tags_as_words(texts, dict.fromkeys(tag_names, ""))


@register_baseline
class LinearProbe(Baseline):
    """A linear model on the frozen model's own features of the untagged input: its last
    layer mean-pooled over the tokens and at the last token (no tags, nothing trained in
    the model): what the tags must add to."""

    key, uses_model = "probe", True

    def unavailable(self, train: Rows | None, test: Rows) -> str | None:
        return None if self.task.features else "needs the frozen model's features"

    def name(self, train: Rows | None, test: Rows) -> str:
        return "linear probe (frozen hidden states, no tags)"

    def predict(self, test: Rows) -> np.ndarray:
        feats = self.task.features
        return self.linear(feats(untagged(self.train.texts, self.task.tag_names)),
                           feats(untagged(test.texts, self.task.tag_names)))


def tags_as_words(texts: Sequence[str], words: dict[str, str]) -> list[str]:
    """The inputs with every tag replaced by its plain words (spaces collapsed)."""
    if not words:
        return [" ".join(t.split()) for t in texts]
    pattern = re.compile("|".join(re.escape(t) for t in sorted(words, key=len, reverse=True)))
    return [" ".join(pattern.sub(lambda m: f" {words[m.group(0)]} ", t).split())
            for t in texts]


@register_baseline
class TagsAsText(Baseline):
    """The tags written as plain words where the learned vectors stand (``<SMILES> CCO
    <QED>`` -> ``SMILES: CCO QED:``), read by the frozen model, with the tags' kind of head
    (linear, fitted in closed form) on the last layer at the last token: what the learned
    vectors must beat at equal head."""

    key, uses_model = "text_tags", True

    def unavailable(self, train: Rows | None, test: Rows) -> str | None:
        if not (self.task.features and self.task.tag_words):
            return "needs the frozen model's features and the tags' names"
        return None

    def name(self, train: Rows | None, test: Rows) -> str:
        return "tags as plain text + linear head"

    def _last(self, texts: Sequence[str]) -> np.ndarray:
        feats = self.task.features(tags_as_words(texts, self.task.tag_words))  # (N, 2H)
        return feats[:, feats.shape[1] // 2:]  # (N, H): the last token's state

    def predict(self, test: Rows) -> np.ndarray:
        return self.linear(self._last(self.train.texts), self._last(test.texts))


class PeftBaseline(Baseline):
    """A PEFT method on the frozen model with the tags' own head (the same
    :mod:`tagllm.heads` class: a linear layer on the last layer's hidden state at the
    input's last token, standardised targets and MSE for values, cross-entropy for
    classes), fitted first in closed form on the starting features as the tags' head is,
    then trained with the adapter for the tags' steps and batch size (AdamW, linear warm-up,
    cosine decay). The input is the untagged text."""

    lr: ClassVar[float] = 1e-3
    head_lr: ClassVar[float] = 1e-3
    title: ClassVar[str] = ""
    uses_model = True

    def peft_config(self) -> Any:
        raise NotImplementedError

    def virtual_tokens(self) -> int:
        """Positions the method prepends to every input (0 for LoRA)."""
        return 0

    def unavailable(self, train: Rows | None, test: Rows) -> str | None:
        if self.task.finetune is None:
            return "needs the frozen base model"
        try:
            import peft  # noqa: F401
        except ImportError:
            return "needs the peft package (pip install peft)"
        return None

    def name(self, train: Rows | None, test: Rows) -> str:
        count = getattr(self, "parameters", None)
        return self.title + (f" ({count:,} trainable parameters)" if count else "")

    def _features(self, model: Any, texts: Sequence[str]) -> Any:
        """(B, H) last-layer hidden states at each text's last token (right padding)."""
        import torch

        ft = self.task.finetune
        ids = [ft.tokenizer(t, add_special_tokens=False)["input_ids"] or
               [ft.tokenizer.eos_token_id or 0] for t in texts]
        T = max(len(i) for i in ids)
        dev = next(model.parameters()).device
        x = torch.zeros((len(ids), T), dtype=torch.long)
        mask = torch.zeros_like(x)
        for r, i in enumerate(ids):
            x[r, :len(i)] = torch.tensor(i)
            mask[r, :len(i)] = 1
        # logits_to_keep=1: the head reads hidden states, so skip the vocabulary projection
        # of every position (as the tags' head training does)
        out = model(input_ids=x.to(dev), attention_mask=mask.to(dev), output_hidden_states=True,
                    logits_to_keep=1)
        hidden = out.hidden_states[-1]  # (B, v + T, H): v prepended virtual tokens
        last = torch.tensor([len(i) - 1 for i in ids], device=dev) + self.virtual_tokens()
        return hidden[torch.arange(len(ids), device=dev), last].float()

    def _all_features(self, model: Any, texts: Sequence[str]) -> Any:
        import torch

        bs = self.task.finetune.batch_size
        with torch.no_grad():
            return torch.cat([self._features(model, texts[s:s + bs]).cpu()
                              for s in range(0, len(texts), bs)])

    def _validation_loss(self, texts: Sequence[str], y: Any) -> float:
        """The head's loss on held-out rows (mean over rows), nothing trained."""
        import torch

        bs = self.task.finetune.batch_size
        total = 0.0
        with torch.no_grad():
            for s in range(0, len(texts), bs):
                out = self.head(self._features(self.model, texts[s:s + bs]))
                total += float(self.head.loss(out, y[s:s + bs].to(out.device))) * len(out)
        return total / len(texts)

    def fit(self, train: Rows | None) -> None:
        import copy

        import torch
        from peft import get_peft_model

        ft = self.task.finetune
        torch.manual_seed(ft.seed)
        self.model = get_peft_model(copy.deepcopy(ft.model), self.peft_config())
        self.model.eval()  # dropout off: the frozen model computes deterministically
        texts = untagged(train.texts, self.task.tag_names)
        y = torch.as_tensor(np.asarray(train.targets, dtype=np.float64), dtype=torch.float32)
        y = y.reshape(len(y), -1)
        rng = np.random.default_rng(ft.seed)
        n_val = int(round(ft.validation * len(texts))) if len(texts) >= 10 else 0
        perm = rng.permutation(len(texts))
        val, fit = perm[:n_val], np.sort(perm[n_val:])
        val_texts = [texts[i] for i in val]
        texts, y_val, y = [texts[i] for i in fit], y[torch.as_tensor(val)], y[torch.as_tensor(fit)]
        self.head = ft.new_head()  # the tags' head class: statistics, closed form, loss
        self.head.prepare(y)
        self.head.warm_start(self._all_features(self.model, texts), y.numpy(), alpha=1.0)
        self.head.to(next(self.model.parameters()).device)
        adapter = [p for p in self.model.parameters() if p.requires_grad]
        trained = adapter + list(self.head.parameters())
        self.parameters = sum(p.numel() for p in trained)
        order: list[int] = []

        def batch_loss(step: int) -> torch.Tensor:
            nonlocal order
            if len(order) < min(ft.batch_size, len(texts)):
                order += rng.permutation(len(texts)).tolist()
            idx, order = order[:ft.batch_size], order[ft.batch_size:]
            out = self.head(self._features(self.model, [texts[i] for i in idx]))
            return self.head.loss(out, y[idx].to(out.device))

        def restore(values: dict[str, torch.Tensor]) -> None:
            with torch.no_grad():
                for k, p in enumerate(trained):
                    p.copy_(values[str(k)])

        state = ft.train(
            [(adapter, self.lr), (list(self.head.parameters()), self.head_lr)], batch_loss,
            ft.steps, ft.eval_every,
            (lambda: self._validation_loss(val_texts, y_val)) if n_val else None,
            lambda: {str(k): p.detach().clone() for k, p in enumerate(trained)}, restore,
            warmup_steps=max(1, ft.steps // 10))
        self.curve: list[JSONObject] = state.curve
        self.best_step = state.best["step"] if state.best else ft.steps

    def details(self) -> JSONObject:
        return {"best_step": self.best_step, "curve": self.curve}

    def predict(self, test: Rows) -> np.ndarray:
        import torch

        feats = self._all_features(self.model, untagged(test.texts, self.task.tag_names))
        with torch.no_grad():
            out = self.head.postprocess(self.head(feats.to(next(self.head.parameters()).device)))
        out = out.float().cpu().numpy()
        return out if self.task.classes or out.shape[1] > 1 else out[:, 0]


@register_baseline
class LoRA(PeftBaseline):
    """PEFT LoRA (r = 8, alpha 16, PEFT's default target modules for the architecture)."""

    key, title, lr = "lora", "PEFT LoRA r=8 + linear head", 3e-4

    def peft_config(self) -> Any:
        from peft import LoraConfig

        return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0)


@register_baseline
class PromptTuning(PeftBaseline):
    """PEFT prompt tuning: 10 virtual tokens prepended, initialised from random vocabulary
    embeddings."""

    key, title, lr = "prompt_tuning", "PEFT prompt tuning (10 tokens) + linear head", 1e-3

    def peft_config(self) -> Any:
        from peft import PromptTuningConfig

        return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=10)

    def virtual_tokens(self) -> int:
        return 10


@register_baseline
class Mean(Baseline):
    """The training mean of each output, or the training class frequencies."""

    key = "mean"

    def name(self, train: Rows | None, test: Rows) -> str:
        return "training class frequencies" if self.task.classes else "training mean"

    def fit(self, train: Rows | None) -> None:
        self.train_y = train.targets
        y = np.asarray(train.targets)
        self.parameters = self.task.classes or (y.shape[1] if y.ndim > 1 else 1)

    def predict(self, test: Rows) -> np.ndarray:
        return mean_baseline(self.train_y, len(test.texts), self.task.classes)


class TextBaseline(Baseline):
    """A generation baseline: predicts texts, learns nothing, is named by ``title``."""

    needs = "reference"
    needs_train = False
    title: ClassVar[str] = ""

    def name(self, train: Rows | None, test: Rows) -> str:
        return self.title


@register_baseline
class CopySource(TextBaseline):
    """The source text unchanged: what a translation must beat."""

    key, title = "copy", "copy the source"

    def unavailable(self, train: Rows | None, test: Rows) -> str | None:
        if self.task.source_column not in test.table.columns:
            return (f"the rows have no column {self.task.source_column!r} to copy; columns: "
                    f"{sorted(test.table.columns)}")
        return None

    def predict(self, test: Rows) -> list[str]:
        return list(test.table[self.task.source_column])


@register_baseline
class PlainPrompt(TextBaseline):
    """The same frozen model prompted in plain text, without tags."""

    key, title = "prompt", "plain-text prompt (no tags)"

    def unavailable(self, train: Rows | None, test: Rows) -> str | None:
        return None if self.task.prompt else "needs a plain-text prompt template"

    def predict(self, test: Rows) -> list[str]:
        if self.task.generate is None:
            raise DataError("the prompt baseline needs a model to generate with")
        return self.task.generate(test.table.render(self.task.prompt))
