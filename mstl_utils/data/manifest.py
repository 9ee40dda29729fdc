"""Committed manifests of the real datasets, and a check of a dataset folder against them.

``data/manifests/head_ct.csv`` lists every original file with its label and sha256
(the Kaggle files are fixed; any change is a different dataset). ``chest_xray.csv``
lists split, label and file name of every image (copies in circulation are often
re-encoded, so names and counts are what can be checked). ``brain_tumor_mri.csv`` lists split, label,
file and sha256 of every image of the copy the project was built with (224 x 224, four Kaggle training
files absent: ``../shared/data/brain_tumor_mri/README``). A check says exactly what
differs: missing files, unexpected files, changed contents, counts per split and class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..core import paths
from .images import DataFormatError

MANIFEST_DIR = Path("data") / "manifests"
COLUMNS = {"head_ct": ["split", "label", "file", "sha256"], "chest_xray": ["split", "label", "file"],
           "brain_tumor_mri": ["split", "label", "file", "sha256"]}


@dataclass(frozen=True)
class Check:
    """The outcome of comparing a dataset folder with its manifest."""

    manifest: str  # the manifest file, relative to the project
    differences: tuple[str, ...] = field(default_factory=tuple)  # one sentence per kind of difference

    @property
    def matches(self) -> bool:
        return not self.differences

    def summary(self) -> str:
        if self.matches:
            return f"matches {self.manifest}"
        return f"differs from {self.manifest}: " + "; ".join(self.differences)


def manifest_path(dataset: str, root: str | Path | None = None) -> Path:
    return (Path(root) if root else paths.project_root()) / MANIFEST_DIR / f"{dataset}.csv"


def describe(dataset: str, table: pd.DataFrame, source_root: Path, hashes: dict[str, str] | None = None) -> pd.DataFrame:
    """The manifest rows of a dataset table (``path``, ``label``, ``split``); ``hashes`` by relative path."""
    relative = [Path(p).relative_to(source_root).as_posix() for p in table["path"]]
    # Head-CT images are named by id wherever the archive nests them: the name is the key.
    files = [Path(r).name for r in relative] if dataset == "head_ct" else relative
    rows = pd.DataFrame({"split": table["split"].to_numpy(), "label": table["label"].astype(int).to_numpy(), "file": files})
    if "sha256" in COLUMNS[dataset]:
        if hashes is None:
            raise ValueError(f"the {dataset} manifest needs file hashes")
        rows["sha256"] = [hashes[r] for r in relative]
    return rows.sort_values(["split", "label", "file"], ignore_index=True)[COLUMNS[dataset]]


def read(dataset: str, path: str | Path | None = None) -> pd.DataFrame:
    path = Path(path) if path else manifest_path(dataset)
    try:
        manifest = pd.read_csv(path, dtype={"file": str, "sha256": str, "split": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise DataFormatError(f"{path}: cannot be read as a manifest ({error})") from error
    if list(manifest.columns) != COLUMNS[dataset]:
        raise DataFormatError(f"{path}: columns are {list(manifest.columns)}; expected {COLUMNS[dataset]}")
    return manifest


def _some(values, limit: int = 3) -> str:
    values = sorted(values)
    return ", ".join(values[:limit]) + (", ..." if len(values) > limit else "")


def compare(dataset: str, found: pd.DataFrame, expected: pd.DataFrame, *, manifest: str) -> Check:
    """Differences between a dataset's manifest rows (``describe``) and the committed ones."""
    found_files, expected_files = set(found["file"]), set(expected["file"])
    differences = []
    missing, extra = expected_files - found_files, found_files - expected_files
    if missing:
        differences.append(f"{len(missing)} expected file(s) missing ({_some(missing)})")
    if extra:
        differences.append(f"{len(extra)} unexpected file(s) ({_some(extra)})")
    both = expected.merge(found, on="file", suffixes=("_expected", "_found"))
    relabelled = both.loc[both["label_expected"] != both["label_found"], "file"]
    if len(relabelled):
        differences.append(f"{len(relabelled)} file(s) with another label ({_some(relabelled)})")
    moved = both.loc[both["split_expected"] != both["split_found"], "file"]
    if len(moved):
        differences.append(f"{len(moved)} file(s) in another split ({_some(moved)})")
    if "sha256" in expected.columns:
        changed = both.loc[both["sha256_expected"] != both["sha256_found"], "file"]
        if len(changed):
            differences.append(f"{len(changed)} file(s) with other contents than the originals ({_some(changed)})")
    counts = [f"{split}/{label}: {n_expected} expected, {n_found} found"
              for (split, label), n_expected, n_found in _count_pairs(expected, found) if n_expected != n_found]
    if counts:
        differences.append("counts per split and label differ (" + "; ".join(counts) + ")")
    return Check(manifest, tuple(differences))


def _count_pairs(expected: pd.DataFrame, found: pd.DataFrame):
    a = expected.groupby(["split", "label"]).size()
    b = found.groupby(["split", "label"]).size()
    for key in sorted(set(a.index) | set(b.index)):
        yield key, int(a.get(key, 0)), int(b.get(key, 0))


def check(dataset: str, table: pd.DataFrame, source_root: Path, hashes: dict[str, str] | None = None,
          *, path: str | Path | None = None) -> Check | None:
    """Compare a real dataset with its committed manifest; None when the project has none for it."""
    path = Path(path) if path else manifest_path(dataset)
    if dataset not in COLUMNS or not path.is_file():
        return None
    found = describe(dataset, table, source_root, hashes)
    return compare(dataset, found, read(dataset, path), manifest=paths.relative(path))
