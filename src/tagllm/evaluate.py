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
    """Metrics of predictions ``p`` against targets ``y``: (N,) or (N, 1) for one output;
    (N, k) for k outputs gives each metric averaged over the outputs."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    if y.size != p.size:
        raise ValueError(f"{y.size} targets but {p.size} predictions")
    y = y.reshape(len(y), -1) if y.ndim > 1 else y[:, None]
    p = p.reshape(y.shape)
    per = [{n: METRICS[n](y[:, j], p[:, j]) for n in names} for j in range(y.shape[1])]
    return {n: _mean_defined([m[n] for m in per]) for n in names}


def _mean_defined(values: list[float]) -> float:
    """The mean of the defined (non-NaN) values; NaN when none is (e.g. the Pearson
    correlation of a constant prediction)."""
    ok = [v for v in values if v == v]
    return float(np.mean(ok)) if ok else float("nan")


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


def kmer_profiles(seqs: Sequence[str], k: int = 3) -> np.ndarray:
    """(N, 20**k) k-mer frequency vectors of protein sequences (standard residues only)."""
    alphabet = "ACDEFGHIKLMNPQRSTVWY"
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


#: The input column a k-NN baseline can use, with its features and distance.
KNN_INPUTS: dict[str, tuple[Callable[[Sequence[str]], np.ndarray], str]] = {
    "smiles": (morgan_fingerprints, "jaccard"),  # Tanimoto on Morgan fingerprints
    "sequence": (kmer_profiles, "cosine"),  # cosine on 3-mer profiles
}


def knn_baseline(train_x: Sequence[str], train_y: np.ndarray, test_x: Sequence[str],
                 k: int = 5, column: str = "smiles", classes: int = 0) -> np.ndarray:
    """k-nearest-neighbour baseline, distance-weighted (scikit-learn): Morgan fingerprints
    with Tanimoto distance for SMILES, 3-mer profiles with cosine distance for proteins.
    Regression predicts values; with ``classes`` it predicts class probabilities."""
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

    features, distance = KNN_INPUTS[column]
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
    return regression_metrics(y, out)  # several outputs: each metric averaged over them


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


# ----------------------------------------------------------------- translation
def translation_metrics(hypotheses: Sequence[str], references: Sequence[str],
                        spm_model: str | None = None) -> dict[str, float]:
    """Corpus BLEU (sacrebleu, 13a tokenisation) and chrF; with ``spm_model`` (a local
    SentencePiece model file, e.g. FLORES-200's) also spBLEU: BLEU on SentencePiece pieces.
    sacrebleu's own ``flores200`` tokenizer downloads that model at run time, so tagllm
    tokenises with the given file and scores with ``tokenize="none"``."""
    import sacrebleu

    hyps, refs = list(hypotheses), [list(references)]
    if len(hyps) != len(refs[0]):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs[0])} references")
    out = {"bleu": float(sacrebleu.corpus_bleu(hyps, refs, tokenize="13a").score),
           "chrf": float(sacrebleu.corpus_chrf(hyps, refs).score)}
    if spm_model:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(spm_model))

        def pieces(texts: Sequence[str]) -> list[str]:
            return [" ".join(sp.encode(t, out_type=str)) for t in texts]

        out["spbleu"] = float(sacrebleu.corpus_bleu(pieces(hyps), [pieces(refs[0])],
                                                    tokenize="none").score)
    return out


def first_line(text: str) -> str:
    """A generated translation up to its first line break (the training inputs end there)."""
    return text.strip().split("\n", 1)[0].strip()
