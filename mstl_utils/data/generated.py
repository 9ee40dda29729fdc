"""Generated (GAN) images as a dataset folder, and class balancing of a stage's training part.

A folder of generated images is ImageFolder-like:

    <folder>/<class>/gan_<class>_00000.png ...   grey PNGs, class folders named as the task's classes
    <folder>/manifest.csv                         file, class, sha256 of every image
    <folder>/info.json                            where the images came from (GAN runs, checkpoints' sha256)

``add_to_train`` verifies the manifest and appends the images to a stage's TRAINING part
only: validation and test stay real, so every reported number is measured on real images.
``oversample`` and ``class_weights`` are the cheap baselines: duplicate minority images,
or weight the loss by inverse class frequency.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ..core import repro
from .datasets import DataFormatError, StageData, load_images

#: How a run evens its training classes: weight the loss, or duplicate minority images (None: neither).
BALANCE_CHOICES = ("class_weights", "oversample")

MANIFEST = "manifest.csv"
INFO = "info.json"
#: ``StageData.table["split"]`` of generated rows (real rows say train / val / test).
SPLIT = "generated"


def write_folder(folder: str | Path, images: dict[str, np.ndarray], *, info: dict[str, Any]) -> Path:
    """Write ``{class: uint8 [N, 1, S, S]}`` as PNGs with a manifest; the folder appears whole or not at all."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rows = []
    for class_name, arrays in images.items():
        (tmp / class_name).mkdir()
        for i, array in enumerate(np.asarray(arrays)):
            name = f"{class_name}/gan_{class_name.lower()}_{i:05d}.png"
            Image.fromarray(array.reshape(array.shape[-2:]), mode="L").save(tmp / name)
            rows.append({"file": name, "class": class_name, "sha256": repro.sha256_file(tmp / name)})
    pd.DataFrame(rows, columns=["file", "class", "sha256"]).to_csv(tmp / MANIFEST, index=False)
    (tmp / INFO).write_text(json.dumps(info, indent=2, sort_keys=True, default=str))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def read_manifest(folder: str | Path, *, verify: bool = True) -> pd.DataFrame:
    """The folder's manifest (file, class, sha256); ``verify`` checks every file against it."""
    folder = Path(folder)
    manifest_file = folder / MANIFEST
    if not manifest_file.is_file():
        raise DataFormatError(f"{manifest_file}: not found; a generated-image folder needs the manifest "
                              "that mstl_utils.data.generated.write_folder writes")
    table = pd.read_csv(manifest_file, dtype=str)
    if list(table.columns) != ["file", "class", "sha256"]:
        raise DataFormatError(f"{manifest_file}: columns {list(table.columns)}; expected file, class, sha256")
    if verify:
        bad = [f for f, h in zip(table["file"], table["sha256"])
               if not (folder / f).is_file() or repro.sha256_file(folder / f) != h]
        if bad:
            raise DataFormatError(f"{folder}: {len(bad)} file(s) missing or changed since the manifest, e.g. {bad[0]}")
    return table


def folder_sha256(folder: str | Path) -> str:
    """One checksum for the whole folder: the manifest's (which holds every image's sha256)."""
    return repro.sha256_file(Path(folder) / MANIFEST)


def add_to_train(stage_data: StageData, folder: str | Path) -> StageData:
    """``stage_data`` with the generated images of ``folder`` appended to its training part only."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    unknown = sorted(set(manifest["class"]) - set(stage_data.class_names))
    if unknown:
        raise DataFormatError(f"{folder}: classes {unknown} are not classes of {stage_data.source.dataset} "
                              f"{list(stage_data.class_names)}")
    files = [str(folder / f) for f in manifest["file"]]
    images = load_images(files, stage_data.images.shape[-1], in_chans=stage_data.in_chans)
    rows = pd.DataFrame({"path": files, "label": [stage_data.class_names.index(c) for c in manifest["class"]],
                         "group": [f"generated/{f}" for f in manifest["file"]], "split": SPLIT, "part": "train"})
    table = pd.concat([stage_data.table, rows], ignore_index=True)
    return dataclasses.replace(stage_data, table=table, images=torch.cat([stage_data.images, images]))


def train_counts(stage_data: StageData) -> pd.Series:
    """Images per class in the training part, indexed by class name (every class, zeros included)."""
    train = stage_data.table[stage_data.table["part"] == "train"]
    counts = train["label"].value_counts().reindex(range(stage_data.num_classes), fill_value=0)
    return pd.Series(counts.to_numpy(), index=list(stage_data.class_names), name="n")


def balancing_counts(stage_data: StageData) -> dict[str, int]:
    """Images each class lacks to equal the largest class of the training part."""
    counts = train_counts(stage_data)
    return {name: int(counts.max() - n) for name, n in counts.items()}


def oversample(stage_data: StageData, *, seed: int) -> StageData:
    """Every smaller class of the training part topped up to the largest by drawing its own
    images again (with replacement, from ``seed``); validation and test unchanged."""
    rng = np.random.default_rng(seed)
    table = stage_data.table
    extra = []
    for label, missing in enumerate(balancing_counts(stage_data).values()):
        rows = np.flatnonzero((table["part"] == "train").to_numpy() & (table["label"] == label).to_numpy())
        if missing and len(rows):
            extra.append(rng.choice(rows, size=missing, replace=True))
    if not extra:
        return stage_data
    extra_rows = np.concatenate(extra)
    return dataclasses.replace(stage_data, table=pd.concat([table, table.iloc[extra_rows]], ignore_index=True),
                               images=torch.cat([stage_data.images, stage_data.images[torch.from_numpy(extra_rows)]]))


def class_weights(stage_data: StageData) -> torch.Tensor:
    """Inverse-frequency loss weights ``n_train / (num_classes * n_class)`` (sklearn's "balanced"):
    every class contributes the same total weight; 1 for all when the classes are equal."""
    counts = train_counts(stage_data).to_numpy().astype(float)
    if (counts == 0).any():
        raise ValueError(f"training part lacks a class ({dict(train_counts(stage_data))}); cannot weight it")
    return torch.tensor(counts.sum() / (len(counts) * counts), dtype=torch.float32)
