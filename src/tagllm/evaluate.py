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


def classification_metrics(y: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """Accuracy, and AUROC (one-vs-rest for more than two classes), from class probabilities."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y).astype(int).ravel()
    prob = np.asarray(prob, dtype=np.float64)
    acc = float((prob.argmax(1) == y).mean())
    try:
        auc = (roc_auc_score(y, prob[:, 1]) if prob.shape[1] == 2
               else roc_auc_score(y, prob, multi_class="ovr", labels=list(range(prob.shape[1]))))
    except ValueError:  # a single class present in y
        auc = float("nan")
    return {"accuracy": acc, "auroc": float(auc)}


def _on_shares(n: int, fn) -> np.ndarray:
    """``fn(indices)`` -> per-item rows, run on this process's share of ``n`` items and
    assembled from every process (each process evaluates 1/N of the rows)."""
    from tagllm.distributed import world

    w = world()
    share, real = w.share(n)
    return w.gather_rows(fn(share), share, real, n).numpy()


def head_metrics(model, texts: Sequence[str], y: np.ndarray, tag: str,
                 batch_size: int = 32, progress: bool = False) -> dict[str, float]:
    """Evaluate ``tag``'s head on labelled texts with the metrics of its kind (under a
    multi-process launch each process predicts a share of the texts)."""
    texts = list(texts)
    out = _on_shares(len(texts), lambda idx: model.predict(
        [texts[i] for i in idx], tag=tag, batch_size=batch_size, progress=progress))
    if model.head(tag).kind == "classification":
        return classification_metrics(y, out)
    if out.shape[1] == 1:
        return regression_metrics(y, out[:, 0])
    y2 = np.asarray(y, dtype=np.float64).reshape(len(out), -1)  # multi-output: average
    per = [regression_metrics(y2[:, j], out[:, j]) for j in range(out.shape[1])]
    return {k: float(np.nanmean([m[k] for m in per])) for k in per[0]}


def lm_metrics(model, texts: Sequence[str], batch_size: int = 16, max_length: int | None = None,
               progress: bool = False) -> dict[str, float]:
    """Next-token loss (mean over every predicted base token) and perplexity on ``texts``
    (under a multi-process launch each process scores a share of the texts)."""
    import torch

    from tagllm.progress import track

    texts = list(texts)

    def score(idx: list[int]) -> np.ndarray:  # per text: (loss sum, target count)
        rows = np.zeros((len(idx), 2))
        order = sorted(range(len(idx)), key=lambda j: len(texts[idx[j]]))
        with torch.inference_mode():
            for s in track(range(0, len(idx), batch_size), "validation loss", progress,
                           unit="batch"):
                js = order[s:s + batch_size]
                batch = model.encode([texts[idx[j]] for j in js], max_length=max_length)
                rows[js, 0] = model.lm_loss(batch, reduction="row").double().cpu().numpy()
                rows[js, 1] = model.lm_targets(batch).sum(1).cpu().numpy()
        return rows

    total, count = _on_shares(len(texts), score).sum(0)
    loss = total / max(count, 1)
    return {"loss": float(loss), "perplexity": float(np.exp(loss)), "tokens": int(count)}
