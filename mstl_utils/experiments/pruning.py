"""Lottery-ticket pruning of a transferred network: iterative magnitude pruning with rewinding, and its controls.

Iterative magnitude pruning (IMP; Frankle & Carbin 2019) on one head-CT fold:

    dense stage-2 run (the protocol's fold run) -> prune the smallest-magnitude share of the
    surviving weights (global L1 over the eligible layers) -> rewind the survivors to the
    stage's starting weights (stage 1 or ImageNet, plus the fresh head) -> retrain -> prune ...

The controls take the same sparsities: ``oneshot`` prunes the dense-trained model once, then
rewinds and retrains; ``random`` draws a random global mask, then rewinds and retrains.

``torch.nn.utils.prune`` re-parametrises a pruned weight as ``weight_orig * weight_mask`` (a
forward pre-hook recomputes ``weight``), and each further call prunes a share of what remains.
Here every call is given the exact number of weights to remove, so that the sparsity after
each round is the target to the weight; checkpoints store the effective (masked) weights as a
plain state dict, which any model of the registry loads, plus the masks as booleans, which
``load_pruned`` re-applies. A run writes

    runs/<profile>/prune_<model>_<arm>_<method>[+<scope>]/<split>/
        config.json              what was asked (profile, arm, split, PruneConfig, dense run's sha256)
        round<k>/                one pruning round: metrics.json, history.csv, predictions.csv, checkpoint.pt
        rounds.csv               one row per round (sparsity, parameters left, test metrics)
        metrics.json             provenance; written last, so it marks a complete run

and a killed run continues after its last complete round. ``stage="stage1"`` prunes a stage-1 run
instead (ImageNet or random weights -> chest X-ray, tested on the official test set), rewinding to
the starting weights of that stage; its runs are ``prune_stage1_<model>_<arm>_<method>/seed<k>/``.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.utils import prune

from .. import __version__
from ..models import registry as models
from ..core import paths, repro
from ..engine import stages, train
from ..report import statistics
from ..core.config import ARM_INIT, STAGE1_INIT, Profile
from ..report.metrics import binary_metrics
from ..engine.stages import Split

log = logging.getLogger(__name__)

#: Pruning methods: iterative magnitude pruning with rewinding, and its two controls.
METHODS = ("imp", "oneshot", "random")
#: Which weights take part. "backbone": every convolution and linear weight except the first
#: convolution, the depthwise convolutions and the classifier (few weights, each carrying much:
#: a pruned depthwise 3x3 kernel loses a ninth of its channel's filter); "all": every one.
SCOPES = ("backbone", "all")
#: The stage-1 run (a bridge of the protocol) that stage-1 pruning starts from, per starting point.
STAGE1_DENSE = {init: name for name, init in STAGE1_INIT.items()}


@dataclass(frozen=True)
class PruneConfig:
    """One pruning schedule (goes into every run's config.json)."""

    method: str = "imp"  # one of METHODS
    rate: float = 0.2  # share of the surviving eligible weights removed per IMP round
    rounds: int = 10  # IMP rounds: sparsity after round k is 1 - (1 - rate)^k (10 rounds: 89.3 %)
    scope: str = "backbone"  # one of SCOPES
    at_rounds: tuple[int, ...] = ()  # oneshot/random only: the IMP rounds whose sparsities they are trained at

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}; expected one of {METHODS}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope={self.scope!r}; expected one of {SCOPES}")
        if not 0 < self.rate < 1 or self.rounds < 1:
            raise ValueError(f"rate={self.rate}, rounds={self.rounds}; expected 0 < rate < 1 and rounds >= 1")
        if (self.method == "imp") == bool(self.at_rounds):
            raise ValueError("at_rounds: empty for 'imp' (every round is trained), required for the controls")
        if any(not 1 <= k <= self.rounds for k in self.at_rounds):
            raise ValueError(f"at_rounds={self.at_rounds}; expected rounds between 1 and {self.rounds}")

    @property
    def label(self) -> str:
        """The method as tables name it: ``imp``, ``oneshot``, ``random``, with ``+all`` for the wider scope."""
        return self.method if self.scope == "backbone" else f"{self.method}+{self.scope}"

    def schedule(self) -> list[tuple[int, float]]:
        """(round, target sparsity of the eligible weights) of every round this run trains."""
        rounds = range(1, self.rounds + 1) if self.method == "imp" else self.at_rounds
        return [(k, 1 - (1 - self.rate) ** k) for k in rounds]


@dataclass(frozen=True)
class PruningPlan:
    """What the pruning chapter runs for one profile: the schedules, and a second network."""

    repeats: tuple[int, ...] = (0,)  # protocol repeats whose folds are pruned (repeat 0: its 5 folds)
    max_folds: int | None = None  # only the first folds of each repeat (None: all)
    rate: float = 0.2  # IMP: share of the surviving weights removed per round
    rounds: int = 10  # IMP rounds (10 x 20 %: 89.3 % of the eligible weights)
    control_rounds: tuple[int, ...] = (3, 6, 10)  # one-shot and random controls at these rounds' sparsities
    scope: str = "backbone"  # the layers taking part (SCOPES)
    scope_round: int = 10  # the other scope is measured once: one-shot at this round's sparsity
    second_model: str = "resnet18"  # a network of the second paper, from random weights ("": none)
    second_image_size: int = 64  # its input size (ResNet-18 costs ~6x MobileNetV2 per pixel)
    second_rate: float = 0.5  # its IMP rate per round (fewer, larger rounds)
    second_rounds: int = 3  # its IMP rounds (3 x 50 %: 87.5 %)
    stage1_rate: float = 0.5  # stage 1 (ImageNet -> chest X-ray): IMP rate per round ...
    stage1_rounds: int = 3  # ... and rounds (3 x 50 %: 87.5 %; each retraining is a whole stage 1); 0: none
    latency_repeats: int = 30  # timed forward passes per model (the median is reported)

    def configs(self) -> list[PruneConfig]:
        """IMP, the one-shot and random controls, and the other scope once."""
        other = next(s for s in SCOPES if s != self.scope)
        common = dict(rate=self.rate, rounds=self.rounds)
        # Fewer rounds than the plan's (a notebook parameter): the controls keep the rounds that remain.
        at = tuple(k for k in self.control_rounds if k <= self.rounds) or (self.rounds,)
        return [PruneConfig(scope=self.scope, **common),
                PruneConfig(method="oneshot", scope=self.scope, at_rounds=at, **common),
                PruneConfig(method="random", scope=self.scope, at_rounds=at, **common),
                PruneConfig(method="oneshot", scope=other, at_rounds=(min(self.scope_round, self.rounds),), **common)]

    def second_configs(self) -> list[PruneConfig]:
        """The second network's smaller budget: IMP and the random control at its last round."""
        common = dict(rate=self.second_rate, rounds=self.second_rounds, scope=self.scope)
        return [PruneConfig(**common), PruneConfig(method="random", at_rounds=(self.second_rounds,), **common)]

    def stage1_configs(self) -> list[PruneConfig]:
        """Stage 1 on chest X-ray: IMP, and the one-shot and random controls at its last round."""
        if not self.stage1_rounds:
            return []
        common = dict(rate=self.stage1_rate, rounds=self.stage1_rounds, scope=self.scope)
        return [PruneConfig(**common), *(PruneConfig(method=m, at_rounds=(self.stage1_rounds,), **common)
                                         for m in ("oneshot", "random"))]

    def second_profile(self, profile: Profile) -> Profile | None:
        """``profile`` for the second network, or None when there is none or the model registry lacks it."""
        if not self.second_model or self.second_model not in models.MODELS:
            return None
        return profile.replace(model=self.second_model, image_size=self.second_image_size)


PLANS: dict[str, PruningPlan] = {
    "smoke": PruningPlan(max_folds=2, rate=0.5, rounds=2, control_rounds=(2,), scope_round=2, second_model="",
                         stage1_rounds=1, latency_repeats=2),
    "quick": PruningPlan(),
    "paper": PruningPlan(repeats=tuple(range(10)), second_image_size=224, second_rate=0.2, second_rounds=10,
                         stage1_rate=0.2, stage1_rounds=10),
}


def get_plan(profile: str, **changes: Any) -> PruningPlan:
    """The pruning plan of ``profile`` with ``changes`` (lists become tuples)."""
    if profile not in PLANS:
        raise ValueError(f"no pruning plan for profile {profile!r}; expected one of {sorted(PLANS)}")
    return replace(PLANS[profile], **{k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()})


# --------------------------------------------------------------------------- what pruning buys


def file_sizes(model: nn.Module) -> dict[str, float]:
    """Size in MB of the weights written three ways: ``dense_mb`` (torch.save of fp32 tensors),
    ``dense_zip_mb`` (the same arrays, zip-compressed) and ``sparse_mb`` (pruned tensors as fp32
    survivors plus a one-bit mask, everything else dense, zip-compressed)."""
    state = {k: v.detach().cpu() for k, v in effective_state(model).items()}
    masks = masks_of(model)

    def size(write) -> float:
        buffer = io.BytesIO()
        write(buffer)
        return buffer.getbuffer().nbytes / 1e6

    arrays = {k: v.numpy() for k, v in state.items()}
    sparse = {}
    for key, value in arrays.items():
        if key in masks:
            mask = masks[key].numpy()
            sparse[f"{key}.values"] = value[mask]
            sparse[f"{key}.bits"] = np.packbits(mask.ravel())
        else:
            sparse[key] = value
    return {"dense_mb": size(lambda b: torch.save(state, b)),
            "dense_zip_mb": size(lambda b: np.savez_compressed(b, **arrays)),
            "sparse_mb": size(lambda b: np.savez_compressed(b, **sparse))}


@torch.inference_mode()
def cpu_latency_ms(model: nn.Module, image_size: int, *, repeats: int = 30, warmup: int = 5, threads: int = 1) -> float:
    """Median milliseconds of one forward pass at batch 1 on the CPU with ``threads`` threads."""
    model = model.cpu().eval().to(memory_format=torch.contiguous_format)
    x = torch.rand(1, getattr(model, "in_chans", 1), image_size, image_size)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        times = []
        for i in range(warmup + repeats):
            start = time.perf_counter()
            model(x)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return 1000 * float(np.median(times))


# --------------------------------------------------------------------------- one fold's rounds as a run directory


@dataclass
class PruneResult:
    """A complete pruning run, read back from its run directory."""

    run_dir: Path
    config: dict[str, Any]  # what was asked (config.json)
    rounds: pd.DataFrame  # rounds.csv
    metrics: dict[str, Any]  # provenance (metrics.json)

    @property
    def prune_config(self) -> PruneConfig:
        asked = self.config["prune"]
        return PruneConfig(**{**asked, "at_rounds": tuple(asked["at_rounds"])})


def _check_stage(stage: str, arm: str) -> None:
    if stage == "stage1" and arm not in STAGE1_DENSE:
        raise ValueError(f"stage-1 pruning starts from {sorted(STAGE1_DENSE)} (arm), not {arm!r}")
    if stage not in ("stage1", "stage2"):
        raise ValueError(f"stage={stage!r}; expected 'stage1' or 'stage2'")


def dense_name(profile: Profile, arm: str, stage: str = "stage2") -> str:
    """The dense runs pruning starts from: the protocol's own (``cv_<arm>`` folds; for stage 1 the bridge
    ``stage1`` or ``stage1_scratch``) when ``profile`` is a named profile unchanged, else runs of their own,
    so that the protocol's runs are never overwritten."""
    from ..core.config import get_profile

    _check_stage(stage, arm)
    base = STAGE1_DENSE[arm] if stage == "stage1" else f"cv_{arm}"
    if profile == get_profile(profile.name, data=profile.data):
        return base
    return f"{base}_{profile.model}_{profile.image_size}px"


def run_name(profile: Profile, arm: str, config: PruneConfig, stage: str = "stage2") -> str:
    prefix = "prune" if stage == "stage2" else f"prune_{stage}"
    return f"{prefix}_{profile.model}_{profile.image_size}px_{arm}_{config.label}"


def _init_of(arm: str, stage: str) -> str:
    """The weights the stage starts from, which rounds rewind to."""
    return arm if stage == "stage1" else ARM_INIT[arm]


def _requested(profile: Profile, config: PruneConfig, *, arm: str, split: Split | None, seed: int, init_seed: int,
               runs_root: str | Path | None, stage: str = "stage2") -> dict[str, Any]:
    _check_stage(stage, arm)
    if stage == "stage2" and split is None:
        raise ValueError("stage-2 pruning runs on a fold of the protocol: pass its split")
    name = dense_name(profile, arm, stage)
    dense = stages.run_dir_for(profile, name, seed, runs_root, split) / "checkpoint.pt"
    requested = {"name": run_name(profile, arm, config, stage), "arm": arm, "init_from": _init_of(arm, stage),
                 "seed": seed, "init_seed": init_seed,
                 "split": None if split is None else {"repeat": split.repeat, "fold": split.fold,
                                                      "test_ids": sorted(split.test_ids)},
                 "profile": profile.to_dict(), "prune": asdict(config), "code_version": __version__,
                 # The rounds start from this dense run: a changed one re-runs them.
                 "dense": name, "dense_sha256": repro.sha256_file(dense) if dense.is_file() else None}
    if stage != "stage2":  # only then, so that the stage-2 runs made before stage 1 was added are reused
        requested["stage"] = stage
    return json.loads(json.dumps(requested))


def _complete_with(run_dir: Path, requested: dict[str, Any]) -> bool:
    return ((run_dir / "metrics.json").is_file() and (run_dir / "config.json").is_file()
            and json.loads((run_dir / "config.json").read_text()) == requested)


def is_complete(profile: Profile, config: PruneConfig, *, arm: str, seed: int, init_seed: int,
                split: Split | None = None, runs_root: str | Path | None = None, stage: str = "stage2",
                **_: Any) -> bool:
    """True when ``run_prune`` with these arguments (and no ``force``) would reuse a complete run."""
    requested = _requested(profile, config, arm=arm, split=split, seed=seed, init_seed=init_seed, runs_root=runs_root,
                           stage=stage)
    return _complete_with(stages.run_dir_for(profile, requested["name"], seed, runs_root, split), requested)


def load_prune_result(run_dir: str | Path) -> PruneResult:
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").is_file():
        raise FileNotFoundError(f"{run_dir}: not a complete pruning run (no metrics.json)")
    return PruneResult(run_dir, json.loads((run_dir / "config.json").read_text()),
                       pd.read_csv(run_dir / "rounds.csv"), json.loads((run_dir / "metrics.json").read_text()))


def _write_json(path: Path, value: Any) -> None:
    repro.atomic_write(path, lambda tmp: tmp.write_text(json.dumps(value, indent=2, sort_keys=True, default=str)))


def _train_round(model: nn.Module, stage_data, profile: Profile, *, stage: str, seed: int, device: torch.device,
                 progress: bool) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Retrain a rewound model with the dense run's seed (same data order and augmentation); test it."""
    cfg = stages.stage_config(profile, stage)
    generator = repro.seed_everything(seed, deterministic=profile.deterministic)
    history = train.fit(
        model, stage_data.loader("train", batch_size=cfg.batch_size, augment=True, generator=generator, device=device),
        stage_data.loader("val", batch_size=64, device=device), num_epochs=cfg.num_epochs, lr=cfg.lr,
        # Adam's weight decay would move nothing here (a pruned weight's gradient is zero and
        # its effective value is orig * 0), but the profiles use none anyway.
        weight_decay=cfg.weight_decay, device=device, precision=profile.precision, compile=profile.compile,
        progress=progress)
    probs, labels = train.predict(model, stage_data.loader("test", batch_size=64, device=device), device=device,
                                  precision=profile.precision)
    test_rows = stage_data.table[stage_data.table["part"] == "test"]
    # image_id is the patient on chest X-ray (several images each): the file names the image.
    predictions = pd.DataFrame({"image_id": test_rows["group"].to_numpy(),
                                "file": [Path(p).relative_to(stage_data.source.root).as_posix() for p in test_rows["path"]],
                                "label": labels, "prob": probs[:, 1], "pred": probs.argmax(1)})
    return history, predictions, binary_metrics(labels, probs[:, 1])


def run_prune(profile: Profile, config: PruneConfig, *, arm: str, seed: int, init_seed: int,
              split: Split | None = None, stage: str = "stage2", data_dir: str | Path | None = None,
              weights_dir: str | Path | None = None, runs_root: str | Path | None = None, device: str = "auto",
              force: bool = False, progress: bool = True) -> PruneResult:
    """Every round of ``config`` on one fold (``stage="stage1"``: on the stage-1 task, no split), from the
    complete dense run (``dense_name``); reuses a complete run with the same settings and continues an
    interrupted one after its last complete round."""
    requested = _requested(profile, config, arm=arm, split=split, seed=seed, init_seed=init_seed, runs_root=runs_root,
                           stage=stage)
    run_dir = stages.run_dir_for(profile, requested["name"], seed, runs_root, split)
    if not force and _complete_with(run_dir, requested):
        return load_prune_result(run_dir)
    if requested["dense_sha256"] is None:
        raise FileNotFoundError(f"{requested['dense']}/{split.key if split else f'seed{seed}'}: no dense run to "
                                "prune; run it first (run_pruning and run_pruning_stage1 do)")
    same = (not force and (run_dir / "config.json").is_file()
            and json.loads((run_dir / "config.json").read_text()) == requested)
    for stale in ([] if same else run_dir.glob("round*/metrics.json")):
        stale.unlink()  # rounds of other settings are not reused
    (run_dir / "metrics.json").unlink(missing_ok=True)
    _write_json(run_dir / "config.json", requested)
    started, clock = repro.now(), time.perf_counter()
    if profile.num_threads:
        torch.set_num_threads(profile.num_threads)
    # The dense run's order of draws: seed, data, starting model (its fresh head included).
    repro.seed_everything(seed, deterministic=profile.deterministic)
    torch_device = repro.pick_device(device)
    stage_data = stages.prepare_data(profile, stage, seed=seed, split=split, data_dir=data_dir)
    start_model, weights = stages.initial_model(profile, init_from=requested["init_from"],
                                                num_classes=stage_data.num_classes,
                                                seed=init_seed, runs_root=runs_root, weights_dir=weights_dir)
    start_state = {k: v.clone() for k, v in start_model.state_dict().items()}
    dense_dir = stages.run_dir_for(profile, requested["dense"], seed, runs_root, split)
    dense_model, _ = models.load_from_checkpoint(train.load_checkpoint(dense_dir / "checkpoint.pt"),
                                                 num_classes=stage_data.num_classes, stage=requested["dense"])
    current = start_model if config.method == "random" else dense_model
    rows = []
    for k, target in config.schedule():
        round_dir = run_dir / f"round{k:02d}"
        if (round_dir / "metrics.json").is_file():
            model, _ = load_pruned(round_dir / "checkpoint.pt")
            row = json.loads((round_dir / "metrics.json").read_text())
        else:
            model = copy_model(current)
            params = eligible_parameters(model, config.scope)
            pruned_now = prune_global(model, params, target, method="random" if config.method == "random" else "l1",
                                      seed=1000 * seed + k)
            rewind(model, start_state)
            history, predictions, metrics = _train_round(model, stage_data, profile, stage=stage, seed=seed,
                                                         device=torch_device, progress=progress)
            model.cpu()
            row = {"round": k, "target_sparsity": target, "sparsity": sparsity(params), "pruned_now": pruned_now,
                   "eligible_params": sum(effective_weight(m, n).numel() for m, n in params),
                   "nonzero_params": nonzero_parameters(model), **metrics,
                   "train_seconds": float(history["seconds"].sum())}
            for table, name in ((history, "history.csv"), (predictions, "predictions.csv")):
                repro.atomic_write(round_dir / name, lambda tmp, table=table: table.to_csv(tmp, index=False))
            save_pruned(round_dir / "checkpoint.pt", model, {
                "model": profile.model, "num_classes": stage_data.num_classes,
                "class_names": list(stage_data.class_names), "config": requested, "weights": asdict(weights),
                "round": k, "sparsity": row["sparsity"]})
            _write_json(round_dir / "metrics.json", row)  # last: marks the round complete
            log.info("%s %s round %d: sparsity %.3f, accuracy %.3f", requested["name"], run_dir.name, k,
                     row["sparsity"], row["accuracy"])
        if config.method == "imp":
            current = model  # the next round prunes this round's trained survivors
        rows.append(row)
    rounds = pd.DataFrame(rows)
    repro.atomic_write(run_dir / "rounds.csv", lambda tmp: rounds.to_csv(tmp, index=False))
    _write_json(run_dir / "metrics.json", {"provenance": {
        "name": requested["name"], "stage": stage, "init_from": requested["init_from"],
        "profile": profile.name, "model": profile.model, "image_size": profile.image_size, "arm": arm,
        "method": config.label, "seed": seed, "init_seed": init_seed, "split": split.key if split else None,
        "data": stage_data.describe(), "weights": asdict(weights),
        "dense": {"name": requested["dense"], "sha256": requested["dense_sha256"]},
        "code": {**repro.git_version(paths.project_root()), "package_version": __version__},
        "hardware": repro.hardware(), "device": repro.describe_device(torch_device),
        "num_threads": torch.get_num_threads(), "started": started, "finished": repro.now(),
        "train_seconds": float(rounds["train_seconds"].sum()), "wall_seconds": time.perf_counter() - clock}})
    return load_prune_result(run_dir)


# --------------------------------------------------------------------------- every fold, two at a time


def _run_job(job: dict[str, Any]) -> str:
    return str(run_prune(**job, progress=False).run_dir)


def _job_dir(job: dict[str, Any]) -> Path:
    stage = job.get("stage", "stage2")
    return stages.run_dir_for(job["profile"], run_name(job["profile"], job["arm"], job["config"], stage), job["seed"],
                              job.get("runs_root"), job.get("split"))


def _job_label(job: dict[str, Any]) -> str:
    return f"{_job_dir(job).parent.name} {_job_dir(job).name}"


def run_prunes(jobs: list[dict[str, Any]], *, workers: int | None = None, device: str = "auto") -> list[PruneResult]:
    """``run_prune(**job)`` for every job, ``workers`` at a time in separate processes (as
    ``stages.run_stages``); results in job order. The longest schedules start first, so that the
    workers finish together."""
    todo = sorted((job for job in jobs if job.get("force") or not is_complete(**job)),
                  key=lambda job: -len(job["config"].schedule()))
    workers = stages.default_workers(len(todo), device) if workers is None else workers
    if workers <= 1 or len(todo) <= 1:
        for job in todo:
            run_prune(**job, device=device)
            log.info("%s done", _job_label(job))
    else:
        threads = max(1, torch.get_num_threads() // workers)
        log.info("%d pruning runs (%d complete, reused), %d at a time (%d thread(s) each)", len(todo),
                 len(jobs) - len(todo), workers, threads)
        context = multiprocessing.get_context("spawn")  # not fork: torch threads may already run
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=context, initializer=stages.init_worker,
                                 initargs=(threads,)) as pool:
            pending = {pool.submit(_run_job, {**job, "device": device}): job for job in todo}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    job = pending.pop(future)
                    if future.exception() is not None:
                        for other in pending:
                            other.cancel()
                        raise RuntimeError(f"pruning run {_job_label(job)} failed: {future.exception()}") \
                            from future.exception()
                    log.info("%s done", _job_label(job))
    return [load_prune_result(_job_dir(job)) for job in jobs]


@dataclass
class PruningStudy:
    """The dense fold runs and the pruning runs of one model and arm."""

    profile: Profile
    arm: str
    dense: list[stages.StageResult]
    runs: list[PruneResult]
    bridges: list[stages.StageResult]  # the stage-1 runs the arm starts from (none for imagenet/scratch)

    def metrics(self) -> list[dict[str, Any]]:
        """Every run's metrics with provenance, bridges first (for ``results.provenance``)."""
        return [r.metrics for r in self.bridges + self.dense] + [r.metrics for r in self.runs]


def run_pruning(profile: Profile, configs: list[PruneConfig], *, arm: str, folds: pd.DataFrame,
                repeats: tuple[int, ...] = (0,), max_folds: int | None = None, data_dir: str | Path | None = None,
                weights_dir: str | Path | None = None, runs_root: str | Path | None = None, device: str = "auto",
                force: bool = False, workers: int | None = None) -> PruningStudy:
    """The arm's dense runs on every fold of ``repeats`` (the first ``max_folds`` of each; None: all), the
    protocol's own runs (reused) for an unchanged profile, then every pruning schedule on each fold."""
    from ..core.config import STAGE1_INIT
    from .protocol import bridges, plan

    runs = [r for r in plan(profile, folds, arms=(arm,))
            if r.split.repeat in repeats and (max_folds is None or r.split.fold < max_folds)]
    if not runs:
        raise ValueError(f"no folds of repeats {repeats} in the fold table (it has {sorted(folds['repeat'].unique())})")
    common = dict(data_dir=data_dir, weights_dir=weights_dir, runs_root=runs_root, device=device)
    bridge_runs = [stages.run_stage(name, profile, stage="stage1", init_from=STAGE1_INIT[name], seed=seed, **common)
                   for name, seed in bridges(runs)]
    dense = stages.run_stages([dict(name=dense_name(profile, arm), profile=profile, stage="stage2",
                                    init_from=run.init_from, seed=run.seed, split=run.split, init_seed=run.init_seed,
                                    **common) for run in runs], workers=workers, device=device,
                              description="dense fold runs")
    jobs = [dict(profile=profile, config=config, arm=arm, split=run.split, seed=run.seed, init_seed=run.init_seed,
                 force=force, **{k: v for k, v in common.items() if k != "device"})
            for run in runs for config in configs]
    return PruningStudy(profile, arm, dense, run_prunes(jobs, workers=workers, device=device), bridge_runs)


def run_pruning_stage1(profile: Profile, configs: list[PruneConfig], *, arm: str = "imagenet", seed: int = 0,
                       data_dir: str | Path | None = None, weights_dir: str | Path | None = None,
                       runs_root: str | Path | None = None, device: str = "auto", force: bool = False,
                       workers: int | None = None) -> PruningStudy:
    """Stage 1 pruned: the dense stage-1 run from ``arm``'s weights (the protocol's bridge, reused, for an
    unchanged profile), then every schedule on it, tested on the stage-1 task's official test set."""
    common = dict(data_dir=data_dir, weights_dir=weights_dir, runs_root=runs_root)
    dense = stages.run_stage(dense_name(profile, arm, "stage1"), profile, stage="stage1", init_from=arm, seed=seed,
                             device=device, **common)
    jobs = [dict(profile=profile, config=config, arm=arm, stage="stage1", seed=seed, init_seed=seed, force=force,
                 **common) for config in configs]
    return PruningStudy(profile, arm, [dense], run_prunes(jobs, workers=workers, device=device), [])


# --------------------------------------------------------------------------- tables


#: Columns of ``pruning_folds.csv``: one row per model, arm, method, round and fold.
FOLD_COLUMNS = ["model", "arm", "method", "round", "target_sparsity", "sparsity", "repeat", "fold", "accuracy", "auc",
                "nonzero_params", "train_seconds"]
#: Columns of ``pruning.csv`` (the results contract): one row per model, method and round.
COLUMNS = ["model", "method", "round", "sparsity", "arm", "profile", "accuracy_mean", "accuracy_ci_low",
           "accuracy_ci_high", "auc_mean", "nonzero_params", "sparse_size_mb", "cpu_latency_ms"]


def profile_label(profile: Profile) -> str:
    """The profile's name, with the image size when it differs from the named profile's (e.g. ``quick 64px``)."""
    from ..core.config import PROFILES

    named = PROFILES.get(profile.name)
    return profile.name if named and named.image_size == profile.image_size else f"{profile.name} {profile.image_size}px"


def _dense_model(result: stages.StageResult) -> nn.Module:
    checkpoint = train.load_checkpoint(result.run_dir / "checkpoint.pt")
    return models.load_from_checkpoint(checkpoint, num_classes=checkpoint["num_classes"], stage="dense")[0]


def fold_table(study: PruningStudy) -> pd.DataFrame:
    """``pruning_folds.csv``: every round's test metrics per fold, the dense runs as round 0."""
    rows = []
    for result in study.dense:
        split = result.config["split"]
        rows.append({"model": study.profile.model, "arm": study.arm, "method": "dense", "round": 0,
                     "target_sparsity": 0.0, "sparsity": 0.0, "repeat": split["repeat"], "fold": split["fold"],
                     "accuracy": result.metrics["accuracy"], "auc": result.metrics["auc"],
                     "nonzero_params": nonzero_parameters(_dense_model(result)),
                     "train_seconds": result.metrics["provenance"]["train_seconds"]})
    for run in study.runs:
        split = run.config["split"]
        method = run.prune_config.label
        for row in run.rounds.to_dict("records"):
            rows.append({"model": study.profile.model, "arm": study.arm, "method": method, "repeat": split["repeat"],
                         "fold": split["fold"], **{k: row[k] for k in FOLD_COLUMNS if k in row}})
    return pd.DataFrame(rows)[FOLD_COLUMNS]


def _checkpoints(study: PruningStudy) -> dict[tuple[str, int], Path | stages.StageResult]:
    """The first fold's model of every (method, round): what sizes and latencies are measured on."""
    first = study.dense[0]
    found: dict[tuple[str, int], Any] = {("dense", 0): first}
    for run in study.runs:
        if run.config["split"] == first.config.get("split"):  # stage 1: both None
            for k in run.rounds["round"]:
                found[(run.prune_config.label, int(k))] = run.run_dir / f"round{int(k):02d}" / "checkpoint.pt"
    return found


def costs(study: PruningStudy, *, repeats: int = 30, threads: int = 1) -> pd.DataFrame:
    """Per (method, round), measured on the first fold's model: file sizes (``file_sizes``) and the CPU
    latency at batch 1 of the model as trained (``masked``: pruning hooks multiply each weight by its
    mask on every call) and with the masks made permanent (zeros in dense tensors, no hooks)."""
    rows = []
    for (method, k), source in _checkpoints(study).items():
        model = _dense_model(source) if method == "dense" else load_pruned(source)[0]
        size = study.profile.image_size
        row = {"model": study.profile.model, "method": method, "round": k, **file_sizes(model),
               "latency_masked_ms": cpu_latency_ms(model, size, repeats=repeats, threads=threads)}
        row["latency_permanent_ms"] = cpu_latency_ms(remove_masks(model), size, repeats=repeats, threads=threads)
        rows.append(row)
    return pd.DataFrame(rows)


def summary(folds: pd.DataFrame, measured: pd.DataFrame, *, profile: str, level: float = 0.95) -> pd.DataFrame:
    """``pruning.csv``: per model, arm, method and round the mean accuracy with its t interval over the folds,
    the mean AUC, the parameters left, the sparse file size and the latency of the permanent model."""
    rows = []
    for (model, arm, method, k), group in folds.groupby(["model", "arm", "method", "round"], sort=False):
        ci = statistics.mean_ci(group["accuracy"], level=level)
        cost = measured[(measured["model"] == model) & (measured["method"] == method) & (measured["round"] == k)]
        rows.append({"model": model, "method": method, "round": int(k), "sparsity": float(group["sparsity"].mean()),
                     "arm": arm, "profile": profile, "accuracy_mean": ci["mean"], "accuracy_ci_low": ci["ci_low"],
                     "accuracy_ci_high": ci["ci_high"], "auc_mean": float(group["auc"].mean()),
                     "nonzero_params": int(round(group["nonzero_params"].mean())),
                     "sparse_size_mb": float(cost["sparse_mb"].iloc[0]) if len(cost) else float("nan"),
                     "cpu_latency_ms": float(cost["latency_permanent_ms"].iloc[0]) if len(cost) else float("nan")})
    return pd.DataFrame(rows, columns=COLUMNS).sort_values(["model", "method", "round"], ignore_index=True)


#: Columns of ``pruning_stage1.csv``: the contract's, then the stage and the paired comparison with the dense
#: run on the same test images (one run each: the interval is Wilson's over test images, not over runs).
STAGE1_COLUMNS = COLUMNS + ["stage", "task", "n_test", "diff", "diff_ci_low", "diff_ci_high", "p_value"]


def _correct(predictions: pd.DataFrame) -> pd.Series:
    return (predictions["pred"] == predictions["label"]).set_axis(predictions["file"])


def stage1_table(study: PruningStudy, measured: pd.DataFrame, *, profile: str) -> pd.DataFrame:
    """``pruning_stage1.csv``: the dense stage-1 run and every round on the official test set, each with its
    accuracy interval, and its accuracy minus the dense run's on the same images (paired bootstrap interval,
    exact McNemar test)."""
    dense = study.dense[0]
    dense_correct = _correct(dense.predictions)
    rows = [{"method": "dense", "round": 0, "sparsity": 0.0, "metrics": dense.metrics,
             "nonzero_params": nonzero_parameters(_dense_model(dense)), "correct": dense_correct}]
    for run in study.runs:
        for row in run.rounds.to_dict("records"):
            round_dir = run.run_dir / f"round{int(row['round']):02d}"
            predictions = pd.read_csv(round_dir / "predictions.csv", dtype={"image_id": str, "file": str})
            rows.append({"method": run.prune_config.label, "round": int(row["round"]), "sparsity": row["sparsity"],
                         "metrics": json.loads((round_dir / "metrics.json").read_text()),
                         "nonzero_params": int(row["nonzero_params"]), "correct": _correct(predictions)})
    out = []
    for row in rows:
        m, correct = row["metrics"], row["correct"]
        if set(correct.index) != set(dense_correct.index):
            raise ValueError(f"{row['method']} round {row['round']}: not tested on the dense run's images")
        paired = statistics.paired_accuracy_difference(correct.to_numpy(), dense_correct[correct.index].to_numpy())
        cost = measured[(measured["method"] == row["method"]) & (measured["round"] == row["round"])]
        out.append({"model": study.profile.model, "method": row["method"], "round": row["round"],
                    "sparsity": float(row["sparsity"]), "arm": study.arm, "profile": profile,
                    "accuracy_mean": m["accuracy"], "accuracy_ci_low": m["accuracy_ci_low"],
                    "accuracy_ci_high": m["accuracy_ci_high"], "auc_mean": m["auc"],
                    "nonzero_params": row["nonzero_params"],
                    "sparse_size_mb": float(cost["sparse_mb"].iloc[0]) if len(cost) else float("nan"),
                    "cpu_latency_ms": float(cost["latency_permanent_ms"].iloc[0]) if len(cost) else float("nan"),
                    "stage": "stage1", "task": study.profile.stage1.dataset, "n_test": len(correct),
                    "diff": paired["diff"], "diff_ci_low": paired["ci_low"], "diff_ci_high": paired["ci_high"],
                    "p_value": paired["p_value"]})
    return pd.DataFrame(out, columns=STAGE1_COLUMNS).sort_values(["method", "round"], ignore_index=True)


def sparsest_matching(table: pd.DataFrame, *, model: str, method: str = "imp") -> pd.Series | None:
    """The sparsest ``method`` row of ``model`` whose mean accuracy is not below the lower end of the dense
    model's interval (None when no round is)."""
    rows = table[table["model"] == model]
    dense = rows[rows["method"] == "dense"].iloc[0]
    ok = rows[(rows["method"] == method) & (rows["accuracy_mean"] >= dense["accuracy_ci_low"])]
    return None if ok.empty else ok.sort_values("sparsity").iloc[-1]


def paired_to_dense(folds: pd.DataFrame, *, n_train: int, n_test: int, metric: str = "accuracy",
                    level: float = 0.95) -> pd.DataFrame:
    """Per model, method and round: the paired difference to the dense model on the same folds, by the corrected
    resampled t-test (Nadeau & Bengio; ``n_train``/``n_test``: images trained on and tested per fold)."""
    rows = []
    for model, runs in folds.groupby("model", sort=False):
        dense = runs[runs["method"] == "dense"].set_index(["repeat", "fold"])[metric]
        for (method, k), group in runs[runs["method"] != "dense"].groupby(["method", "round"], sort=False):
            diffs = group.set_index(["repeat", "fold"])[metric] - dense
            test = statistics.corrected_resampled_ttest(diffs.dropna(), n_train=n_train, n_test=n_test, level=level)
            rows.append({"model": model, "method": method, "round": int(k), "sparsity": float(group["sparsity"].mean()),
                         "metric": metric, **{key: test[key] for key in ("mean_diff", "ci_low", "ci_high", "p_value")}})
    return pd.DataFrame(rows)


def layer_sparsity(model: nn.Module) -> pd.DataFrame:
    """Per convolution and linear weight: its kind (first convolution, depthwise, classifier, other), size and
    share pruned; shows which layers a global ranking empties."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    first = next(n for n, m in layers if isinstance(m, nn.Conv2d))
    classifier = [n for n, m in layers if isinstance(m, nn.Linear)][-1]
    rows = []
    for name, module in layers:
        weight = effective_weight(module, "weight")
        depthwise = isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels
        kind = ("first convolution" if name == first else "classifier" if name == classifier
                else "depthwise convolution" if depthwise else "other")
        rows.append({"layer": name, "kind": kind, "weights": weight.numel(),
                     "pruned": int((weight == 0).sum()), "sparsity": float((weight == 0).float().mean())})
    return pd.DataFrame(rows)
