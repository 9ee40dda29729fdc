"""Architectures and transfer strategies on equal terms: accuracy on the protocol's folds, and cost.

Each model of the registry runs the protocol's arms (by default the single-stage
``imagenet`` and the paper's ``multistage``) on the same head-CT folds as the
profile's own model, with the profile's settings and only the model (and, for the
strategy comparison, the transfer strategy) changed. Runs of the profile's own model
with the full strategy *are* the protocol's runs (``cv_imagenet``, ``stage1``...);
others are named after what differs: ``stage1_<model>``, ``cv_<arm>_<model>``,
``cv_<arm>_<strategy>``.

Cost is measured here, never taken from papers: parameters, multiply-accumulates
(PyTorch's own FLOP counter, one forward pass at the input size used), size of the
fp32 checkpoint, CPU latency at batch 1, and training throughput.
"""

from __future__ import annotations

import dataclasses
import io
import re
import statistics as pystats
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..models import registry as models, transfer
from ..core import paths, repro
from . import protocol
from ..engine import stages, train
from ..core.config import INIT_CHOICES, STAGE1_INIT, Profile
from ..report.statistics import mean_ci

#: The arms each architecture runs: single-stage ImageNet transfer and the paper's two stages.
ARMS = ("imagenet", "multistage")


def bridge_name(stage1: str, model: str, base_model: str) -> str:
    """Run name of ``model``'s bridge stage ``stage1`` (the profile's own model keeps the plain name)."""
    return stage1 if model == base_model else f"{stage1}_{model}"


def run_name(arm: str, model: str, strategy: str, base_model: str) -> str:
    """Run name of ``model``'s fold runs of ``arm`` with ``strategy`` (the protocol's own: ``cv_<arm>``)."""
    return ("cv_" + arm + ("" if model == base_model else f"_{model}")
            + ("" if strategy == transfer.DEFAULT else f"_{strategy}"))


def plan(profile: Profile, model: str, folds: pd.DataFrame, *, arms: tuple[str, ...] = ARMS,
         strategy: str = transfer.DEFAULT, bridge_seeds: tuple[int, ...] | None = None,
         **common: Any) -> tuple[list[dict], list[dict]]:
    """(bridge jobs, fold jobs) of ``model`` with ``strategy``: ``stages.run_stage`` keyword arguments.

    The bridges are trained with the full strategy: a strategy is the target stage's.
    ``bridge_seeds``: the bridge runs to train (repeat ``r`` starts from
    ``bridge_seeds[r % len]``, as the chain chapter does); None: the protocol's, one per
    seed of the profile."""
    models.spec_of(model)
    transfer.get(strategy)
    base = profile.model
    changed = profile.replace(model=model)
    runs = protocol.plan(changed, folds, arms=arms)
    if bridge_seeds:
        runs = [dataclasses.replace(run, init_seed=bridge_seeds[run.split.repeat % len(bridge_seeds)]) for run in runs]
    bridges = [dict(name=bridge_name(name, model, base), profile=changed, stage="stage1", init_from=STAGE1_INIT[name],
                    seed=seed, **common) for name, seed in protocol.bridges(runs)]
    jobs = [dict(name=run_name(run.arm, model, strategy, base), profile=changed, stage="stage2",
                 init_from=run.init_from if run.init_from not in STAGE1_INIT else bridge_name(run.init_from, model, base),
                 seed=run.seed, split=run.split, init_seed=run.init_seed, strategy=strategy, **common) for run in runs]
    return bridges, jobs


def run_architecture(profile: Profile, model: str, *, arms: tuple[str, ...] = ARMS, strategy: str = transfer.DEFAULT,
                     bridge_seeds: tuple[int, ...] | None = None, folds: pd.DataFrame | None = None, data_dir: str | Path | None = None,
                     weights_dir: str | Path | None = None, runs_root: str | Path | None = None,
                     device: str = "auto", workers: int | None = None) -> list[stages.StageResult]:
    """Train (or reuse) ``model``'s bridges, one after the other, then its fold runs side by side."""
    if folds is None:
        folds, _ = protocol.head_ct_folds(profile, data_dir=data_dir, runs_root=runs_root)
    common = dict(data_dir=data_dir, weights_dir=weights_dir, runs_root=runs_root, device=device)
    bridges, jobs = plan(profile, model, folds, arms=arms, strategy=strategy, bridge_seeds=bridge_seeds, **common)
    for job in bridges:
        stages.run_stage(**job)
    return stages.run_stages(jobs, workers=workers, device=device, description=f"{model} {strategy} fold runs")


def stage_times(profile: Profile, model: str, results: list[stages.StageResult], *,
                runs_root: str | Path | None = None) -> pd.DataFrame:
    """Wall time of each stage of ``model``: the bridge runs its fold runs started from, and the fold
    runs (per run name), median seconds."""
    bridges = sorted({(r.config["init_from"], r.config.get("init_seed", r.config["seed"])) for r in results
                      if r.config["init_from"] not in INIT_CHOICES})
    changed = profile.replace(model=model)
    rows = [{"model": model, "stage": f"bridge {name}", "runs": 1, "seconds": stages.load_result(
                stages.run_dir_for(changed, name, seed, runs_root)).metrics["provenance"]["wall_seconds"]}
            for name, seed in bridges]
    for name, group in pd.DataFrame({"name": [r.config["name"] for r in results],
                                     "seconds": [r.metrics["provenance"]["wall_seconds"] for r in results]}).groupby("name"):
        rows.append({"model": model, "stage": f"head-CT fold run {name}", "runs": len(group),
                     "seconds": float(group["seconds"].median())})
    return pd.DataFrame(rows)


#: Columns of ``architectures.csv`` (the results contract).
COLUMNS = ["model", "weights_source", "strategy", "arm", "profile", "accuracy_mean", "accuracy_ci_low",
           "accuracy_ci_high", "auc_mean", "params", "macs", "size_mb", "cpu_latency_ms", "train_img_per_s", "device"]


def weights_available(name: str, weights_dir: str | Path | None = None) -> str:
    """Where ``name``'s ImageNet weights would come from here, without loading them."""
    spec = models.spec_of(name)
    folder = paths.weights_dir(weights_dir)
    if folder is not None and spec.local_file and (folder / spec.local_file).is_file():
        return f"local file {spec.local_file}"
    if spec.official_weights and not paths.offline():
        return f"official {spec.official_weights.partition(':')[0]} weights (if reachable)"
    return "none offline"


def registry_table(weights_dir: str | Path | None = None) -> pd.DataFrame:
    """Every registered model: family, library, input normalisation, blocks, and its ImageNet weights here."""
    rows = []
    for name, spec in models.MODELS.items():
        backbone = spec.build()
        rows.append({"model": name, "label": spec.display, "family": spec.family,
                     "library": type(backbone).__module__.split(".")[0],
                     "normalisation": "[-1, 1]" if spec.mean == models.SYMMETRIC_MEAN else "ImageNet mean/std",
                     "blocks": len(models.blocks(backbone, spec)),
                     "imagenet_weights": weights_available(name, weights_dir)})
    return pd.DataFrame(rows)


def default_models(profile: Profile, weights_dir: str | Path | None = None) -> list[str]:
    """The profile's model and every model whose ImageNet weights are available here."""
    return [profile.model] + [name for name in models.MODELS
                              if name != profile.model and weights_available(name, weights_dir) != "none offline"]


def key(model: str, arm: str, strategy: str = transfer.DEFAULT) -> str:
    """The label of one model, arm and strategy in fold tables and tests (``efficientnet_lite0 multistage``)."""
    return f"{model} {arm}" + ("" if strategy == transfer.DEFAULT else f" {strategy}")


def fold_rows(results: list[stages.StageResult], *, model: str, arm: str, strategy: str) -> pd.DataFrame:
    """The protocol's fold table of these runs, ``arm`` relabelled with ``key`` for paired tests."""
    return protocol.fold_table(results).assign(arm=key(model, arm, strategy), model=model, strategy=strategy,
                                               arm_name=arm)


def accuracy_rows(results: list[stages.StageResult], *, arm: str, strategy: str) -> dict[str, Any]:
    """Mean and t interval of the fold accuracies, mean AUC, and the weights the chain began with."""
    accuracy = mean_ci([r.metrics["accuracy"] for r in results])
    weights = results[0].metrics["provenance"]["weights"]
    # "<source> <file>" of the weights the chain began with (a bridge's checkpoint names them in its note).
    began = (weights["note"].partition("chain began with ")[2] if weights["init"] == "checkpoint"
             else f"{weights['source']} {weights.get('file') or ''}")
    began = re.sub(r"\s+[0-9a-f]{64}$", "", " ".join(began.split()))  # the sha256 is in the provenance
    return {"model": results[0].config["profile"]["model"], "weights_source": began,
            "strategy": strategy, "arm": arm, "profile": results[0].config["profile"]["name"],
            "accuracy_mean": accuracy["mean"], "accuracy_ci_low": accuracy["ci_low"],
            "accuracy_ci_high": accuracy["ci_high"], "auc_mean": float(pd.Series([r.metrics["auc"] for r in results]).mean()),
            "n_folds": len(results), "minutes": sum(r.metrics["provenance"]["wall_seconds"] for r in results) / 60}


# --------------------------------------------------------------------------- cost


@dataclass(frozen=True)
class CostSettings:
    """What the cost measurements use: the profile's input size and stage-1 batch."""

    image_size: int
    batch_size: int  # training throughput: images per optimiser step
    train_steps: int = 5  # timed training steps (after warm-up)
    latency_runs: int = 30  # timed batch-1 forward passes (after warm-up); the median is reported
    warmup: int = 2

    @classmethod
    def from_profile(cls, profile: Profile, **changes: Any) -> "CostSettings":
        return cls(image_size=profile.image_size, batch_size=profile.stage1.batch_size, **changes)


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


def train_images_per_second(model: torch.nn.Module, settings: CostSettings, device: torch.device) -> float:
    """Images per second of the study's own training step (``train.run_epoch``) on random batches:
    the network's cost alone (the data pipeline's is the benchmark appendix's subject)."""
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.rand(settings.batch_size, 1, settings.image_size, settings.image_size, generator=generator),
                torch.randint(0, 2, (settings.batch_size,), generator=generator))
               for _ in range(settings.warmup + settings.train_steps)]
    model.to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train.run_epoch(model, batches[:settings.warmup], device=device, optimizer=optimizer)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    train.run_epoch(model, batches[settings.warmup:], device=device, optimizer=optimizer)  # ends with .item(): synced
    return settings.train_steps * settings.batch_size / (time.perf_counter() - start)


def measure_cost(name: str, settings: CostSettings, *, device: str = "cpu", num_classes: int = 2) -> dict[str, Any]:
    """Every cost figure of one registered model (random weights: cost does not depend on them)."""
    torch.manual_seed(0)
    model, _ = models.build_model(name, num_classes=num_classes, init="scratch")
    spec = models.spec_of(name)
    torch_device = repro.pick_device(device)
    return {"model": name, "label": spec.display, "family": spec.family,
            "params": sum(p.numel() for p in model.parameters()),
            "macs": count_macs(model, settings.image_size), "image_size": settings.image_size,
            "size_mb": checkpoint_megabytes(model),
            "cpu_latency_ms": cpu_latency_ms(model, settings.image_size, runs=settings.latency_runs,
                                             warmup=settings.warmup),
            "train_img_per_s": train_images_per_second(model, settings, torch_device),
            "device": repro.describe_device(torch_device), "batch_size": settings.batch_size}


def measure_costs(names: list[str], settings: CostSettings, *, device: str = "cpu") -> pd.DataFrame:
    return pd.DataFrame([measure_cost(name, settings, device=device) for name in names])


def architecture_table(accuracy: pd.DataFrame, costs: pd.DataFrame) -> pd.DataFrame:
    """``architectures.csv``: a row per trained model, arm and strategy with its cost, and a row with
    cost only (no accuracy, ``weights_source`` saying why) for every registered model not trained."""
    cost = costs.set_index("model")
    rows = [{**row, **{c: cost.loc[row["model"], c] for c in ("params", "macs", "size_mb", "cpu_latency_ms",
                                                               "train_img_per_s", "device")}}
            for row in accuracy.to_dict("records")]
    trained = set(accuracy["model"]) if len(accuracy) else set()
    for name in cost.index.difference(sorted(trained), sort=False):
        rows.append({"model": name, "weights_source": "not trained: no ImageNet weights here", "strategy": "",
                     "arm": "", "profile": accuracy["profile"].iloc[0] if len(accuracy) else "",
                     **{c: cost.loc[name, c] for c in ("params", "macs", "size_mb", "cpu_latency_ms",
                                                       "train_img_per_s", "device")}})
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


def pareto_front(table: pd.DataFrame, *, cost: str, value: str = "accuracy_mean") -> pd.Series:
    """True for the rows no other row beats on both ``cost`` (lower) and ``value`` (higher)."""
    def dominated(row) -> bool:
        return bool(((table[cost] <= row[cost]) & (table[value] >= row[value])
                     & ((table[cost] < row[cost]) | (table[value] > row[value]))).any())
    return table.apply(lambda row: not dominated(row), axis=1)
