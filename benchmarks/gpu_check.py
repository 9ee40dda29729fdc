"""The prepared GPU check: one command, under 10 minutes on one GPU, one table.

    PYTHONPATH=. python3 benchmarks/gpu_check.py --out book/results/gpu_check.csv [--budget 540]

What it measures (every row of the table is one measurement, ``COLUMNS``):

1. ``step``: the study's training step (``train.run_epoch``: Adam, channels_last, autocast) of
   MobileNetV2 at 224 px, batch 16, on one in-memory batch: eager with deterministic mode filling
   new memory (what the study did before), eager without the fill (what it does now), with fused
   Adam, and with CUDA graphs (``torch.compile(mode="reduce-overhead")``); each in bf16 and fp32.
2. ``processes``: 1, 4 and 8 processes on one GPU, each training stage 2's step (batch 8) at once:
   images per second of all of them together.
3. ``paper``: the paper profile's stage 1 (224 px, batch 16, 20 epochs over the chest X-ray training
   part) and stage 2 (head CT, batch 8, 10 epochs, 4 arms x 50 folds), trained by the study's own
   engine. Stage 1 is timed over its first epochs and extrapolated to 20; stage 2 over a batch of fold
   runs side by side and extrapolated to 200. Extrapolated rows say so (``extrapolated``).

It needs only what a bare GPU machine with PyTorch has (torch, torchvision, timm, numpy, pandas,
scikit-learn, Pillow) and this repository on ``PYTHONPATH``; no papermill or Jupyter. The data and
weights come from ``$MSTL_DATA_DIR`` and ``$MSTL_WEIGHTS_DIR`` (README: "The GPU check" says how to
carry a compact copy). Each part is timed against ``--budget`` seconds and skipped, said so in the
table, when too little is left; the table is rewritten after every row, so a killed check keeps what
it measured. Runs on the CPU too (tiny settings, ``--smoke``) so that the tests can check it.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mstl_utils.core import config, repro  # noqa: E402
from mstl_utils.engine import executors, lifecycle, train  # noqa: E402
from mstl_utils.experiments import protocol  # noqa: E402
from mstl_utils.models import registry as models  # noqa: E402

log = logging.getLogger("gpu_check")

COLUMNS = ["measurement", "variant", "precision", "processes", "batch_size", "image_size", "images", "seconds",
           "img_per_s", "extrapolated", "note", "device", "torch", "finished"]


@dataclass(frozen=True)
class Check:
    """The sizes the check uses (``--smoke``: tiny, for the CPU)."""

    image_size: int = 224
    batch_size: int = 16  # stage 1's
    small_batch_size: int = 8  # stage 2's
    warmup: int = 20
    steps: int = 100
    process_counts: tuple[int, ...] = (1, 4, 8)
    stage1_epochs_timed: int = 2  # of the paper's 20
    stage2_folds_timed: int = 8  # fold runs of the multistage arm, side by side


SMOKE = Check(image_size=32, batch_size=4, small_batch_size=4, warmup=1, steps=2, process_counts=(1, 2),
              stage1_epochs_timed=1, stage2_folds_timed=2)


class Table:
    def __init__(self, out: Path, device: torch.device):
        self.out, self.device, self.rows = out, device, []

    def add(self, measurement: str, variant: str, *, images: float, seconds: float, precision: str = "",
            processes: int = 1, batch_size: int = 0, image_size: int = 0, extrapolated: bool = False,
            note: str = "") -> None:
        self.rows.append({"measurement": measurement, "variant": variant, "precision": precision,
                          "processes": processes, "batch_size": batch_size, "image_size": image_size,
                          "images": images, "seconds": seconds,
                          "img_per_s": images / seconds if seconds > 0 and images > 0 else float("nan"),
                          "extrapolated": extrapolated, "note": note, "device": repro.describe_device(self.device),
                          "torch": torch.__version__, "finished": repro.now()})
        log.info("%-10s %-60s %10.1f img/s  %8.1f s%s", measurement, variant, self.rows[-1]["img_per_s"], seconds,
                 "  (extrapolated)" if extrapolated else "")
        self.write()

    def skip(self, measurement: str, variant: str, why: str) -> None:
        self.rows.append({**{c: "" for c in COLUMNS}, "measurement": measurement, "variant": variant,
                          "note": f"not measured: {why}", "device": repro.describe_device(self.device),
                          "torch": torch.__version__, "finished": repro.now()})
        log.info("%-10s %-60s not measured: %s", measurement, variant, why)
        self.write()

    def write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame(self.rows, columns=COLUMNS)
        repro.atomic_write(self.out, lambda tmp: frame.to_csv(tmp, index=False))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(check: Check, device: torch.device, *, precision: str, fill: bool, fused: bool, graphs: bool,
              batch_size: int) -> tuple[int, float]:
    """(images, seconds) of ``check.steps`` training steps on one in-memory batch, after warm-up."""
    repro.seed_everything(0, deterministic=True)
    torch.utils.deterministic.fill_uninitialized_memory = fill
    model, _ = models.build_model("mobilenet_v2", num_classes=2, init="scratch")
    model.to(device).to(memory_format=torch.channels_last)
    step_model = torch.compile(model, mode="reduce-overhead", dynamic=False) if graphs else model
    kwargs = {"fused": True} if fused and device.type == "cuda" else {}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, **kwargs)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 1, check.image_size, check.image_size, generator=generator).to(device)
    labels = torch.randint(0, 2, (batch_size,), generator=generator).to(device)
    batch = (images, labels)
    train.run_epoch(step_model, itertools.repeat(batch, check.warmup), device=device, optimizer=optimizer,
                    precision=precision)
    _sync(device)
    start = time.perf_counter()
    train.run_epoch(step_model, itertools.repeat(batch, check.steps), device=device, optimizer=optimizer,
                    precision=precision)  # ends with .item(): synchronised
    seconds = time.perf_counter() - start
    torch.utils.deterministic.fill_uninitialized_memory = False
    return check.steps * batch_size, seconds


def _process_worker(args) -> tuple[int, float]:
    check, device_name, precision = args
    return time_step(check, torch.device(device_name), precision=precision, fill=False, fused=True, graphs=False,
                     batch_size=check.small_batch_size)


def step_table(check: Check, device: torch.device, table: Table, deadline: float) -> None:
    variants = [("eager, deterministic mode filling new memory (before)", dict(fill=True, fused=False, graphs=False)),
                ("eager, no fill (the study's step now)", dict(fill=False, fused=False, graphs=False)),
                ("eager, no fill, fused Adam", dict(fill=False, fused=True, graphs=False)),
                ("CUDA graphs (torch.compile reduce-overhead), fused Adam", dict(fill=False, fused=True, graphs=True))]
    for precision in ("bf16", "fp32"):
        for name, options in variants:
            if options["graphs"] and device.type != "cuda":
                table.skip("step", name, "CUDA graphs need a GPU")
                continue
            if time.monotonic() > deadline:
                table.skip("step", f"{name}, {precision}", "time budget spent")
                continue
            try:
                images, seconds = time_step(check, device, precision=precision, batch_size=check.batch_size, **options)
                table.add("step", name, images=images, seconds=seconds, precision=precision,
                          batch_size=check.batch_size, image_size=check.image_size)
            except Exception as error:  # one variant failing (a compiler missing) must not lose the rest
                table.skip("step", f"{name}, {precision}", f"{type(error).__name__}: {error}"[:300])


def process_table(check: Check, device: torch.device, table: Table, deadline: float) -> None:
    precision = "bf16" if device.type == "cuda" else "fp32"
    for n in check.process_counts:
        if time.monotonic() > deadline:
            table.skip("processes", f"{n} process(es) on one device", "time budget spent")
            continue
        start = time.perf_counter()
        results = executors.LocalExecutor().map(_process_worker, [(check, str(device), precision)] * n, workers=n)
        wall = time.perf_counter() - start
        images = sum(r[0] for r in results)
        seconds = max(r[1] for r in results)
        table.add("processes", f"{n} process(es) on one device, stage-2 step, fused Adam", images=images,
                  seconds=seconds, precision=precision, processes=n, batch_size=check.small_batch_size,
                  image_size=check.image_size, note=f"wall {wall:.0f} s with start-up")


def paper_tables(check: Check, device: torch.device, table: Table, deadline: float, *, profile_name: str) -> None:
    """The paper profile's stage 1 and stage 2 with the study's engine, timed and extrapolated."""
    profile = config.get_profile(profile_name, data="real" if profile_name != "smoke" else "synthetic")
    epochs = profile.stage1.num_epochs
    timed = profile.replace(stage1={"num_epochs": min(check.stage1_epochs_timed, epochs)})
    with tempfile.TemporaryDirectory() as runs:
        ex = executors.LocalExecutor(runs_root=runs)
        if time.monotonic() > deadline:
            table.skip("paper", "stage 1", "time budget spent")
            return
        bridge = protocol.bridge_spec(timed)
        start = time.perf_counter()
        [result] = ex.run([bridge], description="stage 1 (timed epochs)")
        wall = time.perf_counter() - start
        history = result.history
        n_train = int(pd.DataFrame(result.provenance["split_counts"]).query("part == 'train'")["n"].sum())
        per_epoch = float(history["seconds"].median())
        table.add("paper", f"stage 1: one epoch of {n_train} images (median of {len(history)})",
                  images=n_train, seconds=per_epoch, precision=result.provenance["precision"],
                  batch_size=profile.stage1.batch_size, image_size=profile.image_size)
        table.add("paper", f"stage 1: {epochs} epochs, one bridge", images=n_train * epochs, seconds=per_epoch * epochs,
                  precision=result.provenance["precision"], batch_size=profile.stage1.batch_size,
                  image_size=profile.image_size, extrapolated=len(history) < epochs,
                  note=f"{len(history)} epoch(s) timed; run wall {wall:.0f} s incl. data preparation")
        if time.monotonic() > deadline:
            table.skip("paper", "stage 2", "time budget spent")
            return
        folds, _ = protocol.target_folds(timed)
        fold_runs = [r.spec for r in protocol.plan(timed, folds, arms=("multistage",))][:check.stage2_folds_timed]
        start = time.perf_counter()
        results = ex.run(fold_runs, description="stage 2 (timed folds)")
        wall = time.perf_counter() - start
        n_runs = len(protocol.ARM_INIT) * profile.cv_folds * profile.cv_repeats
        images = sum(int(pd.DataFrame(r.provenance["split_counts"]).query("part == 'train'")["n"].sum())
                     * profile.stage2.num_epochs for r in results)
        table.add("paper", f"stage 2: {len(results)} fold runs side by side", images=images, seconds=wall,
                  precision=results[0].provenance["precision"], processes=executors.default_workers(len(fold_runs), device.type),
                  batch_size=profile.stage2.batch_size, image_size=profile.image_size)
        table.add("paper", f"stage 2: all {n_runs} fold runs", images=images * n_runs / len(results),
                  seconds=wall * n_runs / len(results), precision=results[0].provenance["precision"],
                  batch_size=profile.stage2.batch_size, image_size=profile.image_size, extrapolated=True,
                  note=f"{len(results)} runs timed, scaled to {n_runs}")
        bridges = len(profile.seeds) * 2
        total = per_epoch * epochs * bridges / min(bridges, executors.default_workers(bridges, device.type)) \
            + wall * n_runs / len(results)
        table.add("paper", f"paper study: {bridges} bridges + {n_runs} fold runs", images=0, seconds=total,
                  extrapolated=True, note="bridges side by side as the executor runs them (assumes no slowdown "
                                          "from sharing the GPU); data preparation not counted")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="book/results/gpu_check.csv", help="the table to write")
    parser.add_argument("--budget", type=float, default=540, help="seconds the whole check may take (default 540)")
    parser.add_argument("--device", default="auto", help="auto (the GPU when there is one), cuda, cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny settings and the smoke profile (a CPU test)")
    parser.add_argument("--skip", default="", help="parts to leave out: step, processes, paper (comma separated)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device = repro.pick_device(args.device)
    check = SMOKE if args.smoke else Check()
    deadline = time.monotonic() + args.budget
    table = Table(Path(args.out), device)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    log.info("GPU check on %s, torch %s, budget %.0f s", repro.describe_device(device), torch.__version__, args.budget)
    if "step" not in skip:
        step_table(check, device, table, deadline - 0.55 * args.budget)
    if "processes" not in skip:
        process_table(check, device, table, deadline - 0.4 * args.budget)
    if "paper" not in skip:
        os.environ.setdefault(lifecycle.ENV_STATE_EVERY, "3600")  # no per-epoch state in a timing run
        paper_tables(check, device, table, deadline, profile_name="smoke" if args.smoke else "paper")
    log.info("wrote %s (%d rows)", args.out, len(table.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
