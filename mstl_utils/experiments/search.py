"""Hyperparameter search with Optuna, nested inside the head-CT protocol so that no test fold leaks.

For each searched outer fold (repeat ``r``, fold ``f`` of the protocol's folds) and arm,
one Optuna study tunes stage 2's learning rate, batch size and weight decay. A trial
trains exactly as the protocol's run of that fold would (same training part, seed ``r``,
same starting weights) and is scored by the loss on the validation part that the run
carves from the fold's training part. The fold's test images are removed before any
trial starts (``StageData.without("test")``). The best trial's settings then train one
final run, ``tuned_<arm>``, through ``stages.run_stage``: the only time the test fold is
used, beside the protocol's run with the paper's settings (``cv_<arm>``) on the same fold.

All studies live in one Optuna storage: by default a SQLite file in the profile's run
folder (``runs/<profile>/search/optuna.db``), so an interrupted search resumes; any
database URL Optuna accepts (``postgresql://user@host/mstl``) lets workers on several
machines fill the same studies. Extra workers only add trials::

    python -m mstl_utils.experiments.search --profile quick --data real --storage postgresql://user@host/mstl

Every worker needs the same bridge checkpoints (``runs/<profile>/stage1/seed*``): a
study's name holds their sha256, so a worker with other bridges works on other studies.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import socket
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import torch
from optuna.trial import TrialState

from .. import __version__
from ..core import paths, repro
from ..engine import stages, train
from ..core.config import STAGE1_INIT, Profile, get_profile
from .protocol import FoldRun, head_ct_folds, plan as protocol_plan, run_protocol
from ..engine.stages import StageResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchConfig:
    """What the search tunes and how long; saved in every study's attributes."""

    n_trials: int = 20  # trials per study (one study per arm and outer fold); the second paper ran 20
    lr: tuple[float, float] = (1e-5, 1e-2)  # Adam learning rate, log-uniform (the paper's 1e-3 inside)
    batch_sizes: tuple[int, ...] = (8, 16, 32)  # categorical (the paper's 8 among them)
    # Adam's L2 penalty, log-uniform. A log scale cannot reach the paper's 0; 1e-6 is as good as 0 here.
    weight_decay: tuple[float, float] = (1e-6, 1e-2)
    outer_repeats: int = 1  # the protocol's first repeats whose folds are searched
    arms: tuple[str, ...] = ("imagenet", "multistage")  # the single-stage and the multi-stage arm
    startup_trials: int = 10  # random trials before TPE models the results (Optuna's default)
    prune_after: int = 3  # epochs every trial runs before the median pruner may stop it
    seed: int = 0  # sampler seed of worker 0 (worker k uses seed + k)


SEARCHES: dict[str, SearchConfig] = {
    "smoke": SearchConfig(n_trials=3, startup_trials=2, prune_after=1),
    # 2 arms x 5 outer folds x 20 trials = 200 short stage-2 trainings on the CPU.
    "quick": SearchConfig(),
    "paper": SearchConfig(outer_repeats=3),
}

#: Columns of ``search_trials.csv`` (the results contract first, then where each trial belongs).
TRIAL_COLUMNS = ["study", "trial", "state", "lr", "batch_size", "weight_decay", "value", "duration_s",
                 "arm", "repeat", "fold", "epochs", "val_accuracy", "worker"]
#: Columns of ``search_outer.csv``: the test fold results of both settings on the searched folds.
OUTER_COLUMNS = ["arm", "setting", "repeat", "fold", "accuracy", "auc", "lr", "batch_size", "weight_decay",
                 "n_train", "n_test"]
#: Settings a trial searches, in the order of the tables.
PARAMS = ("lr", "batch_size", "weight_decay")
#: Trials that count towards ``n_trials``: failed ones (e.g. a killed worker's) are replaced.
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def get_search(profile: str, **changes: Any) -> SearchConfig:
    """The search settings named like the profile, with optional changes."""
    if profile not in SEARCHES:
        raise ValueError(f"no search settings for profile {profile!r}; expected one of {sorted(SEARCHES)}")
    search = replace(SEARCHES[profile], **changes)
    if search.n_trials < 1 or search.outer_repeats < 1:
        raise ValueError(f"n_trials={search.n_trials}, outer_repeats={search.outer_repeats}; both must be >= 1")
    return search


@dataclass(frozen=True)
class PlannedStudy:
    """One Optuna study: an arm on one outer fold."""

    run: FoldRun  # the protocol's run of this arm and fold (paper settings)
    name: str  # the study's name in the storage: arm/fold/digest of every setting it depends on

    @property
    def arm(self) -> str:
        return self.run.arm


def searched_folds(folds: pd.DataFrame, search: SearchConfig) -> pd.DataFrame:
    """The protocol's folds of the searched repeats."""
    have = int(folds["repeat"].nunique())
    if search.outer_repeats > have:
        raise ValueError(f"outer_repeats={search.outer_repeats} but the folds have {have} repeat(s)")
    return folds[folds["repeat"] < search.outer_repeats].reset_index(drop=True)


def plan(profile: Profile, search: SearchConfig, folds: pd.DataFrame, *,
         runs_root: str | Path | None = None) -> list[PlannedStudy]:
    """Every study: fold by fold, arm by arm. A name changes with the profile, the search
    settings, the code version or the bridge checkpoint, so a stale study is never continued."""
    studies = []
    for run in protocol_plan(profile, searched_folds(folds, search), arms=search.arms):
        settings = stages.settings(profile, run.name, "stage2", run.init_from, run.seed, run.init_seed, run.split,
                                   runs_root)
        digest = hashlib.sha256(json.dumps({"run": settings, "search": asdict(search)}, sort_keys=True)
                                .encode()).hexdigest()[:10]
        studies.append(PlannedStudy(run, f"{run.arm}/{run.split.key}/{digest}"))
    return studies


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


def suggest(trial: optuna.Trial, search: SearchConfig) -> dict[str, Any]:
    return {"lr": trial.suggest_float("lr", *search.lr, log=True),
            "batch_size": trial.suggest_categorical("batch_size", list(search.batch_sizes)),
            "weight_decay": trial.suggest_float("weight_decay", *search.weight_decay, log=True)}


def objective(profile: Profile, search: SearchConfig, planned: PlannedStudy, *, data_dir: str | Path | None = None,
              weights_dir: str | Path | None = None, runs_root: str | Path | None = None, device: str = "auto",
              worker: str = ""):
    """The function a study minimises: the validation loss after stage 2's last epoch.

    The loss, not the accuracy: 32 validation images move accuracy in steps of 3
    points, and the final weights (not the best epoch's) are what the protocol tests.
    """
    run = planned.run
    torch_device = repro.pick_device(device)
    # The test fold is dropped here, before any trial: nothing below can see it.
    tuning_data = stages.prepare_data(profile, "stage2", seed=run.seed, split=run.split,
                                      data_dir=data_dir).without("test")
    epochs = profile.stage2.num_epochs

    def evaluate(trial: optuna.Trial) -> float:
        params = suggest(trial, search)
        trial.set_user_attr("worker", worker)
        generator = repro.seed_everything(run.seed, deterministic=profile.deterministic)
        model, _ = stages.initial_model(profile, init_from=run.init_from, num_classes=tuning_data.num_classes,
                                        seed=run.init_seed, runs_root=runs_root, weights_dir=weights_dir)

        def report(state: dict[str, Any]) -> None:
            loss = state["history"][-1]["val_loss"]
            trial.set_user_attr("epochs", state["epoch"])
            trial.report(loss, state["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation loss {loss:.3f} after epoch {state['epoch']} is above the median")

        history = train.fit(
            model,
            tuning_data.loader("train", batch_size=params["batch_size"], augment=True, generator=generator,
                               device=torch_device),
            tuning_data.loader("val", batch_size=64, device=torch_device),
            num_epochs=epochs, lr=params["lr"], weight_decay=params["weight_decay"], device=torch_device,
            precision=profile.precision, compile=profile.compile, on_epoch=report, progress=False,
        )
        trial.set_user_attr("val_accuracy", float(history["val_accuracy"].iloc[-1]))
        return float(history["val_loss"].iloc[-1])

    return evaluate


def _bridges_ready(profile: Profile, studies: list[PlannedStudy], runs_root: str | Path | None) -> None:
    for name, seed in sorted({(s.run.init_from, s.run.init_seed) for s in studies if s.run.init_from in STAGE1_INIT}):
        if not stages.is_complete(name, profile, stage="stage1", init_from=STAGE1_INIT[name], seed=seed,
                                  runs_root=runs_root):
            where = stages.run_dir_for(profile, name, seed, runs_root).relative_to(paths.runs_dir(runs_root))
            raise FileNotFoundError(f"{where.as_posix()} (in the runs folder): bridge run missing or incomplete; run "
                                    f"the stage-1 notebooks first (make study), or copy it from the machine that did")


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
         weights_dir: str | Path | None = None, runs_root: str | Path | None = None, device: str = "auto") -> int:
    """One worker: add trials to each planned study until it holds ``search.n_trials``;
    return how many trials this worker ran. Any number of workers (processes or machines)
    may run this at once on the same storage. A worker starts a trial only while the study
    holds fewer than ``n_trials`` finished or running ones; two workers that check in the
    same instant can both start, so a study may end with up to ``workers - 1`` extra trials
    (Optuna has no atomic "start a trial if fewer than n"); the tables count what ran."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if folds is None:
        folds, _ = head_ct_folds(profile, data_dir=data_dir, runs_root=runs_root)
    studies = plan(profile, search, folds, runs_root=runs_root)
    _bridges_ready(profile, studies, runs_root)
    storage_obj = open_storage(storage or default_storage(profile, runs_root))
    label = f"{socket.gethostname()}:{os.getpid()}"
    ran = 0
    for index, planned in enumerate(studies):
        study = open_study(planned, storage_obj, search, seed=search.seed + worker + 1000 * index)
        study.set_user_attr("settings", {"search": asdict(search), "profile": profile.to_dict(),
                                         "code_version": __version__})
        evaluate = None
        while counted_trials(study) < search.n_trials:
            evaluate = evaluate or objective(profile, search, planned, data_dir=data_dir, weights_dir=weights_dir,
                                             runs_root=runs_root, device=device, worker=label)
            study.optimize(evaluate, n_trials=1)
            ran += 1
    return ran


@dataclass
class SearchResult:
    """A finished search: its studies, trial table, best settings and the outer-fold comparison."""

    studies: list[PlannedStudy]
    storage: str  # the storage URL (as given; see ``describe_storage``)
    trials: pd.DataFrame  # TRIAL_COLUMNS
    best: pd.DataFrame  # per study: arm, repeat, fold, the best settings, their validation loss
    outer: pd.DataFrame  # OUTER_COLUMNS
    tuned: list[StageResult]
    paper: list[StageResult]
    trials_run: int  # trials run by this call (0 when everything was in the storage already)


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
    return best[["arm", "repeat", "fold", "study", "trial", *PARAMS, "value", "val_accuracy", "n_complete",
                 "n_pruned"]].sort_values(["arm", "repeat", "fold"]).reset_index(drop=True)


def _outer_row(result: StageResult, arm: str, setting: str) -> dict[str, Any]:
    split, stage2 = result.config["split"], result.config["profile"]["stage2"]
    counts = pd.DataFrame(result.metrics["provenance"]["split_counts"]).groupby("part")["n"].sum()
    return {"arm": arm, "setting": setting, "repeat": split["repeat"], "fold": split["fold"],
            "accuracy": result.metrics["accuracy"], "auc": result.metrics["auc"], "lr": stage2["lr"],
            "batch_size": stage2["batch_size"], "weight_decay": stage2["weight_decay"],
            "n_train": int(counts["train"]), "n_test": int(counts["test"])}


def run_search(
    profile: Profile,
    search: SearchConfig,
    *,
    storage: str | None = None,
    folds: pd.DataFrame | None = None,
    data_dir: str | Path | None = None,
    weights_dir: str | Path | None = None,
    runs_root: str | Path | None = None,
    device: str = "auto",
    workers: int | None = None,
    force: bool = False,
) -> SearchResult:
    """The whole search: bridges, ``workers`` worker processes filling every study, then the
    final run of each study's best settings and the paper-settings run of the same fold.

    ``workers=None``: ``stages.default_workers`` for the number of trials to run. Studies
    already complete in the storage are reused; ``force`` re-trains the final runs only
    (a study is restarted by deleting it from the storage or changing its settings).
    """
    if folds is None:
        folds, _ = head_ct_folds(profile, data_dir=data_dir, runs_root=runs_root)
    studies = plan(profile, search, folds, runs_root=runs_root)
    common = dict(data_dir=data_dir, weights_dir=weights_dir, runs_root=runs_root, device=device)
    for name, seed in sorted({(s.run.init_from, s.run.init_seed) for s in studies
                              if s.run.init_from in STAGE1_INIT}):
        stages.run_stage(name, profile, stage="stage1", init_from=STAGE1_INIT[name], seed=seed, **common)
    studies = plan(profile, search, folds, runs_root=runs_root)  # names hold the bridges' checksums
    storage = storage or default_storage(profile, runs_root)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage_obj = open_storage(storage)
    todo = sum(max(0, search.n_trials - counted_trials(open_study(s, storage_obj, search))) for s in studies)
    workers = stages.default_workers(todo, device) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers={workers}; expected at least 1")
    job = dict(storage=storage, folds=folds, **common)
    if todo == 0:
        ran = 0
    elif workers == 1:
        ran = work(profile, search, worker=0, **job)
    else:
        threads = max(1, torch.get_num_threads() // workers)
        log.info("%d trials to run, %d workers side by side (%d CPU thread(s) each)", todo, workers, threads)
        # spawn, not fork: forking a process that already runs torch threads can deadlock.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=stages.init_worker,
                                 initargs=(threads,)) as pool:
            futures = [pool.submit(work, profile, search, worker=k, **job) for k in range(workers)]
            ran = sum(f.result() for f in futures)
    trials = trial_table(studies, storage_obj)
    best = best_table(trials)
    by_name = best.set_index("study")
    jobs = []
    for planned in studies:
        run = planned.run
        jobs.append(dict(name=f"tuned_{run.arm}", profile=tuned_profile(profile, by_name.loc[planned.name]),
                         stage="stage2", init_from=run.init_from, seed=run.seed, split=run.split,
                         init_seed=run.init_seed, force=force, **common))
    tuned = stages.run_stages(jobs, workers=workers, device=device, description="tuned runs")
    paper = run_protocol(profile, arms=search.arms, folds=searched_folds(folds, search), workers=workers, **common)
    outer = pd.DataFrame([_outer_row(r, s.arm, "tuned") for s, r in zip(studies, tuned)]
                         + [_outer_row(r, r.config["name"].removeprefix("cv_"), "paper") for r in paper],
                         columns=OUTER_COLUMNS)
    return SearchResult(studies, storage, trials, best, outer, tuned, paper, ran)


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


def wall_seconds(trials: pd.DataFrame, studies: dict[str, optuna.Study]) -> float:
    """From the first trial's start to the last trial's end, over every study (all workers)."""
    starts, ends = [], []
    for study in studies.values():
        for t in study.get_trials(deepcopy=False):
            if t.datetime_start and t.datetime_complete:
                starts.append(t.datetime_start)
                ends.append(t.datetime_complete)
    return (max(ends) - min(starts)).total_seconds() if starts else 0.0


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
    parser.add_argument("--outer-repeats", type=int, default=None,
                        help="protocol repeats whose folds are searched (default: the profile's)")
    parser.add_argument("--arms", nargs="+", default=None, help="arms to search (default: imagenet multistage)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    profile = get_profile(args.profile, **({"data": args.data} if args.data else {}))
    changes = {"n_trials": args.trials, "outer_repeats": args.outer_repeats,
               "arms": tuple(args.arms) if args.arms else None}
    search = get_search(args.profile, **{k: v for k, v in changes.items() if v is not None})
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
