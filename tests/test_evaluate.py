"""Metrics against their definitions; the fingerprint k-NN baseline."""

from __future__ import annotations

import numpy as np
import pytest

from tagllm.evaluation.baselines import knn_baseline, mean_baseline, morgan_fingerprints
from tagllm.evaluation.metrics import regression_metrics


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
