"""Repeated stratified k-fold assignments for the head-CT protocol, kept in a committed file.

The file (``data/folds/head_ct_folds.csv``: image_id, label, repeat, fold) lets
anyone reuse exactly the folds of the study; the code regenerates it from the
labels and checks that a committed copy still agrees.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import RepeatedStratifiedKFold, StratifiedGroupKFold

from ..core.repro import atomic_write

FOLD_COLUMNS = ["image_id", "label", "repeat", "fold"]


@dataclass(frozen=True)
class Split:
    """A fixed test part: one fold of one repeat of the cross-validation."""

    repeat: int
    fold: int
    test_ids: tuple[str, ...]  # the dataset's image ids (``group`` column) in the test part

    @property
    def key(self) -> str:
        return f"repeat{self.repeat:02d}_fold{self.fold}"

    def to_dict(self) -> dict[str, Any]:
        return {"repeat": self.repeat, "fold": self.fold, "test_ids": sorted(self.test_ids)}


def make_folds(image_ids: list[str], labels: np.ndarray, *, n_splits: int = 5, n_repeats: int = 10, seed: int = 0,
               clusters: np.ndarray | None = None) -> pd.DataFrame:
    """One row per (repeat, image): the fold in which the image is a test image. With ``clusters`` (e.g. duplicate
    clusters, ``audit.duplicate_clusters``) the folds are stratified and grouped: images of one cluster always
    share a fold (``StratifiedGroupKFold``, reshuffled per repeat with seed ``seed + repeat``)."""
    labels = np.asarray(labels)
    if len(image_ids) != len(labels) or (clusters is not None and len(clusters) != len(labels)):
        raise ValueError(f"{len(image_ids)} image ids, {len(labels)} labels"
                         + (f" and {len(clusters)} clusters" if clusters is not None else ""))
    if clusters is None:
        splits = RepeatedStratifiedKFold(n_splits=n_splits, n_repeats=n_repeats, random_state=seed).split(
            np.zeros(len(labels)), labels)
    else:
        splits = (part for repeat in range(n_repeats) for part in StratifiedGroupKFold(
            n_splits=n_splits, shuffle=True, random_state=seed + repeat).split(np.zeros(len(labels)), labels, clusters))
    rows = []
    for index, (_, test) in enumerate(splits):
        repeat, fold = divmod(index, n_splits)
        rows.extend({"image_id": image_ids[i], "label": int(labels[i]), "repeat": repeat, "fold": fold} for i in test)
    return pd.DataFrame(rows, columns=FOLD_COLUMNS).sort_values(["repeat", "image_id"], ignore_index=True)


def read_folds(path: str | Path) -> pd.DataFrame:
    """Read a fold file, checking that every repeat assigns every image to exactly one fold."""
    path = Path(path)
    try:
        folds = pd.read_csv(path, dtype={"image_id": str})
    except (OSError, pd.errors.ParserError) as error:
        raise ValueError(f"{path}: cannot be read as a fold file ({error})") from error
    if list(folds.columns) != FOLD_COLUMNS:
        raise ValueError(f"{path}: columns are {list(folds.columns)}; expected {FOLD_COLUMNS}")
    per_repeat = folds.groupby("repeat")["image_id"]
    if (per_repeat.nunique() != per_repeat.size()).any() or per_repeat.nunique().nunique() != 1:
        raise ValueError(f"{path}: each repeat must list every image exactly once")
    return folds


def write_folds(folds: pd.DataFrame, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: folds.to_csv(tmp, index=False))


def split_of(folds: pd.DataFrame, *, repeat: int, fold: int) -> tuple[list[str], list[str]]:
    """(training image ids, test image ids) of one fold of one repeat."""
    rows = folds[folds["repeat"] == repeat]
    if rows.empty or fold not in set(rows["fold"]):
        raise ValueError(f"no fold {fold} in repeat {repeat}")
    test = rows["fold"] == fold
    return rows.loc[~test, "image_id"].tolist(), rows.loc[test, "image_id"].tolist()
