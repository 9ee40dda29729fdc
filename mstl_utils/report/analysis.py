"""From the protocol's result tables to the study's answer: summaries, paired tests, the verdict.

Reads the contract tables (``stage2_folds.csv``, ``stage2_oof.csv``); never imports
training code. Each comparison is ``arm_a - arm_b``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from . import statistics as st

#: The questions the arms answer, as (arm_a, arm_b) = "does arm_a beat arm_b?". The
#: first is the paper's claim and the study's primary comparison.
PAIRS: tuple[tuple[str, str], ...] = (
    ("multistage", "imagenet"),  # does the chest X-ray bridge add to ImageNet? (the paper's claim)
    ("imagenet", "scratch"),  # does ImageNet pretraining help at all?
    ("bridge_only", "scratch"),  # does the bridge help without ImageNet?
    ("multistage", "bridge_only"),  # does ImageNet add to the bridge?
    ("imagenet", "bridge_only"),  # which single source is better?
    ("multistage", "scratch"),  # the whole chain against nothing
)

#: Columns of ``stage2_tests.csv`` (the results contract).
TEST_COLUMNS = ["arm_a", "arm_b", "metric", "mean_diff", "ci_low", "ci_high", "test", "statistic", "p_value",
                "p_adjusted"]

METRICS = ("accuracy", "auc", "sensitivity", "specificity", "f1", "balanced_accuracy")


def arm_summary(folds: pd.DataFrame, *, metrics: Sequence[str] = METRICS, level: float = 0.95) -> pd.DataFrame:
    """Per arm and metric: mean, SD and t interval over the fold results, and the number of folds.

    The interval treats folds as independent and is therefore too narrow (folds share
    training images); the corrected paired tests in ``protocol_tests`` do not. A metric no fold has
    (sensitivity and specificity of a target of more than 2 classes) is left out.
    """
    rows = []
    for arm, group in folds.groupby("arm", sort=False):
        for metric in metrics:
            values = group[metric].dropna()
            if len(values):
                rows.append({"arm": arm, "metric": metric, **st.mean_ci(values, level=level)})
    return pd.DataFrame(rows)


def _pairs(arms: Sequence[str], pairs: Sequence[tuple[str, str]] | None) -> list[tuple[str, str]]:
    pairs = [p for p in (pairs or PAIRS) if p[0] in arms and p[1] in arms]
    if not pairs:
        raise ValueError(f"no pair of {list(PAIRS)} has both arms among {list(arms)}")
    return pairs


def _training_sizes(folds: pd.DataFrame) -> tuple[int, int]:
    # Nadeau-Bengio uses the ratio n_test / n_train; n_train counts the images actually
    # trained on (the validation part excluded), which makes the correction a little larger.
    return int(round(folds["n_train"].mean())), int(round(folds["n_test"].mean()))


def corrected_tests(folds: pd.DataFrame, *, metrics: Sequence[str] = ("accuracy", "auc"),
                    pairs: Sequence[tuple[str, str]] | None = None, level: float = 0.95) -> pd.DataFrame:
    """The primary test: Nadeau-Bengio corrected t-test on per-fold paired differences,
    Holm-adjusted over the pairs within each metric."""
    n_train, n_test = _training_sizes(folds)
    pairs = _pairs(list(pd.unique(folds["arm"])), pairs)
    tables = []
    for metric in metrics:
        table = st.compare_arms(folds, metric=metric, n_train=n_train, n_test=n_test, baseline_pairs=pairs, level=level)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)[TEST_COLUMNS]


def _oof_wide(oof: pd.DataFrame, repeat: int, values: str = "prob") -> pd.DataFrame:
    rows = oof[oof["repeat"] == repeat]
    wide = rows.pivot(index="image_id", columns="arm", values=values)
    labels = rows.groupby("image_id")["label"].first()
    if wide.isna().any().any():
        arm = wide.columns[wide.isna().any()][0]
        raise ValueError(f"repeat {repeat}: arm {arm!r} lacks out-of-fold probabilities for some images")
    return wide.assign(label=labels)


def pooled_tests(oof: pd.DataFrame, *, pairs: Sequence[tuple[str, str]] | None = None, threshold: float = 0.5,
                 level: float = 0.95) -> pd.DataFrame:
    """Per repeat, on the pooled out-of-fold predictions of every image: exact McNemar on
    correctness and (for a 2-class target) DeLong on AUC, Holm-adjusted over the pairs within each
    repeat and test. A target of more classes is judged correct by its arg-max class (``pred``);
    DeLong's test is for one ROC curve, so it is left out there.

    The ``test`` column names the repeat (``mcnemar_exact/repeat0``): repeats reuse the same
    images, so their p-values are not independent and are shown side by side, not combined.
    """
    pairs = _pairs(list(pd.unique(oof["arm"])), pairs)
    binary = "prob" in oof
    tables = []
    for repeat in sorted(oof["repeat"].unique()):
        wide = _oof_wide(oof, repeat, "prob" if binary else "pred")
        y = wide["label"].to_numpy()
        mcnemar_rows, delong_rows = [], []
        for a, b in pairs:
            correct_a = ((wide[a].to_numpy() >= threshold) if binary else wide[a].to_numpy()) == y
            correct_b = ((wide[b].to_numpy() >= threshold) if binary else wide[b].to_numpy()) == y
            mc = st.mcnemar_exact(correct_a, correct_b)
            mcnemar_rows.append({"arm_a": a, "arm_b": b, "metric": "accuracy",
                                 "mean_diff": float(correct_a.mean() - correct_b.mean()),
                                 "ci_low": np.nan, "ci_high": np.nan, "test": f"mcnemar_exact/repeat{repeat}",
                                 "statistic": float(mc["n_discordant"]), "p_value": mc["p_value"]})
            if not binary:
                continue
            dl = st.delong_test(y, wide[a], wide[b], level=level)
            delong_rows.append({"arm_a": a, "arm_b": b, "metric": "auc", "mean_diff": dl["diff"],
                                "ci_low": dl["ci_low"], "ci_high": dl["ci_high"], "test": f"delong/repeat{repeat}",
                                "statistic": dl["z"], "p_value": dl["p_value"]})
        for rows in (mcnemar_rows, delong_rows) if binary else (mcnemar_rows,):
            table = pd.DataFrame(rows)
            table["p_adjusted"] = st.adjust_pvalues(table["p_value"], method="holm")
            tables.append(table)
    return pd.concat(tables, ignore_index=True)[TEST_COLUMNS]


def protocol_tests(folds: pd.DataFrame, oof: pd.DataFrame, *, pairs: Sequence[tuple[str, str]] | None = None,
                   level: float = 0.95) -> pd.DataFrame:
    """``stage2_tests.csv``: the corrected t-tests (primary) followed by the pooled per-repeat tests."""
    return pd.concat([corrected_tests(folds, pairs=pairs, level=level), pooled_tests(oof, pairs=pairs, level=level)],
                     ignore_index=True)


def paired_differences(folds: pd.DataFrame, *, metric: str = "accuracy",
                       pairs: Sequence[tuple[str, str]] | None = None) -> pd.DataFrame:
    """Per fold, ``arm_a - arm_b`` of ``metric``: columns pair, repeat, fold, difference (for plots)."""
    wide = folds.pivot(index=["repeat", "fold"], columns="arm", values=metric)
    parts = [pd.DataFrame({"pair": f"{a} - {b}", "difference": wide[a] - wide[b]}).reset_index()
             for a, b in _pairs(list(wide.columns), pairs)]
    return pd.concat(parts, ignore_index=True)


def _pp(value: float) -> str:
    return f"{100 * value:+.1f}"


def verdict(tests: pd.DataFrame, *, arm_a: str = "multistage", arm_b: str = "imagenet", alpha: float = 0.05,
            paper_gain: float | None = None, headroom: float | None = None) -> str:
    """One plain sentence (two at most) answering "does ``arm_a`` beat ``arm_b``?" from the
    primary test (corrected t-test on accuracy, Holm-adjusted). Written from the numbers,
    so it changes when they do. ``headroom``: the most ``arm_a`` could gain (1 - ``arm_b``'s accuracy);
    a paper gain beyond it is said to be impossible here, not ruled out by the data."""
    primary = tests[(tests["metric"] == "accuracy") & (tests["test"] == "nadeau_bengio")]
    row = primary[(primary["arm_a"] == arm_a) & (primary["arm_b"] == arm_b)]
    flipped = primary[(primary["arm_a"] == arm_b) & (primary["arm_b"] == arm_a)]
    if len(row) == 1:
        r = row.iloc[0]
    elif len(flipped) == 1:  # the table holds b - a: negate the difference and swap the interval
        r = flipped.iloc[0].copy()
        r["mean_diff"], r["ci_low"], r["ci_high"] = -r["mean_diff"], -r["ci_high"], -r["ci_low"]
    else:
        raise ValueError(f"no corrected t-test of {arm_a} - {arm_b} on accuracy in the table")
    numbers = (f"{_pp(r['mean_diff'])} percentage points of accuracy (95 % CI {_pp(r['ci_low'])} to "
               f"{_pp(r['ci_high'])}; corrected t-test p = {r['p_value']:.3f}, Holm-adjusted {r['p_adjusted']:.3f})")
    if not np.isfinite(r["p_adjusted"]):
        sentence = f"The test is undefined: {arm_a} and {arm_b} agree on every fold ({numbers})."
    elif r["p_adjusted"] < alpha and r["mean_diff"] > 0:
        sentence = f"Yes: {arm_a} did better than {arm_b}, by {numbers}."
    elif r["p_adjusted"] < alpha:
        sentence = f"No, the opposite: {arm_a} did worse than {arm_b}, by {numbers}."
    else:
        sentence = (f"No detectable effect: {arm_a} minus {arm_b} is {numbers}, "
                    f"not significant at the {alpha:.2f} level.")
    if paper_gain is not None and np.isfinite(r["ci_high"]):
        where = {"impossible": f"is more than {arm_b}'s errors leave possible here ({_pp(headroom or 0)} points): "
                               "these data cannot test it in that form",
                 "inside": "lies inside this interval, so it cannot be ruled out",
                 "above": "lies above this interval: these data rule out a gain that large",
                 "below": "lies below this interval: the measured gain is larger"}
        sentence += f" The paper's gain of {_pp(paper_gain)} points {where[_placement(paper_gain, r, headroom)]}."
    return sentence


def _placement(effect: float, row: pd.Series, headroom: float | None = None) -> str:
    """Where ``effect`` lies against ``row``'s interval: "impossible" (beyond ``headroom``), "inside",
    "above" or "below"."""
    if headroom is not None and effect > headroom:
        return "impossible"
    if row["ci_low"] <= effect <= row["ci_high"]:
        return "inside"
    return "above" if effect > row["ci_high"] else "below"


def tuning_tests(outer: pd.DataFrame, *, metrics: Sequence[str] = ("accuracy", "auc"), level: float = 0.95) -> pd.DataFrame:
    """Per arm: tuned minus paper settings on the same outer folds (``search_outer.csv``), by the
    corrected t-test, Holm-adjusted over the arms within each metric. Columns: ``arm`` and
    ``TEST_COLUMNS`` with arm_a = "tuned", arm_b = "paper" (so ``verdict`` reads each arm's rows)."""
    tables = []
    for metric in metrics:
        rows = []
        for arm, group in outer.groupby("arm", sort=False):
            n_train, n_test = _training_sizes(group)
            table = st.compare_arms(group.rename(columns={"arm": "model", "setting": "arm"}), metric=metric,
                                    n_train=n_train, n_test=n_test, baseline_pairs=[("tuned", "paper")], level=level)
            rows.append(table.assign(arm=arm))
        table = pd.concat(rows, ignore_index=True)
        table["p_adjusted"] = st.adjust_pvalues(table["p_value"], method="holm")
        tables.append(table)
    return pd.concat(tables, ignore_index=True)[["arm", *TEST_COLUMNS]]


# --------------------------------------------------------------------------- what the design can detect

#: Columns of ``power.csv``: per pair, metric and design, the minimum detectable difference (``mdd``) of the
#: corrected t-test at two-sided ``alpha`` with probability ``power``, from the observed SD of fold differences.
POWER_COLUMNS = ["arm_a", "arm_b", "metric", "design", "folds", "sd_diff", "se", "mdd", "alpha", "power"]


def power_table(folds: pd.DataFrame, *, pairs: Sequence[tuple[str, str]] | None = None,
                metrics: Sequence[str] = ("accuracy", "auc"), alpha: float = 0.05, power: float = 0.8,
                repeats: Sequence[int] = (10,)) -> pd.DataFrame:
    """``power.csv``: what this design could detect, and what the same folds repeated ``repeats`` times would.

    The SD of the paired fold differences is the observed one; the minimum detectable difference is
    ``statistics.minimum_detectable_difference`` at unadjusted ``alpha`` (Holm's adjustment only raises it,
    so the true figure is at least this). ``n_test/n_train`` sets a floor that no number of repeats lowers."""
    n_train, n_test = _training_sizes(folds)
    pairs = _pairs(list(pd.unique(folds["arm"])), pairs)
    k, r = int(folds["fold"].nunique()), int(folds["repeat"].nunique())
    designs = {f"this study ({r} x {k} folds)": r * k, **{f"{n} x {k} folds": n * k for n in repeats if n != r}}
    rows = []
    for metric in metrics:
        wide = folds.pivot(index=["repeat", "fold"], columns="arm", values=metric)
        for a, b in pairs:
            sd = float((wide[a] - wide[b]).std(ddof=1))
            for design, n_folds in designs.items():
                rows.append({"arm_a": a, "arm_b": b, "metric": metric, "design": design, "folds": n_folds,
                             "sd_diff": sd, "se": float(np.sqrt((1 / n_folds + n_test / n_train)) * sd),
                             "mdd": st.minimum_detectable_difference(sd, n_folds=n_folds, n_train=n_train,
                                                                     n_test=n_test, alpha=alpha, power=power),
                             "alpha": alpha, "power": power})
    return pd.DataFrame(rows, columns=POWER_COLUMNS)


def design_verdict(tests: pd.DataFrame, power: pd.DataFrame, folds: pd.DataFrame, *,
                   paper_accuracy: dict[str, float] | None, arm_a: str = "multistage",
                   arm_b: str = "imagenet") -> str:
    """What the primary comparison's data rule out, in points and as a share of the baseline's errors, what
    the design could have detected, and where the paper's effect lies against the interval, both as the
    paper's absolute gain and as its relative error reduction carried to this study's baseline."""
    row = tests[(tests["test"] == "nadeau_bengio") & (tests["metric"] == "accuracy") & (tests["arm_a"] == arm_a)
                & (tests["arm_b"] == arm_b)].iloc[0]
    mdd = power[(power["metric"] == "accuracy") & (power["arm_a"] == arm_a) & (power["arm_b"] == arm_b)
                & power["design"].str.startswith("this study")]["mdd"].iloc[0]
    baseline = float(folds.loc[folds["arm"] == arm_b, "accuracy"].mean())
    errors = 1 - baseline
    text = (f"At {arm_b}'s accuracy of {baseline:.3f}, {arm_a} can gain at most {_pp(errors)} points. The interval "
            f"rules out gains above {_pp(row['ci_high'])} points")
    if errors > 0:
        text += f" (removing more than {100 * max(row['ci_high'], 0) / errors:.0f} % of {arm_b}'s errors)"
    text += (f" and losses beyond {_pp(row['ci_low'])} points. With the spread of these folds, the design detects "
             f"(80 % power, two-sided 5 %) only differences of {100 * mdd:.1f} points or more; smaller effects, "
             "in either direction, it cannot tell from none.")
    if paper_accuracy:
        gain = paper_accuracy[arm_a] - paper_accuracy[arm_b]
        reduction = gain / (1 - paper_accuracy[arm_b])
        relative = reduction * errors
        for label, value in ((f"The paper's absolute gain ({_pp(gain)} points)", gain),
                             (f"its relative effect ({100 * reduction:.0f} % fewer errors, {_pp(relative)} points here)",
                              relative)):
            where = {"impossible": "is more than this baseline leaves possible", "inside": "lies inside the interval: "
                     "not ruled out", "above": "lies above the interval: ruled out", "below": "lies below the interval"}
            text += f" {label} {where[_placement(value, row, errors)]}{'.' if label.startswith('its') else ';'}"
    return text


def folds_change(before: pd.DataFrame | None, after: pd.DataFrame, *, metrics: Sequence[str] = ("accuracy", "auc"),
                 before_label: str = "ungrouped folds (v1)", after_label: str = "grouped folds (v2)") -> pd.DataFrame:
    """What a change of the fold assignment did to each arm: per arm and metric, the mean over the folds of
    ``before`` and of ``after`` (two ``stage2_folds.csv`` tables) and the change. Empty without ``before``."""
    columns = ["arm", "metric", before_label, after_label, "change"]
    if before is None:
        return pd.DataFrame(columns=columns)
    rows = []
    for arm in pd.unique(after["arm"]):
        for metric in metrics:
            old = float(before.loc[before["arm"] == arm, metric].mean())
            new = float(after.loc[after["arm"] == arm, metric].mean())
            rows.append({"arm": arm, "metric": metric, before_label: old, after_label: new, "change": new - old})
    return pd.DataFrame(rows, columns=columns)


def secondary_verdict(tests: pd.DataFrame, *, alpha: float, arm_a: str = "multistage", arm_b: str = "imagenet") -> str:
    """Every secondary (per-image, pooled per repeat) test of the primary pair, summarised in one sentence:
    how many repeats reach adjusted p < ``alpha`` in each direction. Labelled for what they are: they hold
    the trained models fixed and so ignore training variance; the corrected t-test does not."""
    rows = tests[(tests["arm_a"] == arm_a) & (tests["arm_b"] == arm_b) & (tests["test"] != "nadeau_bengio")]
    parts = []
    for name, label in (("mcnemar_exact", "McNemar (accuracy)"), ("delong", "DeLong (AUC)")):
        mine = rows[rows["test"].str.startswith(name)]
        if mine.empty:
            continue
        better = int(((mine["p_adjusted"] < alpha) & (mine["mean_diff"] > 0)).sum())
        worse = int(((mine["p_adjusted"] < alpha) & (mine["mean_diff"] < 0)).sum())
        parts.append(f"{label}: {arm_a} significantly better in {better} and significantly worse in {worse} of "
                     f"{len(mine)} repeat(s)")
    return ("Secondary tests, per image on each repeat's pooled predictions (they hold the trained models fixed "
            "and so ignore training variance; read them as descriptions, not as evidence beside the primary "
            f"test), Holm-adjusted at {alpha:.2f}: " + "; ".join(parts) + ".")


# --------------------------------------------------------------------------- the results chapter


def verdicts(tests: pd.DataFrame, *, alpha: float, paper_gain: float | None,
             folds: pd.DataFrame | None = None) -> dict[str, str]:
    """The results chapter's three answers: the paper's claim, ImageNet's contribution, the bridge's alone.
    ``folds`` (``stage2_folds.csv``) gives the single-stage arm's headroom for the paper's gain."""
    headroom = 1 - float(folds.loc[folds["arm"] == "imagenet", "accuracy"].mean()) if folds is not None else None
    return {"verdict": verdict(tests, alpha=alpha, paper_gain=paper_gain, headroom=headroom),
            "verdict_imagenet": verdict(tests, arm_a="imagenet", arm_b="scratch", alpha=alpha),
            "verdict_bridge": verdict(tests, arm_a="bridge_only", arm_b="scratch", alpha=alpha)}


def results_glue(tests: pd.DataFrame, folds: pd.DataFrame, paper_split: pd.DataFrame, *, alpha: float,
                 paper_accuracy: dict[str, float] | None) -> dict[str, object]:
    """Every number the results chapter's prose glues, from its tables. ``paper_accuracy`` is None for
    a target other than the paper's: its numbers are then empty (NaN), never compared."""
    paper_accuracy = paper_accuracy or {"imagenet": float("nan"), "multistage": float("nan")}
    paper_gain = paper_accuracy["multistage"] - paper_accuracy["imagenet"]
    primary = tests[tests["test"] == "nadeau_bengio"]
    claim = primary[(primary["arm_a"] == "multistage") & (primary["arm_b"] == "imagenet")
                    & (primary["metric"] == "accuracy")].iloc[0]
    values: dict[str, object] = {f"primary_{c}_pp": 100 * float(claim[c]) for c in ("mean_diff", "ci_low", "ci_high")}
    values.update(paper_gain_pp=100 * paper_gain, primary_p=float(claim["p_value"]),
                  primary_p_adjusted=float(claim["p_adjusted"]), n_pairs=int((primary["metric"] == "accuracy").sum()),
                  n_fold_pairs=int(folds.groupby("arm").size().iloc[0]), n_repeats=int(folds["repeat"].nunique()),
                  n_folds=int(folds["fold"].nunique()), alpha=alpha)
    for row in arm_summary(folds).itertuples():
        for column in ("mean", "sd", "ci_low", "ci_high"):
            values[f"{row.arm}_{row.metric}_{column}"] = float(getattr(row, column))
    mcnemar = tests[tests["test"].str.startswith("mcnemar") & (tests["arm_a"] == "multistage")
                    & (tests["arm_b"] == "imagenet")]
    values.update(n_mcnemar_repeats=len(mcnemar), n_mcnemar_significant=int((mcnemar["p_adjusted"] < alpha).sum()))
    # The paper's own setting: one split of 40 test images per seed.
    n_test = int(paper_split["n_test"].iloc[0])
    gain_images = round(paper_gain * n_test) if np.isfinite(paper_gain) else 0
    best_case = st.mcnemar_exact([True] * n_test, [True] * (n_test - gain_images) + [False] * gain_images)
    paired = paper_split_pairs(paper_split)
    for arm in ("imagenet", "multistage"):
        values[f"paper_acc_{arm}"] = paper_accuracy[arm]
        values[f"split_acc_{arm}"] = float(paired[arm].mean())
    values.update(paper_n_test=n_test, paper_n_seeds=len(paired), paper_gain_images=gain_images,
                  paper_best_case_p=best_case["p_value"] if np.isfinite(paper_gain) else float("nan"),
                  split_n_multistage_better=int((paired["multistage"] > paired["imagenet"]).sum()),
                  split_n_multistage_worse=int((paired["multistage"] < paired["imagenet"]).sum()))
    return values


def paper_split_pairs(paper_split: pd.DataFrame) -> pd.DataFrame:
    """Per seed, the accuracy of each arm on the paper's single split and their difference."""
    paired = paper_split.pivot(index="seed", columns="arm", values="accuracy")
    return paired.assign(difference=paired["multistage"] - paired["imagenet"])
