"""Architectures and transfer strategies on equal terms: accuracy on the protocol's folds, and cost.

Each model of the registry runs the protocol's arms (by default the single-stage
``imagenet`` and the paper's ``multistage``) on the same head-CT folds as the
profile's own model, with the profile's settings and only the model (and, for the
strategy comparison, the transfer strategy) changed. Every run is a ``RunSpec``: a
changed model or strategy is another spec, hence another folder. Runs of the
profile's own model with the full strategy *are* the protocol's runs (``cv_imagenet``,
``stage1``..., the same specs as ``protocol.plan``: reused, never trained twice);
others are named after what differs: ``stage1_<model>``, ``cv_<arm>_<model>``,
``cv_<arm>_<strategy>``.

Cost is measured here, never taken from papers: parameters, multiply-accumulates
(PyTorch's own FLOP counter, one forward pass at the input size used), size of the
fp32 checkpoint, CPU latency at batch 1, and training throughput (the study's own
training step, on the profile's device in the profile's precision for that device).

The chapter contract: ``PLANS``/``get_plan``, ``run``, ``tables``, ``glue_values``,
``verdict``; the notebook's displays come from the functions below.
"""

from __future__ import annotations

import dataclasses
import io
import re
import statistics as pystats
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.text import Annotation
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..core import paths, repro
from ..core.config import ARM_INIT, STAGE1_INIT, Profile
from ..engine import executors, lifecycle, train
from ..engine.lifecycle import RunResult
from ..engine.spec import RunSpec
from ..models import registry as models, transfer
from ..report import analysis, plots
from ..report.statistics import mean_ci
from . import protocol

#: The arms each architecture runs: single-stage ImageNet transfer and the paper's two stages.
ARMS = ("imagenet", "multistage")
#: The transfer strategies compared by default (names from ``models.transfer``).
STRATEGIES = ("full", "features", "features_bn_train", "top3")


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class ArchitecturePlan:
    """What the architectures chapter runs for one profile."""

    trained_models: tuple[str, ...] | None = None  # None: the profile's model and every model with ImageNet weights here
    arms: tuple[str, ...] = ARMS  # protocol arms each trained model runs
    seeds: tuple[int, ...] = (0,)  # bridges of each other model (repeat r: protocol.repeat_seed); the profile's model keeps the protocol's
    strategy_model: str = "mobilenet_v2"  # the model the transfer strategies are compared on
    strategies: tuple[str, ...] = STRATEGIES  # names from models.transfer; full fine-tuning is always the reference
    strategy_arms: tuple[str, ...] = ("imagenet",)  # arms the strategies run (a bridge is always fully fine-tuned)
    strategy_repeats: int | None = 1  # protocol repeats the strategies run (None: all of the profile's)
    allow_random: bool = False  # True: every registered model trains; those without ImageNet weights from random weights

    def __post_init__(self):
        for name in ("trained_models", "arms", "seeds", "strategies", "strategy_arms"):
            value = getattr(self, name)
            if isinstance(value, (list, str)):
                object.__setattr__(self, name, tuple(value) if isinstance(value, list) else (value,))
        for model in (*(self.trained_models or ()), self.strategy_model):
            models.spec_of(model)
        unknown = [a for a in (*self.arms, *self.strategy_arms) if a not in ARM_INIT]
        if unknown:
            raise ValueError(f"unknown arm(s) {unknown}; expected some of {list(ARM_INIT)}")
        for strategy in self.strategies:
            transfer.get(strategy)
        if not self.seeds:
            raise ValueError("seeds is empty; expected at least one bridge seed")
        if self.strategy_repeats is not None and self.strategy_repeats < 1:
            raise ValueError(f"strategy_repeats={self.strategy_repeats}; expected at least 1 (or None: all)")


PLANS: dict[str, ArchitecturePlan] = {"smoke": ArchitecturePlan(), "quick": ArchitecturePlan(),
                                      "paper": ArchitecturePlan()}


def get_plan(profile: str, **changes: Any) -> ArchitecturePlan:
    """The architectures plan of ``profile`` with ``changes`` (None values ignored; lists become tuples).

    ``strategy_repeats`` at least the profile's ``cv_repeats`` runs the strategies on every repeat."""
    if profile not in PLANS:
        raise ValueError(f"no architectures plan for profile {profile!r}; expected one of {sorted(PLANS)}")
    changes = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items() if v is not None}
    return dataclasses.replace(PLANS[profile], **changes)


# --------------------------------------------------------------------------- names and specs


def bridge_name(stage1: str, model: str, base_model: str) -> str:
    """Run name of ``model``'s bridge stage ``stage1`` (the profile's own model keeps the plain name)."""
    return stage1 if model == base_model else f"{stage1}_{model}"


def run_name(arm: str, model: str, strategy: str, base_model: str) -> str:
    """Run name of ``model``'s fold runs of ``arm`` with ``strategy`` (the protocol's own: ``cv_<arm>``)."""
    return ("cv_" + arm + ("" if model == base_model else f"_{model}")
            + ("" if strategy == transfer.DEFAULT else f"_{strategy}"))


def model_profile(profile: Profile, model: str, *, allow_random: bool = False) -> Profile:
    """The profile with only the model changed; with ``allow_random``, a model without a local ImageNet
    weight file may start from random weights when none can be had (a model with a local file keeps the
    profile unchanged, so that the profile's own model keeps the protocol's runs)."""
    changed = profile.replace(model=model)
    if (allow_random and not changed.allow_random
            and not weights_available(model).startswith("local file")):
        changed = changed.replace(allow_random=True)
    return changed


def plan(profile: Profile, model: str, folds: pd.DataFrame, *, arms: tuple[str, ...] = ARMS,
         strategy: str = transfer.DEFAULT, seeds: tuple[int, ...] | None = None, allow_random: bool = False,
         data_dir: str | Path | None = None) -> list[protocol.FoldRun]:
    """``model``'s fold runs of ``arms`` with ``strategy`` on every split of ``folds`` (their bridges are
    their specs' ``init``, trained first by the executor).

    The bridges are trained with the full strategy: a strategy is the target stage's. ``seeds``: the
    bridge runs (repeat ``r`` starts from its own, ``protocol.repeat_seed(seeds, r)``); None: the
    protocol's, one per seed of the profile. The profile's own model with the full strategy and the
    protocol's seeds plans exactly ``protocol.plan``'s specs."""
    models.spec_of(model)
    transfer.get(strategy)
    base = profile.model
    changed = model_profile(profile, model, allow_random=allow_random)
    runs = []
    for split in protocol.splits(folds):
        seed = protocol.bridge_seed(profile, split.repeat) if seeds is None else protocol.repeat_seed(seeds, split.repeat)
        for arm in arms:
            init = ARM_INIT[arm]
            start: str | RunSpec = init
            if init in STAGE1_INIT:
                start = protocol.bridge_spec(changed, init=STAGE1_INIT[init], seed=seed, data_dir=data_dir,
                                             name=bridge_name(init, model, base))
            spec = protocol.fold_spec(changed, arm, split, start=start, name=run_name(arm, model, strategy, base),
                                      data_dir=data_dir, strategy=strategy)
            runs.append(protocol.FoldRun(arm, spec))
    return runs


def _strategy_folds(folds: pd.DataFrame, repeats: int | None) -> pd.DataFrame:
    return folds if repeats is None else folds[folds["repeat"] < repeats].reset_index(drop=True)


def chapter_plan(profile: Profile, plan_: ArchitecturePlan, folds: pd.DataFrame, *,
                 data_dir: str | Path | None = None) -> dict[tuple[str, str, str], list[RunSpec]]:
    """Every group of fold runs of the chapter: (model, strategy, arm) -> its specs, fold by fold.

    Each trained model runs ``arms`` on every fold; the strategy model runs every strategy (and full
    fine-tuning, the reference) on ``strategy_arms`` and the first ``strategy_repeats`` repeats, unless
    its full runs on every fold are there already."""
    base = profile.model
    trained = trained_models(profile, plan_)
    groups: dict[tuple[str, str, str], list[RunSpec]] = {}

    def add(model: str, strategy: str, arms: tuple[str, ...], chosen: pd.DataFrame) -> None:
        runs = plan(profile, model, chosen, arms=arms, strategy=strategy, allow_random=plan_.allow_random,
                    seeds=None if model == base else plan_.seeds, data_dir=data_dir)
        for arm in arms:
            groups.setdefault((model, strategy, arm), [r.spec for r in runs if r.arm == arm])

    for model in trained:
        add(model, transfer.DEFAULT, plan_.arms, folds)
    chosen = _strategy_folds(folds, plan_.strategy_repeats)
    for strategy in dict.fromkeys((transfer.DEFAULT, *plan_.strategies)):
        arms = tuple(a for a in plan_.strategy_arms if (plan_.strategy_model, strategy, a) not in groups)
        if arms:
            add(plan_.strategy_model, strategy, arms, chosen)
    return groups


def trained_models(profile: Profile, plan_: ArchitecturePlan) -> list[str]:
    """The models trained on the folds: the plan's, or the profile's and every one with weights here;
    with ``allow_random``, every registered model."""
    trained = list(plan_.trained_models) if plan_.trained_models else default_models(profile)
    if plan_.allow_random:
        trained += [m for m in models.MODELS if m not in trained]
    return trained


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class CostSettings:
    """What the cost measurements use: the profile's input size, stage-1 batch, device, precision
    and deterministic mode (the training throughput is the study's own step as a run trains it)."""

    image_size: int
    batch_size: int  # training throughput: images per optimiser step
    train_steps: int = 5  # timed training steps (after warm-up)
    latency_runs: int = 30  # timed batch-1 forward passes (after warm-up); the median is reported
    warmup: int = 2
    device: str = "cpu"  # where the training throughput is measured ("auto": the GPU when there is one)
    precision: str = "auto"  # the training step's numerics, resolved for the device (train.resolve_precision)
    deterministic: bool = True  # as the study seeds its runs (repro.seed_everything)

    @classmethod
    def from_profile(cls, profile: Profile, **changes: Any) -> "CostSettings":
        values = dict(image_size=profile.image_size, batch_size=profile.stage1.batch_size, device=profile.device,
                      precision=profile.precision, deterministic=profile.deterministic)
        return cls(**{**values, **changes})

    @property
    def torch_device(self) -> torch.device:
        return repro.pick_device(self.device)

    @property
    def train_precision(self) -> str:
        """The precision of the timed training step on this device (bf16 on a GPU when ``auto``)."""
        return train.resolve_precision(self.precision, self.torch_device.type)


@dataclass
class ArchitectureResult:
    """Every fold run of the chapter by (model, strategy, arm), their bridges, and the measured costs."""

    profile: Profile
    plan: ArchitecturePlan
    trained: list[str]  # the models trained on the folds
    groups: dict[tuple[str, str, str], list[RunResult]]  # (model, strategy, arm) -> fold runs, fold by fold
    bridges: list[RunResult]  # the bridge runs the fold runs started from
    costs: pd.DataFrame  # measure_costs: one row per registered model
    registry: pd.DataFrame  # registry_table
    settings: CostSettings
    strategy_folds: pd.DataFrame  # the folds the strategies ran on

    def runs(self) -> list[RunResult]:
        """Every run of the chapter once: the fold runs and the bridges they started from."""
        found = {str(r.run_dir): r for group in self.groups.values() for r in group}
        found.update({str(r.run_dir): r for r in self.bridges})
        return list(found.values())


def run(profile: Profile, plan: ArchitecturePlan, *, executor: str | executors.Executor = "local",
        workers: int | None = None, force: bool = False, data_dir: str | Path | None = None,
        folds: pd.DataFrame | None = None, cost_settings: CostSettings | None = None) -> ArchitectureResult:
    """Train (or reuse) every planned run, bridges first, through one executor; measure every model's cost.

    ``force`` trains this chapter's fold runs again, never the protocol's own runs of the profile's model
    (the crossval notebook owns them) nor the bridges. ``cost_settings``: None, the profile's."""
    if folds is None:
        folds, _ = protocol.target_folds(profile, data_dir=data_dir)
    plan_ = plan
    groups = chapter_plan(profile, plan_, folds, data_dir=data_dir)
    specs = list({str(s.relpath): s for group in groups.values() for s in group}.values())
    own_protocol = {str(r.spec.relpath) for r in protocol.plan(profile, folds, arms=tuple(ARM_INIT), data_dir=data_dir)}
    shared = [s for s in specs if str(s.relpath) in own_protocol]
    own = [s for s in specs if str(s.relpath) not in own_protocol]
    bridges = list({str(u.relpath): u for s in specs for u in s.upstream()}.values())
    with executors.using(executor, workers=workers) as ex:
        done = {str(s.relpath): r for s, r in zip(bridges + shared, ex.run(bridges + shared,
                                                                         description="bridges and protocol runs"))}
        done.update({str(s.relpath): r for s, r in zip(own, ex.run(own, force=force,
                                                                   description="architecture fold runs"))})
    settings = cost_settings or CostSettings.from_profile(profile)
    return ArchitectureResult(
        profile=profile, plan=plan_, trained=trained_models(profile, plan_),
        groups={k: [done[str(s.relpath)] for s in group] for k, group in groups.items()},
        bridges=[done[str(b.relpath)] for b in bridges],
        costs=measure_costs(list(models.MODELS), settings), registry=registry_table(), settings=settings,
        strategy_folds=_strategy_folds(folds, plan_.strategy_repeats))


def run_architecture(profile: Profile, model: str, *, arms: tuple[str, ...] = ARMS, strategy: str = transfer.DEFAULT,
                     seeds: tuple[int, ...] | None = None, folds: pd.DataFrame | None = None,
                     data_dir: str | Path | None = None, executor: str | executors.Executor = "local",
                     workers: int | None = None, force: bool = False) -> list[RunResult]:
    """Train (or reuse) one model's fold runs with one strategy (its bridges first); return them in plan order."""
    if folds is None:
        folds, _ = protocol.target_folds(profile, data_dir=data_dir)
    runs = plan(profile, model, folds, arms=arms, strategy=strategy, seeds=seeds, data_dir=data_dir)
    return executors.run_specs([r.spec for r in runs], executor=executor, workers=workers, force=force,
                               description=f"{model} {strategy} fold runs")


def _runs_root(result: RunResult) -> Path:
    """The runs folder a run was read from (its folder less its relative path)."""
    root = Path(result.run_dir)
    for _ in PurePosixPath(result.provenance["run"]).parts:
        root = root.parent
    return root


def _bridge_of(result: RunResult) -> RunResult | None:
    """The run a fold run continued (from its spec, else its provenance's ``init_run``); None: it did not."""
    spec = result.spec
    if isinstance(spec, RunSpec):
        return lifecycle.load_spec(spec.init, _runs_root(result)) if isinstance(spec.init, RunSpec) else None
    init_run = result.provenance.get("init_run")
    return lifecycle.load(_runs_root(result) / init_run) if init_run else None


def stage_times(model: str, results: list[RunResult]) -> pd.DataFrame:
    """Wall time of each stage of ``model``: the bridge runs its fold runs started from and the fold runs,
    per run name, median seconds."""
    bridges = {str(b.run_dir): b for b in filter(None, map(_bridge_of, results))}
    rows = []
    for runs_of in (list(bridges.values()), results):
        table = pd.DataFrame({"name": [r.name for r in runs_of],
                              "seconds": [r.provenance["wall_seconds"] for r in runs_of]})
        for name, group in table.groupby("name", sort=False):
            stage = f"bridge {name}" if runs_of is not results else f"head-CT fold run {name}"
            rows.append({"model": model, "stage": stage, "runs": len(group), "seconds": float(group["seconds"].median())})
    return pd.DataFrame(rows, columns=["model", "stage", "runs", "seconds"])


def stage_time_table(result: ArchitectureResult) -> pd.DataFrame:
    """``stage_times`` of every trained model's fully fine-tuned runs."""
    parts = [stage_times(m, [r for (model, s, _), runs in result.groups.items() if model == m and s == transfer.DEFAULT
                             for r in runs]) for m in result.trained]
    return pd.concat(parts, ignore_index=True)


# --------------------------------------------------------------------------- registry


#: Columns of ``architectures.csv`` (the results contract).
COLUMNS = ["model", "weights_source", "strategy", "arm", "profile", "accuracy_mean", "accuracy_ci_low",
           "accuracy_ci_high", "auc_mean", "params", "macs", "size_mb", "cpu_latency_ms", "train_img_per_s", "device"]
COST_COLUMNS = ("params", "macs", "size_mb", "cpu_latency_ms", "train_img_per_s", "device")


def weights_available(name: str) -> str:
    """Where ``name``'s ImageNet weights would come from here (``$MSTL_WEIGHTS_DIR``), without loading them."""
    spec = models.spec_of(name)
    folder = paths.weights_dir()
    if folder is not None and spec.local_file and (folder / spec.local_file).is_file():
        return f"local file {spec.local_file}"
    if spec.official_weights and not paths.offline():
        return f"official {spec.official_weights.partition(':')[0]} weights (if reachable)"
    return "none offline"


def registry_table() -> pd.DataFrame:
    """Every registered model: family, library, input normalisation, blocks, and its ImageNet weights here."""
    rows = []
    for name, spec in models.MODELS.items():
        backbone = spec.build()
        rows.append({"model": name, "label": spec.display, "family": spec.family,
                     "library": type(backbone).__module__.split(".")[0],
                     "normalisation": "[-1, 1]" if spec.mean == models.SYMMETRIC_MEAN else "ImageNet mean/std",
                     "blocks": len(models.blocks(backbone, spec)),
                     "imagenet_weights": weights_available(name)})
    return pd.DataFrame(rows)


def default_models(profile: Profile) -> list[str]:
    """The profile's model and every model whose ImageNet weights are available here."""
    return [profile.model] + [name for name in models.MODELS
                              if name != profile.model and weights_available(name) != "none offline"]


def key(model: str, arm: str, strategy: str = transfer.DEFAULT) -> str:
    """The label of one model, arm and strategy in fold tables and tests (``efficientnet_lite0 multistage``)."""
    return f"{model} {arm}" + ("" if strategy == transfer.DEFAULT else f" {strategy}")


def fold_rows(results: list[RunResult], *, model: str, arm: str, strategy: str) -> pd.DataFrame:
    """The protocol's fold table of these runs, ``arm`` relabelled with ``key`` for paired tests."""
    return protocol.fold_table(results).assign(arm=key(model, arm, strategy), model=model, strategy=strategy,
                                               arm_name=arm)


def accuracy_rows(results: list[RunResult], *, arm: str, strategy: str) -> dict[str, Any]:
    """Mean and t interval of the fold accuracies, mean AUC, and the weights the chain began with."""
    accuracy = mean_ci([r.metrics["accuracy"] for r in results])
    weights = results[0].provenance["weights"]
    # "<source> <file>" of the weights the chain began with (a bridge's checkpoint names them in its note).
    began = (weights["note"].partition("chain began with ")[2] if weights["init"] == "checkpoint"
             else f"{weights['source']} {weights.get('file') or ''}")
    began = re.sub(r"\s+[0-9a-f]{64}$", "", " ".join(began.split()))  # the sha256 is in the provenance
    return {"model": results[0].config["model"], "weights_source": began,
            "strategy": strategy, "arm": arm, "profile": results[0].config["profile"],
            "accuracy_mean": accuracy["mean"], "accuracy_ci_low": accuracy["ci_low"],
            "accuracy_ci_high": accuracy["ci_high"], "auc_mean": float(pd.Series([r.metrics["auc"] for r in results]).mean()),
            "n_folds": len(results), "minutes": sum(r.provenance["wall_seconds"] for r in results) / 60}


# --------------------------------------------------------------------------- cost


def count_macs(model: torch.nn.Module, image_size: int, in_chans: int = 1) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (PyTorch's FLOP counter / 2)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(1, in_chans, image_size, image_size))
    return int(counter.get_total_flops() // 2)


def checkpoint_megabytes(model: torch.nn.Module) -> float:
    """Size of the fp32 state_dict as ``torch.save`` writes it (what a checkpoint costs on disk)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes / 1e6


def cpu_latency_ms(model: torch.nn.Module, image_size: int, *, runs: int, warmup: int) -> float:
    """Median wall time of a batch-1 forward pass on the CPU, in milliseconds."""
    model = model.cpu().eval()
    x = torch.rand(1, 1, image_size, image_size)
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            start = time.perf_counter()
            model(x)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return 1000 * pystats.median(times)


def train_images_per_second(model: torch.nn.Module, settings: CostSettings) -> float:
    """Images per second of the study's own training step (``train.run_epoch``, in the profile's precision
    for the device) on random batches: the network's cost alone (the data pipeline's is the benchmark
    appendix's subject)."""
    device = settings.torch_device
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.rand(settings.batch_size, 1, settings.image_size, settings.image_size, generator=generator),
                torch.randint(0, 2, (settings.batch_size,), generator=generator))
               for _ in range(settings.warmup + settings.train_steps)]
    model.to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    precision = settings.train_precision
    train.run_epoch(model, batches[:settings.warmup], device=device, optimizer=optimizer, precision=precision)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    train.run_epoch(model, batches[settings.warmup:], device=device, optimizer=optimizer,
                    precision=precision)  # ends with .item(): synced
    return settings.train_steps * settings.batch_size / (time.perf_counter() - start)


def measure_cost(name: str, settings: CostSettings, *, num_classes: int = 2) -> dict[str, Any]:
    """Every cost figure of one registered model (random weights: cost does not depend on them)."""
    repro.seed_everything(0, deterministic=settings.deterministic)  # as the study seeds its runs
    model, _ = models.build_model(name, num_classes=num_classes, init="scratch")
    spec = models.spec_of(name)
    row = {"model": name, "label": spec.display, "family": spec.family,
           "params": sum(p.numel() for p in model.parameters()),
           "macs": count_macs(model, settings.image_size), "image_size": settings.image_size,
           "size_mb": checkpoint_megabytes(model),
           "cpu_latency_ms": cpu_latency_ms(model, settings.image_size, runs=settings.latency_runs,
                                            warmup=settings.warmup),
           "train_img_per_s": train_images_per_second(model, settings),
           "device": repro.describe_device(settings.torch_device), "precision": settings.train_precision,
           "batch_size": settings.batch_size}
    model.cpu()
    return row


def measure_costs(names: list[str], settings: CostSettings) -> pd.DataFrame:
    return pd.DataFrame([measure_cost(name, settings) for name in names])


def architecture_table(accuracy: pd.DataFrame, costs: pd.DataFrame) -> pd.DataFrame:
    """``architectures.csv``: a row per trained model, arm and strategy with its cost, and a row with
    cost only (no accuracy, ``weights_source`` saying why) for every registered model not trained."""
    cost = costs.set_index("model")
    rows = [{**row, **{c: cost.loc[row["model"], c] for c in COST_COLUMNS}} for row in accuracy.to_dict("records")]
    trained = set(accuracy["model"]) if len(accuracy) else set()
    for name in cost.index.difference(sorted(trained), sort=False):
        rows.append({"model": name, "weights_source": "not trained: no ImageNet weights here", "strategy": "",
                     "arm": "", "profile": accuracy["profile"].iloc[0] if len(accuracy) else "",
                     **{c: cost.loc[name, c] for c in COST_COLUMNS}})
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


def pareto_front(table: pd.DataFrame, *, cost: str, value: str = "accuracy_mean") -> pd.Series:
    """True for the rows no other row beats on both ``cost`` (lower) and ``value`` (higher)."""
    def dominated(row) -> bool:
        return bool(((table[cost] <= row[cost]) & (table[value] >= row[value])
                     & ((table[cost] < row[cost]) | (table[value] > row[value]))).any())
    return table.apply(lambda row: not dominated(row), axis=1)


# --------------------------------------------------------------------------- tables and tests


def fold_table(result: ArchitectureResult) -> pd.DataFrame:
    """``architectures_folds.csv``: every fold run in the columns of ``stage2_folds.csv`` plus model,
    strategy and arm_name (``arm``: ``"model arm [strategy]"``)."""
    return pd.concat([fold_rows(runs, model=m, arm=arm, strategy=s) for (m, s, arm), runs in result.groups.items()],
                     ignore_index=True)


def model_pairs(result: ArchitectureResult) -> list[tuple[str, str]]:
    """The model comparisons: each model's multistage against its imagenet arm, and each model's arms
    against the profile's model's."""
    arms, base = result.plan.arms, result.profile.model
    pairs = []
    if {"imagenet", "multistage"} <= set(arms):
        pairs += [(key(m, "multistage"), key(m, "imagenet")) for m in result.trained]
    if base in result.trained:
        pairs += [(key(m, arm), key(base, arm)) for m in result.trained if m != base for arm in arms]
    return pairs


def strategy_pairs(result: ArchitectureResult) -> list[tuple[str, str]]:
    """Each strategy against full fine-tuning, per strategy arm."""
    sm = result.plan.strategy_model
    return [(key(sm, arm, s), key(sm, arm)) for arm in result.plan.strategy_arms for s in result.plan.strategies
            if s != transfer.DEFAULT]


def strategy_rows(result: ArchitectureResult, folds: pd.DataFrame) -> pd.DataFrame:
    """The fold rows of the strategy comparison: the strategy model, its strategies (and full fine-tuning)
    on the strategy arms and repeats."""
    plan_ = result.plan
    return folds[(folds["model"] == plan_.strategy_model) & folds["arm_name"].isin(plan_.strategy_arms)
                 & folds["strategy"].isin({transfer.DEFAULT, *plan_.strategies})
                 & folds["repeat"].isin(result.strategy_folds["repeat"].unique())].reset_index(drop=True)


def _tests(folds: pd.DataFrame, pairs: list[tuple[str, str]]) -> pd.DataFrame:
    return analysis.corrected_tests(folds, pairs=pairs) if pairs else pd.DataFrame(columns=analysis.TEST_COLUMNS)


def tables(result: ArchitectureResult) -> dict[str, pd.DataFrame]:
    """The chapter's tables (the results contract): accuracy and cost, every fold, the model tests and
    the strategy tests."""
    accuracy = pd.DataFrame([accuracy_rows(runs, arm=arm, strategy=s) for (m, s, arm), runs in result.groups.items()])
    folds = fold_table(result)
    return {"architectures.csv": architecture_table(accuracy, result.costs),
            "architectures_folds.csv": folds,
            "architectures_tests.csv": _tests(folds[folds["strategy"] == transfer.DEFAULT], model_pairs(result)),
            "strategies_tests.csv": _tests(strategy_rows(result, folds), strategy_pairs(result))}


def fully_fine_tuned(result: ArchitectureResult, tables_: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The trained rows of ``architectures.csv`` with full fine-tuning, labelled (what the Pareto figure shows)."""
    table = tables_["architectures.csv"]
    full = table[(table["strategy"] == transfer.DEFAULT) & table["accuracy_mean"].notna()]
    return full.merge(result.costs[["model", "label"]], on="model")


def fronts(full: pd.DataFrame) -> dict[str, pd.Series]:
    """The Pareto front of accuracy against MACs and against CPU latency."""
    return {c: pareto_front(full, cost=c) for c in ("macs", "cpu_latency_ms")}


# --------------------------------------------------------------------------- what the notebook shows


def cost_view(result: ArchitectureResult) -> pd.DataFrame:
    """The measured costs, one row per registered model, without the columns that are the same in every row."""
    return result.costs.drop(columns=["device", "precision", "image_size", "batch_size"]).round(2)


def cost_figure(result: ArchitectureResult) -> plt.Figure:
    """Bars of each cost figure per model."""
    fig = plots.cost_bars(result.costs, title=f"cost at {result.settings.image_size} px")
    return fig if fig is not None else plt.gcf()


def accuracy_view(tables_: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The trained rows of ``architectures.csv`` (device and profile left out), rounded."""
    table = tables_["architectures.csv"]
    return table[table["strategy"] != ""].drop(columns=["device", "profile"]).round(3)


def spread_labels(fig: plt.Figure, *, pad_px: float = 1.0, max_moves: int = 200) -> plt.Figure:
    """Move the text annotations of each axis of ``fig`` apart (upwards) until none overlaps another."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    points_per_px = 72 / fig.dpi
    for ax in fig.axes:
        notes = sorted((t for t in ax.texts if isinstance(t, Annotation)),
                       key=lambda t: tuple(ax.transData.transform(t.xy))[::-1])
        placed = []
        for note in notes:
            for _ in range(max_moves):
                box = note.get_window_extent(renderer)
                hit = next((other for other in placed if box.overlaps(other)), None)
                if hit is None:
                    break
                dx, dy = note.xyann
                note.xyann = (dx, dy + (hit.y1 - box.y0 + pad_px) * points_per_px)
            placed.append(note.get_window_extent(renderer))
    return fig


def pareto_figure(result: ArchitectureResult, tables_: dict[str, pd.DataFrame]) -> plt.Figure:
    """Accuracy against cost of the fully fine-tuned models, the Pareto fronts joined, labels kept apart."""
    full = fully_fine_tuned(result, tables_)
    fig = plots.pareto(full, front=fronts(full), title="head-CT accuracy against cost (full fine-tuning)")
    return spread_labels(fig)


def strategy_table(result: ArchitectureResult) -> pd.DataFrame:
    """What each strategy trains: its settings, and the trainable and total parameters of the strategy model."""
    sm = result.plan.strategy_model
    total = int(result.costs.set_index("model").loc[sm, "params"])
    rows, seen = [], set()
    for (m, s, _), runs in result.groups.items():
        if m == sm and s in result.plan.strategies and s not in seen:
            seen.add(s)
            rows.append({**vars(transfer.get(s)), "trainable_params": runs[0].provenance.get("trainable_params", total),
                         "total_params": total})
    return pd.DataFrame(rows)


def strategy_summary(result: ArchitectureResult, tables_: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Mean and t interval of accuracy and AUC of each strategy over its folds."""
    chosen = strategy_rows(result, tables_["architectures_folds.csv"])
    return analysis.arm_summary(chosen, metrics=("accuracy", "auc")).pivot(
        index="arm", columns="metric", values=["mean", "ci_low", "ci_high"])


def glue_values(result: ArchitectureResult, tables_: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """Every number and name the chapter's prose glues (the verdict is ``verdict``)."""
    table, folds = tables_["architectures.csv"], tables_["architectures_folds.csv"]
    chosen = result.strategy_folds
    not_trained = table[table["accuracy_mean"].isna()]["model"].map(lambda m: models.spec_of(m).display)
    return {
        "arch_image_size": result.settings.image_size,
        "arch_batch": result.settings.batch_size,
        "arch_device": str(result.costs["device"].iloc[0]),
        "arch_precision": result.settings.train_precision,
        "arch_n_folds": int(folds.groupby("arm").size().max()),
        "arch_bridges": len(result.plan.seeds),
        "arch_strategy_model": models.spec_of(result.plan.strategy_model).display,
        "arch_strategy_arms": ", ".join(result.plan.strategy_arms),
        "arch_strategy_n_folds": int(len(chosen.groupby(["repeat", "fold"]))),
        "arch_strategy_repeats": int(chosen["repeat"].nunique()),
        "arch_minutes": float(sum(r.provenance["wall_seconds"] for r in result.runs()) / 60),
        "arch_not_trained": ", ".join(not_trained) if len(not_trained) else "none",
    }


def verdict(result: ArchitectureResult, tables_: dict[str, pd.DataFrame]) -> str:
    """The most accurate model, the cheapest on the accuracy-MACs front, and the verdict of every
    model and strategy comparison (markdown)."""
    full = fully_fine_tuned(result, tables_)
    best = full.sort_values("accuracy_mean", ascending=False).iloc[0]
    cheapest = full[fronts(full)["macs"]].sort_values("macs").iloc[0]
    lines = [f"Most accurate trained model and arm: **{best['label']} ({best['arm']})**, {best['accuracy_mean']:.3f} "
             f"(CI {best['accuracy_ci_low']:.3f} to {best['accuracy_ci_high']:.3f}), at {best['macs'] / 1e6:.0f} million "
             f"multiply-accumulates per image.",
             f"Cheapest model on the accuracy-MACs Pareto front: **{cheapest['label']} ({cheapest['arm']})**, "
             f"{cheapest['accuracy_mean']:.3f} at {cheapest['macs'] / 1e6:.0f} million."]
    for name, pairs in (("architectures_tests.csv", model_pairs(result)), ("strategies_tests.csv", strategy_pairs(result))):
        tests = tables_[name]
        if len(tests):
            lines += [f"**{a} against {b}**: " + analysis.verdict(tests, arm_a=a, arm_b=b) for a, b in pairs]
    return "\n\n".join(lines)
