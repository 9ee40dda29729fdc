"""Paired significance tests for comparing arms on identical cross-validation folds.

Every arm is evaluated on the same (repeat, fold) splits and the same test
images, so comparisons are paired. Fold results of repeated k-fold CV overlap in
their training sets, which makes the naive paired t-test far too liberal; hence
the Nadeau & Bengio correction. Bottom layer: never imports torch or training code.
"""

from __future__ import annotations

from itertools import combinations
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests

from .metrics import auc_rows

NAN = float("nan")


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")


def _finite_1d(values: Iterable[float], name: str) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains nan or inf")
    return x


def mean_ci(values: Iterable[float], *, level: float = 0.95) -> dict[str, float]:
    """Mean with a t-distribution interval: the honest interval for few fold results.

    One value gives nan sd and interval; zero spread gives a zero-width interval.
    """
    _check_level(level)
    x = _finite_1d(values, "values")
    if x.size == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = float(x.mean())
    if x.size < 2:
        return {"mean": mean, "sd": NAN, "ci_low": NAN, "ci_high": NAN, "n": 1}
    sd = 0.0 if np.ptp(x) == 0 else float(x.std(ddof=1))  # exact zero for constant input
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * sd / np.sqrt(x.size))
    return {"mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half, "n": int(x.size)}


def corrected_resampled_ttest(
    diffs: Iterable[float], *, n_train: int, n_test: int, level: float = 0.95
) -> dict[str, float]:
    """Nadeau & Bengio (2003) corrected repeated k-fold t-test on paired fold differences.

    Variance of the mean is inflated from s^2/J to (1/J + n_test/n_train) s^2 because
    the J fold results share training data; df = J - 1. Zero spread leaves the test
    undefined: statistic and p-value are nan and the interval collapses on the mean.
    """
    _check_level(level)
    if n_train <= 0 or n_test < 0:
        raise ValueError(f"need n_train > 0 and n_test >= 0, got n_train={n_train}, n_test={n_test}")
    d = _finite_1d(diffs, "diffs")
    if d.size < 2:
        raise ValueError(f"the corrected t-test needs at least 2 fold differences, got {d.size}")
    j = d.size
    mean = float(d.mean())
    var = 0.0 if np.ptp(d) == 0 else float(d.var(ddof=1))  # constant input: exactly 0, not 1e-17
    se = float(np.sqrt((1 / j + n_test / n_train) * var))
    half = float(stats.t.ppf(0.5 + level / 2, j - 1) * se)
    if se == 0:
        statistic = p_value = NAN
    else:
        statistic = mean / se
        p_value = float(2 * stats.t.sf(abs(statistic), j - 1))
    return {"statistic": statistic, "p_value": p_value, "mean_diff": mean, "se": se,
            "ci_low": mean - half, "ci_high": mean + half, "df": j - 1}


def minimum_detectable_difference(sd: float, *, n_folds: int, n_train: int, n_test: int, alpha: float = 0.05,
                                  power: float = 0.8) -> float:
    """The smallest true mean difference the corrected repeated k-fold t-test (``corrected_resampled_ttest``)
    finds at two-sided level ``alpha`` with probability ``power``, for fold differences of standard deviation
    ``sd``: (t[1 - alpha/2, J-1] + t[power, J-1]) * sqrt((1/J + n_test/n_train) * sd^2), J = ``n_folds``.

    The term n_test/n_train does not shrink with more folds: more repeats of the same k-fold narrow the
    interval only down to that floor."""
    if n_folds < 2 or n_train <= 0 or not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"need n_folds >= 2, n_train > 0, 0 < alpha, power < 1; got {n_folds}, {n_train}, {alpha}, {power}")
    se = float(np.sqrt((1 / n_folds + n_test / n_train) * sd**2))
    return float((stats.t.ppf(1 - alpha / 2, n_folds - 1) + stats.t.ppf(power, n_folds - 1)) * se)


def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict[str, float]:
    """Exact McNemar test on paired per-image correctness (binomial on the discordant pairs).

    b = images only A gets right, c = images only B gets right. With no discordant
    pair there is no evidence either way: p = 1. Note that b + c < 6 can never reach p < 0.05.
    """
    a = np.asarray(correct_a)
    b_arr = np.asarray(correct_b)
    if a.shape != b_arr.shape or a.ndim != 1:
        raise ValueError(f"correct_a and correct_b must be 1-d and of equal length, got {a.shape} and {b_arr.shape}")
    if not (np.isin(a, [0, 1]).all() and np.isin(b_arr, [0, 1]).all()):
        raise ValueError("correct_a and correct_b must be boolean (or 0/1)")
    a, b_arr = a.astype(bool), b_arr.astype(bool)
    b = int(np.sum(a & ~b_arr))
    c = int(np.sum(~a & b_arr))
    p_value = 1.0 if b + c == 0 else float(mcnemar([[0, b], [c, 0]], exact=True).pvalue)
    return {"b": b, "c": c, "n_discordant": b + c, "p_value": min(p_value, 1.0)}


def paired_accuracy_difference(correct_a: Sequence[bool], correct_b: Sequence[bool], *, level: float = 0.95,
                               n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Accuracy of A minus accuracy of B on the same images: the difference, its paired bootstrap
    interval (images resampled together), and the exact McNemar test (``mcnemar_exact``)."""
    _check_level(level)
    test = mcnemar_exact(correct_a, correct_b)  # checks shapes and values
    diff = np.asarray(correct_a, dtype=float) - np.asarray(correct_b, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(diff), (n_boot, len(diff)))
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(diff[idx].mean(1), [tail, 100 - tail])
    return {"diff": float(diff.mean()), "ci_low": float(low), "ci_high": float(high), "only_a_right": test["b"],
            "only_b_right": test["c"], "p_value": test["p_value"], "n": len(diff)}


def _binary_inputs(y_true, score_a, score_b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = np.asarray(y_true).ravel()
    sa, sb = _finite_1d(score_a, "score_a"), _finite_1d(score_b, "score_b")
    if not (y.size == sa.size == sb.size):
        raise ValueError(f"y_true, score_a, score_b differ in length: {y.size}, {sa.size}, {sb.size}")
    if not np.isin(y, [0, 1]).all():
        raise ValueError("y_true must hold 0/1 labels, 1 being positive")
    y = y.astype(int)
    if y.min(initial=1) == y.max(initial=0) or y.size == 0:
        raise ValueError("y_true needs both classes to define an AUC")
    return y, sa, sb


def delong_test(y_true: Sequence[int], score_a: Sequence[float], score_b: Sequence[float],
                *, level: float = 0.95) -> dict[str, float]:
    """DeLong et al. (1988) test of two correlated ROC AUCs on the same images.

    Fast midrank form of Sun & Xu (2014). diff = auc_a - auc_b. Identical scores
    (zero variance, zero difference) give z = 0 and p = 1; zero variance with a
    nonzero difference (tiny degenerate samples) gives nan se, z, p and interval.
    """
    _check_level(level)
    y, sa, sb = _binary_inputs(y_true, score_a, score_b)
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    aucs, v10, v01 = [], [], []
    for s in (sa, sb):
        tz = stats.rankdata(s)
        tx, ty = stats.rankdata(s[pos]), stats.rankdata(s[neg])
        aucs.append(float((tz[pos].sum() - m * (m + 1) / 2) / (m * n)))
        v10.append((tz[pos] - tx) / n)        # per positive: share of negatives ranked below
        v01.append(1 - (tz[neg] - ty) / m)    # per negative: share of positives ranked above
    s10 = np.cov(np.vstack(v10)) if m > 1 else np.zeros((2, 2))
    s01 = np.cov(np.vstack(v01)) if n > 1 else np.zeros((2, 2))
    cov = s10 / m + s01 / n
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = float(np.sqrt(max(var, 0.0)))
    diff = aucs[0] - aucs[1]
    if se > 1e-12:
        z = diff / se
        p_value = float(2 * stats.norm.sf(abs(z)))
    elif abs(diff) < 1e-12:
        z, p_value, se = 0.0, 1.0, 0.0
    else:
        z = p_value = se = NAN
    half = float(stats.norm.ppf(0.5 + level / 2) * se)
    return {"auc_a": aucs[0], "auc_b": aucs[1], "diff": diff, "se": se, "z": z, "p_value": p_value,
            "ci_low": diff - half, "ci_high": diff + half}


def paired_bootstrap_auc(
    y_true: Sequence[int], score_a: Sequence[float], score_b: Sequence[float],
    *, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
) -> dict[str, float]:
    """Paired percentile bootstrap of auc_a - auc_b (same resampled images for both arms).

    Resamples holding a single class are dropped. p-value: twice the smaller share of
    bootstrap differences on either side of zero (capped at 1).
    """
    _check_level(level)
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot}")
    y, sa, sb = _binary_inputs(y_true, score_a, score_b)
    idx = np.random.default_rng(seed).integers(0, y.size, (n_boot, y.size))
    yb = y[idx]
    boot = auc_rows(yb, sa[idx]) - auc_rows(yb, sb[idx])
    boot = boot[np.isfinite(boot)]
    diff = float(auc_rows(y[None], sa[None])[0] - auc_rows(y[None], sb[None])[0])
    if boot.size == 0:
        return {"diff": diff, "se": NAN, "ci_low": NAN, "ci_high": NAN, "p_value": NAN, "n_boot": 0}
    low, high = np.percentile(boot, [50 * (1 - level), 50 * (1 + level)])
    p_value = min(1.0, 2 * min(np.mean(boot <= 0), np.mean(boot >= 0)))
    return {"diff": diff, "se": float(boot.std(ddof=1)) if boot.size > 1 else NAN,
            "ci_low": float(low), "ci_high": float(high), "p_value": float(p_value), "n_boot": int(boot.size)}


def adjust_pvalues(pvalues: Iterable[float], *, method: str = "holm") -> np.ndarray:
    """Family-wise (default Holm) adjustment; nan p-values stay nan and are not counted."""
    p = np.asarray(list(pvalues), dtype=float)
    out = np.full(p.shape, NAN)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method=method)[1]
    return out


COMPARE_COLUMNS = ["arm_a", "arm_b", "metric", "n", "mean_diff", "ci_low", "ci_high", "test", "statistic",
                   "p_value", "p_adjusted"]


def compare_arms(
    folds: pd.DataFrame, *, metric: str = "accuracy", n_train: int, n_test: int,
    baseline_pairs: Sequence[tuple[str, str]] | None = None, level: float = 0.95,
) -> pd.DataFrame:
    """Corrected paired t-test (arm_a - arm_b) for each pair of arms, Holm-adjusted over the pairs.

    ``folds`` has one row per (arm, repeat, fold). Every arm must have every
    (repeat, fold) seen in the table, since an unpaired fold would bias the comparison.
    Without ``baseline_pairs`` all pairs are compared, arms in order of appearance.
    """
    missing_cols = {"arm", "repeat", "fold", metric} - set(folds.columns)
    if missing_cols:
        raise ValueError(f"folds lacks column(s) {sorted(missing_cols)}")
    dup = folds.duplicated(["arm", "repeat", "fold"])
    if dup.any():
        first = folds.loc[dup, ["arm", "repeat", "fold"]].iloc[0]
        raise ValueError(f"duplicate row for (arm, repeat, fold) = {tuple(first)}")
    arms = list(pd.unique(folds["arm"]))
    table = folds.pivot(index=["repeat", "fold"], columns="arm", values=metric).sort_index()
    keys = set(zip(folds["repeat"], folds["fold"]))
    for arm in arms:
        have = set(zip(*(folds.loc[folds["arm"] == arm, c] for c in ("repeat", "fold"))))
        lacking = sorted(keys - have)
        if lacking:
            raise ValueError(f"arm {arm!r} lacks {len(lacking)} fold(s), first (arm, repeat, fold) = "
                             f"{(arm, *lacking[0])}; comparisons must be paired")
    if table.isna().any().any():
        arm = table.columns[table.isna().any()][0]
        raise ValueError(f"{metric} is nan for (arm, repeat, fold) = {(arm, *table.index[table[arm].isna()].tolist()[0])}")
    pairs = list(combinations(arms, 2)) if baseline_pairs is None else [tuple(p) for p in baseline_pairs]
    for pair in pairs:
        unknown = [a for a in pair if a not in arms]
        if unknown or len(pair) != 2:
            raise ValueError(f"baseline pair {pair} names unknown arm(s) {unknown}; known: {arms}")
    if not pairs:
        raise ValueError(f"need at least two arms to compare, got {arms}")
    rows = []
    for a, b in pairs:
        res = corrected_resampled_ttest(table[a] - table[b], n_train=n_train, n_test=n_test, level=level)
        rows.append({"arm_a": a, "arm_b": b, "metric": metric, "n": len(table), "mean_diff": res["mean_diff"],
                     "ci_low": res["ci_low"], "ci_high": res["ci_high"], "test": "nadeau_bengio",
                     "statistic": res["statistic"], "p_value": res["p_value"]})
    out = pd.DataFrame(rows, columns=COMPARE_COLUMNS[:-1])
    out["p_adjusted"] = adjust_pvalues(out["p_value"], method="holm")
    return out
