"""The head-CT protocol: every arm on the same repeated stratified folds, so comparisons are paired.

For repeat ``r`` and fold ``f`` of the fold file, each arm of ``config.ARM_INIT``
trains a stage-2 run on the other folds (a stratified validation part carved from
them for learning curves) and predicts the fold's test images. All arms of a repeat
share the training seed ``r`` and, for the chained arms, the bridge run with seed
``profile.seeds[r % len(profile.seeds)]``. Runs live in ``runs/<profile>/cv_<arm>/``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..data import datasets as data_mod, folds as folds_mod
from ..core import paths
from ..core.config import ARM_INIT, STAGE1_INIT, Profile
from ..engine.stages import Split, StageResult, load_result, run_dir_for, run_stage, run_stages

log = logging.getLogger(__name__)

#: The committed fold assignment of the real head-CT set (5 folds x 10 repeats, seed 0).
FOLDS_FILE = Path("data") / "folds" / "head_ct_folds.csv"

#: Columns of ``stage2_folds.csv``: one row per arm, repeat and fold (the results contract).
FOLD_RESULT_COLUMNS = ["arm", "repeat", "fold", "seed", "n_train", "n_test", "accuracy", "auc", "sensitivity",
                       "specificity", "f1", "balanced_accuracy", "profile"]
#: Columns of ``stage2_oof.csv``: the out-of-fold probability of hemorrhage for every image and repeat.
OOF_COLUMNS = ["arm", "repeat", "image_id", "label", "prob"]


@dataclass(frozen=True)
class FoldRun:
    """One planned stage-2 run of the protocol."""

    arm: str
    split: Split
    seed: int  # training seed (the repeat index): shared by all arms of a repeat
    init_from: str  # "scratch", "imagenet" or a bridge stage name
    init_seed: int  # seed of the bridge run a chained arm starts from

    @property
    def name(self) -> str:
        return f"cv_{self.arm}"


def head_ct_folds(profile: Profile, *, data_dir: str | Path | None = None, folds_file: str | Path | None = None,
                  runs_root: str | Path | None = None) -> tuple[pd.DataFrame, str]:
    """The folds of this profile's head-CT data, and where they came from.

    The committed file is used when it lists exactly the dataset's images and labels
    with ``profile.cv_folds`` folds and at least ``profile.cv_repeats`` repeats (its
    first repeats are taken). Other data (synthetic, a different copy) get folds made
    the same way, written next to the runs so that they too can be reused.
    """
    source = data_mod.locate("head_ct", data=profile.data, data_dir=data_dir)
    table, _ = data_mod.read_table(source)
    folds_file = Path(folds_file) if folds_file else paths.project_root() / FOLDS_FILE
    if folds_file.is_file():
        committed = folds_mod.read_folds(folds_file)
        first = committed[committed["repeat"] == 0]
        same_images = (sorted(zip(first["image_id"], first["label"]))
                       == sorted(zip(table["group"], table["label"].astype(int))))
        if (same_images and first["fold"].nunique() == profile.cv_folds
                and committed["repeat"].nunique() >= profile.cv_repeats):
            used = committed[committed["repeat"] < profile.cv_repeats].reset_index(drop=True)
            return used, paths.relative(folds_file)
        log.warning("%s does not match the %s head-CT data (%d images) or the profile's %d x %d folds; "
                    "making folds for these data", paths.relative(folds_file), source.kind, len(table),
                    profile.cv_folds, profile.cv_repeats)
    made = folds_mod.make_folds(table["group"].tolist(), table["label"].to_numpy(),
                                n_splits=profile.cv_folds, n_repeats=profile.cv_repeats, seed=0)
    written = folds_mod.write_folds(made, paths.runs_dir(runs_root) / profile.name / "head_ct_folds.csv")
    return made, f"made for {source.kind} data ({paths.relative(written)})"


def plan(profile: Profile, folds: pd.DataFrame, *, arms: tuple[str, ...] = tuple(ARM_INIT)) -> list[FoldRun]:
    """Every (arm, repeat, fold) run, repeat by repeat so that a partial run has whole repeats."""
    unknown = [a for a in arms if a not in ARM_INIT]
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}; expected some of {list(ARM_INIT)}")
    runs = []
    for repeat in sorted(folds["repeat"].unique()):
        for fold in sorted(folds.loc[folds["repeat"] == repeat, "fold"].unique()):
            _, test_ids = folds_mod.split_of(folds, repeat=int(repeat), fold=int(fold))
            split = Split(int(repeat), int(fold), tuple(test_ids))
            for arm in arms:
                runs.append(FoldRun(arm, split, seed=int(repeat), init_from=ARM_INIT[arm],
                                    init_seed=profile.seeds[int(repeat) % len(profile.seeds)]))
    return runs


def bridges(runs: list[FoldRun]) -> list[tuple[str, int]]:
    """The bridge runs (stage name, seed) that the planned runs start from."""
    return sorted({(r.init_from, r.init_seed) for r in runs if r.init_from in STAGE1_INIT})


def run_protocol(
    profile: Profile,
    *,
    arms: tuple[str, ...] = tuple(ARM_INIT),
    data_dir: str | Path | None = None,
    weights_dir: str | Path | None = None,
    runs_root: str | Path | None = None,
    device: str = "auto",
    force: bool = False,
    folds: pd.DataFrame | None = None,
    workers: int | None = None,
) -> list[StageResult]:
    """Run (or reuse) the bridge stages and every fold of every arm; return the fold results.

    ``folds`` defaults to ``head_ct_folds(profile)``; ``workers`` fold runs train side
    by side (``stages.run_stages``; None: ``stages.default_workers``)."""
    if folds is None:
        folds, _ = head_ct_folds(profile, data_dir=data_dir, runs_root=runs_root)
    runs = plan(profile, folds, arms=arms)
    common = dict(data_dir=data_dir, weights_dir=weights_dir, runs_root=runs_root, device=device)
    for name, seed in bridges(runs):
        # Complete bridges are reused even with ``force``: the stage-1 notebooks own them, and a
        # changed bridge re-runs the folds anyway (their config holds the bridge's sha256).
        run_stage(name, profile, stage="stage1", init_from=STAGE1_INIT[name], seed=seed, **common)
    jobs = [dict(name=run.name, profile=profile, stage="stage2", init_from=run.init_from, seed=run.seed,
                 split=run.split, init_seed=run.init_seed, force=force, **common) for run in runs]
    return run_stages(jobs, workers=workers, device=device, description="fold runs")


def load_protocol(profile: Profile, *, arms: tuple[str, ...] = tuple(ARM_INIT), data_dir: str | Path | None = None,
                  runs_root: str | Path | None = None, folds: pd.DataFrame | None = None) -> list[StageResult]:
    """Read back every planned fold run (an error names the first one missing); trains nothing."""
    if folds is None:
        folds, _ = head_ct_folds(profile, data_dir=data_dir, runs_root=runs_root)
    return [load_result(run_dir_for(profile, run.name, run.seed, runs_root, run.split))
            for run in plan(profile, folds, arms=arms)]


def _arm(result: StageResult) -> str:
    return result.config["name"].removeprefix("cv_")


def fold_table(results: list[StageResult]) -> pd.DataFrame:
    """``stage2_folds.csv``: test metrics of each fold run; ``n_train`` counts the images trained on."""
    rows = []
    for result in results:
        split = result.config["split"]
        counts = pd.DataFrame(result.metrics["provenance"]["split_counts"]).groupby("part")["n"].sum()
        rows.append({"arm": _arm(result), "repeat": split["repeat"], "fold": split["fold"],
                     "seed": result.config["seed"], "n_train": int(counts["train"]), "n_test": int(counts["test"]),
                     **{k: result.metrics[k] for k in FOLD_RESULT_COLUMNS[6:12]},
                     "profile": result.config["profile"]["name"]})
    return pd.DataFrame(rows, columns=FOLD_RESULT_COLUMNS)


def oof_table(results: list[StageResult]) -> pd.DataFrame:
    """``stage2_oof.csv``: each image's out-of-fold probability of hemorrhage, per arm and repeat."""
    parts = []
    for result in results:
        pred = result.predictions
        parts.append(pd.DataFrame({"arm": _arm(result), "repeat": result.config["split"]["repeat"],
                                   "image_id": pred["image_id"], "label": pred["label"],
                                   "prob": pred["prob_hemorrhage"]}))
    table = pd.concat(parts, ignore_index=True)[OOF_COLUMNS]
    return table.sort_values(["arm", "repeat", "image_id"], ignore_index=True)


def histories(results: list[StageResult]) -> pd.DataFrame:
    """Every fold run's per-epoch history, labelled by arm, repeat and fold (for learning curves)."""
    return pd.concat([r.history.assign(arm=_arm(r), repeat=r.config["split"]["repeat"], fold=r.config["split"]["fold"])
                      for r in results], ignore_index=True)
