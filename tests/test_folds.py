import numpy as np
import pandas as pd
import pytest

from mstl_utils.data import folds as mfolds

IDS = [f"{i:03d}" for i in range(40)]
LABELS = np.array([1] * 20 + [0] * 20)


def test_every_image_is_tested_once_per_repeat_and_folds_are_stratified():
    folds = mfolds.make_folds(IDS, LABELS, n_splits=5, n_repeats=3, seed=1)
    assert len(folds) == 3 * 40
    assert (folds.groupby("repeat")["image_id"].nunique() == 40).all()
    per_fold = folds.groupby(["repeat", "fold"])["label"].agg(["size", "sum"])
    assert (per_fold["size"] == 8).all() and (per_fold["sum"] == 4).all()
    train, test = mfolds.split_of(folds, repeat=2, fold=4)
    assert len(train) == 32 and len(test) == 8 and not set(train) & set(test)


def test_folds_are_reproducible_and_round_trip(tmp_path):
    a = mfolds.make_folds(IDS, LABELS, n_splits=5, n_repeats=2, seed=7)
    b = mfolds.make_folds(IDS, LABELS, n_splits=5, n_repeats=2, seed=7)
    pd.testing.assert_frame_equal(a, b)
    path = mfolds.write_folds(a, tmp_path / "folds.csv")
    pd.testing.assert_frame_equal(mfolds.read_folds(path), a)
    assert not mfolds.make_folds(IDS, LABELS, n_splits=5, n_repeats=2, seed=8).equals(a)


def test_bad_fold_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,fold\n000,1\n")
    with pytest.raises(ValueError, match="bad.csv: columns are"):
        mfolds.read_folds(bad)
    folds = mfolds.make_folds(IDS, LABELS, n_splits=5, n_repeats=1)
    mfolds.write_folds(pd.concat([folds, folds.head(1)]), bad)
    with pytest.raises(ValueError, match="every image exactly once"):
        mfolds.read_folds(bad)
    with pytest.raises(ValueError, match="no fold 9"):
        mfolds.split_of(folds, repeat=0, fold=9)


def test_folds_grouped_by_cluster_keep_every_cluster_together_and_stay_stratified():
    import numpy as np

    ids = [f"{i:03d}" for i in range(60)]
    labels = np.array([i % 2 for i in range(60)])
    clusters = np.array([i // 3 if i < 12 else 100 + i for i in range(60)])  # four clusters of three images
    folds = mfolds.make_folds(ids, labels, n_splits=5, n_repeats=3, seed=0, clusters=clusters)
    assert list(folds.columns) == mfolds.FOLD_COLUMNS and folds["repeat"].nunique() == 3
    for repeat, rows in folds.groupby("repeat"):
        fold_of = dict(zip(rows["image_id"], rows["fold"]))
        for cluster in range(4):
            assert len({fold_of[ids[i]] for i in range(60) if clusters[i] == cluster}) == 1, (repeat, cluster)
        assert rows.groupby("fold")["label"].mean().between(0.3, 0.7).all()
    assert not folds[folds["repeat"] == 0]["fold"].equals(folds[folds["repeat"] == 1]["fold"])
