"""The body of a stage run (``spec.RunSpec``): data, starting weights, training, test predictions.

A stage starts from ImageNet, from random weights or from an earlier run's checkpoint, fine-tunes
on its dataset and writes, through the lifecycle (``lifecycle.run``):

    runs/<profile>/<name>-<digest>/<seed or split>/
        config.json       what was asked for (the spec's identity and its inputs' checksums)
        history.csv       per-epoch train/validation loss and accuracy
        predictions.csv   test-part probabilities, one row per image
        checkpoint.pt     weights + config + provenance of the starting weights (+ masks when pruned)
        metrics.json      test metrics and provenance; written last, so it marks a complete run
        resume.pt         while training: the state after the last saved epoch (removed at the end)

A pruning mask (``spec.mask``) is applied to the starting weights before training: the weights of
its source run are ranked (global L1 over the eligible layers), the mask is applied, and the
survivors are rewound to the starting weights (lottery tickets; ``models.sparsity``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..core import paths, repro
from ..data import datasets as data_mod, generated
from ..models import registry as models, sparsity, transfer
from ..report.metrics import binary_metrics, multiclass_metrics
from . import lifecycle, train

# ``spec.RunSpec.execute`` calls this module; the body reads the spec's attributes and never imports it back,
# so that the spec stays the one light definition of a run ("RunSpec" in the hints below names it).

log = logging.getLogger(__name__)


def prepare_data(spec: "RunSpec") -> data_mod.StageData:
    """The data of one run: its train, validation and test parts are fixed by its seed and split
    (the hyperparameter search relies on getting exactly the parts the run gets)."""
    cfg, profile = spec.config, spec.profile
    stage_data = data_mod.prepare(
        cfg.dataset, data=profile.data, data_dir=spec.data_dir, image_size=profile.image_size,
        test_fraction=profile.head_ct_test_fraction, val_fraction=cfg.val_fraction,
        max_per_class=cfg.max_per_class, seed=spec.seed, test_groups=spec.split.test_ids if spec.split else None,
        in_chans=spec.in_chans,
    )
    if spec.train_size is not None:  # the target-size curve: fewer training images, the same validation and test
        stage_data = stage_data.keep_training(spec.train_size, seed=spec.train_draw)
    return stage_data


def _checkpoint_of(upstream: "RunSpec", runs_root: str | Path | None) -> tuple[dict[str, Any], Path]:
    file = lifecycle.run_dir(upstream, runs_root) / "checkpoint.pt"
    return train.load_checkpoint(file), file


def initial_model(spec: "RunSpec", *, num_classes: int, runs_root: str | Path | None = None):
    """(model, WeightsInfo) the run starts from: ImageNet or random weights, or its upstream run's checkpoint."""
    profile = spec.profile
    if isinstance(spec.init, str):
        return models.build_model(profile.model, num_classes=num_classes, init=spec.init,
                                  allow_random=profile.allow_random, in_chans=spec.in_chans)
    checkpoint, file = _checkpoint_of(spec.init, runs_root)
    if checkpoint.get("in_chans", 1) != spec.in_chans:
        raise ValueError(f"{spec.init.label} takes in_chans={checkpoint.get('in_chans', 1)}; "
                         f"{spec.label} asks for in_chans={spec.in_chans}")
    return models.load_from_checkpoint(checkpoint, num_classes=num_classes, stage=spec.init.name,
                                       file=f"{spec.init.name}/{spec.init.leaf}/checkpoint.pt",
                                       sha256=repro.sha256_file(file))


def _apply_mask(spec: "RunSpec", model: torch.nn.Module, *, num_classes: int,
                runs_root: str | Path | None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The starting model with ``spec.mask`` applied and its survivors rewound to the starting weights."""
    mask = spec.mask
    start_state = {k: v.clone() for k, v in model.state_dict().items()}
    if mask.source is None:  # a random draw on the starting weights
        ranked = model
    else:
        checkpoint, _ = _checkpoint_of(mask.source, runs_root)
        if "masks" in checkpoint:  # a pruned run keeps its masks and loses more
            ranked, _ = sparsity.load_pruned(checkpoint, stage=mask.source.name)
        else:
            ranked, _ = models.load_from_checkpoint(checkpoint, num_classes=num_classes, stage=mask.source.name)
    pruned = sparsity.copy_model(ranked)
    params = sparsity.eligible_parameters(pruned, mask.scope)
    pruned_now = sparsity.prune_global(pruned, params, mask.sparsity, method=mask.method, seed=mask.seed)
    sparsity.rewind(pruned, start_state)
    return pruned, {"target_sparsity": mask.sparsity, "pruned_now": pruned_now,
                    "eligible_params": sum(sparsity.effective_weight(m, n).numel() for m, n in params)}


def execute(spec: "RunSpec", run: lifecycle.Run) -> dict[str, Any]:
    """Train ``spec`` into ``run``; return its test metrics and what only it knows of its provenance."""
    profile, cfg = spec.profile, spec.config
    runs_root = run.root
    resume = run.resume_state()
    if profile.num_threads:
        torch.set_num_threads(profile.num_threads)
    generator = repro.seed_everything(spec.seed, deterministic=profile.deterministic)
    device = repro.pick_device(spec.device)

    stage_data = prepare_data(spec)
    n_real_train = int((stage_data.table["part"] == "train").sum())
    if spec.synthetic_dir is not None:
        stage_data = generated.add_to_train(stage_data, spec.synthetic_dir)
    if spec.balance == "oversample":
        stage_data = generated.oversample(stage_data, seed=spec.seed)
    weights_of_classes = generated.class_weights(stage_data) if spec.balance == "class_weights" else None
    model, weights = initial_model(spec, num_classes=stage_data.num_classes, runs_root=runs_root)
    pruning = None
    if spec.mask is not None:
        model, pruning = _apply_mask(spec, model, num_classes=stage_data.num_classes, runs_root=runs_root)
        # A pruned run retrains with the dense run's draws: data order and augmentation from its seed.
        generator = repro.seed_everything(spec.seed, deterministic=profile.deterministic)
    param_groups = transfer.apply(model, profile.model, spec.strategy, cfg.lr)

    history = train.fit(
        model,
        stage_data.loader("train", batch_size=cfg.batch_size, augment=True, generator=generator, device=device),
        stage_data.loader("val", batch_size=64, device=device),
        num_epochs=cfg.num_epochs, lr=cfg.lr, weight_decay=cfg.weight_decay, device=device,
        precision=spec.precision, compile=profile.compile, resume=resume, progress=run.progress,
        on_epoch=run.save_state, params=param_groups, class_weights=weights_of_classes,
    )
    probs, labels = train.predict(model, stage_data.loader("test", batch_size=64, device=device), device=device)
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
    run.write_table("history.csv", history)
    run.write_table("predictions.csv", predictions)
    model.cpu()
    payload = {"model": profile.model, "num_classes": stage_data.num_classes,
               "class_names": list(stage_data.class_names), "config": run.requested, "weights": asdict(weights),
               **({"in_chans": spec.in_chans} if spec.in_chans != 1 else {})}  # absent: grey
    if spec.mask is not None:
        params = sparsity.eligible_parameters(model, spec.mask.scope)
        pruning.update(sparsity=sparsity.sparsity(params), nonzero_params=sparsity.nonzero_parameters(model))
        run.save_checkpoint("checkpoint.pt", sparsity.pruned_checkpoint(model, payload))
    else:
        run.save_checkpoint("checkpoint.pt", {**payload, "state_dict": model.state_dict()})
    provenance = {
        "profile": profile.name, "stage": spec.stage, "name": spec.name,
        "init_from": spec.init if isinstance(spec.init, str) else spec.init.name,
        "init_run": None if isinstance(spec.init, str) else spec.init.relpath.as_posix(),
        "seed": spec.seed, "split": spec.split.key if spec.split else None,
        "model": profile.model, "image_size": profile.image_size,
        "data": stage_data.describe(),
        "split_counts": stage_data.table.groupby(["part", "label"]).size().rename("n").reset_index().to_dict("records"),
        "weights": asdict(weights),
        "strategy": asdict(transfer.get(spec.strategy)),
        "trainable_params": transfer.trainable_parameters(model),
        "device": repro.describe_device(device),
        "precision": spec.precision,
        "num_threads": torch.get_num_threads(),
        "train_seconds": float(history["seconds"].sum()),
    }
    if spec.balance is not None or spec.synthetic_dir is not None:
        provenance["balancing"] = {
            "balance": spec.balance, "n_real_train": n_real_train,
            "n_generated": int((stage_data.table["split"] == generated.SPLIT).sum()),
            "train_counts": generated.train_counts(stage_data).to_dict(),
            "class_weights": None if weights_of_classes is None else weights_of_classes.tolist()}
    if pruning is not None:
        metrics["pruning"] = pruning
    return {**metrics, "provenance": provenance}


def init_name(result: lifecycle.RunResult) -> str:
    """Where a run started: ``imagenet``, ``scratch`` or the name of the run it continued."""
    return result.provenance["init_from"]
