"""The methods that need no language model: k-NN and random forests on Morgan fingerprints
or 3-mer profiles (and both for drug-target pairs), a linear model on amino-acid
composition, Chemprop (a D-MPNN trained on the molecules), and the training mean."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from tagllm.errors import DataError
from tagllm.evaluation.registry import Baseline, Rows
from tagllm.records import JSONObject

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


class KNN(FingerprintBaseline):
    """Distance-weighted k-NN: Tanimoto on Morgan fingerprints, cosine on 3-mer profiles."""

    key, method, learner = "knn", "k-NN (k=5)", staticmethod(knn_baseline)


class RandomForest(FingerprintBaseline):
    """A random forest of 200 trees on Morgan fingerprints, 3-mer profiles, or for
    drug-target pairs the fingerprint beside the protein's composition."""

    key, method, learner = "rf", "random forest (200 trees)", staticmethod(forest_baseline)


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
