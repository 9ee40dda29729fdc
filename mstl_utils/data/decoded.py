"""A cache of decoded images: each dataset is decoded once per image size, then memory-mapped.

The cache file holds every image of a dataset as uint8 ``[N, S, S]`` (grey) or
``[N, C, S, S]`` (``in_chans`` colour channels) in a NumPy ``.npy`` file, next to a
JSON index of the relative paths in row order. Its key is the dataset's content
fingerprint (every file's path and sha256), the image size, the channels and
``DECODE_VERSION``: a changed file, size, channel count or decoding code makes a
new entry, never a stale hit. Entries live in ``<cache dir>/decoded/``
(``$MSTL_CACHE_DIR``, default ``runs/_cache``) and may be deleted at any time.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from ..core import paths, repro

log = logging.getLogger(__name__)

#: Bump when ``images.load_image`` changes what it returns for the same file.
DECODE_VERSION = 1


def cache_key(fingerprint: str, image_size: int, in_chans: int = 1) -> str:
    values = {"fingerprint": fingerprint, "image_size": image_size, "decode_version": DECODE_VERSION}
    if in_chans != 1:  # only then: grey entries keep the keys they were written under
        values["in_chans"] = in_chans
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()[:24]


def entry_paths(fingerprint: str, image_size: int, cache_root: str | Path | None = None,
                in_chans: int = 1) -> tuple[Path, Path]:
    """(array file, index file) of one cache entry."""
    folder = Path(cache_root) if cache_root else paths.cache_dir() / "decoded"
    channels = "" if in_chans == 1 else f"{in_chans}ch-"
    stem = f"{image_size}px-{channels}{cache_key(fingerprint, image_size, in_chans)}"
    return folder / f"{stem}.npy", folder / f"{stem}.json"


def entry_shape(n_files: int, image_size: int, in_chans: int = 1) -> tuple[int, ...]:
    """Shape of a cache entry: ``[N, S, S]`` grey, ``[N, C, S, S]`` otherwise."""
    return (n_files, image_size, image_size) if in_chans == 1 else (n_files, in_chans, image_size, image_size)


def _read(array_file: Path, index_file: Path, relative: list[str], shape: tuple[int, ...]) -> np.ndarray | None:
    """The memory-mapped entry, or None when it is missing or does not fit (then it is rebuilt)."""
    if not (array_file.is_file() and index_file.is_file()):
        return None
    try:
        index = json.loads(index_file.read_text())
        array = np.load(array_file, mmap_mode="r")
    except (OSError, ValueError) as error:
        log.warning("%s: unreadable decoded-image cache (%s); decoding again", paths.relative(array_file), error)
        return None
    if index.get("files") != relative or array.shape != shape or array.dtype != np.uint8:
        log.warning("%s: decoded-image cache does not match its dataset; decoding again", paths.relative(array_file))
        return None
    return array


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a handle: np.save would append ".npy" to the temporary name
        np.save(handle, array, allow_pickle=False)


def load_or_decode(files: list[str], root: Path, fingerprint: str, image_size: int, decode,
                   *, cache_root: str | Path | None = None, in_chans: int = 1) -> tuple[np.ndarray, bool]:
    """Every file decoded at ``image_size``, memory-mapped from the cache; (array, was it a hit).

    ``decode(files, image_size)`` returns a uint8 array of ``entry_shape`` (``[N, S, S]`` for
    grey, ``[N, C, S, S]`` for ``in_chans`` channels); it runs only on a miss.
    ``files`` lie under ``root``; ``fingerprint`` covers their contents (``repro.fingerprint``).
    """
    relative = [Path(f).relative_to(root).as_posix() for f in files]
    array_file, index_file = entry_paths(fingerprint, image_size, cache_root, in_chans)
    cached = _read(array_file, index_file, relative, entry_shape(len(relative), image_size, in_chans))
    if cached is not None:
        return cached, True
    decoded = np.ascontiguousarray(decode(files, image_size), dtype=np.uint8)
    if decoded.shape != entry_shape(len(files), image_size, in_chans):
        raise ValueError(f"decode returned {decoded.shape}; expected {entry_shape(len(files), image_size, in_chans)}")
    array_file.parent.mkdir(parents=True, exist_ok=True)
    # Array first, index last: an entry without its index is never read.
    repro.atomic_write(array_file, lambda tmp: _save(tmp, decoded))
    repro.atomic_write(index_file, lambda tmp: tmp.write_text(json.dumps(
        {"files": relative, "image_size": image_size, "in_chans": in_chans, "fingerprint": fingerprint,
         "decode_version": DECODE_VERSION})))
    return np.load(array_file, mmap_mode="r"), False
