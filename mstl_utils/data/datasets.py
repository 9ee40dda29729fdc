"""The study's datasets: where they are, how they are read, split and fed to a model.

Two Kaggle datasets in their download layouts, any ImageFolder dataset given by
path, and synthetic stand-ins. Every image becomes one grey channel: the
head-CT files carry a colour shortcut (tinted and RGBA files are all one
class), and the chest X-rays are grey anyway. ``in_chans=3`` keeps the colour:
only the experiment that shows the shortcut (``mstl_utils.experiments.explain``) asks for it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import StratifiedGroupKFold, StratifiedShuffleSplit, train_test_split

from . import decoded as decoded_mod, manifest, synthetic
from ..core import paths, repro
from .batches import TensorBatches
from .images import IMAGE_SUFFIXES, DataFormatError, load_image, open_grey  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class DatasetInfo:
    """What the project knows about one named dataset."""

    name: str
    title: str
    kaggle_handle: str  # owner/dataset[/versions/N] on Kaggle, downloaded with kagglehub
    class_names: tuple[str, ...]  # index = label


DATASETS = {
    "head_ct": DatasetInfo(
        # Unversioned handle: the committed manifest's per-file sha256 pins the content instead.
        "head_ct", "Head CT - Hemorrhage", "felipekitamura/head-ct-hemorrhage", ("normal", "hemorrhage")
    ),
    "chest_xray": DatasetInfo(
        "chest_xray",
        "Chest X-Ray Images (Pneumonia)",
        "paultimothymooney/chest-xray-pneumonia/versions/2",  # pinned: a later upload cannot change the data silently
        ("NORMAL", "PNEUMONIA"),
    ),
    # The same files as chest_xray, labelled by the cause of pneumonia that each file name
    # states (``person<P>_bacteria_<N>``, ``person<P>_virus_<N>``): the second paper's 3 classes.
    "chest_xray3": DatasetInfo(
        "chest_xray3",
        "Chest X-Ray Images (Pneumonia), normal / bacterial / viral",
        "paultimothymooney/chest-xray-pneumonia/versions/2",
        ("normal", "bacterial", "viral"),
    ),
}

DATASETS["brain_tumor_mri"] = DatasetInfo(
    # Compiled from figshare (Cheng et al. 2017), SARTAJ and Br35H; it stands in for the second paper's
    # brain-tumour task. Kaggle's layout: Training/ and Testing/, one folder per class, mixed RGB and grey JPEG.
    "brain_tumor_mri", "Brain Tumor MRI Dataset", "masoudnickparvar/brain-tumor-mri-dataset",
    ("glioma", "meningioma", "notumor", "pituitary"),
)

#: Tasks that read another dataset's files and layout (the 3-class chest X-ray task reads chest_xray's).
LAYOUT_OF = {"chest_xray3": "chest_xray"}


@dataclass(frozen=True)
class DataSource:
    """Where a dataset was found: a real folder or a generated synthetic one."""

    dataset: str
    root: Path  # the folder in the dataset's own layout
    kind: str  # "real" or "synthetic"
    origin: str  # how it was found: "parameter data_dir", "$MSTL_DATA_DIR", "./data", "kagglehub", ...

    @property
    def is_synthetic(self) -> bool:
        return self.kind == "synthetic"


class DataNotFoundError(FileNotFoundError):
    """Real data was asked for and could not be found."""


# --------------------------------------------------------------------------- finding


def _walk(folder: Path, depth: int = 3):
    """``folder`` and its sub-folders down to ``depth`` levels, breadth first, skipping archive junk."""
    level = [folder]
    for _ in range(depth + 1):
        nxt = []
        for current in level:
            yield current
            try:
                nxt.extend(sorted(p for p in current.iterdir() if p.is_dir() and not p.name.startswith(("__MACOSX", "."))))
            except OSError:
                continue
        level = nxt


def find_layout(dataset: str, folder: Path) -> Path | None:
    """The folder under ``folder`` (Kaggle archives add nesting) holding ``dataset``'s layout."""
    if not folder.is_dir():
        return None
    for candidate in _walk(folder):
        if dataset == "head_ct":
            if (candidate / "labels.csv").is_file() and (candidate / "head_ct").is_dir():
                return candidate
        elif dataset == "chest_xray":
            if all((candidate / split / label).is_dir() for split in ("train", "test") for label in ("NORMAL", "PNEUMONIA")):
                return candidate
        elif dataset == "brain_tumor_mri":
            if all((candidate / split / label).is_dir() for split in BRAIN_SPLITS
                   for label in DATASETS["brain_tumor_mri"].class_names):
                return candidate
        else:
            raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(DATASETS)}")
    return None


def diagnose(dataset: str, folder: Path) -> str:
    """Why ``folder`` holds no ``dataset`` layout, in words (for the not-found message)."""
    if not folder.exists():
        return "does not exist"
    inner_names = {"head_ct", "chest_xray", "train", "val", "test", "NORMAL", "PNEUMONIA", "brain_tumor_mri",
                   *BRAIN_SPLITS, *DATASETS["brain_tumor_mri"].class_names}
    # Only a folder named like a part of a layout is looked above (never walk from "/").
    for up in (folder.parent, folder.parent.parent) if folder.name in inner_names else ():
        if find_layout(dataset, up) is not None:
            return f"is inside the dataset's layout; point at {find_layout(dataset, up)} instead"
    for candidate in _walk(folder):
        if dataset == "head_ct" and (candidate / "head_ct").is_dir() and not (candidate / "labels.csv").is_file():
            return f"{candidate} has head_ct/ but no labels.csv beside it"
        if dataset == "brain_tumor_mri" and any((candidate / split).is_dir() for split in BRAIN_SPLITS):
            lacking = [f"{split}/{label}" for split in BRAIN_SPLITS for label in DATASETS["brain_tumor_mri"].class_names
                       if not (candidate / split / label).is_dir()]
            return f"{candidate} lacks {', '.join(lacking)}"
        if dataset == "chest_xray" and (candidate / "train").is_dir():
            lacking = [f"{split}/{label}" for split in ("train", "test") for label in ("NORMAL", "PNEUMONIA")
                       if not (candidate / split / label).is_dir()]
            return f"{candidate} lacks {', '.join(lacking)}"
    return "holds no layout of this dataset within 3 levels"


def _download(dataset: str) -> Path | None:
    """Download with kagglehub (public datasets need no credentials); None when offline."""
    if paths.offline():
        return None
    try:
        import kagglehub

        # Into the project's cache (MSTL_CACHE_DIR), not ~/.cache, so one setting moves every download.
        target = paths.cache_dir() / "kagglehub" / dataset
        return Path(kagglehub.dataset_download(DATASETS[dataset].kaggle_handle, output_dir=str(target)))
    except Exception as error:  # kagglehub raises many kinds of network errors
        log.info("kagglehub could not download %s: %s", dataset, error)
        return None


def locate(dataset: str, *, data: str = "auto", data_dir: str | Path | None = None, download: bool = True) -> DataSource:
    """Find ``dataset``: the parameter, ``$MSTL_DATA_DIR``, ``./data``, then a kagglehub download.

    ``data="auto"`` falls back to synthetic data (and says so loudly);
    ``data="real"`` raises ``DataNotFoundError`` listing what was looked for;
    ``data="synthetic"`` always generates. A ``dataset`` that is a path is read as an ImageFolder.
    """
    if data not in ("auto", "real", "synthetic"):
        raise ValueError(f"data={data!r}; expected 'auto', 'real' or 'synthetic'")
    if dataset not in DATASETS:
        folder = Path(dataset).expanduser()
        if not folder.is_dir():
            raise DataNotFoundError(f"dataset {dataset!r} is neither a known name {sorted(DATASETS)} nor a folder")
        return DataSource(folder.name, folder, "real", "path")
    layout = LAYOUT_OF.get(dataset, dataset)
    looked = []
    if data != "synthetic":
        for origin, folder in paths.data_dir_candidates(data_dir):
            for base in (folder / layout, folder):
                root = find_layout(layout, base)
                if root is not None:
                    return DataSource(dataset, root, "real", origin)
            looked.append(f"{origin}: {folder}/{layout} and {folder} ({diagnose(layout, folder)})")
        if download:
            root = _download(layout)
            found = find_layout(layout, root) if root else None
            if found is not None:
                return DataSource(dataset, found, "real", "kagglehub")
            looked.append(f"kagglehub download of {DATASETS[dataset].kaggle_handle}" + (" (skipped: MSTL_OFFLINE)" if paths.offline() else " (failed: no network?)"))
        if data == "real":
            raise DataNotFoundError(
                f"real data for {dataset!r} ({DATASETS[dataset].title}) not found.\nLooked in:\n  - "
                + "\n  - ".join(looked)
                + f"\nProvide it by setting {paths.ENV_DATA_DIR} to a folder holding {layout}/ in its Kaggle "
                "layout, by passing data_dir=..., by placing it under ./data, or by running where kaggle.com is reachable."
            )
        _shout(f"{DATASETS[dataset].title}: no real data found, USING SYNTHETIC DATA. Results are not medical results.")
    root = paths.cache_dir() / "synthetic" / layout
    if find_layout(layout, root) is None:
        {"head_ct": synthetic.make_head_ct, "chest_xray": synthetic.make_chest_xray,
         "brain_tumor_mri": synthetic.make_brain_tumor_mri}[layout](root)
    return DataSource(dataset, find_layout(layout, root), "synthetic", "generated")


def _shout(message: str) -> None:
    bar = "!" * 78
    print(f"\n{bar}\n!! {message}\n{bar}\n", file=sys.stderr)
    log.warning(message)


# --------------------------------------------------------------------------- reading


def _images_by_stem(folder: Path) -> dict[str, Path]:
    """Image files of ``folder`` by stem (suffixes compared case-insensitively)."""
    return {f.stem: f for f in sorted(folder.iterdir()) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES}


def _listing(values, limit: int = 5) -> str:
    values = list(values)
    return ", ".join(map(str, values[:limit])) + (f" and {len(values) - limit} more" if len(values) > limit else "")


def read_head_ct(root: Path) -> pd.DataFrame:
    """``labels.csv`` (header ``id, hemorrhage``) and ``head_ct/head_ct/NNN.png`` as a table.

    Every id must be unique, numeric and labelled 0 or 1, and have exactly one image;
    every image must have an id. Header case and spaces do not matter.
    """
    labels_file = root / "labels.csv"
    if not labels_file.is_file():
        raise DataFormatError(f"{labels_file}: not found; expected a CSV with header 'id, hemorrhage' beside head_ct/")
    try:
        labels = pd.read_csv(labels_file, skipinitialspace=True, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataFormatError(f"{labels_file}: cannot be read as CSV ({error})") from error
    columns = [str(c).strip().lower() for c in labels.columns]
    if columns != ["id", "hemorrhage"]:
        raise DataFormatError(f"{labels_file}: header is {list(labels.columns)}; expected 'id, hemorrhage'")
    labels.columns = columns
    labels = labels.apply(lambda column: column.str.strip())
    if labels.empty:
        raise DataFormatError(f"{labels_file}: no rows; expected one row per image")
    bad_ids = labels.loc[~labels["id"].str.fullmatch(r"\d+"), "id"]
    if len(bad_ids):
        raise DataFormatError(f"{labels_file}: ids must be whole numbers (bad: {_listing(bad_ids.map(repr))})")
    labels["group"] = labels["id"].astype(int).map("{:03d}".format)
    duplicated = labels.loc[labels["group"].duplicated(), "id"]
    if len(duplicated):
        raise DataFormatError(f"{labels_file}: duplicate ids {_listing(duplicated)}; each image must be listed once")
    bad_labels = labels.loc[~labels["hemorrhage"].isin(["0", "1"])]
    if len(bad_labels):
        raise DataFormatError(f"{labels_file}: hemorrhage must be 0 or 1 (bad ids: "
                              f"{_listing(f'{i}={v!r}' for i, v in zip(bad_labels['id'], bad_labels['hemorrhage']))})")
    image_dir = root / "head_ct" / "head_ct"
    if not image_dir.is_dir():
        image_dir = root / "head_ct"
    images = _images_by_stem(image_dir)
    missing = [g for g in labels["group"] if g not in images]
    if missing:
        raise DataFormatError(f"{labels_file}: lists id(s) {_listing(missing)}, but {image_dir} has no image "
                              f"named so (expected e.g. {image_dir / (missing[0] + '.png')})")
    unlisted = sorted(set(images) - set(labels["group"]))
    if unlisted:
        raise DataFormatError(f"{image_dir}: image(s) {_listing(images[u].name for u in unlisted)} have no row in "
                              f"{labels_file}; every image needs a label")
    return pd.DataFrame({"path": [str(images[g]) for g in labels["group"]], "label": labels["hemorrhage"].astype(int),
                         "group": labels["group"], "split": "all"})


#: Patient of a chest X-ray file: ``person123_bacteria_45`` -> ``person123``;
#: ``IM-0115-0001`` / ``NORMAL2-IM-1427-0001`` -> ``IM-0115`` / ``NORMAL2-IM-1427``.
_PATIENT = re.compile(r"^(person\d+)_|^(.*?)-\d+$")


def patient_id(file_name: str) -> str:
    stem = Path(file_name).stem
    match = _PATIENT.match(stem)
    if not match:
        return stem
    return match.group(1) or match.group(2)


def read_chest_xray(root: Path) -> pd.DataFrame:
    """``{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg`` as a table with patient groups."""
    rows = []
    for split in ("train", "val", "test"):
        for label, name in enumerate(DATASETS["chest_xray"].class_names):
            folder = root / split / name
            if not folder.is_dir():
                continue
            files = list(_images_by_stem(folder).values())
            if not files:
                raise DataFormatError(f"{folder}: no images; expected the {name} class's .jpeg files")
            rows.extend({"path": str(f), "label": label, "group": patient_id(f.name), "split": split} for f in files)
    table = pd.DataFrame(rows)
    for split in ("train", "test"):
        if table.empty or not (table["split"] == split).any():
            raise DataFormatError(f"{root}/{split}: no images; expected {split}/NORMAL and {split}/PNEUMONIA with .jpeg files")
    return table


def pneumonia_cause(file_name: str) -> str:
    """``bacterial`` or ``viral``, from a pneumonia file name (``person<P>_bacteria_<N>.jpeg``)."""
    stem = f"{Path(file_name).stem.lower()}_"
    causes = [cause for word, cause in (("_bacteria_", "bacterial"), ("_virus_", "viral")) if word in stem]
    if len(causes) != 1:
        raise DataFormatError(f"{file_name}: a PNEUMONIA file name must say bacteria or virus "
                              f"(person<P>_bacteria_<N>.jpeg or person<P>_virus_<N>.jpeg) for the 3-class task")
    return causes[0]


def read_chest_xray3(root: Path) -> pd.DataFrame:
    """The chest X-ray table with labels normal (0), bacterial (1), viral (2)."""
    table = read_chest_xray(root)
    classes = DATASETS["chest_xray3"].class_names
    cause = [classes[0] if label == 0 else pneumonia_cause(path) for path, label in zip(table["path"], table["label"])]
    return table.assign(label=[classes.index(c) for c in cause])


def read_image_folder(root: Path) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """An ImageFolder dataset: ``root/<class>/*`` or ``root/{train,val,test}/<class>/*``."""
    splits = [s for s in ("train", "val", "test") if (root / s).is_dir()]
    bases = [(s, root / s) for s in splits] or [("all", root)]
    class_names = tuple(sorted(p.name for p in bases[0][1].iterdir() if p.is_dir()))
    if len(class_names) < 2:
        raise DataFormatError(f"{bases[0][1]}: found classes {list(class_names)}; an ImageFolder needs >= 2 class folders")
    rows = []
    for split, base in bases:
        for label, name in enumerate(class_names):
            folder = base / name
            files = list(_images_by_stem(folder).values()) if folder.is_dir() else []
            if not files:
                raise DataFormatError(f"{folder}: no images; every class folder needs images with one of "
                                      f"the suffixes {sorted(IMAGE_SUFFIXES)}")
            rows.extend({"path": str(f), "label": label, "group": f.stem, "split": split} for f in files)
    return pd.DataFrame(rows), class_names


#: The brain tumour set's folders of the Kaggle download, and the splits they are read as.
BRAIN_SPLITS = {"Training": "train", "Testing": "test"}


def read_brain_tumor_mri(root: Path) -> pd.DataFrame:
    """``{Training,Testing}/<class>/*.jpg`` as a table: split train or test, one group per file (the same
    image can sit in both splits under two names: the audit finds those byte-identical groups)."""
    rows = []
    for folder_name, split in BRAIN_SPLITS.items():
        for label, name in enumerate(DATASETS["brain_tumor_mri"].class_names):
            folder = root / folder_name / name
            files = list(_images_by_stem(folder).values()) if folder.is_dir() else []
            if not files:
                raise DataFormatError(f"{folder}: no images; expected the {name} class's .jpg files")
            rows.extend({"path": str(f), "label": label, "group": f.stem, "split": split} for f in files)
    return pd.DataFrame(rows)


def read_table(source: DataSource) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """The dataset's table (path, label, group, split) and its class names."""
    if source.dataset == "head_ct" and source.origin != "path":
        return read_head_ct(source.root), DATASETS["head_ct"].class_names
    if source.dataset == "chest_xray" and source.origin != "path":
        return read_chest_xray(source.root), DATASETS["chest_xray"].class_names
    if source.dataset == "chest_xray3" and source.origin != "path":
        return read_chest_xray3(source.root), DATASETS["chest_xray3"].class_names
    if source.dataset == "brain_tumor_mri" and source.origin != "path":
        return read_brain_tumor_mri(source.root), DATASETS["brain_tumor_mri"].class_names
    return read_image_folder(source.root)


# --------------------------------------------------------------------------- splitting


def assign_parts(
    table: pd.DataFrame, *, test_fraction: float, val_fraction: float, seed: int,
    test_groups: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Add a ``part`` column: ``train``, ``val``, ``test`` (and ``unused`` for an official val split).

    ``test_groups`` (e.g. one cross-validation fold's image ids) fixes the test
    part; otherwise an official ``test`` split is kept untouched, and without one
    a stratified ``test_fraction`` is drawn. Validation is carved from the training
    part, stratified and grouped (no patient in both), so that learning curves and
    any model selection never see test images.
    """
    table = table.copy()
    if test_groups is not None:
        wanted = set(test_groups)
        unknown = sorted(wanted - set(table["group"]))
        if unknown:
            raise DataFormatError(f"test ids {unknown[:5]} are not in the dataset (ids look like {table['group'].iloc[0]!r})")
        table["part"] = np.where(table["group"].isin(wanted), "test", "train")
    elif (table["split"] == "test").any():
        table["part"] = np.where(table["split"] == "test", "test", np.where(table["split"] == "val", "unused", "train"))
    else:
        counts = table["label"].value_counts()
        if len(counts) < 2 or counts.min() < 2 or round(test_fraction * len(table)) < len(counts):
            raise DataFormatError(f"{counts.to_dict()} images per label cannot be split into a stratified "
                                  f"{test_fraction:.0%} test part; at least 2 per class and one test image per class are needed")
        splitter = StratifiedShuffleSplit(n_splits=1, test_size=test_fraction, random_state=seed)
        _, test_idx = next(splitter.split(np.zeros(len(table)), table["label"]))
        table["part"] = "train"
        table.iloc[test_idx, table.columns.get_loc("part")] = "test"
    train = table.index[table["part"] == "train"]
    n_splits = max(2, round(1 / val_fraction))
    per_class = table.loc[train].groupby("label")["group"].nunique()
    if len(per_class) < 2 or per_class.min() < n_splits:
        raise DataFormatError(f"training part has {per_class.to_dict()} images/patients per label; at least {n_splits} "
                              f"per class are needed to carve a stratified {val_fraction:.0%} validation part")
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, val_pos = next(folds.split(np.zeros(len(train)), table.loc[train, "label"], table.loc[train, "group"]))
    table.loc[train[val_pos], "part"] = "val"
    return table


def subsample(table: pd.DataFrame, max_per_class: int | None, *, seed: int) -> pd.DataFrame:
    """At most ``max_per_class`` images per split and class (all when None)."""
    if max_per_class is None:
        return table
    parts = [g.sample(min(len(g), max_per_class), random_state=seed) for _, g in table.groupby(["split", "label"])]
    return pd.concat(parts).sort_index()


# --------------------------------------------------------------------------- decoding


def load_images(files: list[str], image_size: int, *, in_chans: int = 1, workers: int | None = None) -> torch.Tensor:
    """Decode every file once into a ``[N, in_chans, S, S]`` uint8 tensor (threads: PIL releases the GIL)."""
    workers = workers or min(8, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(workers) as pool:
        arrays = list(pool.map(lambda f: load_image(f, image_size, in_chans=in_chans), files))
    if not arrays:
        return torch.empty((0, in_chans, image_size, image_size), dtype=torch.uint8)
    stacked = torch.from_numpy(np.stack(arrays))
    return stacked.unsqueeze(1) if in_chans == 1 else stacked


@dataclass
class StageData:
    """A dataset ready for one stage: where it came from, its table and decoded images."""

    source: DataSource
    table: pd.DataFrame  # path, label, group, split, part
    class_names: tuple[str, ...]
    images: torch.Tensor  # [N, C, S, S] uint8 (C = 1 grey, 3 with in_chans=3), row i = table row i
    checksum: str  # sha256 over every file of the dataset (relative path + content)
    n_files: int
    manifest: str | None = None  # how the files compare with the committed manifest (None: not checked)
    decoded_cache: str = "not used"  # "hit" (memory-mapped) or "built" (decoded now and cached)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_chans(self) -> int:
        return self.images.shape[1]

    def rows_of(self, files: Sequence[str]) -> np.ndarray:
        """Row indices of ``files`` given relative to the dataset root (as ``predictions.csv`` names them)."""
        row_of = {Path(p).relative_to(self.source.root).as_posix(): row for row, p in enumerate(self.table["path"])}
        missing = [f for f in files if f not in row_of]
        if missing:
            raise KeyError(f"{len(missing)} file(s) not in these data, e.g. {missing[0]!r}")
        return np.array([row_of[f] for f in files], dtype=np.int64)

    def part(self, name: str) -> tuple[torch.Tensor, np.ndarray]:
        rows = np.flatnonzero(self.table["part"].to_numpy() == name)
        return self.images[torch.from_numpy(rows)], self.table["label"].to_numpy()[rows]

    def loader(self, name: str, *, batch_size: int, augment: bool = False, generator: torch.Generator | None = None,
               device: str | torch.device = "cpu") -> TensorBatches:
        """Batches of one part on ``device``; ``augment`` (training) also shuffles, both drawn from ``generator``."""
        images, labels = self.part(name)
        # Training drops a ragged last batch: a batch of one breaks batch norm.
        drop_last = augment and len(labels) > batch_size
        return TensorBatches(images, labels, batch_size=batch_size, shuffle=augment, augment=augment,
                             drop_last=drop_last, generator=generator, device=device)

    def without(self, part: str) -> "StageData":
        """The same data with every image of ``part`` removed (e.g. a tuning run's view without the test fold)."""
        keep = np.flatnonzero(self.table["part"].to_numpy() != part)
        return dataclasses.replace(self, table=self.table.iloc[keep].reset_index(drop=True),
                                   images=self.images[torch.from_numpy(keep)])

    def keep_training(self, n: int, *, seed: int) -> "StageData":
        """The same data with only ``n`` of the training part's images, a stratified draw (``seed``); the
        validation and test parts untouched."""
        train = np.flatnonzero(self.table["part"].to_numpy() == "train")
        labels = self.table["label"].to_numpy()[train]
        if not len(np.unique(labels)) <= n < len(train):
            raise DataFormatError(f"{self.source.dataset}: a draw of {n} training images needs at least one per class "
                                  f"({len(np.unique(labels))}) and fewer than the {len(train)} the training part has")
        kept, _ = train_test_split(train, train_size=n, stratify=labels, random_state=seed)
        keep = np.sort(np.concatenate([np.flatnonzero(self.table["part"].to_numpy() != "train"), kept]))
        return dataclasses.replace(self, table=self.table.iloc[keep].reset_index(drop=True),
                                   images=self.images[torch.from_numpy(keep)])

    def describe(self) -> dict:
        """Provenance of the data: no absolute paths."""
        return {
            "dataset": self.source.dataset,
            "kind": self.source.kind,
            "origin": self.source.origin,
            "n_files": self.n_files,
            "sha256": self.checksum,
            "manifest": self.manifest,
            "decoded_cache": self.decoded_cache,
        }


def prepare(
    dataset: str,
    *,
    data: str = "auto",
    data_dir: str | Path | None = None,
    image_size: int,
    test_fraction: float = 0.2,
    val_fraction: float = 0.2,
    max_per_class: int | None = None,
    seed: int = 0,
    test_groups: Sequence[str] | None = None,
    in_chans: int = 1,
) -> StageData:
    """Locate, read, split and decode ``dataset`` for one stage (``test_groups``: see ``assign_parts``;
    ``in_chans=3``: RGB instead of grey)."""
    source = locate(dataset, data=data, data_dir=data_dir)
    table, class_names = read_table(source)
    hashes = repro.file_hashes(table["path"], source.root)
    checksum = repro.fingerprint(table["path"], source.root, hashes)
    verdict = verify(source, table, hashes)
    n_files = len(table)
    # The whole dataset is decoded once per image size and memory-mapped afterwards; the
    # stage takes its rows from it.
    every_file = table["path"].tolist()
    decoded, hit = decoded_mod.load_or_decode(
        every_file, source.root, checksum, image_size,
        lambda files, size: load_images(files, size, in_chans=in_chans).numpy().reshape(
            decoded_mod.entry_shape(len(files), size, in_chans)),
        in_chans=in_chans)
    row_of = {path: row for row, path in enumerate(every_file)}
    table = subsample(table, max_per_class, seed=seed)
    table = assign_parts(table, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed,
                         test_groups=test_groups).reset_index(drop=True)
    rows = np.fromiter((row_of[path] for path in table["path"]), dtype=np.int64, count=len(table))
    images = torch.from_numpy(decoded[rows])  # fancy indexing copies out of the memory map
    images = images.unsqueeze(1) if in_chans == 1 else images
    return StageData(source, table, class_names, images, checksum, n_files=n_files, manifest=verdict,
                     decoded_cache="hit" if hit else "built")


def verify(source: DataSource, table: pd.DataFrame, hashes: dict[str, str] | None = None) -> str | None:
    """Compare real data with the committed manifest; warn with every difference. None: not checked."""
    if source.is_synthetic or source.origin == "path":
        return None
    if source.dataset in LAYOUT_OF:  # the layout's files: compared with its manifest, under its labels
        source = dataclasses.replace(source, dataset=LAYOUT_OF[source.dataset])
        table = read_table(source)[0]
    result = manifest.check(source.dataset, table, source.root, hashes)
    if result is None:
        return None
    if not result.matches:
        log.warning("%s at %s %s", source.dataset, source.root, result.summary())
    return result.summary()


def counts(stage_data: StageData) -> pd.DataFrame:
    """Images per part and class: columns dataset, part, class, n."""
    table = stage_data.table.assign(
        **{"class": stage_data.table["label"].map(dict(enumerate(stage_data.class_names)))}
    )
    out = table.groupby(["part", "class"]).size().rename("n").reset_index()
    return out.assign(dataset=stage_data.source.dataset)[["dataset", "part", "class", "n"]]


def group_overlap(stage_data: StageData, a: str = "train", b: str = "val") -> int:
    """Number of groups (patients) present in both parts ``a`` and ``b``; 0 means a clean split."""
    table = stage_data.table
    return len(set(table.loc[table["part"] == a, "group"]) & set(table.loc[table["part"] == b, "group"]))


def examples(stage_data: StageData, *, per_class: int = 6, part: str = "train", seed: int = 0):
    """A few decoded images per class: (images [N,1,S,S] uint8, titles)."""
    rows = (stage_data.table[stage_data.table["part"] == part]
            .sample(frac=1.0, random_state=seed)
            .groupby("label").head(per_class)
            .sort_values("label", kind="stable"))
    titles = [f"{stage_data.class_names[label]}\n{Path(p).name}" for label, p in zip(rows["label"], rows["path"])]
    return stage_data.images[torch.tensor(rows.index.to_list())].numpy(), titles
