"""Throughput of the training step, measured three ways on the same model, batch and image size.

(a) ``ceiling``: training steps on one batch already in device memory: pure compute.
(b) ``pipeline``: the project's path (decoded-image cache, ``TensorBatches`` with
    on-device augmentation, ``train.run_epoch``) over the chest X-ray training part.
(c) ``plain``: the way most tutorials do it: ``torchvision.datasets.ImageFolder``
    decoding JPEG/PNG files with PIL every epoch, per-image transforms, a
    ``DataLoader`` with one worker process per core.

Beside them: the numeric variants of (a) (memory layout, bf16 autocast,
``torch.compile``), several small runs side by side against one run using every
core, and decoding the dataset against reading the decoded-image cache. Every row
of ``benchmark.csv`` is one measurement; ``ratio`` compares it with ``ratio_to``.
Run it with ``make benchmark`` (``benchmarks/run.py``).
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import data as data_mod, decoded, models, repro, train
from .config import Profile

log = logging.getLogger(__name__)

#: Columns of ``benchmark.csv`` (the results contract of the benchmark appendix).
COLUMNS = ["measurement", "variant", "device", "model", "image_size", "batch_size", "precision", "channels_last",
           "processes", "threads", "images", "seconds", "img_per_s", "ratio", "ratio_to", "data", "cpu", "gpu",
           "torch", "finished"]


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

    @classmethod
    def from_profile(cls, profile: Profile, *, steps: int = 40, compile: bool = True) -> "Settings":
        return cls(profile.model, profile.image_size, profile.stage1.batch_size, profile.stage2.batch_size,
                   steps, compile=compile)


def _model(name: str, device: torch.device, channels_last: bool) -> nn.Module:
    model, _ = models.build_model(name, num_classes=2, init="scratch")  # speed does not depend on the weights
    model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _timed_steps(model: nn.Module, batches, *, steps: int, warmup: int, device: torch.device, precision: str,
                 channels_last: bool) -> tuple[int, float]:
    """(images, seconds) of ``steps`` training steps after ``warmup`` untimed ones."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    model.train()
    images_seen, start = 0, None
    for index, (images, labels) in enumerate(itertools.islice(batches, warmup + steps)):
        if index == warmup:
            _sync(device)
            start, images_seen = time.perf_counter(), 0
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = criterion(model(images).float(), labels.to(device, non_blocking=True))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        images_seen += len(labels)
    _sync(device)
    return images_seen, time.perf_counter() - start


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
    model = _model(settings.model, device, channels_last)
    step_model = torch.compile(model) if compile else model
    compile_seconds = 0.0
    if compile:  # compilation happens on the first steps; time it apart
        start = time.perf_counter()
        _timed_steps(step_model, _same_batch(settings, device, batch_size or settings.batch_size), steps=1, warmup=0,
                     device=device, precision=precision, channels_last=channels_last)
        compile_seconds = time.perf_counter() - start
    images, seconds = _timed_steps(step_model, _same_batch(settings, device, batch_size or settings.batch_size),
                                   steps=settings.steps, warmup=settings.warmup, device=device, precision=precision,
                                   channels_last=channels_last)
    return images, seconds, compile_seconds


def pipeline(settings: Settings, stage_data: data_mod.StageData, device: torch.device, *,
             precision: str) -> tuple[int, float]:
    """The project's own path: cached uint8 tensors, on-device batched augmentation, channels_last."""
    torch.manual_seed(0)
    model = _model(settings.model, device, channels_last=True)
    loader = stage_data.loader("train", batch_size=settings.batch_size, augment=True,
                               generator=torch.Generator().manual_seed(0), device=device)
    batches = itertools.chain.from_iterable(itertools.repeat(loader))  # as many passes as the steps need
    return _timed_steps(model, batches, steps=settings.steps, warmup=settings.warmup, device=device,
                        precision=precision, channels_last=True)


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
    model = _model(settings.model, device, channels_last=False)
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    return _timed_steps(model, batches, steps=settings.steps, warmup=settings.warmup, device=device,
                        precision="fp32", channels_last=False)


def _side_by_side_worker(args) -> tuple[int, float]:
    settings, threads, device_name, precision = args
    torch.set_num_threads(threads)
    images, seconds, _ = ceiling(settings, torch.device(device_name), precision=precision, channels_last=True,
                                 batch_size=settings.small_batch_size)
    return images, seconds


def side_by_side(settings: Settings, device: torch.device, *, processes: int, threads: int,
                 precision: str) -> tuple[int, float]:
    """Total (images, seconds) of ``processes`` small-batch runs at once, ``threads`` CPU threads each."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        results = pool.map(_side_by_side_worker, [(settings, threads, str(device), precision)] * processes)
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
        compile: bool = True, plain_workers: int | None = None) -> pd.DataFrame:
    """Every measurement for ``profile``'s model, batch and image size; one row each (``COLUMNS``)."""
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
        rows.append({"measurement": measurement, "variant": variant, "device": torch_device.type, "model": settings.model,
                     "image_size": settings.image_size, "batch_size": batch, "precision": precision_,
                     "channels_last": channels_last, "processes": processes, "threads": threads_, "images": images,
                     "seconds": seconds, "img_per_s": images / seconds if seconds else float("nan"),
                     "ratio": float("nan"), "ratio_to": ratio_to, "data": stage_data.source.kind,
                     "cpu": f"{hardware['processor']} ({hardware['cpu_count']} cores)", "gpu": device_text if torch_device.type == "cuda" else "",
                     "torch": torch.__version__, "finished": repro.now()})
        log.info("%-10s %-34s %8.1f img/s", measurement, variant, rows[-1]["img_per_s"])

    images, seconds, _ = ceiling(settings, torch_device, precision=precision, channels_last=True)
    add("ceiling", f"in-memory batch, {precision}, channels_last", images, seconds)
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

    images, seconds = pipeline(settings, stage_data, torch_device, precision=precision)
    add("pipeline", "decoded-image cache + on-device augmentation", images, seconds, ratio_to="ceiling")
    workers = cores if plain_workers is None else plain_workers
    train_folder = stage_data.source.root / "train"
    images, seconds = plain(settings, train_folder, torch_device, workers=workers)
    add("plain", f"ImageFolder + PIL + DataLoader({workers} workers), fp32", images, seconds, precision_="fp32",
        channels_last=False, ratio_to="pipeline")

    if torch_device.type == "cpu" and cores > 1:
        images, seconds, _ = ceiling(settings, torch_device, precision=precision, channels_last=True,
                                     batch_size=settings.small_batch_size)
        add("side_by_side", f"1 run x {threads} threads", images, seconds, batch=settings.small_batch_size)
        images, seconds = side_by_side(settings, torch_device, processes=cores, threads=max(1, threads // cores),
                                       precision=precision)
        add("side_by_side", f"{cores} runs x {max(1, threads // cores)} thread(s)", images, seconds,
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
