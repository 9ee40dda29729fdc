"""Throughput of the training step, measured three ways on the same model, batch and image size.

(a) ``ceiling``: training steps on one batch already in device memory: pure compute.
(b) ``pipeline``: the project's path (decoded-image cache, ``TensorBatches`` with
    on-device augmentation, ``train.run_epoch``) over the chest X-ray training part.
(c) ``plain``: the way most tutorials do it: ``torchvision.datasets.ImageFolder``
    decoding JPEG/PNG files with PIL every epoch, per-image transforms, a
    ``DataLoader`` with one worker process per core.

All three train with the study's own step (``train.run_epoch``), so they differ only in
where their batches come from. Beside them: the numeric variants of (a) (memory layout, bf16 autocast,
``torch.compile``), several small runs side by side against one run using every
core, and decoding the dataset against reading the decoded-image cache. Every row
of ``benchmark.csv`` is one measurement; ``ratio`` compares it with ``ratio_to``.
Run it with ``make benchmark`` (``benchmarks/run.py``).
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..data import datasets as data_mod, decoded
from ..models import registry as models
from ..core import repro
from ..engine import executors, train
from ..core.config import CORE_CHAPTERS, Profile

log = logging.getLogger(__name__)

#: Columns of ``benchmark.csv`` (the results contract of the benchmark appendix).
COLUMNS = ["measurement", "variant", "device", "model", "image_size", "batch_size", "precision", "channels_last",
           "processes", "threads", "repeats", "images", "seconds", "img_per_s", "spread", "ratio", "ratio_to", "data",
           "cpu", "gpu", "torch", "finished"]


@dataclass(frozen=True)
class Settings:
    """What one benchmark run measures."""

    model: str
    image_size: int
    batch_size: int  # the stage-1 batch (the long stage)
    small_batch_size: int  # the stage-2 batch, for the side-by-side runs
    steps: int  # timed training steps per measurement (after warm-up)
    warmup: int = 3
    compile: bool = True  # also time torch.compile (its compilation is reported apart)
    deterministic: bool = True  # the study's deterministic mode, so that the step timed is the study's own

    @classmethod
    def from_profile(cls, profile: Profile, *, steps: int = 40, compile: bool = True) -> "Settings":
        return cls(profile.model, profile.image_size, profile.stage1.batch_size, profile.stage2.batch_size,
                   steps, compile=compile, deterministic=profile.deterministic)


def _model(settings: "Settings", device: torch.device, channels_last: bool) -> nn.Module:
    # Seeded as a study run is: deterministic algorithms on (and uninitialised memory not filled), so the
    # step timed here is the step the study trains with.
    repro.seed_everything(0, deterministic=settings.deterministic)
    model, _ = models.build_model(settings.model, num_classes=2, init="scratch")  # speed does not depend on the weights
    model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _timed_steps(model: nn.Module, batches, *, steps: int, warmup: int, device: torch.device,
                 precision: str) -> tuple[int, float]:
    """(images, seconds) of ``steps`` training steps after ``warmup`` untimed ones.

    The steps are the study's own (``train.run_epoch``: Adam, autocast, channels_last
    input, one synchronisation at the end), so the three ways differ only in where
    their batches come from.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = iter(batches)
    if warmup:
        train.run_epoch(model, itertools.islice(batches, warmup), device=device, optimizer=optimizer,
                        precision=precision)
    _sync(device)
    counted = []
    timed = ((images, counted.append(len(labels)) or labels) for images, labels in itertools.islice(batches, steps))
    start = time.perf_counter()
    train.run_epoch(model, timed, device=device, optimizer=optimizer, precision=precision)
    _sync(device)
    return sum(counted), time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _same_batch(settings: Settings, device: torch.device, batch_size: int):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 1, settings.image_size, settings.image_size, generator=generator).to(device)
    labels = torch.randint(0, 2, (batch_size,), generator=generator).to(device)
    return itertools.repeat((images, labels))


def ceiling(settings: Settings, device: torch.device, *, precision: str, channels_last: bool,
            compile: bool = False, batch_size: int | None = None) -> tuple[int, float, float]:
    """(images, seconds, compile seconds) of pure compute on one in-memory batch."""
    torch.manual_seed(0)
    model = _model(settings, device, channels_last)
    step_model = torch.compile(model) if compile else model
    compile_seconds = 0.0
    if compile:  # compilation happens on the first steps; time it apart
        start = time.perf_counter()
        _timed_steps(step_model, _same_batch(settings, device, batch_size or settings.batch_size), steps=1, warmup=0,
                     device=device, precision=precision)
        compile_seconds = time.perf_counter() - start
    images, seconds = _timed_steps(step_model, _same_batch(settings, device, batch_size or settings.batch_size),
                                   steps=settings.steps, warmup=settings.warmup, device=device, precision=precision)
    return images, seconds, compile_seconds


def pipeline(settings: Settings, stage_data: data_mod.StageData, device: torch.device, *,
             precision: str) -> tuple[int, float]:
    """The project's own path: cached uint8 tensors, on-device batched augmentation, channels_last."""
    torch.manual_seed(0)
    model = _model(settings, device, channels_last=True)
    loader = stage_data.loader("train", batch_size=settings.batch_size, augment=True,
                               generator=torch.Generator().manual_seed(0), device=device)
    batches = itertools.chain.from_iterable(itertools.repeat(loader))  # as many passes as the steps need
    return _timed_steps(model, batches, steps=settings.steps, warmup=settings.warmup, device=device,
                        precision=precision)


def plain(settings: Settings, folder: Path, device: torch.device, *, workers: int) -> tuple[int, float]:
    """A tutorial's loop: ImageFolder + PIL decoding + per-image transforms + DataLoader workers, fp32."""
    from torchvision import datasets, transforms

    transform = transforms.Compose([
        transforms.Grayscale(1),
        transforms.Resize((settings.image_size, settings.image_size)),
        transforms.RandomHorizontalFlip(),
        transforms.RandomAffine(degrees=10, translate=(0.05, 0.05), scale=(0.95, 1.05)),
        transforms.ToTensor(),
    ])
    dataset = datasets.ImageFolder(str(folder), transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=settings.batch_size, shuffle=True, num_workers=workers,
                                         pin_memory=device.type == "cuda", drop_last=True,
                                         persistent_workers=workers > 0,
                                         generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = _model(settings, device, channels_last=False)
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    return _timed_steps(model, batches, steps=settings.steps, warmup=settings.warmup, device=device,
                        precision="fp32")


def _side_by_side_worker(args) -> tuple[int, float]:
    settings, threads, device_name, precision = args
    torch.set_num_threads(threads)
    images, seconds, _ = ceiling(settings, torch.device(device_name), precision=precision, channels_last=True,
                                 batch_size=settings.small_batch_size)
    return images, seconds


def side_by_side(settings: Settings, device: torch.device, *, processes: int, threads: int,
                 precision: str) -> tuple[int, float]:
    """Total (images, seconds) of ``processes`` small-batch runs at once, ``threads`` CPU threads each
    (worker processes of the study's own local executor)."""
    results = executors.LocalExecutor().map(_side_by_side_worker, [(settings, threads, str(device), precision)] * processes,
                                            workers=processes)
    # Throughput of the whole: every process's images over the slowest one's time.
    return sum(r[0] for r in results), max(r[1] for r in results)


def decode_times(stage_data: data_mod.StageData, image_size: int) -> dict[str, float]:
    """Seconds to decode every file of the dataset, and to read the decoded-image cache instead."""
    files = stage_data.table["path"].tolist()
    with tempfile.TemporaryDirectory() as cache_root:
        start = time.perf_counter()
        decoded.load_or_decode(files, stage_data.source.root, stage_data.checksum, image_size,
                               lambda f, s: data_mod.load_images(f, s)[:, 0].numpy(), cache_root=cache_root)
        built = time.perf_counter() - start
        start = time.perf_counter()
        array, hit = decoded.load_or_decode(files, stage_data.source.root, stage_data.checksum, image_size,
                                            lambda f, s: None, cache_root=cache_root)
        np.asarray(array[np.arange(len(files))])  # read every row, as a stage does
        read = time.perf_counter() - start
    assert hit
    return {"decode": built, "cache": read, "n": len(files)}


def run(profile: Profile, *, device: str = "auto", data_dir: str | Path | None = None, steps: int = 40,
        compile: bool = True, plain_workers: int | None = None, repeats: int = 3) -> pd.DataFrame:
    """Every measurement for ``profile``'s model, batch and image size; one row each (``COLUMNS``).

    The three headline measurements (ceiling, pipeline, plain) are taken ``repeats``
    times, interleaved, and report the median speed and the spread ((max - min) / median):
    on a shared or throttling machine one measurement can be 10 % off the next."""
    settings = Settings.from_profile(profile, steps=steps, compile=compile)
    torch_device = repro.pick_device(device)
    precision = train.resolve_precision(profile.precision, torch_device)
    cores = os.cpu_count() or 1
    threads = torch.get_num_threads()
    stage_data = data_mod.prepare("chest_xray", data=profile.data, data_dir=data_dir, image_size=profile.image_size,
                                  val_fraction=profile.stage1.val_fraction, max_per_class=profile.stage1.max_per_class)
    hardware = repro.hardware()
    device_text = repro.describe_device(torch_device)
    rows = []

    def add(measurement, variant, images, seconds, *, precision_=precision, channels_last=True, processes=1,
            threads_=threads, batch=settings.batch_size, ratio_to=""):
        images, seconds = np.atleast_1d(images), np.atleast_1d(seconds)
        speeds = images / seconds
        median = float(np.median(speeds))
        rows.append({"measurement": measurement, "variant": variant, "device": torch_device.type, "model": settings.model,
                     "image_size": settings.image_size, "batch_size": batch, "precision": precision_,
                     "channels_last": channels_last, "processes": processes, "threads": threads_,
                     "repeats": len(speeds), "images": int(images.sum()), "seconds": float(seconds.sum()),
                     "img_per_s": median, "spread": float((speeds.max() - speeds.min()) / median),
                     "ratio": float("nan"), "ratio_to": ratio_to, "data": stage_data.source.kind,
                     "cpu": f"{hardware['processor']} ({hardware['cpu_count']} cores)",
                     "gpu": device_text if torch_device.type == "cuda" else "",
                     "torch": torch.__version__, "finished": repro.now()})
        log.info("%-12s %-50s %8.1f img/s", measurement, variant, median)

    workers = cores if plain_workers is None else plain_workers
    headline = {"ceiling": [], "pipeline": [], "plain": []}
    measure = {
        "ceiling": lambda: ceiling(settings, torch_device, precision=precision, channels_last=True)[:2],
        "pipeline": lambda: pipeline(settings, stage_data, torch_device, precision=precision),
        "plain": lambda: plain(settings, stage_data.source.root / "train", torch_device, workers=workers),
    }
    order = list(measure)
    for round_ in range(repeats):
        # Interleaved and rotated, so that a slow phase of the machine, or whatever one
        # measurement leaves behind, hits each of the three alike.
        for name in order[round_ % 3:] + order[:round_ % 3]:
            headline[name].append(measure[name]())
    (a_images, a_seconds), (b_images, b_seconds), (c_images, c_seconds) = (
        zip(*headline[name]) for name in ("ceiling", "pipeline", "plain"))
    add("ceiling", f"in-memory batch, {precision}, channels_last", a_images, a_seconds)
    add("pipeline", "decoded-image cache + on-device augmentation", b_images, b_seconds, ratio_to="ceiling")
    add("plain", f"ImageFolder + PIL + DataLoader({workers} workers), fp32", c_images, c_seconds, precision_="fp32",
        channels_last=False, ratio_to="pipeline")

    images, seconds, _ = ceiling(settings, torch_device, precision=precision, channels_last=False)
    add("ceiling", f"in-memory batch, {precision}, contiguous", images, seconds, channels_last=False,
        ratio_to="ceiling")
    other = "bf16" if precision == "fp32" else "fp32"
    images, seconds, _ = ceiling(settings, torch_device, precision=other, channels_last=True)
    add("ceiling", f"in-memory batch, {other}, channels_last", images, seconds, precision_=other, ratio_to="ceiling")
    if settings.compile:
        images, seconds, compile_seconds = ceiling(settings, torch_device, precision=precision, channels_last=True,
                                                   compile=True)
        add("ceiling", f"in-memory batch, {precision}, channels_last, torch.compile "
            f"(compiling took {compile_seconds:.0f} s)", images, seconds, ratio_to="ceiling")

    if torch_device.type == "cpu" and cores > 1:
        alone, together = [], []
        for _ in range(repeats):
            alone.append(ceiling(settings, torch_device, precision=precision, channels_last=True,
                                 batch_size=settings.small_batch_size)[:2])
            together.append(side_by_side(settings, torch_device, processes=cores, threads=max(1, threads // cores),
                                         precision=precision))
        add("side_by_side", f"1 run x {threads} threads", *zip(*alone), batch=settings.small_batch_size)
        add("side_by_side", f"{cores} runs x {max(1, threads // cores)} thread(s)", *zip(*together),
            processes=cores, threads_=max(1, threads // cores), batch=settings.small_batch_size,
            ratio_to="side_by_side")
    elif torch_device.type == "cuda":
        for processes in (1, 4):
            images, seconds = side_by_side(settings, torch_device, processes=processes, threads=1, precision=precision)
            add("side_by_side", f"{processes} run(s) on one GPU", images, seconds, processes=processes, threads_=1,
                batch=settings.small_batch_size, ratio_to="side_by_side" if processes > 1 else "")

    times = decode_times(stage_data, settings.image_size)
    add("decoding", f"decode {times['n']} files with PIL", times["n"], times["decode"], batch=0)
    add("decoding", f"read {times['n']} images from the decoded-image cache", times["n"], times["cache"], batch=0,
        ratio_to="decoding")
    return with_ratios(pd.DataFrame(rows, columns=COLUMNS))


def with_ratios(table: pd.DataFrame) -> pd.DataFrame:
    """``ratio``: a row's images per second over the first row of the measurement named in ``ratio_to``."""
    table = table.copy()
    first = table.groupby("measurement")["img_per_s"].first()
    table["ratio"] = [row.img_per_s / first[row.ratio_to] if row.ratio_to in first else float("nan")
                      for row in table.itertuples()]
    return table


def summary(table: pd.DataFrame) -> dict[str, float]:
    """The headline ratios: (b)/(a) and (b)/(c)."""
    first = table.groupby("measurement")["img_per_s"].first()
    return {"pipeline_over_ceiling": first["pipeline"] / first["ceiling"],
            "pipeline_over_plain": first["pipeline"] / first["plain"]}


#: The engine's targets (issue 6): what each compares, and the bound.
TARGET_PIPELINE_OVER_CEILING = 0.95
TARGET_PIPELINE_OVER_PLAIN_GPU = 2.0
TARGET_QUICK_MINUTES_CPU = 20.0
TARGET_PAPER_MINUTES_GPU = 10.0


TARGET_STAGE1_IMAGES_PER_S_GPU = 3000.0


def targets(table: pd.DataFrame, study_times: pd.DataFrame | None,
            gpu_check: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each target, what was measured against it and whether it was met ("yes", "no", "not measured").

    ``study_times`` is ``study_time.csv`` of the study that built the book (None when absent);
    its wall time counts only when every run was trained (``fresh_seconds``: the last execution that reused
    none; older tables: ``force``). The study targets are
    the core chapters' (``CORE_CHAPTERS``: data, stage 1, the paper's setting, cross-validation,
    results); the other chapters have their own times in the speed appendix.
    """
    ratios = summary(table)
    device = table["device"].iloc[0]
    rows = [{"target": f"pipeline >= {TARGET_PIPELINE_OVER_CEILING:.0%} of the pure-compute ceiling",
             "measured": f"{ratios['pipeline_over_ceiling']:.1%} ({device})",
             "met": "yes" if ratios["pipeline_over_ceiling"] >= TARGET_PIPELINE_OVER_CEILING else "no"}]
    gpu = device == "cuda"
    rows.append({"target": f"pipeline >= {TARGET_PIPELINE_OVER_PLAIN_GPU:g}x the plain ImageFolder loop on a GPU",
                 "measured": f"{ratios['pipeline_over_plain']:.2f}x ({device})",
                 "met": ("yes" if ratios["pipeline_over_plain"] >= TARGET_PIPELINE_OVER_PLAIN_GPU else "no")
                 if gpu else "not measured (no GPU)"})
    full = None
    core = (study_times[study_times["notebook"].isin([f"{c}.ipynb" for c in CORE_CHAPTERS])]
            if study_times is not None else None)
    if core is not None and len(core) == len(CORE_CHAPTERS):
        fresh = core["fresh_seconds"] if "fresh_seconds" in core else core["seconds"].where(core["force"].astype(bool))
        if fresh.notna().all():
            full = (core["profile"].iloc[0], fresh.sum() / 60)
    for profile, bound, where in (("quick", TARGET_QUICK_MINUTES_CPU, "on 2 CPU cores"),
                                  ("paper", TARGET_PAPER_MINUTES_GPU, "on one H100-class GPU")):
        measured = full is not None and full[0] == profile and (gpu if profile == "paper" else True)
        rows.append({"target": f"{profile} study (core chapters) <= {bound:g} min {where}",
                     "measured": f"{full[1]:.1f} min" if measured else "no full run of this profile here",
                     "met": ("yes" if full[1] <= bound else "no") if measured else "not measured"})
    # The GPU targets from the prepared check's table (gpu_check.csv), when a GPU has run it.
    checked = gpu_check if gpu_check is not None else pd.DataFrame(columns=["measurement", "variant"])
    stage1 = checked[(checked["measurement"] == "paper") & checked["variant"].str.startswith("stage 1: one epoch")]
    study = checked[(checked["measurement"] == "paper") & checked["variant"].str.startswith("paper study")]
    rows.append({"target": f"stage 1 >= {TARGET_STAGE1_IMAGES_PER_S_GPU:,.0f} training images/s on one H100-class GPU",
                 "measured": f"{stage1['img_per_s'].iloc[0]:,.0f} images/s" if len(stage1) else "no GPU check here",
                 "met": (("yes" if stage1["img_per_s"].iloc[0] >= TARGET_STAGE1_IMAGES_PER_S_GPU else "no")
                         if len(stage1) else "not measured (no GPU)")})
    if len(study):
        rows[-2] = {**rows[-2], "measured": f"{study['seconds'].iloc[0] / 60:.1f} min (GPU check, extrapolated)",
                    "met": "yes" if study["seconds"].iloc[0] / 60 <= TARGET_PAPER_MINUTES_GPU else "no"}
    return pd.DataFrame(rows, columns=["target", "measured", "met"])


def _row(table: pd.DataFrame, measurement: str, contains: str) -> pd.Series | None:
    rows = table[(table["measurement"] == measurement) & table["variant"].str.contains(contains, regex=False)]
    return rows.iloc[0] if len(rows) else None


def findings(table: pd.DataFrame) -> list[str]:
    """Sentences that read the variants of a benchmark table, each from its own numbers."""
    out = []
    contiguous = _row(table, "ceiling", "contiguous")
    if contiguous is not None:
        out.append(f"With the default contiguous memory layout the ceiling falls to {contiguous.ratio:.2f} times its "
                   "channels_last speed, which is why every run converts its model and batches to channels_last.")
    bf16 = _row(table, "ceiling", "bf16") if table["precision"].iloc[0] == "fp32" else _row(table, "ceiling", "fp32")
    if bf16 is not None:
        faster = bf16.ratio > 1
        out.append(f"{bf16.precision} autocast runs at {bf16.ratio:.2f} times the {table['precision'].iloc[0]} ceiling "
                   f"on this {table['device'].iloc[0].upper()}, so `precision=\"auto\"` "
                   f"{'should prefer it here' if faster else 'rightly keeps ' + table['precision'].iloc[0] + ' here'}.")
    compiled = _row(table, "ceiling", "torch.compile")
    if compiled is not None:
        out.append(f"`torch.compile` trains at {compiled.ratio:.2f} times the ceiling "
                   f"({compiled.variant.split('(')[-1].rstrip(')')}; Inductor keeps compiled code in an on-disk "
                   "cache, so the first compilation on a machine takes longer than later ones). It is off by "
                   "default (`compile=False`); a profile can turn it on where the gain repays the compilation.")
    together = table[(table["measurement"] == "side_by_side") & (table["processes"] > 1)]
    if len(together):
        row = together.iloc[0]
        out.append(f"Small runs (batch {row.batch_size}) side by side, {row.variant}, train {row.ratio:.2f} times as "
                   "many images per second as one run alone"
                   + (", so the study trains many short independent runs (the cross-validation folds) in parallel processes."
                      if row.ratio > 1 else "; running them side by side does not pay here."))
    decode, cache = _row(table, "decoding", "decode"), _row(table, "decoding", "cache")
    if decode is not None and cache is not None:
        out.append(f"Decoding the {decode.images} files of the chest X-ray set takes {decode.seconds:.1f} s; reading them back "
                   f"from the decoded-image cache takes {cache.seconds:.2f} s, and the plain loop pays the decoding "
                   "in every epoch.")
    return out


def read(path: str | Path) -> pd.DataFrame:
    """``benchmark.csv`` read back, empty text fields as "" (not NaN)."""
    path = Path(path)
    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no benchmark results; run `make benchmark` first") from None
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: not a benchmark table; columns {missing} are missing (expected {COLUMNS})")
    text = ["variant", "ratio_to", "data", "cpu", "gpu"]
    table[text] = table[text].fillna("")
    return table


# --------------------------------------------------------------------------- executors

#: Columns of ``executors.csv``: the local and the Ray executor on the same runs (the speed appendix).
EXECUTOR_COLUMNS = ["executor", "measurement", "runs", "seconds", "per_run_seconds", "note", "cpu", "torch",
                    "ray", "finished"]


def executor_comparison(profile: Profile, *, n_runs: int = 8, ray_cpus: int | None = None) -> pd.DataFrame:
    """The local and the Ray executor on this machine: start-up, the overhead of reading back complete
    runs (no worker needed), and one batch of ``n_runs`` short fold runs (``profile``'s stage 2, the
    ``imagenet`` arm, so no bridge is trained), each batch in a fresh runs folder."""
    from . import protocol

    hardware = repro.hardware()
    try:
        import ray

        ray_version = ray.__version__
    except ImportError:
        ray_version = ""
    folds, _ = protocol.target_folds(profile)
    specs = [r.spec for r in protocol.plan(profile, folds, arms=("imagenet",))][:n_runs]
    rows = []

    def add(executor, measurement, runs, seconds, note=""):
        rows.append({"executor": executor, "measurement": measurement, "runs": runs, "seconds": seconds,
                     "per_run_seconds": seconds / runs if runs else float("nan"), "note": note,
                     "cpu": f"{hardware['processor']} ({hardware['cpu_count']} cores)", "torch": torch.__version__,
                     "ray": ray_version, "finished": repro.now()})
        log.info("%-6s %-28s %3d runs %8.1f s", executor, measurement, runs, seconds)

    with tempfile.TemporaryDirectory() as root:
        for name in ("local", "ray"):
            if name == "ray" and not ray_version:
                add(name, "not measured", 0, float("nan"), "Ray is not installed")
                continue
            runs_root = Path(root) / name
            start = time.perf_counter()
            ex = executors.get_executor(name, runs_root=runs_root, **({"num_cpus": ray_cpus} if name == "ray" else {}))
            if name == "ray":
                ex.connect()
            add(name, "start-up", 0, time.perf_counter() - start,
                "a local Ray cluster started" if name == "ray" else "nothing to start")
            try:
                start = time.perf_counter()
                ex.run(specs, description=f"{name} executor")
                add(name, "fold-run batch", len(specs), time.perf_counter() - start,
                    f"{profile.name} profile, stage 2, {profile.stage2.num_epochs} epochs each")
                start = time.perf_counter()
                ex.run(specs, description=f"{name} executor, complete")
                add(name, "complete runs read back", len(specs), time.perf_counter() - start)
            finally:
                ex.close()
    return pd.DataFrame(rows, columns=EXECUTOR_COLUMNS)


def executor_summary(table: pd.DataFrame | None) -> str:
    """One sentence per executor from ``executors.csv``: start-up, the batch of fold runs, reading complete runs."""
    if table is None or table.empty:
        return "The local and the Ray executor were not compared on this machine (`benchmarks/run.py --executors`)."
    out = []
    for name, rows in table.groupby("executor", sort=False):
        by = rows.set_index("measurement")
        if "fold-run batch" not in by.index:
            out.append(f"**{name}**: {by['note'].iloc[0]}.")
            continue
        batch, back = by.loc["fold-run batch"], by.loc["complete runs read back"]
        out.append(f"**{name}**: start-up {by.loc['start-up', 'seconds']:.1f} s; {int(batch['runs'])} fold runs in "
                   f"{batch['seconds']:.0f} s ({batch['per_run_seconds']:.1f} s a run); the same runs read back "
                   f"complete in {back['seconds']:.1f} s.")
    return " ".join(out)


def gpu_summary(table: pd.DataFrame | None) -> str:
    """What the GPU check found, or that no GPU has run it."""
    if table is None or table.empty:
        return ("**Not measured (no GPU).** No GPU was available to the machines that built this book. The prepared "
                "check (`make gpu-check`, README: \"The GPU check\") fills this section when one runs it.")
    paper = table[(table["measurement"] == "paper") & table["variant"].str.startswith("paper study")]
    step = table[(table["measurement"] == "step") & table["img_per_s"].notna()]
    best = step.sort_values("img_per_s").iloc[-1] if len(step) else None
    text = f"Measured on {table['device'].iloc[0]}, PyTorch {table['torch'].iloc[0]}."
    if best is not None:
        text += (f" Fastest training step: {best['variant']}, {best['precision']}, {best['img_per_s']:.0f} images per "
                 "second (stage 1's batch).")
    if len(paper):
        row = paper.iloc[0]
        text += f" The paper study (core chapters) would take about {float(row['seconds']) / 60:.1f} minutes ({row['note']})."
    return text
