import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from mstl_utils.report import statistics as st


# --- mean_ci -----------------------------------------------------------------

def test_mean_ci_known_answer():
    # mean 3, sd sqrt(2.5); t(0.975, df=4) = 2.776445 -> half width 2.776445 * 1.581139 / sqrt(5) = 1.963243
    r = st.mean_ci([1, 2, 3, 4, 5])
    assert r["n"] == 5 and r["mean"] == pytest.approx(3.0)
    assert r["sd"] == pytest.approx(np.sqrt(2.5))
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((3 - 1.963243, 3 + 1.963243), abs=1e-5)
    ref = stats.t.interval(0.9, 4, loc=3, scale=stats.sem([1, 2, 3, 4, 5]))
    assert (st.mean_ci([1, 2, 3, 4, 5], level=0.9)["ci_low"], st.mean_ci([1, 2, 3, 4, 5], level=0.9)["ci_high"]) \
        == pytest.approx(ref)


def test_mean_ci_edge_cases():
    one = st.mean_ci([0.8])
    assert one["mean"] == 0.8 and one["n"] == 1 and np.isnan(one["sd"]) and np.isnan(one["ci_low"])
    flat = st.mean_ci([0.7, 0.7, 0.7])  # 0.7 is not exact in binary: naive std gives 1e-16
    assert flat["sd"] == 0 and flat["ci_low"] == flat["ci_high"] == pytest.approx(0.7)
    with pytest.raises(ValueError, match="at least one"):
        st.mean_ci([])
    with pytest.raises(ValueError, match="nan"):
        st.mean_ci([0.5, np.nan])
    with pytest.raises(ValueError, match="level"):
        st.mean_ci([1, 2], level=95)


# --- Nadeau & Bengio ----------------------------------------------------------

def test_corrected_ttest_hand_computation():
    d = [0.1, 0.2, 0.3, 0.0, 0.1]
    # mean 0.14; s^2 = (0.0016 + 0.0036 + 0.0256 + 0.0196 + 0.0016) / 4 = 0.013
    # corrected variance of the mean = (1/5 + 40/160) * 0.013 = 0.45 * 0.013 = 0.00585
    se = np.sqrt(0.00585)
    r = st.corrected_resampled_ttest(d, n_train=160, n_test=40)
    assert r["mean_diff"] == pytest.approx(0.14)
    assert r["se"] == pytest.approx(se)
    assert r["statistic"] == pytest.approx(0.14 / se) == pytest.approx(1.830417, abs=1e-6)
    assert r["df"] == 4
    assert r["p_value"] == pytest.approx(2 * stats.t.sf(0.14 / se, 4))
    assert r["p_value"] == pytest.approx(0.14116, abs=1e-5)
    half = 2.776445 * se
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((0.14 - half, 0.14 + half), abs=1e-6)


def test_corrected_ttest_without_overlap_is_the_ordinary_paired_ttest():
    d = np.random.default_rng(1).normal(0.02, 0.05, 50)
    r = st.corrected_resampled_ttest(d, n_train=160, n_test=0)
    ref = stats.ttest_1samp(d, 0.0)
    assert r["statistic"] == pytest.approx(ref.statistic) and r["p_value"] == pytest.approx(ref.pvalue)
    # The correction only ever widens: same data, real overlap -> larger p.
    assert st.corrected_resampled_ttest(d, n_train=160, n_test=40)["p_value"] > ref.pvalue


def test_corrected_ttest_edge_cases():
    flat = st.corrected_resampled_ttest([0.7] * 3,  # naive variance is 1e-32, not 0
                                           n_train=160, n_test=40)
    assert np.isnan(flat["statistic"]) and np.isnan(flat["p_value"])
    assert flat["se"] == 0 and flat["ci_low"] == flat["ci_high"] == pytest.approx(0.7)
    with pytest.raises(ValueError, match="at least 2"):
        st.corrected_resampled_ttest([0.1], n_train=160, n_test=40)
    with pytest.raises(ValueError, match="n_train"):
        st.corrected_resampled_ttest([0.1, 0.2], n_train=0, n_test=40)


# --- McNemar ------------------------------------------------------------------

def _paired(n: int, b: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """n images: b only A right, c only B right, the rest both right."""
    a = np.ones(n, bool)
    bb = np.ones(n, bool)
    bb[:b] = False
    a[b:b + c] = False
    return a, bb


def test_mcnemar_forty_images_needs_six_discordant_pairs():
    # b=5, c=0: two-sided exact p = 2 * 0.5**5 = 0.0625 exactly, above 0.05.
    r = st.mcnemar_exact(*_paired(40, 5, 0))
    assert (r["b"], r["c"]) == (5, 0) and r["p_value"] == 0.0625
    # With k discordant pairs the smallest attainable p is 2 * 0.5**k: below 0.05 only from k = 6.
    for k in range(1, 6):
        p = st.mcnemar_exact(*_paired(40, k, 0))["p_value"]
        assert p == pytest.approx(min(1.0, 2 * 0.5 ** k)) and p >= 0.0625
    assert st.mcnemar_exact(*_paired(40, 6, 0))["p_value"] == pytest.approx(0.03125)
    assert st.mcnemar_exact(*_paired(40, 0, 6))["p_value"] == pytest.approx(0.03125)


def test_mcnemar_mixed_and_edge_cases():
    # b=7, c=2: p = 2 * (C(9,0) + C(9,1) + C(9,2)) / 2**9 = 92 / 512
    r = st.mcnemar_exact(*_paired(40, 7, 2))
    assert r["p_value"] == pytest.approx(92 / 512)
    assert r["p_value"] == pytest.approx(stats.binomtest(2, 9, 0.5).pvalue)
    same = st.mcnemar_exact([True, False, True], [True, False, True])
    assert same == {"b": 0, "c": 0, "n_discordant": 0, "p_value": 1.0}
    with pytest.raises(ValueError, match="equal length"):
        st.mcnemar_exact([True, False], [True])
    with pytest.raises(ValueError, match="boolean"):
        st.mcnemar_exact([0.3, 1], [1, 1])


# --- AUC comparisons -------------------------------------------------------------

@pytest.fixture(scope="module")
def correlated_scores():
    rng = np.random.default_rng(42)
    y = np.repeat([0, 1], 100)
    latent = y * 1.2 + rng.normal(size=200)
    return y, latent + rng.normal(0, 0.5, 200), latent + rng.normal(0, 1.2, 200)


def test_delong_tiny_case_by_hand():
    y = [1, 1, 0, 0]
    a = [0.9, 0.4, 0.6, 0.1]  # AUC 3/4; per-positive components [1, .5], per-negative [.5, 1]
    b = [0.9, 0.8, 0.2, 0.1]  # AUC 1; all components 1, so no variance
    # var(diff) = var([1, .5]) / 2 + var([.5, 1]) / 2 = 0.125 / 2 + 0.125 / 2 = 0.125
    r = st.delong_test(y, a, b)
    assert (r["auc_a"], r["auc_b"], r["diff"]) == pytest.approx((0.75, 1.0, -0.25))
    assert r["se"] == pytest.approx(np.sqrt(0.125))
    assert r["z"] == pytest.approx(-0.25 / np.sqrt(0.125))
    assert r["p_value"] == pytest.approx(2 * stats.norm.sf(0.25 / np.sqrt(0.125))) == pytest.approx(0.4795, abs=1e-4)
    half = 1.959964 * np.sqrt(0.125)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((-0.25 - half, -0.25 + half), abs=1e-6)


def test_delong_identical_scores_and_bad_input():
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.6, 0.4, 0.9, 0.3, 0.8])
    r = st.delong_test(y, s, s)
    assert r["diff"] == 0 and r["se"] == 0 and r["z"] == 0 and r["p_value"] == 1.0
    degenerate = st.delong_test([1, 0], [0.2, 0.1], [0.1, 0.2])  # one image per class: no variance estimate
    assert degenerate["diff"] == 1 and np.isnan(degenerate["p_value"]) and np.isnan(degenerate["ci_low"])
    with pytest.raises(ValueError, match="both classes"):
        st.delong_test([1, 1, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])
    with pytest.raises(ValueError, match="length"):
        st.delong_test([0, 1], [0.1, 0.2], [0.3])


def test_delong_agrees_with_paired_bootstrap(correlated_scores):
    y, a, b = correlated_scores
    d = st.delong_test(y, a, b)
    boot = st.paired_bootstrap_auc(y, a, b, n_boot=2000, seed=0)
    assert d["auc_a"] == pytest.approx(roc_auc_score(y, a)) and d["auc_b"] == pytest.approx(roc_auc_score(y, b))
    assert boot["diff"] == pytest.approx(d["diff"])
    assert boot["se"] == pytest.approx(d["se"], rel=0.2)
    assert d["p_value"] < 0.05 and boot["p_value"] < 0.05  # a is the less noisy score
    assert d["ci_low"] > 0 and boot["ci_low"] > 0


def test_paired_bootstrap_auc_is_seeded_and_handles_identical_scores(correlated_scores):
    y, a, b = correlated_scores
    assert st.paired_bootstrap_auc(y, a, b, n_boot=200, seed=5) == st.paired_bootstrap_auc(y, a, b, n_boot=200, seed=5)
    same = st.paired_bootstrap_auc(y, a, a, n_boot=200)
    assert same["diff"] == 0 and same["ci_low"] == same["ci_high"] == 0 and same["p_value"] == 1.0
    with pytest.raises(ValueError, match="n_boot"):
        st.paired_bootstrap_auc(y, a, b, n_boot=0)


# --- multiplicity ------------------------------------------------------------------

def test_holm_by_hand_and_nan_kept():
    # sorted 0.01, 0.03, 0.04 -> 3*0.01, 2*0.03, max(1*0.04, 0.06) = 0.03, 0.06, 0.06
    assert st.adjust_pvalues([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = st.adjust_pvalues([0.01, np.nan, 0.04])
    assert np.isnan(out[1]) and out[[0, 2]] == pytest.approx([0.02, 0.04])
    assert st.adjust_pvalues([0.01, 0.04], method="bonferroni") == pytest.approx([0.02, 0.08])
    assert st.adjust_pvalues([]).size == 0


# --- compare_arms ------------------------------------------------------------------

def _folds(n_repeats: int = 2, n_folds: int = 5, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n_repeats):
        for f in range(n_folds):
            base = 0.8 + rng.normal(0, 0.03)
            for arm, shift in [("imagenet", 0.0), ("multistage", 0.03), ("scratch", -0.1)]:
                rows.append({"arm": arm, "repeat": r, "fold": f, "accuracy": base + shift + rng.normal(0, 0.02)})
    return pd.DataFrame(rows)


def test_compare_arms_pairs_by_repeat_and_fold():
    folds = _folds()
    out = st.compare_arms(folds, n_train=160, n_test=40)
    shuffled = st.compare_arms(folds.sample(frac=1, random_state=1), n_train=160, n_test=40)
    # Pairing is by (repeat, fold), not by row position: shuffling rows changes nothing but the arm order.
    assert shuffled.set_index(["arm_a", "arm_b"]).loc[("scratch", "multistage"), "mean_diff"] == pytest.approx(
        -out.set_index(["arm_a", "arm_b"]).loc[("multistage", "scratch"), "mean_diff"])
    assert list(out.columns) == st.COMPARE_COLUMNS
    assert list(zip(out["arm_a"], out["arm_b"])) == [("imagenet", "multistage"), ("imagenet", "scratch"),
                                                     ("multistage", "scratch")]
    wide = folds.pivot(index=["repeat", "fold"], columns="arm", values="accuracy")
    ref = st.corrected_resampled_ttest(wide["multistage"] - wide["scratch"], n_train=160, n_test=40)
    row = out.iloc[2]
    assert row["n"] == 10 and row["test"] == "nadeau_bengio" and row["metric"] == "accuracy"
    assert (row["mean_diff"], row["statistic"], row["p_value"], row["ci_low"]) == pytest.approx(
        (ref["mean_diff"], ref["statistic"], ref["p_value"], ref["ci_low"]))
    assert out["p_adjusted"].to_numpy() == pytest.approx(st.adjust_pvalues(out["p_value"], method="holm"))


def test_compare_arms_baseline_pairs_and_errors():
    folds = _folds()
    out = st.compare_arms(folds, n_train=160, n_test=40, baseline_pairs=[("multistage", "imagenet")])
    assert len(out) == 1 and out.loc[0, "mean_diff"] > 0
    assert out.loc[0, "p_adjusted"] == pytest.approx(out.loc[0, "p_value"])  # one test: Holm changes nothing
    lacking = folds.drop(folds.index[(folds["arm"] == "scratch") & (folds["repeat"] == 1) & (folds["fold"] == 3)])
    with pytest.raises(ValueError, match=r"\('scratch', 1, 3\)"):
        st.compare_arms(lacking, n_train=160, n_test=40)
    with pytest.raises(ValueError, match="unknown arm"):
        st.compare_arms(folds, n_train=160, n_test=40, baseline_pairs=[("imagenet", "bridge_only")])
    with pytest.raises(ValueError, match="auc"):
        st.compare_arms(folds, metric="auc", n_train=160, n_test=40)
    with pytest.raises(ValueError, match=r"nan.*\('imagenet', 0, 2\)"):
        st.compare_arms(folds.assign(accuracy=folds["accuracy"].where(folds.index != 6)), n_train=160, n_test=40)
    with pytest.raises(ValueError, match="duplicate"):
        st.compare_arms(pd.concat([folds, folds.iloc[:1]]), n_train=160, n_test=40)
    with pytest.raises(ValueError, match="two arms"):
        st.compare_arms(folds[folds["arm"] == "scratch"], n_train=160, n_test=40)


def test_module_does_not_import_torch():
    code = "import sys, mstl_utils.report.statistics; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_paired_accuracy_difference_matches_mcnemar_and_brackets_the_difference():
    a, b = _paired(200, 12, 3)
    r = st.paired_accuracy_difference(a, b)
    assert r["diff"] == pytest.approx((np.sum(a) - np.sum(b)) / 200)
    assert r["ci_low"] < r["diff"] < r["ci_high"] and r["n"] == 200
    assert r["p_value"] == st.mcnemar_exact(a, b)["p_value"] and (r["only_a_right"], r["only_b_right"]) == (12, 3)
    same = st.paired_accuracy_difference(a, a)
    assert same["diff"] == same["ci_low"] == same["ci_high"] == 0 and same["p_value"] == 1
    with pytest.raises(ValueError):
        st.paired_accuracy_difference(a, b[:-1])
