"""Small synthetic stand-ins for the study's datasets, written in the real Kaggle layouts.

They exist so that tests and offline demos exercise exactly the code that reads
the real data. The label is learnable (positive images carry a bright, blurred
blob), so a training run on them shows curves that move, but nothing learnt
from them says anything about medicine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter


def _image(rng: np.random.Generator, positive: bool, size: tuple[int, int]) -> np.ndarray:
    """A grey 'scan': noisy ellipse; positives add a bright blob at a random place."""
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx = height / 2, width / 2
    body = ((yy - cy) / (0.42 * height)) ** 2 + ((xx - cx) / (0.40 * width)) ** 2 < 1
    img = np.where(body, 90.0, 10.0) + rng.normal(0, 18, (height, width))
    if positive:
        by = cy + rng.uniform(-0.2, 0.2) * height
        bx = cx + rng.uniform(-0.2, 0.2) * width
        radius = rng.uniform(0.08, 0.14) * min(width, height)
        img += 120.0 * np.exp(-(((yy - by) ** 2 + (xx - bx) ** 2) / (2 * radius**2)))
    return np.clip(img, 0, 255).astype(np.uint8)


def _save(array: np.ndarray, path: Path, *, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array, "L").filter(ImageFilter.GaussianBlur(1))
    if mode != "L":
        img = img.convert(mode)
    img.save(path)


def make_head_ct(root: str | Path, *, n_per_class: int = 20, seed: int = 0) -> Path:
    """Write ``labels.csv`` (header ``id, hemorrhage``) and ``head_ct/head_ct/NNN.png``.

    As in the real set, ids ``0 .. n-1`` are positive, the rest negative, sizes
    vary, and a few negatives are stored as RGB/RGBA.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = ["id, hemorrhage"]
    for idx in range(2 * n_per_class):
        positive = idx < n_per_class
        size = (int(rng.integers(60, 90)), int(rng.integers(60, 90)))
        mode = "RGBA" if idx == 2 * n_per_class - 1 else ("RGB" if idx % 3 == 0 else "L")
        _save(_image(rng, positive, size), root / "head_ct" / "head_ct" / f"{idx:03d}.png", mode=mode)
        rows.append(f"{idx:03d},{int(positive)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def make_chest_xray(
    root: str | Path,
    *,
    n_per_class: dict[str, int] | None = None,
    seed: int = 0,
) -> Path:
    """Write ``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg`` with Kaggle-style names.

    Pneumonia files are ``person<P>_bacteria_<N>.jpeg`` or ``person<P>_virus_<N>.jpeg``
    with two images per patient, so that patient-grouped splitting is exercised.
    """
    root = Path(root)
    n_per_class = n_per_class or {"train": 24, "val": 2, "test": 8}
    rng = np.random.default_rng(seed)
    counter = 0
    for split, count in n_per_class.items():
        for label in ("NORMAL", "PNEUMONIA"):
            for i in range(count):
                counter += 1
                patient = 1000 * (1 + list(n_per_class).index(split)) + i // 2
                if label == "NORMAL":
                    name = f"IM-{patient:04d}-{i % 2 + 1:04d}.jpeg"
                else:
                    cause = "bacteria" if patient % 2 else "virus"
                    name = f"person{patient}_{cause}_{counter}.jpeg"
                array = _image(rng, label == "PNEUMONIA", (64, 64))
                _save(array, root / "chest_xray" / split / label / name)
    return root


#: The brain tumour MRI task's classes, in the Kaggle download's folder names.
BRAIN_TUMOR_CLASSES = ("glioma", "meningioma", "notumor", "pituitary")


def make_brain_tumor_mri(root: str | Path, *, n_per_class: dict[str, int] | None = None, seed: int = 0) -> Path:
    """Write ``{Training,Testing}/{glioma,meningioma,notumor,pituitary}/*.jpg`` with Kaggle-style names
    (``Tr-gl_0000.jpg``, ``Te-no_0003.jpg``), every other image RGB as in the real set, which mixes RGB
    and grey JPEGs. A class differs from the next by its brightness (and tumours by a bright blob)."""
    root = Path(root)
    n_per_class = n_per_class or {"Training": 12, "Testing": 4}
    rng = np.random.default_rng(seed)
    for split, count in n_per_class.items():
        for k, label in enumerate(BRAIN_TUMOR_CLASSES):
            for i in range(count):
                array = np.clip(_image(rng, label != "notumor", (64, 64)).astype(int) + 12 * k, 0, 255).astype(np.uint8)
                name = f"{split[:2]}-{label[:2]}_{i:04d}.jpg"
                _save(array, root / split / label / name, mode="RGB" if i % 2 else "L")
    return root


def make_image_folder(root: str | Path, *, classes: tuple[str, ...] = ("alpha", "beta", "gamma"),
                      n_per_class: int = 12, seed: int = 0) -> Path:
    """Write ``<class>/*.png`` for each of ``classes``: a plain ImageFolder (no ``train/val/test`` above the
    class folders), as a user's own dataset would be. Class k carries k bright blobs, so every class is
    learnable from the images and none is a brightness copy of another."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for k, label in enumerate(classes):
        for i in range(n_per_class):
            array = _image(rng, False, (64, 64)).astype(float)
            for _ in range(k):
                array += _image(rng, True, (64, 64)).astype(float) - _image(rng, False, (64, 64)).astype(float)
            _save(np.clip(array, 0, 255).astype(np.uint8), root / label / f"{label}_{i:03d}.png")
    return root
