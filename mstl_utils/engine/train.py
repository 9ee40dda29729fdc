"""The training loop: Adam, per-epoch history and resumable state, evaluation, atomic checkpoints."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm  # the console bar; disable=None hides it off a terminal (notebooks)

from ..core import config
from ..core.repro import atomic_write  # re-exported: checkpoints and results share one mechanism

log = logging.getLogger(__name__)


#: Numeric precisions of the training step. "auto": bf16 autocast on a GPU, fp32 on
#: the CPU, where bf16 autocast measured slower on the project's CI machine (the
#: benchmark appendix has the figures).
PRECISIONS = config.PRECISIONS


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """The precision ``precision`` means on ``device`` (a device or its type, "cpu" / "cuda")."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; expected one of {PRECISIONS}")
    if precision == "auto":
        return "bf16" if (device if isinstance(device, str) else device.type) == "cuda" else "fp32"
    return precision


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    # channels_last is the faster layout for convolutions on both CPU and GPU.
    return images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)


def run_epoch(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device,
    optimizer: torch.optim.Optimizer | None = None,
    precision: str = "fp32",
    progress: str | None = None,
    class_weights: torch.Tensor | None = None,
) -> tuple[float, float]:
    """One pass over ``loader``; trains when an optimizer is given. Returns (mean loss, accuracy).

    ``class_weights``: per-class weights of the cross-entropy (None: all 1).
    ``progress``: a description for a console progress bar over the batches (shown
    only on a terminal, never in notebook outputs); None for no bar.
    """
    training = optimizer is not None
    model.train(training)
    weight = class_weights.to(device) if class_weights is not None else None
    criterion = nn.CrossEntropyLoss(weight=weight, reduction="sum")
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    batches = tqdm(loader, desc=progress, leave=False, disable=None) if progress else loader
    with torch.set_grad_enabled(training):
        for images, labels in batches:
            images, labels = _to_device(images, device), labels.to(device, non_blocking=True)
            with _autocast(device, precision):
                logits = model(images)
                loss = criterion(logits.float(), labels)
            if training:
                optimizer.zero_grad(set_to_none=True)
                (loss / len(labels)).backward()
                optimizer.step()
            # Accumulate on the device: no host synchronisation inside the loop.
            total_loss += loss.detach()
            correct += (logits.argmax(1) == labels).sum()
            seen += len(labels)
    if seen == 0:
        return float("nan"), float("nan")
    return total_loss.item() / seen, correct.item() / seen


def rng_state(generator: torch.Generator | None, device: torch.device) -> dict[str, Any]:
    """Every random state a training epoch draws from: the data generator, torch's CPU and CUDA RNGs."""
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state() if generator is not None else None}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if generator is not None and state.get("generator") is not None:
        generator.set_state(state["generator"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def fit(
    model: nn.Module,
    train_loader: Iterable,
    val_loader: Iterable | None,
    *,
    num_epochs: int,
    lr: float,
    weight_decay: float = 0.0,
    device: torch.device,
    precision: str = "auto",
    compile: bool = False,
    resume: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
    params: Iterable | None = None,
    class_weights: torch.Tensor | None = None,
) -> pd.DataFrame:
    """Train with Adam for ``num_epochs``; return the per-epoch history
    (epoch, train_loss, train_accuracy, val_loss, val_accuracy, seconds).

    After each epoch ``on_epoch(state)`` receives everything needed to continue
    (model and optimizer state, history, random states); passing such a state back as
    ``resume`` continues after its epoch exactly as an uninterrupted run would.
    ``train_loader.generator`` (if any) is the data-order/augmentation generator.
    ``params``: Adam's parameters or parameter groups (a transfer strategy's, see
    ``mstl_utils.models.transfer.apply``); None trains every parameter at ``lr``.
    ``class_weights`` weight the training loss only (validation loss stays unweighted).
    """
    model.to(device).to(memory_format=torch.channels_last)
    precision = resolve_precision(precision, device)
    optimizer = torch.optim.Adam(model.parameters() if params is None else params, lr=lr, weight_decay=weight_decay)
    generator = getattr(train_loader, "generator", None)
    rows: list[dict[str, Any]] = []
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        rows = list(resume["history"])
        set_rng_state(resume["rng"], generator, device)
        log.info("resumed after epoch %d/%d", resume["epoch"], num_epochs)
    # Only the training step is compiled: its shapes never change (but for a pass's last, shorter batch),
    # so on a GPU CUDA graphs ("reduce-overhead") replay it without launching each kernel. Evaluation
    # stays eager: compiling it would cost a compilation per batch shape for a few batches per epoch.
    step_model = (torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else None, dynamic=False)
                  if compile else model)
    for epoch in range(len(rows) + 1, num_epochs + 1):
        start = time.perf_counter()
        train_loss, train_acc = run_epoch(step_model, train_loader, device=device, optimizer=optimizer,
                                          precision=precision, progress=f"epoch {epoch}/{num_epochs}" if progress else None,
                                          class_weights=class_weights)
        val_loss, val_acc = (run_epoch(model, val_loader, device=device, precision=precision)
                             if val_loader is not None else (float("nan"),) * 2)
        seconds = time.perf_counter() - start
        rows.append(
            {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
             "val_loss": val_loss, "val_accuracy": val_acc, "seconds": seconds}
        )
        log.info("epoch %d/%d  train loss %.4f acc %.3f  val loss %.4f acc %.3f  (%.0f s)",
                 epoch, num_epochs, train_loss, train_acc, val_loss, val_acc, seconds)
        if on_epoch is not None:
            on_epoch({"epoch": epoch, "history": list(rows), "model": model.state_dict(),
                      "optimizer": optimizer.state_dict(), "rng": rng_state(generator, device)})
    return pd.DataFrame(rows)


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable, *, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``[N, C]`` and true labels ``[N]`` for every image of ``loader``, in order.

    Always in fp32, whatever the training precision: under bf16 autocast the logits would be
    rounded to 8 bits of mantissa before the softmax, giving coarse probabilities and ties in
    the AUC. Prediction is a small share of a run's time."""
    model.to(device).eval()
    probs, labels = [], []
    for images, y in loader:
        logits = model(_to_device(images, device))
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
        labels.append(y.cpu())
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Save a checkpoint dict (state_dict, model name, num_classes, config, weights...) atomically."""
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found; run the stage that writes it first")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path}: not a readable checkpoint ({error})") from error
