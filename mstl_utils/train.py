"""The training loop: Adam, per-epoch history, evaluation and atomic checkpoints."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from .repro import atomic_write  # re-exported: checkpoints and results share one mechanism

log = logging.getLogger(__name__)


def _to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    # channels_last is the faster layout for convolutions on both CPU and GPU.
    return images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)


def run_epoch(
    model: nn.Module,
    loader: DataLoader,
    *,
    device: torch.device,
    optimizer: torch.optim.Optimizer | None = None,
) -> tuple[float, float]:
    """One pass over ``loader``; trains when an optimizer is given. Returns (mean loss, accuracy)."""
    training = optimizer is not None
    model.train(training)
    criterion = nn.CrossEntropyLoss(reduction="sum")
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    with torch.set_grad_enabled(training):
        for images, labels in loader:
            images, labels = _to_device(images, device), labels.to(device, non_blocking=True)
            logits = model(images)
            loss = criterion(logits, labels)
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


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    *,
    num_epochs: int,
    lr: float,
    weight_decay: float = 0.0,
    device: torch.device,
) -> pd.DataFrame:
    """Train with Adam for ``num_epochs``; return the per-epoch history
    (epoch, train_loss, train_accuracy, val_loss, val_accuracy, seconds)."""
    model.to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    rows = []
    for epoch in range(1, num_epochs + 1):
        start = time.perf_counter()
        train_loss, train_acc = run_epoch(model, train_loader, device=device, optimizer=optimizer)
        val_loss, val_acc = run_epoch(model, val_loader, device=device) if val_loader is not None else (float("nan"),) * 2
        seconds = time.perf_counter() - start
        rows.append(
            {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
             "val_loss": val_loss, "val_accuracy": val_acc, "seconds": seconds}
        )
        log.info("epoch %d/%d  train loss %.4f acc %.3f  val loss %.4f acc %.3f  (%.0f s)",
                 epoch, num_epochs, train_loss, train_acc, val_loss, val_acc, seconds)
    return pd.DataFrame(rows)


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, *, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``[N, C]`` and true labels ``[N]`` for every image of ``loader``, in order."""
    model.to(device).eval()
    probs, labels = [], []
    for images, y in loader:
        probs.append(torch.softmax(model(_to_device(images, device)).float(), dim=1).cpu())
        labels.append(y)
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
