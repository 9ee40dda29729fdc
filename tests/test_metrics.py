import numpy as np
import pytest

from sklearn.metrics import roc_auc_score

from mstl_utils.report import metrics
from mstl_utils.report.metrics import auc_rows, bootstrap_auc_ci


def test_binary_metrics_known_answer():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.3, 0.1, 0.05])
    m = metrics.binary_metrics(y, p)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (3, 1, 1, 3)
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["sensitivity"] == pytest.approx(0.75)
    assert m["specificity"] == pytest.approx(0.75)
    assert m["f1"] == pytest.approx(0.75)
    # AUC is the share of (positive, negative) pairs ranked correctly.
    pairs = [(a > b) + 0.5 * (a == b) for a in p[:4] for b in p[4:]]
    assert m["auc"] == pytest.approx(np.mean(pairs))
    assert m["accuracy_ci_low"] < 0.75 < m["accuracy_ci_high"]
    assert m["auc_ci_low"] <= m["auc"] <= m["auc_ci_high"]


def test_wilson_interval_matches_reference():
    # 8/10 at 95 %: reference values from the Wilson formula (0.4902, 0.9433).
    low, high = metrics.wilson_ci(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4)
    assert high == pytest.approx(0.9433, abs=1e-4)


def test_single_class_gives_nan_auc():
    m = metrics.binary_metrics(np.ones(4), np.array([0.9, 0.1, 0.8, 0.7]))
    assert np.isnan(m["auc"]) and m["sensitivity"] == pytest.approx(0.75)


def test_auc_rows_matches_sklearn_per_row_with_ties():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, (5, 30))
    s = np.round(rng.random((5, 30)), 1)  # ties on purpose
    expected = [roc_auc_score(y[i], s[i]) for i in range(5)]
    assert auc_rows(y, s) == pytest.approx(expected)


def test_bootstrap_auc_ci_equals_a_resample_by_resample_reference():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 25)
    score = np.round(rng.random(25) + 0.4 * y, 1)
    draws = np.random.default_rng(0)
    values = []
    for _ in range(300):
        idx = draws.integers(0, 25, 25)
        if len(np.unique(y[idx])) == 2:
            values.append(roc_auc_score(y[idx], score[idx]))
    assert bootstrap_auc_ci(y, score, n_boot=300, seed=0) == pytest.approx(tuple(np.percentile(values, [2.5, 97.5])))
