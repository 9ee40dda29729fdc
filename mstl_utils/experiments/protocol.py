"""The head-CT protocol: every arm on the same repeated stratified folds, so comparisons are paired.

For repeat ``r`` and fold ``f`` of the fold file, each arm of ``config.ARM_INIT``
trains a stage-2 run on the other folds (a stratified validation part carved from
them for learning curves) and predicts the fold's test images. All arms of a repeat
share the training seed ``r`` and, for the chained arms, the bridge run with seed
``repeat_seed(profile.seeds, r)``: a bridge of its own. Runs live in ``runs/<profile>/cv_<arm>/``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from ..core import config, paths
from ..core.config import ARM_INIT, STAGE1_INIT, Profile
from ..data import audit, datasets as data_mod, folds as folds_mod
from ..data.folds import Split
from ..engine import executors, lifecycle
from ..engine.lifecycle import RunResult
from ..engine.spec import RunSpec
from ..models import registry as models, transfer

log = logging.getLogger(__name__)

#: The committed fold assignment of the real head-CT set (5 folds x 10 repeats, seed 0), version 2: stratified and
#: grouped by duplicate cluster (``duplicate_clusters``). Version 1 (``head_ct_folds.csv``, ungrouped) made the
#: book's tables until 2026-12-01; it split near-duplicate pairs between training and test.
FOLDS_FILE = Path("data") / "folds" / "head_ct_folds_v2.csv"
FOLDS_FILE_V1 = Path("data") / "folds" / "head_ct_folds.csv"

#: Columns of ``stage2_folds.csv``: one row per arm, repeat and fold (the results contract). For a target
#: of more than 2 classes ``auc`` is the one-vs-rest macro AUC, and sensitivity, specificity and f1 (the
#: positive class's) are empty: ``class_recall`` gives each class's recall instead.
FOLD_RESULT_COLUMNS = ["arm", "repeat", "fold", "seed", "n_train", "n_test", "accuracy", "auc", "sensitivity",
                       "specificity", "f1", "balanced_accuracy", "profile"]
#: Columns of ``stage2_oof.csv`` for a 2-class target: the out-of-fold probability of the second class
#: (head CT: hemorrhage) for every image and repeat. A target of more classes has ``pred`` (the arg-max
#: class) and one ``prob_<class>`` column per class in place of ``prob``.
OOF_COLUMNS = ["arm", "repeat", "image_id", "label", "prob"]


def study_profile(profile: str, **settings) -> Profile:
    """``config.get_profile(profile, **settings)`` (None: the profile's value) with the checks only the layers
    above the core can make, before any training: a registered model, a known transfer strategy, bridge and
    target datasets that are dataset names or ImageFolder folders. Each error names the setting, its value
    and what is allowed."""
    study = config.get_profile(profile, **settings)
    if study.model not in models.MODELS:
        raise ValueError(f"setting model={study.model!r} is not allowed; expected one of {sorted(models.MODELS)}")
    if study.strategy not in transfer.STRATEGIES:
        raise ValueError(f"setting strategy={study.strategy!r} is not allowed; expected one of {sorted(transfer.STRATEGIES)}")
    for name, dataset in (("bridge", study.stage1.dataset), ("target", study.stage2.dataset)):
        if dataset in data_mod.DATASETS:
            continue
        folder = Path(dataset).expanduser()
        if not folder.is_dir():
            raise ValueError(f"setting {name}={dataset!r} is not allowed; expected a dataset name "
                             f"{sorted(data_mod.DATASETS)} or the folder of an ImageFolder dataset")
        data_mod.read_image_folder(folder)  # a DataFormatError says what was found instead
    return study


def bridge_spec(profile: Profile, *, init: str = "imagenet", seed: int = 0, data_dir: str | Path | None = None,
                name: str | None = None) -> RunSpec:
    """The bridge run (stage 1) that starts from ``init`` with ``seed``: ``stage1`` or ``stage1_scratch``."""
    for stage_name, start in STAGE1_INIT.items():
        if start == init:
            return RunSpec(name=name or stage_name, stage="stage1", profile=profile, init=init, seed=seed,
                           data_dir=data_dir)
    raise ValueError(f"init={init!r}; a bridge starts from one of {sorted(STAGE1_INIT.values())}")


def arm_start(profile: Profile, arm: str, *, bridge_seed: int, data_dir: str | Path | None = None) -> str | RunSpec:
    """Where ``arm``'s target run starts: ``imagenet``, ``scratch`` or the bridge run it continues."""
    if arm not in ARM_INIT:
        raise ValueError(f"unknown arm {arm!r}; expected one of {list(ARM_INIT)}")
    init = ARM_INIT[arm]
    if init in STAGE1_INIT:
        return bridge_spec(profile, init=STAGE1_INIT[init], seed=bridge_seed, data_dir=data_dir)
    return init


@dataclass(frozen=True)
class FoldRun:
    """One planned stage-2 run of the protocol: an arm on one fold."""

    arm: str
    spec: RunSpec

    @property
    def split(self) -> Split:
        return self.spec.split

    @property
    def seed(self) -> int:  # training seed (the repeat index): shared by all arms of a repeat
        return self.spec.seed

    @property
    def init_from(self) -> str:
        """``scratch``, ``imagenet`` or the bridge's run name."""
        return self.spec.init if isinstance(self.spec.init, str) else self.spec.init.name

    @property
    def init_seed(self) -> int:
        """The seed of the bridge run a chained arm starts from (its own seed otherwise)."""
        return self.spec.seed if isinstance(self.spec.init, str) else self.spec.init.seed

    @property
    def name(self) -> str:
        return self.spec.name


def target_folds(profile: Profile, *, data_dir: str | Path | None = None, folds_file: str | Path | None = None,
                 runs_root: str | Path | None = None) -> tuple[pd.DataFrame, str]:
    """The protocol's folds of the profile's target (``profile.stage2.dataset``), and where they came from.

    The folds are over the dataset's groups (an image, or a patient where the dataset has several images of
    one), stratified by label and grouped by duplicate cluster: exact and near-duplicate images always share
    a fold. For head CT the committed file is used when it lists exactly the dataset's images and labels with
    ``profile.cv_folds`` folds and at least ``profile.cv_repeats`` repeats (its first repeats are taken).
    Other targets and other copies get folds made the same way, written next to the runs so that they too
    are reused.
    """
    target = profile.stage2.dataset
    source = data_mod.locate(target, data=profile.data, data_dir=data_dir)
    table, class_names = data_mod.read_table(source)
    labels = table.groupby("group")["label"].agg(["first", "nunique"])
    mixed = labels.index[labels["nunique"] > 1].tolist()
    if mixed:
        raise data_mod.DataFormatError(f"{target}: groups {mixed[:5]} hold images of several labels; a group "
                                       "(patient) must have one label to be split into folds")
    per_class = labels["first"].value_counts()
    if len(class_names) < 2 or len(per_class) < 2 or per_class.min() < profile.cv_folds:
        raise ValueError(f"setting target={target!r} is not allowed with cv_folds={profile.cv_folds}: it has "
                         f"{ {class_names[k]: int(v) for k, v in per_class.items()} } images (or patients) per class; "
                         f"at least 2 classes with at least {profile.cv_folds} each are needed")
    name = Path(target).name if target not in data_mod.DATASETS else target
    stored = paths.runs_dir(runs_root) / profile.name / f"{name}_folds_v2.csv"  # v2: grouped by duplicate cluster
    candidates = [Path(folds_file) if folds_file else paths.project_root() / FOLDS_FILE] if target == "head_ct" else []
    for file in candidates + [stored]:
        used = _usable_folds(file, labels, profile)
        if used is not None:
            return used, paths.relative(file)
        if file in candidates:
            log.warning("the committed head-CT folds do not match the %s head-CT data (%d images) or the profile's "
                        "%d x %d folds; making folds for these data", source.kind, len(labels), profile.cv_folds,
                        profile.cv_repeats)
    clusters = duplicate_clusters(table, labels.index.tolist())
    made = folds_mod.make_folds(labels.index.tolist(), labels["first"].to_numpy(), n_splits=profile.cv_folds,
                                n_repeats=profile.cv_repeats, seed=0, clusters=clusters.to_numpy())
    written = folds_mod.write_folds(made, stored)
    return made, f"made for {source.kind} data ({paths.relative(written)})"


def folds_v1() -> pd.DataFrame:
    """Version 1 of the committed head-CT folds (ungrouped), kept for the record: the book's tables before
    2026-12-01 were made with it (the data chapter counts the duplicate pairs it split)."""
    return folds_mod.read_folds(paths.project_root() / FOLDS_FILE_V1)


def _usable_folds(file: Path, labels: pd.DataFrame, profile: Profile) -> pd.DataFrame | None:
    """The first ``profile.cv_repeats`` repeats of the fold file ``file`` when it lists exactly these groups and
    labels in ``profile.cv_folds`` folds with enough repeats; None otherwise (or when there is no such file)."""
    if not file.is_file():
        return None
    stored = folds_mod.read_folds(file)
    first = stored[stored["repeat"] == 0]
    same = sorted(zip(first["image_id"], first["label"])) == sorted(zip(labels.index, labels["first"].astype(int)))
    if same and first["fold"].nunique() == profile.cv_folds and stored["repeat"].nunique() >= profile.cv_repeats:
        return stored[stored["repeat"] < profile.cv_repeats].reset_index(drop=True)
    return None


def duplicate_clusters(table: pd.DataFrame, groups: list[str]) -> pd.Series:
    """The target's duplicate clusters over ``groups`` (``audit.duplicate_clusters`` of the audit's exact and
    perceptual-hash near-duplicates), so that the folds keep every duplicate pair on one side."""
    props = audit.image_properties(table)
    return audit.duplicate_clusters(audit.duplicate_pairs(audit.exact_duplicates(props), audit.near_duplicates(props)),
                                    groups)


def splits(folds: pd.DataFrame) -> list[Split]:
    """Every (repeat, fold) test part of a fold table, repeat by repeat."""
    found = []
    for repeat in sorted(folds["repeat"].unique()):
        for fold in sorted(folds.loc[folds["repeat"] == repeat, "fold"].unique()):
            _, test_ids = folds_mod.split_of(folds, repeat=int(repeat), fold=int(fold))
            found.append(Split(int(repeat), int(fold), tuple(test_ids)))
    return found


def repeat_seed(seeds: tuple[int, ...], repeat: int) -> int:
    """The seed of repeat ``repeat``'s own bridge: ``seeds[repeat]``, and past the last seed new ones
    (``max(seeds) + 1``, ...). Every repeat gets a bridge of its own, so that bridge variance enters each
    repeat independently, as the corrected t-test's degrees of freedom assume."""
    if repeat < len(seeds):
        return seeds[repeat]
    return max(seeds) + 1 + repeat - len(seeds)


def bridge_seed(profile: Profile, repeat: int) -> int:
    """The seed of the bridge that repeat ``repeat``'s chained arms start from (``repeat_seed``)."""
    return repeat_seed(profile.seeds, repeat)


def fold_spec(profile: Profile, arm: str, split: Split, *, start: str | RunSpec | None = None, name: str | None = None,
              data_dir: str | Path | None = None, **options) -> RunSpec:
    """The target run of ``arm`` on ``split`` (seed: the repeat index); ``start`` replaces the arm's own start
    (another bridge), ``options`` are RunSpec options (strategy, in_chans, ...)."""
    if start is None:
        start = arm_start(profile, arm, bridge_seed=bridge_seed(profile, split.repeat), data_dir=data_dir)
    options.setdefault("strategy", profile.strategy)  # the target runs' transfer strategy (bridges train fully)
    return RunSpec(name=name or f"cv_{arm}", stage="stage2", profile=profile, init=start, seed=split.repeat,
                   split=split, data_dir=data_dir, **options)


def plan(profile: Profile, folds: pd.DataFrame, *, arms: tuple[str, ...] = tuple(ARM_INIT),
         data_dir: str | Path | None = None) -> list[FoldRun]:
    """Every (arm, repeat, fold) run, repeat by repeat so that a partial run has whole repeats."""
    unknown = [a for a in arms if a not in ARM_INIT]
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}; expected some of {list(ARM_INIT)}")
    return [FoldRun(arm, fold_spec(profile, arm, split, data_dir=data_dir)) for split in splits(folds) for arm in arms]


def bridges(runs: list[FoldRun]) -> list[RunSpec]:
    """The bridge runs that the planned runs start from, each once."""
    found = {str(r.spec.init.relpath): r.spec.init for r in runs if isinstance(r.spec.init, RunSpec)}
    return [found[k] for k in sorted(found)]


def run_protocol(
    profile: Profile,
    *,
    arms: tuple[str, ...] = tuple(ARM_INIT),
    data_dir: str | Path | None = None,
    force: bool = False,
    folds: pd.DataFrame | None = None,
    executor: str | executors.Executor = "local",
    workers: int | None = None,
) -> list[RunResult]:
    """Run (or reuse) the bridges and every fold of every arm; return the fold results.

    ``folds`` defaults to ``target_folds(profile)``. ``force`` trains the fold runs again, never
    the bridges (the stage-1 notebooks own them; a changed bridge re-runs the folds anyway)."""
    if folds is None:
        folds, _ = target_folds(profile, data_dir=data_dir)
    runs = plan(profile, folds, arms=arms, data_dir=data_dir)
    return executors.run_specs([r.spec for r in runs], executor=executor, workers=workers, force=force,
                               description="fold runs")


def load_protocol(profile: Profile, *, arms: tuple[str, ...] = tuple(ARM_INIT), data_dir: str | Path | None = None,
                  runs_root: str | Path | None = None, folds: pd.DataFrame | None = None) -> list[RunResult]:
    """Read back every planned fold run (an error names the first one missing); trains nothing."""
    if folds is None:
        folds, _ = target_folds(profile, data_dir=data_dir)
    return [lifecycle.load_spec(run.spec, runs_root) for run in plan(profile, folds, arms=arms, data_dir=data_dir)]


def bridge_specs(profile: Profile, *, init: str = "imagenet", data_dir: str | Path | None = None) -> list[RunSpec]:
    """The bridge runs from ``init``, one per seed of the profile (the stage-1 chapters)."""
    return [bridge_spec(profile, init=init, seed=seed, data_dir=data_dir) for seed in profile.seeds]


def all_bridge_specs(profile: Profile, *, data_dir: str | Path | None = None) -> list[RunSpec]:
    """Every bridge of the protocol: from ImageNet and from random weights, one per seed of the profile."""
    return [s for init in STAGE1_INIT.values() for s in bridge_specs(profile, init=init, data_dir=data_dir)]


def paper_split_spec(profile: Profile, arm: str, *, seed: int, data_dir: str | Path | None = None) -> RunSpec:
    """The paper's own setting: ``arm`` on one 80/20 split of the target drawn by ``seed``."""
    return RunSpec(name=f"stage2_{arm}", stage="stage2", profile=profile,
                   init=arm_start(profile, arm, bridge_seed=seed, data_dir=data_dir), seed=seed, data_dir=data_dir,
                   strategy=profile.strategy)


def paper_split_specs(profile: Profile, arm: str, *, data_dir: str | Path | None = None) -> list[RunSpec]:
    """The paper's setting for ``arm``, one split per seed of the profile (the stage-2 chapters)."""
    return [paper_split_spec(profile, arm, seed=seed, data_dir=data_dir) for seed in profile.seeds]


def core_specs(profile: Profile, *, data_dir: str | Path | None = None,
               folds: pd.DataFrame | None = None) -> list[RunSpec]:
    """Every run of the core chapters: both bridges per seed, the paper's split for the two arms it
    reports, and every fold of every arm (the results chapter's provenance names them all)."""
    if folds is None:
        folds, _ = target_folds(profile, data_dir=data_dir)
    return (all_bridge_specs(profile, data_dir=data_dir)
            + [s for arm in ("imagenet", "multistage") for s in paper_split_specs(profile, arm, data_dir=data_dir)]
            + [r.spec for r in plan(profile, folds, data_dir=data_dir)])


def paper_accuracy(profile: Profile) -> dict[str, float] | None:
    """The paper's head-CT accuracies (``config.PAPER_HEAD_CT_ACCURACY``) where the target is the paper's,
    None for any other target: a figure or verdict never sets a study of another target against them."""
    return config.PAPER_HEAD_CT_ACCURACY if profile.stage2.dataset == "head_ct" else None


def paper_gain(profile: Profile) -> float | None:
    """The paper's multistage - imagenet accuracy gain, None for a target other than the paper's."""
    paper = paper_accuracy(profile)
    return paper["multistage"] - paper["imagenet"] if paper else None


def _arm(result: RunResult) -> str:
    return result.config["name"].removeprefix("cv_")


def fold_table(results: list[RunResult]) -> pd.DataFrame:
    """``stage2_folds.csv``: test metrics of each fold run; ``n_train`` counts the images trained on."""
    rows = []
    for result in results:
        split = result.config["split"]
        counts = pd.DataFrame(result.metrics["provenance"]["split_counts"]).groupby("part")["n"].sum()
        rows.append({"arm": _arm(result), "repeat": split["repeat"], "fold": split["fold"],
                     "seed": result.config["seed"], "n_train": int(counts["train"]), "n_test": int(counts["test"]),
                     **{k: _metric(result.metrics, k) for k in FOLD_RESULT_COLUMNS[6:12]},
                     "profile": result.config["profile"]})
    return pd.DataFrame(rows, columns=FOLD_RESULT_COLUMNS)


def _metric(metrics: dict, name: str) -> float:
    """A fold-table metric from a run's ``metrics.json``: a multi-class run's AUC is its macro AUC,
    and the binary-only metrics (sensitivity, specificity, f1) are empty for it."""
    if name == "auc" and "auc" not in metrics:
        return metrics.get("auc_macro", float("nan"))
    return metrics.get(name, float("nan"))


def class_names(results: list[RunResult]) -> tuple[str, ...]:
    """The target's class names, in label order, from the first run's ``predictions.csv``."""
    return tuple(c.removeprefix("prob_") for c in results[0].predictions.columns if c.startswith("prob_"))


def oof_predictions(oof: pd.DataFrame, *, threshold: float = 0.5) -> pd.Series:
    """The predicted class of each row of ``stage2_oof.csv``: ``prob >= threshold`` for a 2-class
    target, the arg-max class (``pred``) for more classes."""
    return (oof["prob"] >= threshold).astype(int) if "prob" in oof else oof["pred"].astype(int)


def class_recall(oof: pd.DataFrame, names: tuple[str, ...]) -> pd.DataFrame:
    """``stage2_class_recall.csv``: per arm and class, the recall of the pooled out-of-fold predictions
    (every repeat's), with the number of predictions it counts: columns arm, class, recall, n."""
    correct = oof.assign(correct=(oof_predictions(oof) == oof["label"]).astype(int))
    table = correct.groupby(["arm", "label"], sort=False)["correct"].agg(["mean", "size"]).reset_index()
    table["class"] = [names[int(k)] for k in table["label"]]
    return table.rename(columns={"mean": "recall", "size": "n"})[["arm", "class", "recall", "n"]]


def positive_probability(predictions: pd.DataFrame) -> pd.Series:
    """The probability of a 2-class target's second class (head CT: hemorrhage), from ``predictions.csv``."""
    columns = [c for c in predictions.columns if c.startswith("prob_")]
    if len(columns) != 2:
        raise ValueError(f"the protocol's out-of-fold table takes a 2-class target; these predictions have "
                         f"{len(columns)} classes ({', '.join(c.removeprefix('prob_') for c in columns)})")
    return predictions[columns[1]]


def oof_table(results: list[RunResult]) -> pd.DataFrame:
    """``stage2_oof.csv``: each image's out-of-fold probability of the positive class (head CT: hemorrhage),
    per arm and repeat; for a target of more classes its predicted class and every class's probability
    (``OOF_COLUMNS``). ``image_id`` is the image's id, or its file where a group (patient) has several."""
    parts = []
    for result in results:
        pred = result.predictions
        ids = pred["image_id"] if pred["image_id"].is_unique else pred["file"]
        part = pd.DataFrame({"arm": _arm(result), "repeat": result.config["split"]["repeat"],
                             "image_id": ids, "label": pred["label"]})
        probs = [c for c in pred.columns if c.startswith("prob_")]
        if len(probs) == 2:
            part["prob"] = positive_probability(pred)
        else:
            part["pred"] = pred["pred"]
            part[probs] = pred[probs]
        parts.append(part)
    table = pd.concat(parts, ignore_index=True)
    return table.sort_values(["arm", "repeat", "image_id"], ignore_index=True)


#: Columns of ``stage2_scores.csv``: per fold run, the mean Brier score and log-loss of its test images' probabilities.
SCORE_COLUMNS = ["arm", "repeat", "fold", "n_train", "n_test", "brier", "log_loss"]


def fold_scores(results: list[RunResult]) -> pd.DataFrame:
    """``stage2_scores.csv``: each fold run's Brier score (2 classes: mean squared error of the positive
    class's probability; more classes: the squared errors summed over classes) and log-loss, from every test
    image's probabilities. They score the whole probability, not only its side of 0.5; lower is better."""
    rows = []
    folds = fold_table(results)
    for result, fold in zip(results, folds.itertuples()):
        pred = result.predictions
        probs = pred[[c for c in pred.columns if c.startswith("prob_")]].to_numpy(dtype=float)
        labels = pred["label"].to_numpy().astype(int)
        onehot = np.eye(probs.shape[1])[labels]
        squared = ((probs[:, 1] - labels) ** 2 if probs.shape[1] == 2 else ((probs - onehot) ** 2).sum(1))
        rows.append({"arm": fold.arm, "repeat": fold.repeat, "fold": fold.fold, "n_train": fold.n_train,
                     "n_test": fold.n_test, "brier": float(squared.mean()),
                     "log_loss": float(skm.log_loss(labels, probs, labels=list(range(probs.shape[1]))))})
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def histories(results: list[RunResult]) -> pd.DataFrame:
    """Every fold run's per-epoch history, labelled by arm, repeat and fold (for learning curves)."""
    return pd.concat([r.history.assign(arm=_arm(r), repeat=r.config["split"]["repeat"], fold=r.config["split"]["fold"])
                      for r in results], ignore_index=True)


def run_minutes(results: list[RunResult]) -> pd.DataFrame:
    """Per arm: total, median and count of the fold runs' wall minutes."""
    return pd.DataFrame([{"arm": _arm(r), "minutes": r.provenance["wall_seconds"] / 60} for r in results]).groupby(
        "arm", sort=False)["minutes"].agg(["sum", "median", "count"])
