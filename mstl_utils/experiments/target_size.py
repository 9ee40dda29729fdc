"""Where might a bridge help? The target-size curve: the bridge's effect as the target's training set shrinks.

The protocol's folds stay as they are (the same test images); only the training part of each fold run is
a stratified draw of ``n`` images (``RunSpec.train_size``), several draws per size. The ``imagenet`` and
``multistage`` arms are paired on the same folds, sizes and draws; the full-size point is the protocol's
own runs. Transfer from a related bridge is usually expected to matter most when the target is smallest:
this chapter measures whether it does here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core.config import Profile
from ..engine import executors
from ..engine.lifecycle import RunResult
from ..report import analysis, statistics as st
from . import protocol

#: The pair whose difference the curve follows: the paper's system against single-stage transfer.
ARMS = ("multistage", "imagenet")


@dataclass(frozen=True)
class TargetSizePlan:
    """What the target-size chapter runs for one profile."""

    sizes: tuple[int, ...] = (16, 32, 64)  # training images per fold run (the full training part is added)
    draws: int = 2  # stratified draws of each size per fold (their seeds: 0, 1, ...)


PLANS: dict[str, TargetSizePlan] = {"smoke": TargetSizePlan(sizes=(6,), draws=1), "quick": TargetSizePlan(),
                                    "paper": TargetSizePlan(draws=3)}


def get_plan(profile: str, **changes: Any) -> TargetSizePlan:
    """The plan of ``profile`` with ``changes`` (None values ignored; lists become tuples)."""
    if profile not in PLANS:
        raise ValueError(f"no target-size plan for profile {profile!r}; expected one of {sorted(PLANS)}")
    changes = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items() if v is not None}
    plan = dataclasses.replace(PLANS[profile], **changes)
    if not plan.sizes or any(not isinstance(n, int) or n < 2 for n in plan.sizes) or plan.draws < 1:
        raise ValueError(f"target-size plan {plan}: sizes must be whole numbers >= 2 and draws >= 1")
    return plan


def specs(profile: Profile, plan: TargetSizePlan, folds: pd.DataFrame, *,
          data_dir: str | Path | None = None) -> list[protocol.FoldRun]:
    """Both arms on every fold, size and draw: the protocol's fold runs with a smaller training part."""
    full = protocol.plan(profile, folds, arms=ARMS, data_dir=data_dir)
    return [protocol.FoldRun(run.arm, dataclasses.replace(run.spec, train_size=n, train_draw=draw))
            for n in plan.sizes for draw in range(plan.draws) for run in full]


@dataclass
class TargetSizeResult:
    """The subsampled fold runs and the protocol's full-size runs of the same arms."""

    plan: TargetSizePlan
    small: list[RunResult]
    full: list[RunResult]

    def runs(self) -> list[RunResult]:
        return self.small + self.full


def run(profile: Profile, plan: TargetSizePlan, *, folds: pd.DataFrame | None = None, executor: str = "local",
        workers: int | None = None, force: bool = False, data_dir: str | Path | None = None) -> TargetSizeResult:
    """Train what is missing: the subsampled runs, and the protocol's runs of both arms (usually complete)."""
    if folds is None:
        folds, _ = protocol.target_folds(profile, data_dir=data_dir)
    small = [r.spec for r in specs(profile, plan, folds, data_dir=data_dir)]
    full = [r.spec for r in protocol.plan(profile, folds, arms=ARMS, data_dir=data_dir)]
    with executors.using(executor, workers=workers) as ex:
        full_runs = ex.run(full, description="protocol fold runs")
        small_runs = ex.run(small, force=force, description="target-size fold runs")
    return TargetSizeResult(plan, small_runs, full_runs)


#: Columns of ``target_size.csv``: one row per arm, size, draw and fold (``size``: images trained on; the full
#: training part at its mean size over the folds, ``n_train`` its own).
COLUMNS = ["arm", "size", "draw", "repeat", "fold", "n_train", "n_test", "accuracy", "auc"]
#: Columns of ``target_size_effects.csv``: per size, multistage - imagenet by the corrected t-test over the
#: folds and draws (each draw of a fold one paired unit; n_train: the size).
EFFECT_COLUMNS = ["size", "units", "metric", "mean_diff", "ci_low", "ci_high", "p_value", "mdd"]


def _rows(results: list[RunResult], *, full: bool) -> pd.DataFrame:
    table = protocol.fold_table(results)
    sizes = [r.config.get("train_size") for r in results]
    # The full training parts differ by an image or two between folds: one point, at their mean size.
    table["size"] = int(round(table["n_train"].mean())) if full else [s["n"] for s in sizes]
    table["draw"] = 0 if full else [s["draw"] for s in sizes]
    return table[COLUMNS]


def table(result: TargetSizeResult) -> pd.DataFrame:
    """``target_size.csv``: every subsampled fold run and the protocol's full-size ones."""
    return pd.concat([_rows(result.small, full=False), _rows(result.full, full=True)],
                     ignore_index=True).sort_values(["size", "arm", "draw", "repeat", "fold"], ignore_index=True)


def effects(sizes: pd.DataFrame, *, alpha: float = 0.05, level: float = 0.95) -> pd.DataFrame:
    """``target_size_effects.csv``: per training size and metric, multistage - imagenet with its corrected
    interval and p-value, and the minimum detectable difference (80 % power) of that size's design."""
    rows = []
    for size, group in sizes.groupby("size"):
        units = group.assign(fold=group["draw"] * 1000 + group["repeat"] * 100 + group["fold"])
        for metric in ("accuracy", "auc"):
            test = analysis.corrected_tests(units, metrics=(metric,), pairs=[ARMS], level=level).iloc[0]
            wide = units.pivot(index=["repeat", "fold"], columns="arm", values=metric)
            n_train, n_test = int(round(group["n_train"].mean())), int(round(group["n_test"].mean()))
            mdd = st.minimum_detectable_difference(float((wide[ARMS[0]] - wide[ARMS[1]]).std(ddof=1)),
                                                n_folds=len(wide), n_train=n_train, n_test=n_test, alpha=alpha)
            rows.append({"size": int(size), "units": len(wide), "metric": metric, "mean_diff": test["mean_diff"],
                         "ci_low": test["ci_low"], "ci_high": test["ci_high"], "p_value": test["p_value"], "mdd": mdd})
    return pd.DataFrame(rows, columns=EFFECT_COLUMNS)


def tables(result: TargetSizeResult) -> dict[str, pd.DataFrame]:
    found = table(result)
    return {"target_size.csv": found, "target_size_effects.csv": effects(found)}


def glue_values(result: TargetSizeResult, tables_: dict[str, pd.DataFrame]) -> dict[str, Any]:
    acc = tables_["target_size_effects.csv"].query("metric == 'accuracy'")
    smallest, largest = acc.iloc[0], acc.iloc[-1]
    return {"ts_sizes": ", ".join(str(n) for n in acc["size"]), "ts_draws": result.plan.draws,
            "ts_n_runs": len(result.small), "ts_smallest": int(smallest["size"]),
            "ts_smallest_diff_pp": 100 * float(smallest["mean_diff"]), "ts_full": int(largest["size"]),
            "ts_full_diff_pp": 100 * float(largest["mean_diff"]),
            "ts_minutes": float(sum(r.provenance["wall_seconds"] for r in result.small) / 60)}


def verdict(tables_: dict[str, pd.DataFrame], *, alpha: float = 0.05) -> str:
    """Per size, whether the bridge's effect on accuracy is detectable, and whether it grows as the target
    shrinks (the slope of the mean differences over log2 of the size, stated as measured, not tested)."""
    acc = tables_["target_size_effects.csv"].query("metric == 'accuracy'").sort_values("size")
    parts = []
    for row in acc.itertuples():
        sign = ("better" if row.mean_diff > 0 else "worse") if row.p_value < alpha else "no detectable difference"
        parts.append(f"{row.size} images: {100 * row.mean_diff:+.1f} points (95 % CI {100 * row.ci_low:+.1f} to "
                     f"{100 * row.ci_high:+.1f}; detectable from {100 * row.mdd:.1f}), {sign}")
    slope = float(np.polyfit(np.log2(acc["size"]), acc["mean_diff"], 1)[0]) if len(acc) > 1 else float("nan")
    trend = ("larger the fewer target images there are" if slope < 0 else "not larger for fewer target images")
    return (f"multistage - imagenet accuracy by training size: {'; '.join(parts)}. The measured difference is "
            f"{trend} ({100 * slope:+.1f} points per doubling of the target; a description of these points, "
            "not a test).")
