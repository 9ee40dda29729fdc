"""Classification metrics with confidence intervals. Never imports training code."""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn import metrics as skm


def wilson_ci(successes: int, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion (better than the normal interval for small n)."""
    if n == 0:
        return float("nan"), float("nan")
    z = stats.norm.ppf(0.5 + level / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


def auc_rows(y_true: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Rank (Mann-Whitney) ROC AUC of each row of 2-d label and score arrays, ties as
    midranks (equal to sklearn's ``roc_auc_score``); nan where a row holds one class."""
    ranks = stats.rankdata(score, axis=1)
    m = y_true.sum(axis=1)
    n = y_true.shape[1] - m
    with np.errstate(divide="ignore", invalid="ignore"):
        return ((ranks * y_true).sum(axis=1) - m * (m + 1) / 2) / (m * n)


def bootstrap_auc_ci(
    y_true: np.ndarray, score: np.ndarray, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the ROC AUC (resamples holding one class are dropped)."""
    rng = np.random.default_rng(seed)
    y_true, score = np.asarray(y_true).astype(int), np.asarray(score, dtype=float)
    # All resamples at once (the same draws as one per loop); ranks instead of sklearn calls: 2000x faster.
    idx = rng.integers(0, len(y_true), (n_boot, len(y_true)))
    values = auc_rows(y_true[idx], score[idx])
    values = values[np.isfinite(values)]
    if not values.size:
        return float("nan"), float("nan")
    low, high = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def binary_metrics(y_true: np.ndarray, prob_positive: np.ndarray, *, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy (with Wilson 95 % CI), AUC (bootstrap 95 % CI), sensitivity, specificity,
    F1 and balanced accuracy of a binary classifier, label 1 being positive."""
    y_true = np.asarray(y_true).astype(int)
    prob_positive = np.asarray(prob_positive, dtype=float)
    pred = (prob_positive >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y_true, pred, labels=[0, 1]).ravel()
    n = len(y_true)
    both = len(np.unique(y_true)) == 2
    acc_low, acc_high = wilson_ci(int(tp + tn), n)
    auc_low, auc_high = bootstrap_auc_ci(y_true, prob_positive) if both else (float("nan"),) * 2
    return {
        "n": int(n),
        "accuracy": float((tp + tn) / n) if n else float("nan"),
        "accuracy_ci_low": acc_low,
        "accuracy_ci_high": acc_high,
        "auc": float(skm.roc_auc_score(y_true, prob_positive)) if both else float("nan"),
        "auc_ci_low": auc_low,
        "auc_ci_high": auc_high,
        "sensitivity": float(tp / (tp + fn)) if tp + fn else float("nan"),
        "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
        "f1": float(skm.f1_score(y_true, pred, zero_division=0)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y_true, pred)) if both else float("nan"),
        "tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn),
    }


def multiclass_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: tuple[str, ...]) -> dict[str, float]:
    """Accuracy (Wilson 95 % CI), macro one-vs-rest AUC, balanced accuracy and each class's
    recall (``recall_<class>``) of a classifier with ``probs`` of shape [N, C]."""
    y_true = np.asarray(y_true).astype(int)
    probs = np.asarray(probs, dtype=float)
    pred = probs.argmax(1)
    n = len(y_true)
    correct = int((pred == y_true).sum())
    acc_low, acc_high = wilson_ci(correct, n)
    every_class = len(np.unique(y_true)) == probs.shape[1]
    recall = skm.recall_score(y_true, pred, labels=list(range(len(class_names))), average=None, zero_division=0)
    return {
        "n": int(n),
        "accuracy": correct / n if n else float("nan"),
        "accuracy_ci_low": acc_low,
        "accuracy_ci_high": acc_high,
        # One-vs-rest macro AUC needs every class among the labels.
        "auc_macro": float(skm.roc_auc_score(y_true, probs, multi_class="ovr", average="macro"))
        if every_class else float("nan"),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y_true, pred)),
        **{f"recall_{name}": float(r) for name, r in zip(class_names, recall)},
    }
