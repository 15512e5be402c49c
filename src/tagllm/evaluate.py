"""Metrics (scipy, scikit-learn) and the baselines a user compares tags against."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {}


def metric(name: str):
    def wrap(fn):
        METRICS[name] = fn
        return fn

    return wrap


@metric("mse")
def mse(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((np.asarray(y) - np.asarray(p)) ** 2))


@metric("mae")
def mae(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(y) - np.asarray(p))))


@metric("pearson")
def pearson(y: np.ndarray, p: np.ndarray) -> float:
    from scipy.stats import pearsonr

    y, p = np.ravel(y), np.ravel(p)
    if np.ptp(p) == 0 or np.ptp(y) == 0:
        return float("nan")  # undefined for a constant prediction
    return float(pearsonr(y, p).statistic)


@metric("spearman")
def spearman(y: np.ndarray, p: np.ndarray) -> float:
    from scipy.stats import spearmanr

    y, p = np.ravel(y), np.ravel(p)
    if np.ptp(p) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(y, p).statistic)


REGRESSION_METRICS = ("mse", "mae", "pearson", "spearman")


def regression_metrics(y: np.ndarray, p: np.ndarray,
                       names: Sequence[str] = REGRESSION_METRICS) -> dict[str, float]:
    """Metrics of predictions ``p`` against targets ``y`` (single output, flattened)."""
    y, p = np.ravel(np.asarray(y, dtype=np.float64)), np.ravel(np.asarray(p, dtype=np.float64))
    if y.shape != p.shape:
        raise ValueError(f"{len(y)} targets but {len(p)} predictions")
    return {n: METRICS[n](y, p) for n in names}


def morgan_fingerprints(smiles: Sequence[str], radius: int = 2, bits: int = 2048) -> np.ndarray:
    """(N, bits) boolean Morgan fingerprints (RDKit)."""
    from rdkit import Chem
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=bits)
    out = np.zeros((len(smiles), bits), dtype=bool)
    for i, s in enumerate(smiles):
        mol = Chem.MolFromSmiles(s)
        if mol is None:
            raise ValueError(f"invalid SMILES {s!r} at position {i}")
        out[i] = gen.GetFingerprintAsNumPy(mol).astype(bool)
    return out


def knn_baseline(train_smiles: Sequence[str], train_y: np.ndarray, test_smiles: Sequence[str],
                 k: int = 5) -> np.ndarray:
    """Morgan-fingerprint k-nearest-neighbour regression with Tanimoto (Jaccard) distance,
    distance-weighted (scikit-learn)."""
    from sklearn.neighbors import KNeighborsRegressor

    knn = KNeighborsRegressor(n_neighbors=k, metric="jaccard", algorithm="brute",
                              weights="distance", n_jobs=-1)
    knn.fit(morgan_fingerprints(train_smiles), np.asarray(train_y))
    return knn.predict(morgan_fingerprints(test_smiles))


def mean_baseline(train_y: np.ndarray, n: int) -> np.ndarray:
    """Predict the training mean for every test example."""
    return np.full(n, float(np.mean(train_y)))
