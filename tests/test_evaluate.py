"""Metrics against their definitions; the fingerprint k-NN baseline."""

from __future__ import annotations

import numpy as np
import pytest

from tagllm.evaluation.baselines import (
    forest_baseline,
    knn_baseline,
    mean_baseline,
    morgan_fingerprints,
)
from tagllm.evaluation.metrics import classification_metrics, paired_bootstrap, regression_metrics


def test_regression_metrics_definitions():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([1.5, 2.0, 2.0, 5.0])
    m = regression_metrics(y, p)
    assert m["mse"] == pytest.approx((0.25 + 0 + 1 + 1) / 4)
    assert m["mae"] == pytest.approx((0.5 + 0 + 1 + 1) / 4)
    assert m["pearson"] == pytest.approx(np.corrcoef(y, p)[0, 1])
    assert m["spearman"] == pytest.approx(0.9486832980505138)


def test_constant_prediction_has_undefined_correlation():
    m = regression_metrics(np.array([1.0, 2.0]), np.array([1.5, 1.5]))
    assert np.isnan(m["pearson"]) and m["mse"] == pytest.approx(0.25)


def test_knn_uses_nearest_molecules():
    train = ["CCO", "CCCO", "c1ccccc1", "c1ccccc1C", "CCN"]
    y = np.array([0.0, 0.0, 1.0, 1.0, 0.0])
    pred = knn_baseline(train, y, ["c1ccccc1CC", "CCCCO"], k=2)
    assert pred[0] > 0.9 and pred[1] < 0.1
    assert morgan_fingerprints(["CCO"]).shape == (1, 2048)
    np.testing.assert_array_equal(mean_baseline(y, 3), [0.4] * 3)


def test_random_forest_learns_from_fingerprints_and_proteins():
    """Aromatic rings (label 1) against chains (label 0): the forest on Morgan fingerprints
    separates unseen molecules, as values and as class probabilities; on 3-mer profiles it
    tells two protein families apart; multi-output regression keeps the outputs."""
    subs = ["", "C", "O", "N", "Cl", "F", "Br", "OC", "CO", "C(=O)O", "CN", "S"]
    train = [f"c1ccccc1{s}" for s in subs] + [f"CCCCC{s}" for s in subs]
    y = np.array([1.0] * len(subs) + [0.0] * len(subs))
    test = ["Cc1ccccc1O", "CCCCCCCCl"]
    pred = forest_baseline(train, y, test)
    assert pred[0] > 0.8 and pred[1] < 0.2
    prob = forest_baseline(train, y, test, classes=2)
    assert prob.shape == (2, 2) and prob[0, 1] > 0.8 and prob[1, 0] > 0.8
    two = forest_baseline(train, np.stack([y, 1 - y], 1), test)
    assert two.shape == (2, 2) and two[0, 0] > 0.8 and two[1, 1] > 0.8
    seqs = ["MKKLLAAAKK", "MKKLLAAKKA", "MKKLAAAKKL", "WWYYFFWWYY", "WYYFFWWYYF", "YYFFWWYYFW"]
    p = forest_baseline(seqs, np.array([0.0, 0, 0, 1, 1, 1]), ["MKKLLAKAKK", "WWYFFWYYFW"],
                        column="sequence")
    assert p[0] < 0.3 and p[1] > 0.7


def test_paired_bootstrap_matches_scipy_on_a_mean_difference():
    """The MSE difference is the mean of per-row differences of squared errors, so its
    paired bootstrap interval must agree with scipy.stats.bootstrap's percentile interval
    of that mean (up to Monte-Carlo error) and with the normal approximation."""
    from scipy.stats import bootstrap

    rng = np.random.default_rng(1)
    y = rng.normal(size=600)
    a = y + rng.normal(scale=0.5, size=600)  # the better predictor
    b = y + rng.normal(scale=0.6, size=600)
    ours = paired_bootstrap(y, a, b, regression_metrics, n_resamples=2000)["mse"]
    d = (y - a) ** 2 - (y - b) ** 2
    ref = bootstrap((d,), np.mean, n_resamples=2000, method="percentile",
                    confidence_level=0.95, random_state=2).confidence_interval
    width = ref.high - ref.low
    assert abs(ours[0] - ref.low) < 0.1 * width and abs(ours[1] - ref.high) < 0.1 * width
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    assert ours[0] == pytest.approx(d.mean() - half, abs=0.1 * width)
    assert ours[1] < 0  # a is better: the whole interval says so


def test_paired_bootstrap_signs_and_undefined_metrics():
    y = np.array([0.1, 0.4, 0.35, 0.8, 0.6, 0.9, 0.2, 0.5])
    same = paired_bootstrap(y, y + 0.1, y + 0.1, regression_metrics, n_resamples=200)
    assert same["mse"] == [0.0, 0.0] and same["mae"] == [0.0, 0.0]
    vs_mean = paired_bootstrap(y, y, np.full_like(y, y.mean()), regression_metrics,
                               n_resamples=200)
    assert vs_mean["mse"][1] < 0 and vs_mean["pearson"] is None  # undefined for a constant
    labels = np.tile([0, 1, 0, 1, 1, 0, 1, 0], 5)  # 40 rows: both classes in each resample
    good = np.stack([1 - labels * 0.8 - 0.1, labels * 0.8 + 0.1], 1)
    flat = np.full((40, 2), 0.5)
    ci = paired_bootstrap(labels, good, flat, classification_metrics, n_resamples=200)
    assert ci["auroc"][0] > 0 and set(ci) == {"accuracy", "auroc"}
