"""Tests on the real datasets; skipped, with the reason shown, where they are absent."""

import pytest

from mstl_utils import data

pytestmark = pytest.mark.real_data


def test_head_ct_real(real_data_dir):
    source = data.locate("head_ct", data="real", data_dir=real_data_dir)
    table, _ = data.read_table(source)
    assert len(table) == 200 and table["label"].sum() == 100
    # ids 000-099 are hemorrhage, as documented by the dataset
    assert table.loc[table["group"] < "100", "label"].eq(1).all()


def test_chest_xray_real_counts_and_patient_split(real_data_dir):
    stage = data.prepare("chest_xray", data="real", data_dir=real_data_dir, image_size=8)
    counts = stage.table.groupby(["split", "label"]).size()
    assert (counts["train", 0], counts["train", 1]) == (1341, 3875)
    assert (counts["test", 0], counts["test", 1]) == (234, 390)
    assert (counts["val", 0], counts["val", 1]) == (8, 8)
    assert data.group_overlap(stage, "train", "val") == 0
    assert (stage.table["part"] == "test").sum() == 624
    assert stage.table.loc[stage.table["label"] == 1, "group"].str.match(r"person\d+$").all()


def test_real_head_ct_colour_files_become_grey(real_data_dir):
    source = data.locate("head_ct", data="real", data_dir=real_data_dir)
    rgba = source.root / "head_ct" / "head_ct" / "190.png"
    assert data.load_image(rgba, 32).shape == (32, 32)


def test_committed_head_ct_folds_regenerate_and_keep_every_duplicate_pair_together(real_data_dir):
    """data/folds/head_ct_folds_v2.csv (5 folds x 10 repeats, seed 0, grouped by duplicate cluster) regenerates
    from the data; no duplicate pair of the audit is split, where version 1 split 84 of 110 pair-repeats."""
    from pathlib import Path

    import pandas as pd

    from mstl_utils.data import audit, folds
    from mstl_utils.experiments import protocol

    root = Path(__file__).resolve().parents[1] / "data" / "folds"
    committed = folds.read_folds(root / "head_ct_folds_v2.csv")
    table, _ = data.read_table(data.locate("head_ct", data="real", data_dir=real_data_dir))
    clusters = protocol.duplicate_clusters(table, table["group"].tolist())
    again = folds.make_folds(table["group"].tolist(), table["label"].to_numpy(), n_splits=5, n_repeats=10, seed=0,
                             clusters=clusters.to_numpy())
    pd.testing.assert_frame_equal(committed, again)
    props = audit.image_properties(table)
    pairs = audit.duplicate_pairs(audit.exact_duplicates(props), audit.near_duplicates(props))
    assert len(pairs) == 11
    assert audit.pairs_across_folds(pairs, committed)["repeats_split"].sum() == 0
    assert audit.pairs_across_folds(pairs, folds.read_folds(root / "head_ct_folds.csv"))["repeats_split"].sum() == 84


def test_protocol_uses_the_committed_folds_for_the_real_data(real_data_dir):
    from mstl_utils.core import config, paths
    from mstl_utils.data import folds
    from mstl_utils.experiments import protocol

    for name in ("quick", "paper"):
        profile = config.get_profile(name, data="real")
        used, origin = protocol.target_folds(profile, data_dir=real_data_dir)
        assert origin == "data/folds/head_ct_folds_v2.csv"
        committed = folds.read_folds(paths.project_root() / protocol.FOLDS_FILE)
        assert used.equals(committed[committed["repeat"] < profile.cv_repeats].reset_index(drop=True))
        assert used["repeat"].nunique() == profile.cv_repeats and used["fold"].nunique() == profile.cv_folds


def test_real_data_match_the_committed_manifests(real_data_dir):
    from mstl_utils.data import manifest
    from mstl_utils.core import repro

    for dataset in ("head_ct", "chest_xray"):
        source = data.locate(dataset, data="real", data_dir=real_data_dir, download=False)
        table, _ = data.read_table(source)
        hashes = repro.file_hashes(table["path"], source.root) if dataset == "head_ct" else None
        result = manifest.check(dataset, table, source.root, hashes)
        assert result is not None and result.matches, result and result.summary()


def test_brain_tumor_mri_matches_its_committed_manifest(real_data_dir):
    from mstl_utils import data
    from mstl_utils.core import repro

    source = data.locate("brain_tumor_mri", data="real", data_dir=real_data_dir)
    table, classes = data.read_table(source)
    assert len(table) == 7019 and len(classes) == 4
    hashes = repro.file_hashes(table["path"], source.root)
    assert data.verify(source, table, hashes) == "matches data/manifests/brain_tumor_mri.csv"
