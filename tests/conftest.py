"""Shared fixtures: synthetic datasets in the Kaggle layouts, isolated run folders, real data when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mstl_utils.data import synthetic

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A data folder holding synthetic ``head_ct/`` and ``chest_xray/`` in their Kaggle layouts."""
    root = tmp_path_factory.mktemp("synthetic_data")
    synthetic.make_head_ct(root / "head_ct", n_per_class=15)
    synthetic.make_chest_xray(root / "chest_xray" / "chest_xray", n_per_class={"train": 20, "val": 2, "test": 6})
    return root


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Every test writes runs and caches under its own tmp folder and never downloads."""
    monkeypatch.setenv("MSTL_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("MSTL_OFFLINE", "1")
    monkeypatch.delenv("MSTL_CACHE_DIR", raising=False)


def _real(env: str, marker: str) -> Path:
    value = os.environ.get(env, "")
    if not value:
        pytest.skip(f"real data test: ${env} is not set (CI sets it to ../shared/{marker})")
    path = Path(value)
    if not path.is_dir():
        pytest.skip(f"real data test: ${env}={value} is not a folder")
    return path


@pytest.fixture
def real_data_dir() -> Path:
    return _real("MSTL_DATA_DIR", "data")


@pytest.fixture
def real_weights_dir() -> Path:
    return _real("MSTL_WEIGHTS_DIR", "weights")
