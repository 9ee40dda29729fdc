"""The data audit finds planted duplicates, shared patients and a planted colour shortcut."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageEnhance

from mstl_utils.data import audit


@pytest.fixture
def planted(tmp_path):
    """40 images: an exact copy, a re-contrasted near copy, and colour tint on every normal image."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        label = int(i < 20)
        yy, xx = np.mgrid[0:64, 0:64]
        base = (120 + 60 * np.sin(xx / (3 + i % 7)) * np.cos(yy / (4 + i % 5)) + rng.normal(0, 5, (64, 64)))
        grey = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "L")
        image = grey.convert("RGB")
        if label == 0:  # the shortcut: normals are tinted red
            r, g, b = image.split()
            image = Image.merge("RGB", (r.point(lambda v: min(255, v + 40)), g, b))
        path = tmp_path / f"{i:03d}.png"
        image.save(path)
        rows.append({"path": str(path), "label": label, "group": f"{i:03d}", "split": "train" if i % 4 else "test"})
    Image.open(tmp_path / "005.png").save(tmp_path / "040.png")  # exact copy of 005, same label
    ImageEnhance.Contrast(Image.open(tmp_path / "006.png")).enhance(1.1).save(tmp_path / "041.png")  # near copy
    rows += [{"path": str(tmp_path / "040.png"), "label": 1, "group": "040", "split": "test"},
             {"path": str(tmp_path / "041.png"), "label": 0, "group": "041", "split": "train"}]
    return audit.image_properties(pd.DataFrame(rows))


def test_properties_describe_every_file(planted):
    assert len(planted) == 42 and set(planted["mode"]) == {"RGB"} and (planted["bits"] == 8).all()
    tinted = (planted["label"] == 0) & (planted["group"] != "041")  # 041: a grey copy labelled normal
    assert not planted.loc[tinted, "grey_channels"].any()
    assert planted.loc[planted["label"] == 1, "grey_channels"].all()
    table = audit.modes(planted)
    assert table["files"].sum() == 42


def test_exact_and_near_duplicates_are_found_with_their_splits_and_labels(planted):
    exact = audit.exact_duplicates(planted)
    assert sorted(exact["group"]) == ["005", "040"]
    near = audit.near_duplicates(planted)
    assert {("006", "041")} <= set(zip(near["group_a"], near["group_b"]))
    assert ("005", "040") not in set(zip(near["group_a"], near["group_b"]))  # exact pairs are not near pairs
    summary = audit.duplicate_summary(exact, near).set_index("kind")
    assert summary.iloc[0]["groups_or_pairs"] == 1 and summary.iloc[0]["across_splits"] == 1
    row = near[(near["group_a"] == "006") & (near["group_b"] == "041")].iloc[0]
    assert row["label_a"] != row["label_b"]  # the planted near copy carries the other label
    pairs = audit.duplicate_pairs(exact, near)
    assert ("exact", "005", "040") in set(map(tuple, pairs[["kind", "group_a", "group_b"]].to_numpy()))


def test_pairs_across_folds_counts_repeats_that_separate_a_pair():
    folds = pd.DataFrame({"image_id": ["a", "b", "c"] * 2, "label": [0, 0, 1] * 2, "repeat": [0] * 3 + [1] * 3,
                          "fold": [0, 1, 0, 2, 2, 1]})
    pairs = pd.DataFrame({"kind": ["exact", "near"], "group_a": ["a", "a"], "group_b": ["b", "c"]})
    out = audit.pairs_across_folds(pairs, folds)
    assert out["repeats_split"].tolist() == [1, 1] and (out["repeats"] == 2).all()


def test_shared_groups_lists_patients_in_two_splits():
    table = pd.DataFrame({"path": list("abcde"), "group": ["p1", "p1", "p2", "p3", "p3"],
                          "split": ["train", "test", "train", "val", "val"], "label": 0})
    shared = audit.shared_groups(table)
    assert shared["group"].tolist() == ["p1"] and shared["splits"].tolist() == ["test,train"]


def test_shortcut_experiment_finds_the_planted_colour_cue(planted):
    result = audit.shortcut_experiment(planted, n_repeats=2).set_index("features")
    colour = result.loc[next(k for k in audit.SHORTCUT_FEATURES if k.startswith("colour"))]
    assert colour["accuracy"] > 0.9 and colour["folds"] == 10
    assert audit.colour_by_class(planted).set_index("label").loc[0, "coloured"] == 20
