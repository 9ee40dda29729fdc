"""Lottery-ticket pruning of a transferred network: iterative magnitude pruning with rewinding, and its controls.

Iterative magnitude pruning (IMP; Frankle & Carbin 2019) on one head-CT fold:

    dense stage-2 run (the protocol's fold run) -> prune the smallest-magnitude share of the
    surviving weights (global L1 over the eligible layers) -> rewind the survivors to the
    stage's starting weights (stage 1 or ImageNet, plus the fresh head) -> retrain -> prune ...

The controls take the same sparsities: ``oneshot`` prunes the dense-trained model once, then
rewinds and retrains; ``random`` draws a random global mask, then rewinds and retrains.

Every pruning round is an ordinary engine run (``engine.spec.RunSpec`` with a ``Mask``): it starts
from the dense run's starting point (``init``: the bridge, ImageNet or random weights), with the
dense run's seed and split, and its mask ranks the weights of the dense run (one-shot), of the
previous IMP round (IMP; round 1: the dense run) or draws them at random (seed ``1000 * seed + k``).
The engine body applies the mask, rewinds the survivors and retrains with the dense run's draws, so
that a round is reused, resumed and run in parallel like any other run; an IMP chain killed midway
continues at its first incomplete round. Round runs are named ``prune_<arm>_<method>_r<k>``
(``prune_stage1_<arm>_...`` for stage 1) under the profile's runs folder.

``stage1`` pruning prunes a stage-1 run instead (ImageNet or random weights -> chest X-ray, tested on
the official test set): the dense run is the protocol's bridge, and the rounds rewind to the weights
that stage started from.

The chapter contract (``run``, ``tables``, ``glue_values``, ``verdict``) drives ``notebooks/11_pruning.ipynb``.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..core.config import STAGE1_INIT, Profile
from ..engine import executors, lifecycle, train
from ..engine.lifecycle import RunResult
from ..engine.spec import Mask, RunSpec
from ..models import registry as models, sparsity
from ..models.sparsity import SCOPES
from ..report import plots, statistics
from . import protocol

log = logging.getLogger(__name__)

#: Pruning methods: iterative magnitude pruning with rewinding, and its two controls.
METHODS = ("imp", "oneshot", "random")
#: Where stage-1 pruning may start (the ``arm`` of a stage-1 study): the weights a bridge starts from.
STAGE1_ARMS = tuple(STAGE1_INIT.values())


@dataclass(frozen=True)
class PruneConfig:
    """One pruning schedule: a method, its rate and rounds, the layers taking part."""

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

    @property
    def mask_method(self) -> str:
        """How its masks are drawn (``engine.spec.MASK_METHODS``): magnitudes, or at random."""
        return "random" if self.method == "random" else "l1"

    def schedule(self) -> list[tuple[int, float]]:
        """(round, target sparsity of the eligible weights) of every round this schedule trains."""
        rounds = range(1, self.rounds + 1) if self.method == "imp" else self.at_rounds
        return [(k, 1 - (1 - self.rate) ** k) for k in rounds]


def _points(share: float) -> str:
    """A share of accuracy in percentage points, in words: ``0.01`` -> ``1 point``."""
    return f"{100 * share:g} point{'' if 100 * share == 1 else 's'}"


@dataclass(frozen=True)
class PruningPlan:
    """What the pruning chapter runs for one profile: the schedules, a second network, and the declared rule
    for which round the chapter reports."""

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
    # The declared rule (fixed before the runs): the chapter reports the sparsest IMP round whose mean
    # validation accuracy (last epoch, over the folds) is at most this far below the dense model's.
    report_within: float = 0.01

    @property
    def report_rule(self) -> str:
        """The declared rule for the round the chapter reports, in words."""
        return (f"the sparsest IMP round whose mean validation accuracy (last epoch, over the folds) is within "
                f"{_points(self.report_within)} of the dense model's")

    @property
    def control_round(self) -> int:
        """The IMP round whose sparsity the controls share last (the chapter compares them there)."""
        return max(self.configs()[1].at_rounds)

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
    """The pruning plan of ``profile`` with ``changes`` (None values ignored: the plan's own; lists become tuples)."""
    if profile not in PLANS:
        raise ValueError(f"no pruning plan for profile {profile!r}; expected one of {sorted(PLANS)}")
    changes = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items() if v is not None}
    return replace(PLANS[profile], **changes)


# --------------------------------------------------------------------------- what pruning buys


def file_sizes(model: nn.Module) -> dict[str, float]:
    """Size in MB of the weights written three ways: ``dense_mb`` (torch.save of fp32 tensors),
    ``dense_zip_mb`` (the same arrays, zip-compressed) and ``sparse_mb`` (pruned tensors as fp32
    survivors plus a one-bit mask, everything else dense, zip-compressed)."""
    state = {k: v.detach().cpu() for k, v in sparsity.effective_state(model).items()}
    masks = sparsity.masks_of(model)

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


# --------------------------------------------------------------------------- the round runs


def round_name(arm: str, config: PruneConfig, k: int, *, stage: str = "stage2") -> str:
    """The run name of round ``k`` of ``config``: ``prune_<arm>_<method>_r<k>`` (``prune_stage1_...`` for stage 1)."""
    prefix = "prune" if stage == "stage2" else f"prune_{stage}"
    return f"{prefix}_{arm}_{config.label}_r{k:02d}"


def round_specs(dense: RunSpec, config: PruneConfig, *, arm: str) -> list[tuple[int, float, RunSpec]]:
    """(round, target sparsity, spec) of every round of ``config`` on ``dense``'s fold (or stage-1 run).

    A round starts where ``dense`` started (its ``init``: the weights the survivors rewind to) with its seed,
    split and settings; its mask ranks the dense run's weights (one-shot), the previous IMP round's (IMP;
    round 1: the dense run's), or is drawn at random on the starting weights (seed ``1000 * seed + k``)."""
    if dense.mask is not None:
        raise ValueError(f"{dense.label} is a pruned run; pruning starts from a dense one")
    if dense.stage == "stage2" and dense.split is None:
        raise ValueError(f"stage-2 pruning runs on a fold of the protocol: pass its split ({dense.label} has none)")
    found = []
    previous = dense
    for k, target in config.schedule():
        source = None if config.method == "random" else previous if config.method == "imp" else dense
        mask = Mask(sparsity=target, method=config.mask_method, scope=config.scope, seed=1000 * dense.seed + k,
                    source=source)
        spec = dense.replace(name=round_name(arm, config, k, stage=dense.stage), mask=mask)
        found.append((k, target, spec))
        if config.method == "imp":
            previous = spec
    return found


@dataclass(frozen=True)
class StudyPlan:
    """The runs of one pruning study: the dense runs and every round of every schedule on each."""

    profile: Profile
    arm: str
    stage: str  # "stage2": the protocol's folds; "stage1": one bridge run
    configs: tuple[PruneConfig, ...]
    dense: tuple[RunSpec, ...]
    rounds: tuple[tuple[int, PruneConfig, int, float, RunSpec], ...]  # (dense index, config, round, target, spec)

    @property
    def specs(self) -> list[RunSpec]:
        return [spec for *_, spec in self.rounds]


def plan_study(profile: Profile, configs: list[PruneConfig], *, arm: str, folds: pd.DataFrame,
               repeats: tuple[int, ...] = (0,), max_folds: int | None = None,
               data_dir: str | None = None) -> StudyPlan:
    """Every round of every schedule on the arm's protocol fold runs of ``repeats`` (the first ``max_folds``
    of each; None: all), fold by fold."""
    runs = [r for r in protocol.plan(profile, folds, arms=(arm,), data_dir=data_dir)
            if r.split.repeat in repeats and (max_folds is None or r.split.fold < max_folds)]
    if not runs:
        raise ValueError(f"no folds of repeats {repeats} in the fold table (it has {sorted(folds['repeat'].unique())})")
    return _study_plan(profile, configs, arm=arm, stage="stage2", dense=[r.spec for r in runs])


def plan_stage1(profile: Profile, configs: list[PruneConfig], *, arm: str = "imagenet", seed: int = 0,
                data_dir: str | None = None) -> StudyPlan:
    """Every round of every schedule on the bridge run from ``arm``'s weights (``imagenet`` or ``scratch``)."""
    if arm not in STAGE1_ARMS:
        raise ValueError(f"stage-1 pruning starts from {sorted(STAGE1_ARMS)} (arm), not {arm!r}")
    dense = protocol.bridge_spec(profile, init=arm, seed=seed, data_dir=data_dir)
    return _study_plan(profile, configs, arm=arm, stage="stage1", dense=[dense])


def _study_plan(profile: Profile, configs: list[PruneConfig], *, arm: str, stage: str,
                dense: list[RunSpec]) -> StudyPlan:
    rounds = tuple((i, config, k, target, spec) for i, d in enumerate(dense) for config in configs
                   for k, target, spec in round_specs(d, config, arm=arm))
    return StudyPlan(profile, arm, stage, tuple(configs), tuple(dense), rounds)


@dataclass(frozen=True)
class RoundRun:
    """One complete pruning round: its schedule, round number and engine run."""

    config: PruneConfig
    round: int
    target: float
    result: RunResult

    @property
    def method(self) -> str:
        return self.config.label

    @property
    def split(self) -> dict[str, Any] | None:
        return self.result.config["split"]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.result.metrics

    @property
    def pruning(self) -> dict[str, Any]:
        """target_sparsity, sparsity, pruned_now, eligible_params, nonzero_params (the engine's record)."""
        return self.result.metrics["pruning"]

    @property
    def run_dir(self):
        return self.result.run_dir


@dataclass
class PruningStudy:
    """The dense runs and the pruning rounds of one network and arm."""

    profile: Profile
    arm: str
    stage: str
    configs: tuple[PruneConfig, ...]
    dense: list[RunResult]  # the protocol's fold runs (stage 1: the bridge run)
    rounds: list[RoundRun]  # fold by fold, schedule by schedule, round by round
    bridges: list[RunResult] = field(default_factory=list)  # the stage-1 runs the arm's fold runs start from

    def metrics(self) -> list[dict[str, Any]]:
        """Every run's metrics with provenance, bridges first (for ``results.provenance``)."""
        return [r.metrics for r in self.bridges + self.dense] + [r.metrics for r in self.rounds]


def train_studies(plans: list[StudyPlan], *, executor: str | executors.Executor = "local", workers: int | None = None,
                  force: bool = False) -> list[PruningStudy]:
    """Train (or read back) every round of ``plans`` with one executor, the dense runs and their bridges first
    (``force``: the rounds again, never the dense runs); return the studies."""
    specs = [spec for p in plans for spec in p.specs]
    trained = iter(executors.run_specs(specs, executor=executor, workers=workers, force=force,
                                       description="pruning rounds"))
    studies = []
    for p in plans:
        dense = [lifecycle.load_spec(spec) for spec in p.dense]
        bridges = {str(s.init.relpath): s.init for s in p.dense if p.stage == "stage2" and isinstance(s.init, RunSpec)}
        studies.append(PruningStudy(
            p.profile, p.arm, p.stage, p.configs, dense,
            [RoundRun(config, k, target, next(trained)) for _, config, k, target, _ in p.rounds],
            [lifecycle.load_spec(bridges[key]) for key in sorted(bridges)]))
    return studies


def run_pruning(profile: Profile, configs: list[PruneConfig], *, arm: str, folds: pd.DataFrame,
                repeats: tuple[int, ...] = (0,), max_folds: int | None = None, data_dir: str | None = None,
                executor: str | executors.Executor = "local", workers: int | None = None,
                force: bool = False) -> PruningStudy:
    """The arm's protocol fold runs on ``repeats`` (trained when missing) and every schedule's rounds on each."""
    plan = plan_study(profile, configs, arm=arm, folds=folds, repeats=repeats, max_folds=max_folds, data_dir=data_dir)
    return train_studies([plan], executor=executor, workers=workers, force=force)[0]


def run_pruning_stage1(profile: Profile, configs: list[PruneConfig], *, arm: str = "imagenet", seed: int = 0,
                       data_dir: str | None = None, executor: str | executors.Executor = "local",
                       workers: int | None = None, force: bool = False) -> PruningStudy:
    """Stage 1 pruned: the protocol's bridge from ``arm``'s weights (trained when missing), then every
    schedule's rounds on it, tested on the stage-1 task's official test set."""
    plan = plan_stage1(profile, configs, arm=arm, seed=seed, data_dir=data_dir)
    return train_studies([plan], executor=executor, workers=workers, force=force)[0]


# --------------------------------------------------------------------------- the chapter: run


@dataclass
class PruningResult:
    """Everything the pruning chapter ran: the main network's study, the second network's (if any), stage 1."""

    profile: Profile
    plan: PruningPlan
    arm: str
    studies: list[PruningStudy]  # the main network, then the second network (if the plan has one)
    stage1: PruningStudy | None  # stage 1 on chest X-ray (None: the plan prunes no stage 1)
    stage1_seeds: list[RunResult]  # the dense stage-1 runs of every profile seed (the spread between seeds)

    @property
    def main(self) -> PruningStudy:
        return self.studies[0]

    @property
    def second(self) -> PruningStudy | None:
        return self.studies[1] if len(self.studies) > 1 else None

    def all_studies(self) -> list[PruningStudy]:
        return self.studies + ([self.stage1] if self.stage1 is not None else [])

    def metrics(self) -> list[dict[str, Any]]:
        """Every run's metrics (for ``results.provenance``)."""
        return [m for s in self.all_studies() for m in s.metrics()]


def run(profile: Profile, plan: PruningPlan, *, arm: str = "multistage", executor: str | executors.Executor = "local",
        workers: int | None = None, force: bool = False, data_dir: str | None = None) -> PruningResult:
    """Run (or read back) the chapter: ``arm``'s folds pruned by ``plan.configs()``, the second network from random
    weights (arm ``scratch``) by ``plan.second_configs()``, stage 1 by ``plan.stage1_configs()``. The dense runs
    are the protocol's (trained first when missing); ``force`` trains the rounds again, never the dense runs."""
    folds, _ = protocol.target_folds(profile, data_dir=data_dir)
    common = dict(folds=folds, repeats=plan.repeats, max_folds=plan.max_folds, data_dir=data_dir)
    plans = [plan_study(profile, plan.configs(), arm=arm, **common)]
    second = plan.second_profile(profile)
    if second is not None:  # no ImageNet weights for it offline: it starts from random weights (arm "scratch")
        plans.append(plan_study(second, plan.second_configs(), arm="scratch", **common))
    stage1_configs = plan.stage1_configs()
    if stage1_configs:
        plans.append(plan_stage1(profile, stage1_configs, data_dir=data_dir))
    ex = executors.get_executor(executor, workers=workers)
    try:
        studies = train_studies(plans, executor=ex, force=force)
        # For scale: the dense stage 1 of every seed (the protocol's bridges; trained when missing).
        seeds = (executors.run_specs([protocol.bridge_spec(profile, seed=s, data_dir=data_dir) for s in profile.seeds],
                                     executor=ex, description="stage-1 runs") if stage1_configs else [])
    finally:
        if ex is not executor:  # opened here (a name was given): closed here
            ex.close()
    stage1 = studies.pop() if stage1_configs else None
    return PruningResult(profile, plan, arm, studies, stage1, seeds)


# --------------------------------------------------------------------------- tables


#: Columns of ``pruning_folds.csv``: one row per model, arm, method, round and fold.
FOLD_COLUMNS = ["model", "arm", "method", "round", "target_sparsity", "sparsity", "repeat", "fold", "accuracy", "auc",
                "nonzero_params", "train_seconds"]
#: Columns of ``pruning.csv`` (the results contract): one row per model, method and round.
COLUMNS = ["model", "method", "round", "sparsity", "arm", "profile", "accuracy_mean", "accuracy_ci_low",
           "accuracy_ci_high", "auc_mean", "nonzero_params", "sparse_size_mb", "cpu_latency_ms"]
#: Columns of ``pruning_costs.csv``: sizes and latencies of the first fold's model of each method and round.
COST_COLUMNS = ["model", "method", "round", "dense_mb", "dense_zip_mb", "sparse_mb", "latency_masked_ms",
                "latency_permanent_ms"]
#: Columns of ``pruning_tests.csv``: each method and round paired with the dense model on the same folds.
TEST_COLUMNS = ["model", "method", "round", "sparsity", "metric", "mean_diff", "ci_low", "ci_high", "p_value"]


def profile_label(profile: Profile) -> str:
    """The profile's name, with the image size when it differs from the named profile's (e.g. ``quick 64px``)."""
    from ..core.config import PROFILES

    named = PROFILES.get(profile.name)
    return profile.name if named and named.image_size == profile.image_size else f"{profile.name} {profile.image_size}px"


def _checkpoint(result: RunResult) -> dict[str, Any]:
    return train.load_checkpoint(result.run_dir / "checkpoint.pt")


def dense_model(result: RunResult) -> nn.Module:
    """The trained model of a dense run."""
    checkpoint = _checkpoint(result)
    return models.load_from_checkpoint(checkpoint, num_classes=checkpoint["num_classes"], stage="dense")[0]


def pruned_model(result: RunResult) -> nn.Module:
    """The trained model of a pruning round, its masks re-applied."""
    return sparsity.load_pruned(_checkpoint(result), stage=result.config["name"])[0]


def _split_of(result: RunResult) -> tuple[Any, Any]:
    split = result.config["split"]
    return (None, None) if split is None else (split["repeat"], split["fold"])


def fold_table(study: PruningStudy) -> pd.DataFrame:
    """``pruning_folds.csv``: every round's test metrics per fold, the dense runs as round 0."""
    rows = []
    for result in study.dense:
        repeat, fold = _split_of(result)
        rows.append({"model": study.profile.model, "arm": study.arm, "method": "dense", "round": 0,
                     "target_sparsity": 0.0, "sparsity": 0.0, "repeat": repeat, "fold": fold,
                     "accuracy": result.metrics["accuracy"], "auc": result.metrics["auc"],
                     "nonzero_params": sparsity.nonzero_parameters(dense_model(result)),
                     "train_seconds": result.provenance["train_seconds"]})
    for r in study.rounds:
        repeat, fold = _split_of(r.result)
        rows.append({"model": study.profile.model, "arm": study.arm, "method": r.method, "round": r.round,
                     "target_sparsity": r.pruning["target_sparsity"], "sparsity": r.pruning["sparsity"],
                     "repeat": repeat, "fold": fold, "accuracy": r.metrics["accuracy"], "auc": r.metrics["auc"],
                     "nonzero_params": r.pruning["nonzero_params"],
                     "train_seconds": r.result.provenance["train_seconds"]})
    return pd.DataFrame(rows)[FOLD_COLUMNS]


def _first_fold_models(study: PruningStudy) -> dict[tuple[str, int], tuple[str, RunResult]]:
    """The first fold's run of every (method, round): what sizes and latencies are measured on."""
    first = study.dense[0]
    found: dict[tuple[str, int], tuple[str, RunResult]] = {("dense", 0): ("dense", first)}
    for r in study.rounds:
        if r.split == first.config["split"]:  # stage 1: both None
            found[(r.method, r.round)] = ("pruned", r.result)
    return found


def costs(study: PruningStudy, *, repeats: int = 30, threads: int = 1) -> pd.DataFrame:
    """Per (method, round), measured on the first fold's model: file sizes (``file_sizes``) and the CPU
    latency at batch 1 of the model as trained (``masked``: pruning hooks multiply each weight by its
    mask on every call) and with the masks made permanent (zeros in dense tensors, no hooks)."""
    rows = []
    for (method, k), (kind, result) in _first_fold_models(study).items():
        model = dense_model(result) if kind == "dense" else pruned_model(result)
        size = study.profile.image_size
        row = {"model": study.profile.model, "method": method, "round": k, **file_sizes(model),
               "latency_masked_ms": cpu_latency_ms(model, size, repeats=repeats, threads=threads)}
        row["latency_permanent_ms"] = cpu_latency_ms(sparsity.remove_masks(model), size, repeats=repeats,
                                                     threads=threads)
        rows.append(row)
    return pd.DataFrame(rows, columns=COST_COLUMNS)


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
             "nonzero_params": sparsity.nonzero_parameters(dense_model(dense)), "correct": dense_correct}]
    for r in study.rounds:
        rows.append({"method": r.method, "round": r.round, "sparsity": r.pruning["sparsity"], "metrics": r.metrics,
                     "nonzero_params": int(r.pruning["nonzero_params"]), "correct": _correct(r.result.predictions)})
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
    """Secondary (chosen on the test results themselves, so optimistic): the sparsest ``method`` row of ``model``
    whose mean test accuracy is not below the lower end of the dense model's interval (None when no round is)."""
    rows = table[table["model"] == model]
    dense = rows[rows["method"] == "dense"].iloc[0]
    ok = rows[(rows["method"] == method) & (rows["accuracy_mean"] >= dense["accuracy_ci_low"])]
    return None if ok.empty else ok.sort_values("sparsity").iloc[-1]


def validation_table(study: PruningStudy) -> pd.DataFrame:
    """Per method, round and fold: the validation accuracy of the run's last epoch (``history.csv``), the
    dense runs as round 0; what the declared report rule reads (never the test folds)."""
    rows = [{"model": study.profile.model, "method": "dense", "round": 0, "repeat": _split_of(r)[0],
             "fold": _split_of(r)[1], "val_accuracy": float(r.history["val_accuracy"].iloc[-1])} for r in study.dense]
    rows += [{"model": study.profile.model, "method": r.method, "round": r.round, "repeat": _split_of(r.result)[0],
              "fold": _split_of(r.result)[1], "val_accuracy": float(r.result.history["val_accuracy"].iloc[-1])}
             for r in study.rounds]
    return pd.DataFrame(rows)


def reported_round(study: PruningStudy, table: pd.DataFrame, *, within: float, method: str = "imp") -> dict[str, Any]:
    """The round the declared rule picks: the sparsest ``method`` round whose mean validation accuracy is at most
    ``within`` below the dense model's. Returns its ``pruning.csv`` row (``row``; None when no round qualifies),
    the mean validation accuracies of that round and of the dense model (``val``, ``dense_val``)."""
    val = validation_table(study).groupby(["method", "round"], sort=False)["val_accuracy"].mean()
    dense_val = float(val[("dense", 0)])
    rows = table[(table["model"] == study.profile.model) & (table["method"] == method)]
    ok = [row for _, row in rows.iterrows()
          if float(val[(method, int(row["round"]))]) >= dense_val - within - 1e-9]
    best = max(ok, key=lambda row: row["sparsity"]) if ok else None
    return {"row": best, "dense_val": dense_val,
            "val": None if best is None else float(val[(method, int(best["round"]))])}


def paired_to_dense(folds: pd.DataFrame, *, n_train: int, n_test: int, metric: str = "accuracy",
                    level: float = 0.95) -> pd.DataFrame:
    """Per model, method and round: the paired difference to the dense model on the same folds, by the corrected
    resampled t-test (Nadeau & Bengio; ``n_train``/``n_test``: images trained on and tested per fold). With a
    single fold the test is undefined: its interval and p-value are NaN."""
    rows = []
    for model, runs in folds.groupby("model", sort=False):
        dense = runs[runs["method"] == "dense"].set_index(["repeat", "fold"])[metric]
        for (method, k), group in runs[runs["method"] != "dense"].groupby(["method", "round"], sort=False):
            diffs = (group.set_index(["repeat", "fold"])[metric] - dense).dropna()
            if len(diffs) < 2:  # one fold: no variance to test against (the row stays, its test undefined)
                test = {"mean_diff": float(diffs.mean()) if len(diffs) else float("nan"), "ci_low": float("nan"),
                        "ci_high": float("nan"), "p_value": float("nan")}
            else:
                test = statistics.corrected_resampled_ttest(diffs, n_train=n_train, n_test=n_test, level=level)
            rows.append({"model": model, "method": method, "round": int(k), "sparsity": float(group["sparsity"].mean()),
                         "metric": metric, **{key: test[key] for key in ("mean_diff", "ci_low", "ci_high", "p_value")}})
    return pd.DataFrame(rows, columns=TEST_COLUMNS)


def layer_sparsity(model: nn.Module) -> pd.DataFrame:
    """Per convolution and linear weight: its kind (first convolution, depthwise, classifier, other), size and
    share pruned; shows which layers a global ranking empties."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    first = next(n for n, m in layers if isinstance(m, nn.Conv2d))
    classifier = [n for n, m in layers if isinstance(m, nn.Linear)][-1]
    rows = []
    for name, module in layers:
        weight = sparsity.effective_weight(module, "weight")
        depthwise = isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels
        kind = ("first convolution" if name == first else "classifier" if name == classifier
                else "depthwise convolution" if depthwise else "other")
        rows.append({"layer": name, "kind": kind, "weights": weight.numel(),
                     "pruned": int((weight == 0).sum()), "sparsity": float((weight == 0).float().mean())})
    return pd.DataFrame(rows)


def tables(result: PruningResult) -> dict[str, pd.DataFrame]:
    """The chapter's tables (the results contract): ``pruning.csv``, ``pruning_folds.csv``, ``pruning_costs.csv``,
    ``pruning_tests.csv`` and, when stage 1 is pruned, ``pruning_stage1.csv``. Measures the latencies."""
    repeats = result.plan.latency_repeats
    fold_rows = pd.concat([fold_table(s) for s in result.studies], ignore_index=True)
    measured = pd.concat([costs(s, repeats=repeats) for s in result.studies], ignore_index=True)
    table = pd.concat([summary(fold_rows[fold_rows["model"] == s.profile.model], measured,
                               profile=profile_label(s.profile)) for s in result.studies], ignore_index=True)
    sizes = protocol.fold_table(result.main.dense)
    paired = paired_to_dense(fold_rows, n_train=int(sizes["n_train"].mean()), n_test=int(sizes["n_test"].mean()))
    found = {"pruning.csv": table, "pruning_folds.csv": fold_rows, "pruning_costs.csv": measured,
             "pruning_tests.csv": paired}
    if result.stage1 is not None:
        stage1_measured = costs(result.stage1, repeats=repeats)
        found["pruning_stage1.csv"] = stage1_table(result.stage1, stage1_measured,
                                                   profile=profile_label(result.profile))
    return found


# --------------------------------------------------------------------------- what the notebook shows


def figure(found: dict[str, pd.DataFrame]):
    """Accuracy and AUC against sparsity, one row per network (``pruning.csv``, ``pruning_folds.csv``)."""
    return plots.pruning_curves(found["pruning.csv"], found["pruning_folds.csv"])


def stage1_figure(found: dict[str, pd.DataFrame]):
    """Stage 1's accuracy and AUC against sparsity (None when stage 1 is not pruned)."""
    rows = found.get("pruning_stage1.csv")
    if rows is None:
        return None
    return plots.pruning_curves(rows, rows.assign(accuracy=rows["accuracy_mean"], auc=rows["auc_mean"]))


def _main_rows(result: PruningResult, found: dict[str, pd.DataFrame]) -> pd.DataFrame:
    table = found["pruning.csv"]
    return table[table["model"] == result.main.profile.model]


def controls_table(result: PruningResult, found: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The main network at the controls' last round: every method's accuracy, AUC and parameters left."""
    rows = _main_rows(result, found)
    return rows[rows["round"] == result.plan.control_round].set_index("method")[
        ["sparsity", "accuracy_mean", "accuracy_ci_low", "accuracy_ci_high", "auc_mean", "nonzero_params"]]


def shown(result: PruningResult, found: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The tables as the chapter shows them, rounded: ``summary``, ``tests``, ``controls``, ``costs``, ``stage1``
    (empty when stage 1 is not pruned)."""
    stage1 = found.get("pruning_stage1.csv", pd.DataFrame(columns=STAGE1_COLUMNS))
    return {
        "summary": found["pruning.csv"].round({"sparsity": 3, "accuracy_mean": 3, "accuracy_ci_low": 3,
                                               "accuracy_ci_high": 3, "auc_mean": 3, "sparse_size_mb": 2,
                                               "cpu_latency_ms": 2}),
        "tests": found["pruning_tests.csv"].round({"sparsity": 3, "mean_diff": 3, "ci_low": 3, "ci_high": 3,
                                                   "p_value": 3}),
        "controls": controls_table(result, found).round(3),
        "costs": found["pruning_costs.csv"].round({"dense_mb": 2, "dense_zip_mb": 2, "sparse_mb": 2,
                                                   "latency_masked_ms": 2, "latency_permanent_ms": 2}),
        "stage1": stage1.drop(columns=["stage", "task", "profile", "arm"]).round(3),
    }


def _dense_row(rows: pd.DataFrame) -> pd.Series:
    return rows[rows["method"] == "dense"].iloc[0]


def _paired_text(test: pd.Series) -> str:
    return (f"{100 * test['mean_diff']:+.1f} points of accuracy (corrected 95 % CI {100 * test['ci_low']:+.1f} "
            f"to {100 * test['ci_high']:+.1f}, p = {test['p_value']:.2f})")


def _paired_row(found: dict[str, pd.DataFrame], row: pd.Series) -> pd.Series:
    paired = found["pruning_tests.csv"]
    return paired[(paired["model"] == row["model"]) & (paired["method"] == row["method"])
                  & (paired["round"] == row["round"])].iloc[0]


def reported_text(result: PruningResult, found: dict[str, pd.DataFrame]) -> str:
    """The main network's round picked by the declared rule (validation accuracy), with its test results."""
    rows = _main_rows(result, found)
    dense = _dense_row(rows)
    picked = reported_round(result.main, rows, within=result.plan.report_within)
    best = picked["row"]
    if best is None:
        return (f"None: every IMP round's mean validation accuracy fell more than {_points(result.plan.report_within)} "
                "below the dense model's "
                f"({picked['dense_val']:.3f}); the dense model is the one reported.")
    return (f"**round {best['round']}**, {100 * best['sparsity']:.1f} % of the eligible weights pruned, "
            f"{best['nonzero_params']:,} nonzero parameters left of {int(dense['nonzero_params']):,}; mean validation "
            f"accuracy {picked['val']:.3f} against the dense model's {picked['dense_val']:.3f}. On the test folds: "
            f"accuracy {best['accuracy_mean']:.3f} (95 % t interval {best['accuracy_ci_low']:.3f} to "
            f"{best['accuracy_ci_high']:.3f}), AUC {best['auc_mean']:.3f}; paired with the dense model: "
            f"{_paired_text(_paired_row(found, best))}.")


def sparsest_text(result: PruningResult, found: dict[str, pd.DataFrame]) -> str:
    """The sparsest main-network IMP round within the dense model's test interval (secondary), with its paired test."""
    rows = _main_rows(result, found)
    dense = _dense_row(rows)
    best = sparsest_matching(found["pruning.csv"], model=result.main.profile.model)
    if best is None:
        return "None: every IMP round's mean accuracy fell below the dense model's interval."
    return (f"**round {best['round']}**, {100 * best['sparsity']:.1f} % of the eligible weights pruned, "
            f"{best['nonzero_params']:,} nonzero parameters left of {int(dense['nonzero_params']):,}; "
            f"accuracy {best['accuracy_mean']:.3f} (95 % t interval {best['accuracy_ci_low']:.3f} to "
            f"{best['accuracy_ci_high']:.3f}), AUC {best['auc_mean']:.3f}. Paired with the dense model: "
            f"{_paired_text(_paired_row(found, best))}.")


def second_text(result: PruningResult, found: dict[str, pd.DataFrame]) -> str:
    """The second network's results (or why it was not measured)."""
    plan, study = result.plan, result.second
    if study is None:
        default = get_plan(result.profile.name).second_model if result.profile.name in PLANS else ""
        name = result.profile.name
        return (f"Not measured: the second network of the plan ({plan.second_model}) is not in this version's "
                "model registry (`mstl_utils.models.MODELS`)." if plan.second_model else
                f"Not measured: the {name} plan has no second network." if not default else
                "Not measured in this execution: it was run with `second_model` empty, so no second network "
                f"was trained. The {name} plan's default trains {default} from random weights "
                "(no ImageNet weights for it offline); re-execute without `-p second_model` to measure it.")
    table, paired = found["pruning.csv"], found["pruning_tests.csv"]
    model = study.profile.model
    other = table[table["model"] == model]
    other_dense = _dense_row(other)
    other_best = sparsest_matching(table, model=model)
    last_imp = other[other["method"] == "imp"].sort_values("round").iloc[-1]
    last_random = other[(other["method"] == "random") & (other["round"] == last_imp["round"])]
    text = (
        f"**{model}**, trained from **random weights** (no ImageNet weights for it are available "
        f"offline; arm `scratch`, labelled so in every table), at {study.profile.image_size} px to fit the "
        f"budget, on the same {len(study.dense)} folds; IMP with {100 * plan.second_rate:.0f} % per round over "
        f"{plan.second_rounds} rounds and a random mask at the last round's sparsity. Dense: accuracy "
        f"{other_dense['accuracy_mean']:.3f} (95 % t interval {other_dense['accuracy_ci_low']:.3f} to "
        f"{other_dense['accuracy_ci_high']:.3f}). Last IMP round ({100 * last_imp['sparsity']:.1f} % pruned): "
        f"{last_imp['accuracy_mean']:.3f}" + (f"; random mask: {last_random['accuracy_mean'].iloc[0]:.3f}"
                                               if len(last_random) else "")
        + ". Sparsest IMP round within the dense interval: "
        + (f"round {other_best['round']} ({100 * other_best['sparsity']:.1f} % pruned)." if other_best is not None
           else "none.") + " Its rows are in the table and figure above.")
    # The paired differences to its dense model: is the random mask any worse than IMP's for this network?
    vs_dense = paired[(paired["model"] == model) & (paired["metric"] == "accuracy")
                      & (paired["round"] == last_imp["round"])].set_index("method")
    if {"imp", "random"} <= set(vs_dense.index):
        said = [f"{name} {100 * vs_dense.loc[method, 'mean_diff']:+.1f} points (95 % CI "
                f"{100 * vs_dense.loc[method, 'ci_low']:+.1f} to {100 * vs_dense.loc[method, 'ci_high']:+.1f}, "
                f"p = {vs_dense.loc[method, 'p_value']:.2f})" for method, name in (("imp", "IMP"), ("random", "random mask"))]
        tell_apart = (vs_dense["p_value"] < 0.05).any()
        text += (" Against its dense network, by the corrected paired test: " + "; ".join(said) + ". "
                 + ("" if tell_apart else
                    "Neither differs detectably from the dense network, so for this network, trained from "
                    "random weights on a couple of hundred images, the experiment cannot tell the winning "
                    "ticket from a random mask: the lottery-ticket effect is **not shown** here (a null "
                    "result; a network this over-parameterised for the data may train well under any mask)."))
    return text


def stage1_text(result: PruningResult, found: dict[str, pd.DataFrame]) -> str:
    """Stage 1 pruned on chest X-ray against its dense run on the same images, with the spread between seeds."""
    plan, profile = result.plan, result.profile
    rows = found.get("pruning_stage1.csv")
    if rows is None:
        return f"Not measured: the {profile.name} plan (or `stage1_rounds = 0`) prunes no stage-1 network."
    s1_dense = _dense_row(rows)
    s1_last = rows[rows["round"] == plan.stage1_rounds].set_index("method")
    s1_best = sparsest_matching(rows, model=profile.model)
    said = [f"{name} {s1_last.loc[method, 'accuracy_mean']:.3f} ({100 * s1_last.loc[method, 'diff']:+.1f} points, "
            f"95 % CI {100 * s1_last.loc[method, 'diff_ci_low']:+.1f} to {100 * s1_last.loc[method, 'diff_ci_high']:+.1f}, "
            f"McNemar p = {s1_last.loc[method, 'p_value']:.3g})"
            for method, name in (("imp", "IMP"), ("oneshot", "one-shot"), ("random", "random mask"))
            if method in s1_last.index]
    text = (
        f"Dense stage 1: accuracy {s1_dense['accuracy_mean']:.3f} (95 % interval {s1_dense['accuracy_ci_low']:.3f} to "
        f"{s1_dense['accuracy_ci_high']:.3f}), AUC {s1_dense['auc_mean']:.3f}. At "
        f"{100 * s1_last['sparsity'].iloc[0]:.1f} % of the eligible weights pruned ({plan.stage1_rounds} "
        f"round{'s' * (plan.stage1_rounds != 1)} of "
        f"{100 * plan.stage1_rate:.0f} %), against the dense run on the same {int(s1_dense['n_test'])} images: "
        + "; ".join(said) + ". Sparsest IMP round whose accuracy stays within the dense interval: "
        + (f"round {s1_best['round']} ({100 * s1_best['sparsity']:.1f} % pruned, "
           f"{int(s1_best['nonzero_params']):,} nonzero parameters)." if s1_best is not None else "none."))
    # For scale: how far dense stage-1 runs move between seeds (the protocol's bridges).
    seed_accuracy = [r.metrics["accuracy"] for r in result.stage1_seeds]
    text += (f" For scale, the dense stage 1 of seeds {', '.join(map(str, profile.seeds))} reaches "
             f"{min(seed_accuracy):.3f} to {max(seed_accuracy):.3f} on the same images; each pruned model "
             "is one seed too, so a difference of that size could come from the seed alone.")
    return text


def _wide_layers(result: PruningResult) -> pd.DataFrame:
    """Per-layer sparsity of the other scope's network on the first fold (its last round)."""
    first = result.main.dense[0].config["split"]
    wide = [r for r in result.main.rounds if r.config.scope != result.plan.scope and r.split == first]
    return layer_sparsity(pruned_model(max(wide, key=lambda r: r.round).result))


def glue_values(result: PruningResult, found: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """Every value the chapter's prose glues (the markdown ones as ``IPython.display.Markdown``)."""
    from IPython.display import Markdown

    plan, main = result.plan, result.main
    rows = _main_rows(result, found)
    dense = _dense_row(rows)
    values: dict[str, Any] = {
        "prune_n_folds": int(len(main.dense)),
        "prune_rounds": int(plan.rounds),
        "prune_rate_pct": float(100 * plan.rate),
        "prune_left_pct": float(100 * (1 - plan.rate) ** plan.rounds),
        "prune_repeats_text": "repeat " + ", ".join(str(r) for r in plan.repeats),
        "prune_eligible": f"{int(main.rounds[0].pruning['eligible_params']):,}",
        "prune_total": f"{int(dense['nonzero_params']):,}",
        "prune_dense_acc": float(dense["accuracy_mean"]),
        "prune_dense_low": float(dense["accuracy_ci_low"]),
        "prune_dense_high": float(dense["accuracy_ci_high"]),
        "prune_report_rule": plan.report_rule,
        "prune_reported_text": Markdown(reported_text(result, found)),
        "prune_sparsest_text": Markdown(sparsest_text(result, found)),
    }
    # The controls at their last round, and the other scope.
    last = rows[rows["round"] == plan.control_round].set_index("method")
    values["prune_last_sparsity"] = float(100 * last.loc["imp", "sparsity"])
    for method in last.index:
        values[f"prune_last_{method.replace('+', '_')}"] = float(last.loc[method, "accuracy_mean"])
    layers = _wide_layers(result)
    by_kind = layers.groupby("kind")[["weights", "pruned"]].sum()
    for kind, key in (("first convolution", "first"), ("depthwise convolution", "depthwise"), ("classifier", "classifier")):
        values[f"prune_wide_{key}"] = float(100 * by_kind.loc[kind, "pruned"] / by_kind.loc[kind, "weights"])
    values["prune_wide_emptied"] = int((layers["sparsity"] == 1).sum())
    values["prune_excluded_pct"] = float(100 * by_kind.drop(index="other")["weights"].sum() / by_kind["weights"].sum())
    values["prune_wide_layers"] = int(len(layers))
    # What pruning buys: the dense model against the last IMP round, on the first fold.
    measured = found["pruning_costs.csv"]
    mine = measured[measured["model"] == main.profile.model].set_index(["method", "round"])
    dense_cost = mine.loc[("dense", 0)]
    sparse_key = ("imp", int(mine.loc["imp"].index.max()))
    values.update({
        "prune_image_size": int(result.profile.image_size),
        "prune_latency_repeats": int(plan.latency_repeats),
        "prune_dense_mb": float(dense_cost["dense_mb"]),
        "prune_dense_zip_mb": float(dense_cost["dense_zip_mb"]),
        "prune_imp_sparsity": float(100 * rows.set_index(["method", "round"]).loc[sparse_key, "sparsity"]),
        "prune_imp_dense_mb": float(mine.loc[sparse_key, "dense_mb"]),
        "prune_imp_zip_mb": float(mine.loc[sparse_key, "dense_zip_mb"]),
        "prune_imp_sparse_mb": float(mine.loc[sparse_key, "sparse_mb"]),
        "prune_dense_ms": float(dense_cost["latency_permanent_ms"]),
        "prune_imp_ms": float(mine.loc[sparse_key, "latency_permanent_ms"]),
        "prune_imp_masked_ms": float(mine.loc[sparse_key, "latency_masked_ms"]),
        "prune_latency_ratio": float(mine.loc[sparse_key, "latency_permanent_ms"] / dense_cost["latency_permanent_ms"]),
        "prune_second_text": Markdown(second_text(result, found)),
        "prune_stage1_text": Markdown(stage1_text(result, found)),
    })
    rounds = [r for s in result.all_studies() for r in s.rounds]
    values["prune_minutes"] = float(sum(r.result.provenance["wall_seconds"] for r in rounds) / 60)
    values["prune_trainings"] = int(len(rounds))
    return values


def verdict(result: PruningResult, found: dict[str, pd.DataFrame]) -> str:
    """The chapter's findings as Markdown: the reported round (by the declared rule), the secondary sparsest
    round within the dense interval, the second network and stage 1."""
    model = result.main.profile.model
    return "\n".join([
        f"- **Reported** {model} network ({result.plan.report_rule}; the rule was declared in the plan before the "
        f"runs): {reported_text(result, found)}",
        f"- Secondary, chosen on the test folds themselves (so optimistic): the sparsest {model} IMP network whose "
        f"mean test accuracy is within the dense model's interval: {sparsest_text(result, found)}",
        f"- Second network: {second_text(result, found)}",
        f"- Stage 1 on chest X-ray: {stage1_text(result, found)}",
    ])
