"""Hyperparameter search with Optuna, nested inside the head-CT protocol so that no test fold leaks.

For each searched outer fold (repeat ``r``, fold ``f`` of the protocol's folds) and arm,
one Optuna study tunes stage 2's learning rate, batch size and weight decay. A trial
trains exactly as the protocol's run of that fold would (its ``RunSpec``: same training
part, seed ``r``, same starting weights) and is scored by the loss on the validation part
that the run carves from the fold's training part. The fold's test images are removed
before any trial starts (``StageData.without("test")``). The best trial's settings then
train one final run, ``tuned_<arm>`` (a ``RunSpec`` trained by the executor): the only
time the test fold is used, beside the protocol's run with the paper's settings
(``cv_<arm>``) on the same fold.

All studies live in one Optuna storage: by default a SQLite file in the profile's run
folder (``runs/<profile>/search/optuna.db``), so an interrupted search resumes; any
database URL Optuna accepts (``postgresql://user@host/mstl``) lets workers on several
machines fill the same studies. The search's own workers go through the study's executor
(``executor="ray"``: Ray tasks on the same cluster as the runs). Extra workers, started by
hand on any machine, only add trials::

    python -m mstl_utils.experiments.search --profile quick --data real --storage postgresql://user@host/mstl

Every worker needs the same bridge checkpoints (``runs/<profile>/stage1-<digest>/seed*``):
a study's name holds their sha256, so a worker with other bridges works on other studies.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import socket
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from .. import __version__
from ..core import paths, repro
from ..core.config import Profile, get_profile
from ..engine import executors, lifecycle, stages, train
from ..engine.lifecycle import RunResult
from ..models import transfer
from ..report import analysis, results as results_mod
from . import protocol
from .protocol import FoldRun

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchConfig:
    """What the search tunes and how long (the chapter's plan); saved in every study's attributes."""

    n_trials: int = 20  # trials per study (one study per arm and outer fold); the second paper ran 20
    lr: tuple[float, float] = (1e-5, 1e-2)  # Adam learning rate, log-uniform (the paper's 1e-3 inside)
    batch_sizes: tuple[int, ...] = (8, 16, 32)  # categorical (the paper's 8 among them)
    # Adam's L2 penalty, log-uniform. A log scale cannot reach the paper's 0; 1e-6 is as good as 0 here.
    weight_decay: tuple[float, float] = (1e-6, 1e-2)
    repeats: int = 1  # the protocol's first repeats whose folds are searched
    arms: tuple[str, ...] = ("imagenet", "multistage")  # the single-stage and the multi-stage arm
    startup_trials: int = 10  # random trials before TPE models the results (Optuna's default)
    prune_after: int = 3  # epochs every trial runs before the median pruner may stop it
    seed: int = 0  # sampler seed of worker 0 (worker k uses seed + k)


#: The chapter contract's name for the settings of one profile's search.
SearchPlan = SearchConfig

SEARCHES: dict[str, SearchConfig] = {
    "smoke": SearchConfig(n_trials=3, startup_trials=2, prune_after=1),
    # 2 arms x 5 outer folds x 20 trials = 200 short stage-2 trainings on the CPU.
    "quick": SearchConfig(),
    "paper": SearchConfig(repeats=3),
}
#: The chapter contract's name for ``SEARCHES``.
PLANS = SEARCHES

#: Columns of ``search_trials.csv`` (the results contract first, then where each trial belongs).
TRIAL_COLUMNS = ["study", "trial", "state", "lr", "batch_size", "weight_decay", "value", "duration_s",
                 "arm", "repeat", "fold", "epochs", "val_accuracy", "worker"]
#: Columns of ``search_best.csv``: per study, the best complete trial.
BEST_COLUMNS = ["arm", "repeat", "fold", "study", "trial", "lr", "batch_size", "weight_decay", "value",
                "val_accuracy", "n_complete", "n_pruned"]
#: Columns of ``search_outer.csv``: the test fold results of both settings on the searched folds.
OUTER_COLUMNS = ["arm", "setting", "repeat", "fold", "accuracy", "auc", "lr", "batch_size", "weight_decay",
                 "n_train", "n_test"]
#: Settings a trial searches, in the order of the tables.
PARAMS = ("lr", "batch_size", "weight_decay")
#: Trials that count towards ``n_trials``: failed ones (e.g. a killed worker's) are replaced.
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def get_search(profile: str, **changes: Any) -> SearchConfig:
    """The search settings named like the profile, with optional changes (None: the profile's value;
    lists become tuples)."""
    if profile not in SEARCHES:
        raise ValueError(f"no search settings for profile {profile!r}; expected one of {sorted(SEARCHES)}")
    changes = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items() if v is not None}
    search = replace(SEARCHES[profile], **changes)
    if search.n_trials < 1 or search.repeats < 1:
        raise ValueError(f"n_trials={search.n_trials}, repeats={search.repeats}; both must be >= 1")
    return search


#: The chapter contract's name for ``get_search``.
get_plan = get_search


# --------------------------------------------------------------------------- the studies


@dataclass(frozen=True)
class PlannedStudy:
    """One Optuna study: an arm on one outer fold."""

    run: FoldRun  # the protocol's run of this arm and fold (paper settings): what every trial trains like
    name: str  # the study's name in the storage: arm/fold/digest of every setting it depends on

    @property
    def arm(self) -> str:
        return self.run.arm

    @property
    def spec(self):
        return self.run.spec


def searched_folds(folds: pd.DataFrame, search: SearchConfig) -> pd.DataFrame:
    """The protocol's folds of the searched repeats."""
    have = int(folds["repeat"].nunique())
    if search.repeats > have:
        raise ValueError(f"repeats={search.repeats} but the folds have {have} repeat(s)")
    return folds[folds["repeat"] < search.repeats].reset_index(drop=True)


def study_name(run: FoldRun, search: SearchConfig, *, runs_root: str | Path | None = None) -> str:
    """``<arm>/<split>/<digest>``: the digest covers the run's whole request (its settings, seed, split,
    the sha256 of the bridge checkpoint it starts from, the code version) and the search settings."""
    request = lifecycle.requested(run.spec, runs_root)
    digest = hashlib.sha256(json.dumps({"run": request, "search": asdict(search)}, sort_keys=True, default=str)
                            .encode()).hexdigest()[:10]
    return f"{run.arm}/{run.split.key}/{digest}"


def plan_studies(profile: Profile, search: SearchConfig, folds: pd.DataFrame, *, data_dir: str | Path | None = None,
                 runs_root: str | Path | None = None) -> list[PlannedStudy]:
    """Every study: fold by fold, arm by arm. A name changes with the profile, the search
    settings, the code version or the bridge checkpoint, so a stale study is never continued."""
    runs = protocol.plan(profile, searched_folds(folds, search), arms=search.arms, data_dir=data_dir)
    return [PlannedStudy(run, study_name(run, search, runs_root=runs_root)) for run in runs]


def default_storage(profile: Profile, runs_root: str | Path | None = None) -> str:
    path = paths.runs_dir(runs_root) / profile.name / "search" / "optuna.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def describe_storage(url: str) -> str:
    """The storage URL for provenance: a SQLite file relative to the project, no password."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"sqlite:///{paths.relative(parsed.database)}" if parsed.database else url
    return parsed.render_as_string(hide_password=True)


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage. Heartbeats let a surviving worker fail (and so replace) the
    trials of a killed one; SQLite waits for locks instead of failing under several workers."""
    from sqlalchemy.exc import DBAPIError

    engine_kwargs = {"connect_args": {"timeout": 300}} if url.startswith("sqlite") else None
    for attempt in range(3):
        try:
            with warnings.catch_warnings():  # heartbeats are marked experimental since Optuna 2.9; still in 5.0
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=30,
                                                  grace_period=120)
        except DBAPIError:
            # Workers started together on a new database race to create its tables; the
            # loser finds them made on its next attempt.
            if attempt == 2:
                raise
            time.sleep(1 + attempt)


def tuned_profile(profile: Profile, params: dict[str, Any]) -> Profile:
    """The profile with stage 2's learning rate, batch size and weight decay replaced."""
    return profile.replace(stage2={"lr": float(params["lr"]), "batch_size": int(params["batch_size"]),
                                   "weight_decay": float(params["weight_decay"])})


def tuned_spec(planned: PlannedStudy, params: dict[str, Any]):
    """The final run of a study: the protocol's run of its arm and fold with ``params`` (``tuned_<arm>``)."""
    spec = planned.spec
    return protocol.fold_spec(tuned_profile(spec.profile, params), planned.arm, spec.split,
                              name=f"tuned_{planned.arm}", data_dir=spec.data_dir)


def suggest(trial: optuna.Trial, search: SearchConfig) -> dict[str, Any]:
    return {"lr": trial.suggest_float("lr", *search.lr, log=True),
            "batch_size": trial.suggest_categorical("batch_size", list(search.batch_sizes)),
            "weight_decay": trial.suggest_float("weight_decay", *search.weight_decay, log=True)}


def objective(planned: PlannedStudy, search: SearchConfig, *, runs_root: str | Path | None = None, worker: str = ""):
    """The function a study minimises: the validation loss after stage 2's last epoch.

    A trial trains as ``stages.execute`` trains the study's run (its data, seed, starting weights and
    transfer strategy) with the trial's settings. The loss, not the accuracy: 32 validation images
    move accuracy in steps of 3 points, and the final weights (not the best epoch's) are what the
    protocol tests.
    """
    spec = planned.spec
    profile = spec.profile
    device = repro.pick_device(spec.device)
    # The test fold is dropped here, before any trial: nothing below can see it.
    tuning_data = stages.prepare_data(spec).without("test")

    def evaluate(trial: optuna.Trial) -> float:
        params = suggest(trial, search)
        trial.set_user_attr("worker", worker)
        generator = repro.seed_everything(spec.seed, deterministic=profile.deterministic)
        model, _ = stages.initial_model(spec, num_classes=tuning_data.num_classes, runs_root=runs_root)
        param_groups = transfer.apply(model, profile.model, spec.strategy, params["lr"])

        def report(state: dict[str, Any]) -> None:
            loss = state["history"][-1]["val_loss"]
            trial.set_user_attr("epochs", state["epoch"])
            trial.report(loss, state["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation loss {loss:.3f} after epoch {state['epoch']} is above the median")

        history = train.fit(
            model,
            tuning_data.loader("train", batch_size=params["batch_size"], augment=True, generator=generator,
                               device=device),
            tuning_data.loader("val", batch_size=64, device=device),
            num_epochs=spec.config.num_epochs, lr=params["lr"], weight_decay=params["weight_decay"], device=device,
            precision=spec.precision, compile=profile.compile, on_epoch=report, progress=False, params=param_groups,
        )
        trial.set_user_attr("val_accuracy", float(history["val_accuracy"].iloc[-1]))
        return float(history["val_loss"].iloc[-1])

    return evaluate


def _bridges_ready(studies: list[PlannedStudy], runs_root: str | Path | None) -> None:
    for bridge in protocol.bridges([s.run for s in studies]):
        if not lifecycle.is_complete(bridge, runs_root):
            raise FileNotFoundError(
                f"bridge run {bridge.label} ({bridge.relpath.as_posix()} in the runs folder) missing or incomplete; "
                "run the stage-1 notebooks first (make study), or copy it from the machine that did")


def open_study(planned: PlannedStudy, storage: str | optuna.storages.BaseStorage, search: SearchConfig, *,
               seed: int | None = None) -> optuna.Study:
    """Create the study, or load it when another worker (or an earlier run) made it."""
    sampler = optuna.samplers.TPESampler(n_startup_trials=search.startup_trials, seed=seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=search.prune_after)
    return optuna.create_study(storage=storage, study_name=planned.name, direction="minimize", sampler=sampler,
                               pruner=pruner, load_if_exists=True)


def counted_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=COUNTED))


def work(profile: Profile, search: SearchConfig, *, storage: str | None = None, worker: int = 0,
         folds: pd.DataFrame | None = None, data_dir: str | Path | None = None,
         runs_root: str | Path | None = None, expected: tuple[str, ...] | None = None) -> int:
    """One worker: add trials to each planned study until it holds ``search.n_trials``;
    return how many trials this worker ran. Any number of workers (processes or machines)
    may run this at once on the same storage. A worker starts a trial only while the study
    holds fewer than ``n_trials`` finished or running ones; two workers that check in the
    same instant can both start, so a study may end with up to ``workers - 1`` extra trials
    (Optuna has no atomic "start a trial if fewer than n"); the tables count what ran.

    ``expected``: the study names the driver planned; a worker that plans others (another
    device, other bridges, other code) stops instead of filling studies nobody reads."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if folds is None:
        folds, _ = protocol.target_folds(profile, data_dir=data_dir, runs_root=runs_root)
    studies = plan_studies(profile, search, folds, data_dir=data_dir, runs_root=runs_root)
    _bridges_ready(studies, runs_root)
    if expected is not None and tuple(s.name for s in studies) != tuple(expected):
        other = next(s.name for s, e in zip(studies, expected) if s.name != e)
        raise RuntimeError(f"search worker on {socket.gethostname()} plans study {other!r}, not the driver's: its "
                           f"device ({studies[0].spec.device}), bridge checkpoints or code differ from the driver's")
    storage_obj = open_storage(storage or default_storage(profile, runs_root))
    label = f"{socket.gethostname()}:{os.getpid()}"
    ran = 0
    for index, planned in enumerate(studies):
        study = open_study(planned, storage_obj, search, seed=search.seed + worker + 1000 * index)
        study.set_user_attr("settings", {"search": asdict(search), "profile": profile.to_dict(),
                                         "code_version": __version__})
        evaluate = None
        while counted_trials(study) < search.n_trials:
            evaluate = evaluate or objective(planned, search, runs_root=runs_root, worker=label)
            study.optimize(evaluate, n_trials=1)
            ran += 1
    return ran


@dataclass(frozen=True)
class WorkerTask:
    """What one search worker needs, picklable: the executor's ``map`` sends it to a process or a Ray task."""

    profile: Profile
    search: SearchConfig
    storage: str
    worker: int  # sampler seed offset
    folds: pd.DataFrame
    data_dir: str | None
    runs_root: str  # the driver's runs folder (a Ray worker does not read the driver's $MSTL_RUNS_DIR)
    studies: tuple[str, ...]  # the study names the driver planned


def run_worker(task: WorkerTask) -> int:
    """One search worker (a module-level function for ``Executor.map``); returns the trials it ran."""
    return work(task.profile, task.search, storage=task.storage, worker=task.worker, folds=task.folds,
                data_dir=task.data_dir, runs_root=task.runs_root, expected=task.studies)


# --------------------------------------------------------------------------- the whole search


@dataclass
class SearchResult:
    """A finished search: its studies, trial table, best settings and the outer-fold comparison."""

    profile: Profile
    plan: SearchConfig
    studies: list[PlannedStudy]
    storage: str  # the storage URL (as given; see ``describe_storage``)
    trials: pd.DataFrame  # TRIAL_COLUMNS
    best: pd.DataFrame  # BEST_COLUMNS: per study, the best settings and their validation loss
    outer: pd.DataFrame  # OUTER_COLUMNS
    tuned: list[RunResult]  # the final runs (tuned_<arm>), in the order of ``studies``
    paper: list[RunResult]  # the protocol's runs of the searched folds (cv_<arm>)
    trials_run: int  # trials run by this call (0 when everything was in the storage already)
    wall_seconds: float  # from the first trial's start to the last trial's end, over every study and worker


def trial_table(studies: list[PlannedStudy], storage: str | optuna.storages.BaseStorage) -> pd.DataFrame:
    rows = []
    for planned in studies:
        study = optuna.load_study(study_name=planned.name, storage=storage)
        for t in study.get_trials(deepcopy=False):
            duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
            rows.append({"study": planned.name, "trial": t.number, "state": t.state.name,
                         **{p: t.params.get(p) for p in PARAMS}, "value": t.value, "duration_s": duration,
                         "arm": planned.arm, "repeat": planned.run.split.repeat, "fold": planned.run.split.fold,
                         "epochs": t.user_attrs.get("epochs"), "val_accuracy": t.user_attrs.get("val_accuracy"),
                         "worker": t.user_attrs.get("worker")})
    return pd.DataFrame(rows, columns=TRIAL_COLUMNS)


def best_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per study, the complete trial with the lowest validation loss (ties: the earlier trial)."""
    done = trials[trials["state"] == "COMPLETE"]
    missing = sorted(set(trials["study"]) - set(done["study"]))
    if missing:
        raise ValueError(f"study {missing[0]!r} has no complete trial; run more trials")
    best = done.sort_values(["study", "value", "trial"]).groupby("study", sort=False).head(1)
    counts = trials.groupby("study")["state"].value_counts().unstack(fill_value=0)
    best = best.join(counts.reindex(columns=["COMPLETE", "PRUNED"], fill_value=0)
                     .rename(columns=str.lower).add_prefix("n_"), on="study")
    return best[BEST_COLUMNS].sort_values(["arm", "repeat", "fold"]).reset_index(drop=True)


def _outer_row(result: RunResult, arm: str, setting: str) -> dict[str, Any]:
    split, stage2 = result.config["split"], result.config["config"]
    counts = pd.DataFrame(result.metrics["provenance"]["split_counts"]).groupby("part")["n"].sum()
    return {"arm": arm, "setting": setting, "repeat": split["repeat"], "fold": split["fold"],
            "accuracy": result.metrics["accuracy"], "auc": result.metrics["auc"], "lr": stage2["lr"],
            "batch_size": stage2["batch_size"], "weight_decay": stage2["weight_decay"],
            "n_train": int(counts["train"]), "n_test": int(counts["test"])}


def run(profile: Profile | str, plan: SearchConfig, *, storage: str | None = None,
        executor: str | executors.Executor = "local", workers: int | None = None, force: bool = False,
        data_dir: str | Path | None = None) -> SearchResult:
    """The whole search: the bridges, ``workers`` search workers filling every study (through the
    executor: processes here, or Ray tasks on the study's cluster), then the final run of each
    study's best settings and the paper-settings run of the same fold.

    ``workers=None``: ``executors.default_workers`` for the number of trials to run. Studies
    already complete in the storage are reused; ``force`` re-trains the final runs only
    (a study is restarted by deleting it from the storage or changing its settings).
    """
    profile = get_profile(profile) if isinstance(profile, str) else profile
    data_dir = None if data_dir is None else str(data_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with executors.using(executor, workers=workers) as ex:  # one executor (and Ray connection) for all
        runs_root = ex.runs_root
        folds, _ = protocol.target_folds(profile, data_dir=data_dir, runs_root=runs_root)
        studies = plan_studies(profile, plan, folds, data_dir=data_dir, runs_root=runs_root)
        bridges = protocol.bridges([s.run for s in studies])
        if bridges:  # every trial of a chained arm starts from its bridge
            executors.run_specs(bridges, executor=ex, description="bridge runs")
            studies = plan_studies(profile, plan, folds, data_dir=data_dir, runs_root=runs_root)  # their checksums
        storage = storage or default_storage(profile, runs_root)
        storage_obj = open_storage(storage)
        todo = sum(max(0, plan.n_trials - counted_trials(open_study(s, storage_obj, plan))) for s in studies)
        n_workers = ex.slots(todo, studies[0].spec.device) if workers is None else workers
        if n_workers < 1:
            raise ValueError(f"workers={n_workers}; expected at least 1")
        ran = 0
        if todo:
            log.info("%d trials to run, %d search worker(s) (%s executor)", todo, n_workers, ex.name)
            names = tuple(s.name for s in studies)
            tasks = [WorkerTask(profile, plan, storage, k, folds, data_dir, str(runs_root), names)
                     for k in range(n_workers)]
            ran = sum(ex.map(run_worker, tasks, workers=n_workers, gpu=studies[0].spec.resources().get("gpu", 0),
                              description="search workers"))
        trials = trial_table(studies, storage_obj)
        best = best_table(trials)
        by_name = best.set_index("study")
        tuned = executors.run_specs([tuned_spec(s, by_name.loc[s.name]) for s in studies], executor=ex, force=force,
                                    description="tuned runs")
        paper = protocol.run_protocol(profile, arms=plan.arms, data_dir=data_dir, folds=searched_folds(folds, plan),
                                      executor=ex)
    outer = pd.DataFrame([_outer_row(r, s.arm, "tuned") for s, r in zip(studies, tuned)]
                         + [_outer_row(r, r.config["name"].removeprefix("cv_"), "paper") for r in paper],
                         columns=OUTER_COLUMNS)
    loaded = {s.name: optuna.load_study(study_name=s.name, storage=storage_obj) for s in studies}
    return SearchResult(profile, plan, studies, storage, trials, best, outer, tuned, paper, ran,
                        wall_seconds(loaded))


def load_studies(result: SearchResult) -> dict[str, optuna.Study]:
    """The Optuna studies of a search by name, for Optuna's own plots."""
    storage = open_storage(result.storage)
    return {s.name: optuna.load_study(study_name=s.name, storage=storage) for s in result.studies}


def importance_table(studies: dict[str, optuna.Study], planned: list[PlannedStudy]) -> pd.DataFrame:
    """Optuna's parameter importances (fANOVA over complete trials) per study: arm, study, param, importance."""
    rows = []
    for p in planned:
        study = studies[p.name]
        if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
            continue  # importances need at least two complete trials
        for param, value in optuna.importance.get_param_importances(study).items():
            rows.append({"arm": p.arm, "study": p.name, "param": param, "importance": float(value)})
    return pd.DataFrame(rows, columns=["arm", "study", "param", "importance"])


def wall_seconds(studies: dict[str, optuna.Study]) -> float:
    """From the first trial's start to the last trial's end, over every study (all workers)."""
    starts, ends = [], []
    for study in studies.values():
        for t in study.get_trials(deepcopy=False):
            if t.datetime_start and t.datetime_complete:
                starts.append(t.datetime_start)
                ends.append(t.datetime_complete)
    return (max(ends) - min(starts)).total_seconds() if starts else 0.0


# --------------------------------------------------------------------------- what the chapter shows


def tables(result: SearchResult) -> dict[str, pd.DataFrame]:
    """The chapter's result files (the results contract): trials, outer-fold results, best settings, tests."""
    return {"search_trials.csv": result.trials, "search_outer.csv": result.outer, "search_best.csv": result.best,
            "search_tests.csv": analysis.tuning_tests(result.outer)}


def header(result: SearchResult) -> str:
    """Markdown for the top of the chapter: the synthetic-data banner (if any), provenance, the storage."""
    prov = results_mod.provenance([r.metrics for r in result.tuned + result.paper], profile=result.profile.to_dict())
    storage = (f"**Search storage:** `{describe_storage(result.storage)}`; trials run by this execution: "
               f"{result.trials_run} (0: every study was complete in the storage and was read back).")
    return "\n\n".join(part for part in (results_mod.data_banner(prov["data"].values()),
                                         results_mod.provenance_markdown(prov), storage) if part)


def space_table(result: SearchResult) -> pd.DataFrame:
    """What was searched, beside the paper's setting."""
    plan, stage2 = result.plan, result.profile.stage2
    return pd.DataFrame([
        {"setting": "learning rate", "searched": f"{plan.lr[0]:g} to {plan.lr[1]:g}, log scale",
         "paper": f"{stage2.lr:g}"},
        {"setting": "batch size", "searched": ", ".join(map(str, plan.batch_sizes)), "paper": f"{stage2.batch_size}"},
        {"setting": "weight decay (Adam's L2)",
         "searched": f"{plan.weight_decay[0]:g} to {plan.weight_decay[1]:g}, log scale",
         "paper": f"{stage2.weight_decay:g}"},
    ])


def arm_trials(result: SearchResult) -> pd.DataFrame:
    """Per arm: trials, complete and pruned ones, epochs run, minutes and the median trial's seconds."""
    return result.trials.groupby("arm").agg(
        trials=("trial", "size"), complete=("state", lambda s: int((s == "COMPLETE").sum())),
        pruned=("state", lambda s: int((s == "PRUNED").sum())), epochs_run=("epochs", "sum"),
        minutes=("duration_s", lambda s: s.sum() / 60), median_trial_s=("duration_s", "median"))


def first_studies(result: SearchResult) -> dict[str, PlannedStudy]:
    """The first outer fold's study of each arm (the one Optuna's plots show)."""
    first: dict[str, PlannedStudy] = {}
    for planned in result.studies:
        first.setdefault(planned.arm, planned)
    return first


def study_plots(result: SearchResult, kind: str) -> list[Any]:
    """Optuna's own plot ``kind`` ("history", "importances" or "slices") of each arm's first study."""
    from optuna.visualization import matplotlib as optuna_plots
    import matplotlib.pyplot as plt

    draw = {"history": (optuna_plots.plot_optimization_history, "optimisation history"),
            "importances": (optuna_plots.plot_param_importances, "setting importances"),
            "slices": (optuna_plots.plot_slice, "slices")}
    if kind not in draw:
        raise ValueError(f"kind={kind!r}; expected one of {sorted(draw)}")
    plot, title = draw[kind]
    studies = load_studies(result)
    drawn = []
    for arm, planned in first_studies(result).items():
        with warnings.catch_warnings():  # Optuna marks its matplotlib plots experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            axes = plot(studies[planned.name])
        if kind == "slices":
            plt.gcf().suptitle(f"{arm}: {title} ({planned.run.split.key})")
        else:
            axes.set_title(f"{arm}: {title} ({planned.run.split.key})")
        drawn.append(axes)
    return drawn


def importance_summary(result: SearchResult) -> pd.DataFrame:
    """Each setting's importance averaged over every study of an arm (param x arm)."""
    table = importance_table(load_studies(result), result.studies)
    return table.pivot_table(index="param", columns="arm", values="importance", aggfunc="mean")


def outer_accuracy(result: SearchResult) -> pd.DataFrame:
    """Test accuracy per outer fold (rows) for each arm and setting (columns)."""
    return result.outer.pivot_table(index=["repeat", "fold"], columns=["arm", "setting"], values="accuracy")


def setting_means(result: SearchResult) -> pd.DataFrame:
    """Mean test accuracy and AUC per arm and setting over the searched folds."""
    return result.outer.groupby(["arm", "setting"])[["accuracy", "auc"]].mean()


def verdict(result: SearchResult, tables: dict[str, pd.DataFrame]) -> str:
    """Did tuning beat the paper's settings on folds it never saw? One paragraph per arm (markdown)."""
    tests = tables["search_tests.csv"]
    return "\n\n".join(f"**{arm}**: {analysis.verdict(tests[tests['arm'] == arm], arm_a='tuned', arm_b='paper')}"
                       for arm in result.plan.arms)


def glue_values(result: SearchResult, tables: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """Every number and sentence the chapter's prose glues."""
    from IPython.display import Markdown  # the verdict is glued as markdown ({glue:md})

    trials, best = tables["search_trials.csv"], tables["search_best.csv"]
    means = tables["search_outer.csv"].groupby(["arm", "setting"])["accuracy"].mean()
    values: dict[str, Any] = {
        "search_n_studies": len(result.studies),
        "search_arms": " and ".join(result.plan.arms),
        "search_n_folds": int(best[["repeat", "fold"]].drop_duplicates().shape[0]),
        "search_outer_repeats": result.plan.repeats,
        "search_n_trials": result.plan.n_trials,
        "search_startup": result.plan.startup_trials,
        "search_n_workers": int(trials["worker"].nunique()),
        "search_wall_min": result.wall_seconds / 60,
        "search_trial_min": float(trials["duration_s"].sum() / 60),
        "search_verdict": Markdown(verdict(result, tables)),
    }
    for arm in result.plan.arms:
        values[f"search_{arm}_tuned"] = float(means.loc[(arm, "tuned")])
        values[f"search_{arm}_paper"] = float(means.loc[(arm, "paper")])
    return values


# --------------------------------------------------------------------------- an extra worker by hand


def main(argv: list[str] | None = None) -> int:
    """An extra worker: adds trials to the studies of a search (see the module's text)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick", help="smoke | quick | paper (default: quick)")
    parser.add_argument("--data", default=None, choices=["auto", "real", "synthetic"],
                        help="override the profile's data mode")
    parser.add_argument("--storage", default=None,
                        help="an Optuna database URL (default: sqlite file runs/<profile>/search/optuna.db)")
    parser.add_argument("--worker", type=int, default=None,
                        help="sampler seed offset (default: the process id, so that workers differ)")
    parser.add_argument("--trials", type=int, default=None, help="trials per study (default: the profile's)")
    parser.add_argument("--repeats", "--outer-repeats", dest="repeats", type=int, default=None,
                        help="protocol repeats whose folds are searched (default: the profile's)")
    parser.add_argument("--arms", nargs="+", default=None, help="arms to search (default: imagenet multistage)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    profile = get_profile(args.profile, **({"data": args.data} if args.data else {}))
    search = get_search(args.profile, n_trials=args.trials, repeats=args.repeats, arms=args.arms)
    start = time.perf_counter()
    try:
        ran = work(profile, search, storage=args.storage, worker=os.getpid() if args.worker is None else args.worker)
    except FileNotFoundError as error:
        print(f"search worker stopped: {error}", file=sys.stderr)
        return 1
    log.info("this worker ran %d trial(s) in %.1f min", ran, (time.perf_counter() - start) / 60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
