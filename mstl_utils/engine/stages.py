"""One transfer stage as a run directory.

A stage starts from ``imagenet``, ``scratch`` or an earlier stage's checkpoint
(named by that stage, e.g. ``stage1``), fine-tunes on its dataset and writes

    runs/<profile>/<name>/seed<k>/             (or repeat<r>_fold<f>/ for a cross-validation fold)
        config.json       what was asked for (profile, stage, init_from, seed)
        history.csv       per-epoch train/validation loss and accuracy
        predictions.csv   test-part probabilities, one row per image
        checkpoint.pt     weights + config + provenance of the starting weights
        metrics.json      test metrics and provenance; written last, so it marks a complete run
        resume.pt         while training: the state after the last finished epoch (removed at the end)

A run that was killed continues from ``resume.pt`` when started again with the same
settings, and ends with the same metrics as an uninterrupted run (bit for bit on
the CPU in deterministic mode).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .. import __version__
from ..data import datasets as data_mod, generated
from ..models import registry as models, transfer
from ..core import paths, repro
from . import train
from ..core.config import Profile, StageConfig
from ..report.metrics import binary_metrics, multiclass_metrics

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    """What a stage produced, read back from its run directory."""

    name: str
    run_dir: Path
    config: dict[str, Any]
    history: pd.DataFrame
    predictions: pd.DataFrame
    metrics: dict[str, Any]  # test metrics plus "provenance"


@dataclass(frozen=True)
class Split:
    """A fixed test part: one fold of one repeat of the cross-validation (see ``mstl_utils.data.folds``)."""

    repeat: int
    fold: int
    test_ids: tuple[str, ...]  # the dataset's image ids (``group`` column) in the test part

    @property
    def key(self) -> str:
        return f"repeat{self.repeat:02d}_fold{self.fold}"


def run_dir_for(profile: Profile, name: str, seed: int, runs_root: str | Path | None = None,
                split: Split | None = None) -> Path:
    return paths.runs_dir(runs_root) / profile.name / name / (split.key if split else f"seed{seed}")


def stage_config(profile: Profile, stage: str) -> StageConfig:
    if stage not in ("stage1", "stage2"):
        raise ValueError(f"stage={stage!r}; expected 'stage1' or 'stage2'")
    return getattr(profile, stage)


#: ``balance`` choices of ``run_stage``: weight the loss, or duplicate minority images (None: neither).
BALANCE_CHOICES = ("class_weights", "oversample")


def _requested(profile: Profile, name: str, stage: str, init_from: str, seed: int,
               init_seed: int, split: Split | None, in_chans: int = 1, balance: str | None = None,
               synthetic_dir: str | Path | None = None, strategy: str = transfer.DEFAULT) -> dict[str, Any]:
    requested = {"name": name, "stage": stage, "init_from": init_from, "seed": seed,
                 "profile": profile.to_dict(), "code_version": __version__}
    # Only non-default keys, so that runs made before these options existed are still reused.
    if init_seed != seed:
        requested["init_seed"] = init_seed
    if split is not None:
        requested["split"] = {"repeat": split.repeat, "fold": split.fold, "test_ids": sorted(split.test_ids)}
    if in_chans != 1:
        requested["in_chans"] = in_chans
    if strategy != transfer.DEFAULT:
        requested["strategy"] = asdict(transfer.get(strategy))
    if balance is not None:
        if balance not in BALANCE_CHOICES:
            raise ValueError(f"balance={balance!r}; expected None or one of {BALANCE_CHOICES}")
        requested["balance"] = balance
    if synthetic_dir is not None:  # the images themselves, by the manifest of their sha256s
        requested["synthetic"] = {"folder": Path(synthetic_dir).name, "sha256": generated.folder_sha256(synthetic_dir)}
    return requested


def settings(profile: Profile, name: str, stage: str, init_from: str, seed: int, init_seed: int,
             split: Split | None, runs_root: str | Path | None, in_chans: int = 1, balance: str | None = None,
             synthetic_dir: str | Path | None = None, strategy: str = transfer.DEFAULT) -> dict[str, Any]:
    """What a run is asked to do, in the form ``config.json`` holds it."""
    requested = _requested(profile, name, stage, init_from, seed, init_seed, split, in_chans, balance, synthetic_dir,
                           strategy)
    if init_from not in ("imagenet", "scratch"):
        # A chained run is only reusable while the checkpoint it started from is the same one.
        upstream = run_dir_for(profile, init_from, init_seed, runs_root) / "checkpoint.pt"
        requested["init_sha256"] = repro.sha256_file(upstream) if upstream.is_file() else None
    return json.loads(json.dumps(requested))


def _complete_with(run_dir: Path, requested: dict[str, Any]) -> bool:
    return ((run_dir / "metrics.json").is_file()
            and json.loads((run_dir / "config.json").read_text()) == requested)


def is_complete(name: str, profile: Profile, *, stage: str, init_from: str, seed: int = 0,
                runs_root: str | Path | None = None, split: Split | None = None, init_seed: int | None = None,
                in_chans: int = 1, balance: str | None = None, synthetic_dir: str | Path | None = None,
                strategy: str = transfer.DEFAULT, **_: Any) -> bool:
    """True when ``run_stage`` with these arguments (and no ``force``) would reuse a complete run."""
    requested = settings(profile, name, stage, init_from, seed, seed if init_seed is None else init_seed, split,
                          runs_root, in_chans, balance, synthetic_dir, strategy)
    return _complete_with(run_dir_for(profile, name, seed, runs_root, split), requested)


#: The per-epoch state of an unfinished run (see ``train.fit``).
RESUME_FILE = "resume.pt"


def _resume_state(resume_file: Path, requested: dict[str, Any]) -> dict[str, Any] | None:
    """The saved state of an interrupted run with the same settings, else None."""
    if not resume_file.is_file():
        return None
    try:
        state = train.load_checkpoint(resume_file)
    except ValueError as error:
        log.warning("%s; starting the run again", error)
        return None
    if state.get("requested") != requested:
        log.info("%s: saved by a run with other settings; starting again", paths.relative(resume_file))
        return None
    return state


def load_result(run_dir: str | Path) -> StageResult:
    """Read a complete run directory back."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").is_file():
        raise FileNotFoundError(f"{run_dir}: not a complete run (no metrics.json)")
    config = json.loads((run_dir / "config.json").read_text())
    return StageResult(
        name=config["name"],
        run_dir=run_dir,
        config=config,
        history=pd.read_csv(run_dir / "history.csv"),
        predictions=pd.read_csv(run_dir / "predictions.csv", dtype={"image_id": str, "file": str}),
        metrics=json.loads((run_dir / "metrics.json").read_text()),
    )


def _write_json(path: Path, value: Any) -> None:
    repro.atomic_write(path, lambda tmp: tmp.write_text(json.dumps(value, indent=2, sort_keys=True, default=str)))


def prepare_data(profile: Profile, stage: str, *, seed: int, split: Split | None = None,
                 data_dir: str | Path | None = None, in_chans: int = 1) -> data_mod.StageData:
    """The data of one run: its train, validation and test parts are fixed by ``seed`` and ``split``
    (the hyperparameter search relies on getting exactly the parts the run gets); ``in_chans=3``: RGB."""
    cfg = stage_config(profile, stage)
    return data_mod.prepare(
        cfg.dataset, data=profile.data, data_dir=data_dir, image_size=profile.image_size,
        test_fraction=profile.head_ct_test_fraction, val_fraction=cfg.val_fraction,
        max_per_class=cfg.max_per_class, seed=seed, test_groups=split.test_ids if split else None,
        in_chans=in_chans,
    )


def initial_model(profile: Profile, *, init_from: str, num_classes: int, seed: int,
                  runs_root: str | Path | None = None, weights_dir: str | Path | None = None, in_chans: int = 1):
    """(model, WeightsInfo) a stage starts from; ``seed`` picks an earlier stage's run."""
    if init_from in ("imagenet", "scratch"):
        return models.build_model(profile.model, num_classes=num_classes, init=init_from, weights_dir=weights_dir,
                                  allow_random=profile.allow_random_imagenet, in_chans=in_chans)
    checkpoint_file = run_dir_for(profile, init_from, seed, runs_root) / "checkpoint.pt"
    checkpoint = train.load_checkpoint(checkpoint_file)
    if checkpoint.get("in_chans", 1) != in_chans:
        raise ValueError(f"{init_from}/seed{seed} takes in_chans={checkpoint.get('in_chans', 1)}; "
                         f"this run asks for in_chans={in_chans}")
    return models.load_from_checkpoint(
        checkpoint, num_classes=num_classes, stage=init_from,
        file=f"{init_from}/seed{seed}/checkpoint.pt", sha256=repro.sha256_file(checkpoint_file),
    )


def run_stage(
    name: str,
    profile: Profile,
    *,
    stage: str,
    init_from: str,
    seed: int = 0,
    data_dir: str | Path | None = None,
    weights_dir: str | Path | None = None,
    runs_root: str | Path | None = None,
    device: str = "auto",
    force: bool = False,
    split: Split | None = None,
    init_seed: int | None = None,
    in_chans: int = 1,
    balance: str | None = None,
    synthetic_dir: str | Path | None = None,
    strategy: str = transfer.DEFAULT,
    progress: bool = True,
) -> StageResult:
    """Run (or reuse, when complete with the same settings) one stage; return its result.

    ``split`` fixes the test part (a cross-validation fold); ``init_seed`` picks the
    earlier stage's run to start from when it differs from ``seed``; ``in_chans=3``
    trains on RGB images instead of grey (the colour-shortcut experiment only); ``strategy`` names a
    transfer strategy of ``mstl_utils.models.transfer`` (what is trained, batch norm, learning rates). ``synthetic_dir``
    (a folder of ``mstl_utils.data.generated``) adds generated images to the training part only;
    ``balance`` then evens the training classes: ``"class_weights"`` (inverse-frequency loss
    weights) or ``"oversample"`` (minority images drawn again). An interrupted
    run with the same settings is resumed from its last finished epoch (``force``
    starts it again). ``progress``: console progress bars over batches.
    """
    cfg = stage_config(profile, stage)
    init_seed = seed if init_seed is None else init_seed
    run_dir = run_dir_for(profile, name, seed, runs_root, split)
    requested = settings(profile, name, stage, init_from, seed, init_seed, split, runs_root, in_chans, balance,
                         synthetic_dir, strategy)
    if not force and _complete_with(run_dir, requested):
        log.info("%s: complete with the same settings, reused", paths.relative(run_dir))
        return load_result(run_dir)
    (run_dir / "metrics.json").unlink(missing_ok=True)  # incomplete until the end
    resume_file = run_dir / RESUME_FILE
    resume = None if force else _resume_state(resume_file, requested)
    started = repro.now()
    clock = time.perf_counter()
    if profile.num_threads:
        torch.set_num_threads(profile.num_threads)
    generator = repro.seed_everything(seed, deterministic=profile.deterministic)
    torch_device = repro.pick_device(device)

    stage_data = prepare_data(profile, stage, seed=seed, split=split, data_dir=data_dir, in_chans=in_chans)
    n_real_train = int((stage_data.table["part"] == "train").sum())
    if synthetic_dir is not None:
        stage_data = generated.add_to_train(stage_data, synthetic_dir)
    if balance == "oversample":
        stage_data = generated.oversample(stage_data, seed=seed)
    weights_of_classes = generated.class_weights(stage_data) if balance == "class_weights" else None
    model, weights = initial_model(profile, init_from=init_from, num_classes=stage_data.num_classes,
                                   seed=init_seed, runs_root=runs_root, weights_dir=weights_dir, in_chans=in_chans)
    param_groups = transfer.apply(model, profile.model, strategy, cfg.lr)
    _write_json(run_dir / "config.json", requested)

    history = train.fit(
        model,
        stage_data.loader("train", batch_size=cfg.batch_size, augment=True, generator=generator, device=torch_device),
        stage_data.loader("val", batch_size=64, device=torch_device),
        num_epochs=cfg.num_epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, device=torch_device,
        precision=profile.precision, compile=profile.compile, resume=resume, progress=progress,
        on_epoch=lambda state: train.save_checkpoint(resume_file, {"requested": requested, **state}),
        params=param_groups,
        class_weights=weights_of_classes,
    )
    train_seconds = float(history["seconds"].sum())
    probs, labels = train.predict(model, stage_data.loader("test", batch_size=64, device=torch_device),
                                  device=torch_device, precision=profile.precision)
    test_rows = stage_data.table[stage_data.table["part"] == "test"]
    predictions = pd.DataFrame({
        "image_id": test_rows["group"].to_numpy(),
        "file": [Path(p).relative_to(stage_data.source.root).as_posix() for p in test_rows["path"]],
        "label": labels,
        **{f"prob_{c}": probs[:, i] for i, c in enumerate(stage_data.class_names)},
        "pred": probs.argmax(1),
    })
    metrics = (binary_metrics(labels, probs[:, 1]) if stage_data.num_classes == 2
               else multiclass_metrics(labels, probs, stage_data.class_names))

    for table, file_name in ((history, "history.csv"), (predictions, "predictions.csv")):
        repro.atomic_write(run_dir / file_name, lambda tmp, table=table: table.to_csv(tmp, index=False))
    checkpoint = {
        "model": profile.model, "num_classes": stage_data.num_classes, "class_names": list(stage_data.class_names),
        "state_dict": model.cpu().state_dict(), "config": requested, "weights": asdict(weights),
        **({"in_chans": in_chans} if in_chans != 1 else {}),  # absent: grey, as in every earlier checkpoint
    }
    train.save_checkpoint(run_dir / "checkpoint.pt", checkpoint)
    metrics["provenance"] = {
        "profile": profile.name,
        "stage": stage, "name": name, "init_from": init_from, "seed": seed, "init_seed": init_seed,
        "split": split.key if split else None,
        "model": profile.model,
        "image_size": profile.image_size,
        "data": stage_data.describe(),
        "split_counts": stage_data.table.groupby(["part", "label"]).size().rename("n").reset_index().to_dict("records"),
        "weights": asdict(weights),
        "strategy": asdict(transfer.get(strategy)),
        "trainable_params": transfer.trainable_parameters(model),
        "code": {**repro.git_version(paths.project_root()), "package_version": __version__},
        "hardware": repro.hardware(),
        "device": repro.describe_device(torch_device),
        "precision": train.resolve_precision(profile.precision, torch_device),
        "num_threads": torch.get_num_threads(),
        "resumed_after_epoch": resume["epoch"] if resume else None,
        "started": started,
        "finished": repro.now(),
        "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - clock,
    }
    if balance is not None or synthetic_dir is not None:
        metrics["provenance"]["balancing"] = {
            "balance": balance, "n_real_train": n_real_train,
            "n_generated": int((stage_data.table["split"] == generated.SPLIT).sum()),
            "train_counts": generated.train_counts(stage_data).to_dict(),
            "class_weights": None if weights_of_classes is None else weights_of_classes.tolist()}
    _write_json(run_dir / "metrics.json", metrics)
    resume_file.unlink(missing_ok=True)  # complete: the final checkpoint replaces the epoch state
    return load_result(run_dir)


# --------------------------------------------------------------------------- several runs side by side


def default_workers(n_jobs: int, device: str = "auto") -> int:
    """Runs to train side by side: one per CPU core (up to 8) on the CPU, 4 on a GPU, but
    only for many runs (at least 4 per worker); fewer run one at a time with every thread.

    Small stage-2 runs (batch 8) use two cores poorly: on the 2-core CI machine two
    one-thread runs together trained more images per second than one two-thread run
    (the benchmark appendix has the figures). With few runs the last round would
    leave cores idle (3 seeds on 2 workers: the third runs alone on one thread), which
    costs more than side by side gains.
    """
    workers = 4 if repro.pick_device(device).type == "cuda" else max(1, min(8, os.cpu_count() or 1))
    return workers if n_jobs >= 4 * workers else 1


def init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    # One line per finished run comes from the parent; a worker only reports problems.
    logging.basicConfig(level=logging.WARNING, format="%(processName)s: %(message)s")


def _run_job(job: dict[str, Any]) -> str:
    return str(run_stage(**job, progress=False).run_dir)


def run_stages(jobs: list[dict[str, Any]], *, workers: int | None = None, device: str = "auto",
               description: str = "runs") -> list[StageResult]:
    """``run_stage(**job)`` for every job, ``workers`` at a time in separate processes; results in job order.

    ``workers=None`` picks ``default_workers(len(jobs), device)``.
    ``workers=1`` runs them one after the other in this process. With more, each worker
    process gets an equal share of the CPU threads, and a console progress bar counts
    finished runs. The first failure stops the rest and is raised, naming its run.
    Jobs must not depend on each other (e.g. a bridge and the folds that start from it).
    """
    jobs = [{**job, "device": job.get("device", device)} for job in jobs]
    # Complete runs are read back here: no worker process is started for them.
    todo = [job for job in jobs if job.get("force") or not is_complete(**job)]
    workers = default_workers(len(todo), device) if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers={workers}; expected at least 1")
    if workers == 1 or len(todo) <= 1:
        return [run_stage(**job) for job in tqdm(jobs, desc=description, disable=None if len(todo) > 1 else True)]
    workers = min(workers, len(todo))
    threads = max(1, torch.get_num_threads() // workers)
    log.info("%d %s (%d complete, reused), %d at a time (%d CPU thread(s) each)", len(todo), description,
             len(jobs) - len(todo), workers, threads)
    # spawn, not fork: forking a process that already runs torch threads can deadlock.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=init_worker, initargs=(threads,)) as pool:
        futures = {pool.submit(_run_job, job): job for job in todo}
        with tqdm(total=len(todo), desc=description, disable=None) as bar:
            pending, finished = set(futures), 0
            while pending:
                # One finished run at a time (not FIRST_EXCEPTION, which waits for all when none fails),
                # so that progress is reported as it happens and a failure stops the rest at once.
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    job = futures[future]
                    error = future.exception()
                    if error is not None:
                        for other in pending:
                            other.cancel()
                        where = run_dir_for(job["profile"], job["name"], job.get("seed", 0), job.get("runs_root"),
                                            job.get("split")).relative_to(paths.runs_dir(job.get("runs_root")))
                        raise RuntimeError(f"run {where.as_posix()} failed: {type(error).__name__}: {error}") from error
                    bar.update()
                    finished += 1  # the bar's own count stays 0 when it is hidden (off a terminal)
                    log.info("%s %s done (%d/%d)", job["name"], job["split"].key if job.get("split") else
                             f"seed{job.get('seed', 0)}", finished, len(todo))
    return [load_result(run_dir_for(job["profile"], job["name"], job.get("seed", 0), job.get("runs_root"),
                                    job.get("split"))) for job in jobs]
