"""Metrics (numpy, scipy, scikit-learn, sacrebleu): a registry of named per-output metrics
and the metric sets of each kind of evaluation (regression, classification, translation)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from tagllm.errors import DataError

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


@metric("ci")
def concordance_index(y: np.ndarray, p: np.ndarray) -> float:
    """Harrell's concordance index, the binding-affinity field's metric (DeepDTA): over the
    pairs of rows whose targets differ, the fraction the predictions order the same way, a
    tie in the predictions counting one half. Exact, in O(n log n): with S = the Kendall
    numerator (concordant minus discordant pairs) and N the pairs untied in ``y``,
    CI = (S + N) / 2N; S comes from scipy's tau-b and the tie counts."""
    from scipy.stats import kendalltau

    y, p = np.ravel(y), np.ravel(p)

    def tied_pairs(v: np.ndarray) -> float:
        counts = np.unique(v, return_counts=True)[1].astype(np.float64)
        return float((counts * (counts - 1) / 2).sum())

    n0 = len(y) * (len(y) - 1) / 2
    untied_y, untied_p = n0 - tied_pairs(y), n0 - tied_pairs(p)
    if untied_y == 0:
        return float("nan")  # no pair to order
    s = 0.0 if untied_p == 0 else \
        float(kendalltau(y, p, variant="b").statistic) * np.sqrt(untied_y * untied_p)
    return float((s + untied_y) / (2 * untied_y))


REGRESSION_METRICS = ("mse", "mae", "pearson", "spearman", "ci")


def regression_metrics(y: np.ndarray, p: np.ndarray,
                       names: Sequence[str] = REGRESSION_METRICS) -> dict[str, float]:
    """Metrics of predictions ``p`` against targets ``y``: (N,) or (N, 1) for one output;
    (N, k) for k outputs gives each metric averaged over the outputs."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    if y.size != p.size:
        raise DataError(f"{y.size} targets but {p.size} predictions")
    y = y.reshape(len(y), -1) if y.ndim > 1 else y[:, None]
    p = p.reshape(y.shape)
    per = [{n: METRICS[n](y[:, j], p[:, j]) for n in names} for j in range(y.shape[1])]
    return {n: _mean_defined([m[n] for m in per]) for n in names}


def _mean_defined(values: list[float]) -> float:
    """The mean of the defined (non-NaN) values; NaN when none is (e.g. the Pearson
    correlation of a constant prediction)."""
    ok = [v for v in values if v == v]
    return float(np.mean(ok)) if ok else float("nan")


def classification_metrics(y: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """Accuracy, and AUROC (one-vs-rest for more than two classes), from class probabilities."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y).astype(int).ravel()
    prob = np.asarray(prob, dtype=np.float64)
    acc = float((prob.argmax(1) == y).mean())
    if len(np.unique(y)) < 2:  # AUROC is undefined with a single class present
        return {"accuracy": acc, "auroc": float("nan")}
    try:
        auc = (roc_auc_score(y, prob[:, 1]) if prob.shape[1] == 2
               else roc_auc_score(y, prob, multi_class="ovr", labels=list(range(prob.shape[1]))))
    except ValueError:  # some class of the labels list missing from y (one-vs-rest)
        auc = float("nan")
    return {"accuracy": acc, "auroc": float(auc)}


def paired_bootstrap(y: np.ndarray, a: np.ndarray, b: np.ndarray,
                     score: Callable[[np.ndarray, np.ndarray], dict[str, float]],
                     n_resamples: int = 1000, level: float = 0.95, seed: int = 0
                     ) -> dict[str, list[float] | None]:
    """Per metric of ``score``, the percentile bootstrap interval (``level``) of
    ``score(y, a) - score(y, b)``: rows are resampled with replacement, the same rows for
    both predictions (paired), ``n_resamples`` times from ``seed``. A metric undefined on
    some resample (the Pearson correlation of a constant prediction) has no interval
    (None)."""
    y, a, b = np.asarray(y), np.asarray(a), np.asarray(b)
    if not len(y) == len(a) == len(b):
        raise DataError(f"{len(y)} targets, {len(a)} and {len(b)} predictions")
    names = list(score(y, a))
    rng = np.random.default_rng(seed)
    diffs = np.empty((n_resamples, len(names)))
    for r in range(n_resamples):
        i = rng.integers(0, len(y), len(y))
        sa, sb = score(y[i], a[i]), score(y[i], b[i])
        diffs[r] = [sa[n] - sb[n] for n in names]
    tail = 100 * (1 - level) / 2
    out: dict[str, list[float] | None] = {}
    for j, n in enumerate(names):
        d = diffs[:, j]
        out[n] = None if np.isnan(d).any() else \
            [float(np.percentile(d, tail)), float(np.percentile(d, 100 - tail))]
    return out


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
        raise DataError(f"{len(hyps)} hypotheses but {len(refs[0])} references")
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


def translation_bootstrap(references: Sequence[str], a: Sequence[str], b: Sequence[str],
                          n_resamples: int = 1000, level: float = 0.95, seed: int = 0
                          ) -> dict[str, list[float]]:
    """Per metric (BLEU, chrF), the percentile bootstrap interval (``level``) of corpus
    score(``a``) minus corpus score(``b``) against ``references``, sentences resampled with
    replacement, the same ones for both (paired). As in sacrebleu's paired bootstrap, each
    resample's corpus score comes from per-sentence sufficient statistics, so 1,000
    resamples cost about as much as scoring the corpus once."""
    from sacrebleu.metrics import BLEU, CHRF

    refs = [list(references)]
    if not len(refs[0]) == len(a) == len(b):
        raise DataError(f"{len(refs[0])} references, {len(a)} and {len(b)} hypotheses")
    idx = np.random.default_rng(seed).integers(0, len(refs[0]), (n_resamples, len(refs[0])))
    tail = 100 * (1 - level) / 2
    out = {}
    for name, metric in (("bleu", BLEU(tokenize="13a")), ("chrf", CHRF())):
        sa, sb = (np.asarray(metric._extract_corpus_statistics(list(h), refs), dtype=np.float64)
                  for h in (a, b))
        d = np.array([metric._compute_score_from_stats(list(x.sum(0))).score
                      - metric._compute_score_from_stats(list(y.sum(0))).score
                      for x, y in zip(sa[idx], sb[idx], strict=True)])
        out[name] = [float(np.percentile(d, tail)), float(np.percentile(d, 100 - tail))]
    return out


def first_line(text: str) -> str:
    """A generated translation up to its first line break (the training inputs end there)."""
    return text.strip().split("\n", 1)[0].strip()
