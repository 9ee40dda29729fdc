"""Where things live: the project root, run directories, data and weights folders.

Every location can be set by a parameter or an environment variable; nothing
here knows about any particular machine.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variables read by the project (documented in the README).
ENV_DATA_DIR = "MSTL_DATA_DIR"  # folder holding head_ct/ and chest_xray/ (Kaggle layouts)
ENV_WEIGHTS_DIR = "MSTL_WEIGHTS_DIR"  # folder of local ImageNet weight files
ENV_RUNS_DIR = "MSTL_RUNS_DIR"  # where run directories are written (default ./runs)
ENV_CACHE_DIR = "MSTL_CACHE_DIR"  # downloads and generated synthetic data (default ./runs/_cache)
ENV_OFFLINE = "MSTL_OFFLINE"  # "1": never try a download


def project_root(start: Path | None = None) -> Path:
    """The folder holding this project's ``pyproject.toml`` (searched upwards), else the CWD."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "mstl_utils").is_dir():
            return folder
    return here


def _from_env(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser() if value else None


def runs_dir(path: str | Path | None = None) -> Path:
    """Root of all run directories: the parameter, ``$MSTL_RUNS_DIR`` or ``<project>/runs``."""
    return Path(path) if path else (_from_env(ENV_RUNS_DIR) or project_root() / "runs")


def cache_dir() -> Path:
    """Downloads and generated synthetic datasets: ``$MSTL_CACHE_DIR`` or ``<runs>/_cache``."""
    return _from_env(ENV_CACHE_DIR) or runs_dir() / "_cache"


def data_dir_candidates(data_dir: str | Path | None = None) -> list[tuple[str, Path]]:
    """Folders to search for a dataset, in order, each with the reason it is searched."""
    candidates = []
    if data_dir:
        candidates.append(("parameter data_dir", Path(data_dir).expanduser()))
    env = _from_env(ENV_DATA_DIR)
    if env:
        candidates.append((f"${ENV_DATA_DIR}", env))
    candidates.append(("./data", project_root() / "data"))
    return candidates


def weights_dir(path: str | Path | None = None) -> Path | None:
    """Folder of local ImageNet weights: the parameter or ``$MSTL_WEIGHTS_DIR`` (None if unset)."""
    return Path(path).expanduser() if path else _from_env(ENV_WEIGHTS_DIR)


def offline() -> bool:
    """True when downloads must not be attempted (``MSTL_OFFLINE=1``)."""
    return os.environ.get(ENV_OFFLINE, "") not in ("", "0", "false", "no")


def relative(path: str | Path, root: Path | None = None) -> str:
    """``path`` relative to the project root when inside it, else its name only.

    Published outputs must carry no absolute paths, user names or machine layout.
    """
    path = Path(path).resolve()
    root = (root or project_root()).resolve()
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return f"<external>/{path.name}"
