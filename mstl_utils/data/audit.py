"""The data audit: what the files hold, duplicates, patients across splits, and shortcuts.

Works on a dataset table (``path``, ``label``, ``group``, ``split``) as read by
``mstl_utils.data``; trains nothing. Every function returns a table for the book.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import RepeatedStratifiedKFold, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .images import open_grey

#: Perceptual-hash distance (bits of 64) at or below which two images count as near duplicates.
NEAR_DUPLICATE_BITS = 4
#: A pixel is visibly coloured when its R, G, B values spread by more than this (of 255).
COLOURED_PIXEL_SPREAD = 16
#: A file is visibly coloured when more than this share of its pixels is.
VISIBLY_COLOURED_FRACTION = 0.01

#: Feature sets of the shortcut experiment: what a classifier could learn the label from
#: without looking at the anatomy.
SHORTCUT_FEATURES = {
    "colour (RGB channel statistics)": ["mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "saturation",
                                        "colour_fraction", "has_alpha"],
    "size (width, height, aspect)": ["width", "height", "aspect"],
    "border (mean of the outer 5 % ring)": ["border_mean"],
    "grey intensity (what the study feeds the network)": ["grey_mean", "grey_std", "grey_p05", "grey_p95"],
}


def _properties(path: str) -> dict:
    """Header, colour and content facts of one file (decoded at full resolution)."""
    with Image.open(path) as img:
        mode, (width, height) = img.mode, img.size
        img.load()
        rgb = np.asarray(img.convert("RGB"), dtype=np.float64)
        raw = np.asarray(img)
    grey, info = open_grey(path)
    grey = np.asarray(grey, dtype=np.float64)
    spread = rgb.max(axis=2) - rgb.min(axis=2)
    ring = max(1, round(0.05 * min(width, height)))
    border = np.concatenate([grey[:ring].ravel(), grey[-ring:].ravel(), grey[:, :ring].ravel(), grey[:, -ring:].ravel()])
    return {
        "path": path, "mode": mode, "width": width, "height": height, "bits": info.bits,
        "aspect": width / height, "has_alpha": int(mode in ("RGBA", "LA", "PA")),
        "grey_channels": bool(spread.max() == 0),  # R == G == B everywhere
        "colour_fraction": float((spread > COLOURED_PIXEL_SPREAD).mean()),  # share of visibly coloured pixels
        "saturation": float((spread / np.maximum(rgb.max(axis=2), 1)).mean()),
        **{f"mean_{c}": float(rgb[..., i].mean()) for i, c in enumerate("rgb")},
        **{f"std_{c}": float(rgb[..., i].std()) for i, c in enumerate("rgb")},
        "grey_mean": float(grey.mean()), "grey_std": float(grey.std()),
        "grey_p05": float(np.percentile(grey, 5)), "grey_p95": float(np.percentile(grey, 95)),
        "border_mean": float(border.mean()),
        "pixel_sha256": hashlib.sha256(np.ascontiguousarray(raw).tobytes() + str(raw.shape).encode()).hexdigest(),
        "phash": str(imagehash.phash(Image.fromarray(grey.astype(np.uint8)))),
    }


def image_properties(table: pd.DataFrame, *, workers: int | None = None) -> pd.DataFrame:
    """One row per file: mode, size, bit depth, colour statistics, pixel hash and perceptual hash."""
    workers = workers or min(8, (os.cpu_count() or 2) * 2)
    with ThreadPoolExecutor(workers) as pool:
        rows = list(pool.map(_properties, table["path"]))
    props = pd.DataFrame(rows)
    return table.reset_index(drop=True).merge(props, on="path")


def modes(props: pd.DataFrame) -> pd.DataFrame:
    """Files per split, class, mode and bit depth, and how many have identical R, G, B channels."""
    return (props.groupby(["split", "label", "mode", "bits"])
            .agg(files=("path", "size"), grey_channels=("grey_channels", "sum"),
                 min_width=("width", "min"), max_width=("width", "max"),
                 min_height=("height", "min"), max_height=("height", "max"))
            .reset_index())


def exact_duplicates(props: pd.DataFrame) -> pd.DataFrame:
    """Groups of files with identical decoded pixels: one row per file in a group of two or more."""
    groups = props.groupby("pixel_sha256")["path"].transform("size")
    dup = props[groups > 1].copy()
    dup["duplicate_group"] = dup.groupby("pixel_sha256").ngroup()
    return dup[["duplicate_group", "split", "label", "group", "path"]].sort_values(["duplicate_group", "path"],
                                                                                 ignore_index=True)


def _hash_bits(hashes: pd.Series) -> np.ndarray:
    return np.array([np.unpackbits(np.frombuffer(bytes.fromhex(h), dtype=np.uint8)) for h in hashes], dtype=np.uint8)


def near_duplicates(props: pd.DataFrame, *, max_bits: int = NEAR_DUPLICATE_BITS, block: int = 512) -> pd.DataFrame:
    """Pairs of files whose perceptual hashes differ in at most ``max_bits`` of 64 bits, exact
    pixel duplicates excluded; columns a, b, bits, split_a, split_b, label_a, label_b, same_group."""
    bits = _hash_bits(props["phash"]).astype(np.int16)
    pixel = props["pixel_sha256"].to_numpy()
    pairs = []
    for start in range(0, len(bits), block):
        chunk = bits[start:start + block]
        # Hamming distance of every pair via dot products: d = |a| + |b| - 2 a.b
        dist = chunk.sum(1)[:, None] + bits.sum(1)[None, :] - 2 * chunk @ bits.T
        i, j = np.nonzero(dist <= max_bits)
        i = i + start
        keep = (j > i) & (pixel[i] != pixel[j])
        pairs.extend(zip(i[keep], j[keep], dist[i[keep] - start, j[keep]]))
    rows = [{"a": props.at[i, "path"], "b": props.at[j, "path"], "bits": int(d),
             "group_a": props.at[i, "group"], "group_b": props.at[j, "group"],
             "split_a": props.at[i, "split"], "split_b": props.at[j, "split"],
             "label_a": int(props.at[i, "label"]), "label_b": int(props.at[j, "label"]),
             "same_group": props.at[i, "group"] == props.at[j, "group"]} for i, j, d in pairs]
    return pd.DataFrame(rows, columns=["a", "b", "bits", "group_a", "group_b", "split_a", "split_b", "label_a",
                                       "label_b", "same_group"])


def duplicate_summary(exact: pd.DataFrame, near: pd.DataFrame) -> pd.DataFrame:
    """Counts of exact-duplicate groups and near-duplicate pairs, within and across splits, and label conflicts."""
    groups = exact.groupby("duplicate_group").agg(splits=("split", "nunique"), labels=("label", "nunique"))
    return pd.DataFrame([
        {"kind": "exact (identical pixels)", "groups_or_pairs": len(groups), "files": len(exact),
         "across_splits": int((groups["splits"] > 1).sum()), "label_conflicts": int((groups["labels"] > 1).sum())},
        {"kind": f"near (perceptual hash <= {NEAR_DUPLICATE_BITS} bits)", "groups_or_pairs": len(near),
         "files": int(pd.concat([near["a"], near["b"]]).nunique()) if len(near) else 0,
         "across_splits": int((near["split_a"] != near["split_b"]).sum()),
         "label_conflicts": int((near["label_a"] != near["label_b"]).sum())},
    ])


def duplicate_pairs(exact: pd.DataFrame, near: pd.DataFrame) -> pd.DataFrame:
    """Every duplicate pair by group (image id): kind, group_a, group_b."""
    rows = [{"kind": "exact", "group_a": a, "group_b": b}
            for _, files in exact.groupby("duplicate_group") for a, b in zip(files["group"], files["group"].iloc[1:])]
    rows += [{"kind": "near", "group_a": a, "group_b": b} for a, b in zip(near["group_a"], near["group_b"])]
    return pd.DataFrame(rows, columns=["kind", "group_a", "group_b"])


def duplicate_clusters(pairs: pd.DataFrame, groups: list[str]) -> pd.Series:
    """Each of ``groups`` (image or patient ids) mapped to its duplicate cluster: groups joined by an exact or
    near-duplicate pair (``duplicate_pairs``), directly or through others, share one cluster id; a group
    without duplicates is a cluster of its own. Folds over clusters never split a duplicate pair."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    index = {g: i for i, g in enumerate(groups)}
    known = [(index[a], index[b]) for a, b in zip(pairs["group_a"], pairs["group_b"]) if a in index and b in index]
    rows, cols = (np.array(x, dtype=int) for x in zip(*known)) if known else (np.array([], int), np.array([], int))
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(groups), len(groups)))
    _, component = connected_components(graph, directed=False)
    return pd.Series(component, index=list(groups), name="cluster")


def pairs_across_folds(pairs: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    """For each duplicate pair, in how many cross-validation repeats its two images fall in
    different folds (one trains while the other is tested)."""
    fold = folds.pivot(index="image_id", columns="repeat", values="fold")
    split = [int((fold.loc[a] != fold.loc[b]).sum()) if a in fold.index and b in fold.index else 0
             for a, b in zip(pairs["group_a"], pairs["group_b"])]
    return pairs.assign(repeats_split=split, repeats=fold.shape[1])


def shared_groups(table: pd.DataFrame) -> pd.DataFrame:
    """Patients (``group``) with images in more than one official split: group, splits, files."""
    per = table.groupby("group").agg(splits=("split", lambda s: ",".join(sorted(set(s)))), files=("path", "size"))
    return per[per["splits"].str.contains(",")].reset_index()


def shortcut_experiment(props: pd.DataFrame, *, n_splits: int = 5, n_repeats: int = 10, seed: int = 0) -> pd.DataFrame:
    """How well a logistic regression learns the label from each feature set alone
    (repeated stratified k-fold accuracy and AUC, mean and SD over folds)."""
    cv = RepeatedStratifiedKFold(n_splits=n_splits, n_repeats=n_repeats, random_state=seed)
    y = props["label"].to_numpy()
    auc = "roc_auc" if len(np.unique(y)) == 2 else "roc_auc_ovr"  # more classes: one-vs-rest macro AUC
    rows = []
    for name, columns in SHORTCUT_FEATURES.items():
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        scores = cross_validate(model, props[columns].to_numpy(), y, cv=cv, scoring=("accuracy", auc))
        rows.append({"features": name, "accuracy": scores["test_accuracy"].mean(),
                     "accuracy_sd": scores["test_accuracy"].std(ddof=1), "auc": scores[f"test_{auc}"].mean(),
                     "auc_sd": scores[f"test_{auc}"].std(ddof=1), "folds": len(scores["test_accuracy"])})
    return pd.DataFrame(rows)


def colour_by_class(props: pd.DataFrame) -> pd.DataFrame:
    """Per class: files, files with colour (R, G, B not identical), RGBA files, mean saturation."""
    return (props.groupby("label")
            .agg(files=("path", "size"), coloured=("grey_channels", lambda g: int((~g).sum())),
                 rgba=("has_alpha", "sum"),
                 visibly_coloured=("colour_fraction", lambda f: int((f > VISIBLY_COLOURED_FRACTION).sum())),
                 mean_saturation=("saturation", "mean"))
            .reset_index())


def relative_paths(frame: pd.DataFrame, root: Path, columns: tuple[str, ...] = ("path", "a", "b")) -> pd.DataFrame:
    """The same table with file paths relative to the dataset root (for the book: no absolute paths)."""
    frame = frame.copy()
    for column in columns:
        if column in frame:
            frame[column] = [Path(p).relative_to(root).as_posix() if isinstance(p, str) else p for p in frame[column]]
    return frame
