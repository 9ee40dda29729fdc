"""A cache of decoded images: each dataset is decoded once per image size, then memory-mapped.

The cache file holds every image of a dataset as uint8 ``[N, S, S]`` in a
NumPy ``.npy`` file, next to a JSON index of the relative paths in row order.
Its key is the dataset's content fingerprint (every file's path and sha256), the
image size and ``DECODE_VERSION``: a changed file, size or decoding code makes a
new entry, never a stale hit. Entries live in ``<cache dir>/decoded/``
(``$MSTL_CACHE_DIR``, default ``runs/_cache``) and may be deleted at any time.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from . import paths, repro

log = logging.getLogger(__name__)

#: Bump when ``images.load_image`` changes what it returns for the same file.
DECODE_VERSION = 1


def cache_key(fingerprint: str, image_size: int) -> str:
    text = json.dumps({"fingerprint": fingerprint, "image_size": image_size, "decode_version": DECODE_VERSION})
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def entry_paths(fingerprint: str, image_size: int, cache_root: str | Path | None = None) -> tuple[Path, Path]:
    """(array file, index file) of one cache entry."""
    folder = Path(cache_root) if cache_root else paths.cache_dir() / "decoded"
    stem = f"{image_size}px-{cache_key(fingerprint, image_size)}"
    return folder / f"{stem}.npy", folder / f"{stem}.json"


def _read(array_file: Path, index_file: Path, relative: list[str], image_size: int) -> np.ndarray | None:
    """The memory-mapped entry, or None when it is missing or does not fit (then it is rebuilt)."""
    if not (array_file.is_file() and index_file.is_file()):
        return None
    try:
        index = json.loads(index_file.read_text())
        array = np.load(array_file, mmap_mode="r")
    except (OSError, ValueError) as error:
        log.warning("%s: unreadable decoded-image cache (%s); decoding again", paths.relative(array_file), error)
        return None
    if index.get("files") != relative or array.shape != (len(relative), image_size, image_size) or array.dtype != np.uint8:
        log.warning("%s: decoded-image cache does not match its dataset; decoding again", paths.relative(array_file))
        return None
    return array


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a handle: np.save would append ".npy" to the temporary name
        np.save(handle, array, allow_pickle=False)


def load_or_decode(files: list[str], root: Path, fingerprint: str, image_size: int, decode,
                   *, cache_root: str | Path | None = None) -> tuple[np.ndarray, bool]:
    """Every file decoded at ``image_size``, memory-mapped from the cache; (array ``[N, S, S]``, was it a hit).

    ``decode(files, image_size)`` returns a uint8 ``[N, S, S]`` array; it runs only on a miss.
    ``files`` lie under ``root``; ``fingerprint`` covers their contents (``repro.fingerprint``).
    """
    relative = [Path(f).relative_to(root).as_posix() for f in files]
    array_file, index_file = entry_paths(fingerprint, image_size, cache_root)
    cached = _read(array_file, index_file, relative, image_size)
    if cached is not None:
        return cached, True
    decoded = np.ascontiguousarray(decode(files, image_size), dtype=np.uint8)
    array_file.parent.mkdir(parents=True, exist_ok=True)
    # Array first, index last: an entry without its index is never read.
    repro.atomic_write(array_file, lambda tmp: _save(tmp, decoded))
    repro.atomic_write(index_file, lambda tmp: tmp.write_text(json.dumps(
        {"files": relative, "image_size": image_size, "fingerprint": fingerprint, "decode_version": DECODE_VERSION})))
    return np.load(array_file, mmap_mode="r"), False
