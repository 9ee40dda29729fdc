"""The target-size curve: fold runs on a stratified draw of their training part, paired with the protocol's."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mstl_utils.core import config
from mstl_utils.data import datasets
from mstl_utils.engine import stages
from mstl_utils.experiments import protocol, target_size


@pytest.fixture
def profile(synthetic_root, monkeypatch):
    monkeypatch.setenv("MSTL_DATA_DIR", str(synthetic_root))
    monkeypatch.delenv("MSTL_WEIGHTS_DIR", raising=False)
    return config.get_profile("smoke", data="real")


def test_a_draw_keeps_validation_and_test_and_takes_a_stratified_share_of_training(profile):
    folds, _ = protocol.target_folds(profile)
    spec = protocol.plan(profile, folds, arms=("imagenet",))[0].spec
    full = stages.prepare_data(spec)
    small = stages.prepare_data(dataclasses.replace(spec, train_size=6, train_draw=1))
    parts = lambda d: d.table.groupby("part").size().to_dict()  # noqa: E731
    assert parts(small)["train"] == 6 and parts(small)["val"] == parts(full)["val"]
    assert parts(small)["test"] == parts(full)["test"]
    labels = small.table.loc[small.table["part"] == "train", "label"]
    assert labels.value_counts().tolist() == [3, 3]
    other = stages.prepare_data(dataclasses.replace(spec, train_size=6, train_draw=2))
    assert set(other.table["path"]) != set(small.table["path"])  # another draw
    with pytest.raises(datasets.DataFormatError, match="a draw of 1 training images"):
        full.keep_training(1, seed=0)


def test_a_subsampled_run_is_a_run_of_its_own_and_the_full_one_keeps_its_name(profile):
    folds, _ = protocol.target_folds(profile)
    spec = protocol.plan(profile, folds, arms=("imagenet",))[0].spec
    small = dataclasses.replace(spec, train_size=6)
    assert "train_size" not in spec.settings() and small.settings()["train_size"] == {"n": 6, "draw": 0}
    assert small.family != spec.family
    with pytest.raises(ValueError, match="train_size=1"):
        dataclasses.replace(spec, train_size=1)
    with pytest.raises(ValueError, match="sizes must be whole numbers >= 2"):
        target_size.get_plan("quick", sizes=[0])


@pytest.mark.slow
def test_the_curve_pairs_both_arms_on_every_fold_size_and_draw(profile):
    plan = target_size.get_plan("smoke", sizes=[6, 8], draws=2)
    found = target_size.run(profile, plan)
    tables = target_size.tables(found)
    rows = tables["target_size.csv"]
    assert list(rows.columns) == target_size.COLUMNS
    small = rows[rows["size"].isin([6, 8])]
    assert len(small) == 2 * 2 * 2 * profile.cv_folds and (small["n_train"] == small["size"]).all()
    effects = tables["target_size_effects.csv"]
    assert list(effects["size"].unique()[:2]) == [6, 8] and len(effects) == 2 * 3
    six = small[(small["size"] == 6)]
    wide = six.pivot(index=["draw", "repeat", "fold"], columns="arm", values="accuracy")
    expected = (wide["multistage"] - wide["imagenet"]).mean()
    assert effects.query("size == 6 and metric == 'accuracy'")["mean_diff"].iloc[0] == pytest.approx(expected)
    assert "points per doubling" in target_size.verdict(tables)
    assert np.isfinite(effects["mdd"]).all()
