"""Any target by parameters only: a 3-class ImageFolder through the core notebooks, and the multi-class
forms of the protocol's tables and tests."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mstl_utils import study
from mstl_utils.data import synthetic
from mstl_utils.experiments import protocol
from mstl_utils.report import analysis

CLASSES = ("alpha", "beta", "gamma")


def _oof(n: int = 30, seed: int = 0) -> pd.DataFrame:
    """A 3-class out-of-fold table of two arms and one repeat, as ``protocol.oof_table`` writes it."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    rows = []
    for arm, skill in (("imagenet", 2.0), ("multistage", 0.5)):
        logits = rng.normal(size=(n, 3)) + skill * np.eye(3)[labels]
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        rows.append(pd.DataFrame({"arm": arm, "repeat": 0, "image_id": [f"{i:03d}" for i in range(n)],
                                  "label": labels, "pred": probs.argmax(1),
                                  **{f"prob_{c}": probs[:, k] for k, c in enumerate(CLASSES)}}))
    return pd.concat(rows, ignore_index=True)


def test_multiclass_pooled_tests_count_argmax_correctness_and_leave_out_delong():
    oof = _oof()
    tests = analysis.pooled_tests(oof)
    assert tests["test"].tolist() == ["mcnemar_exact/repeat0"]  # DeLong compares one ROC curve: 2 classes only
    wide = oof.pivot(index="image_id", columns="arm", values="pred")
    labels = oof.groupby("image_id")["label"].first()
    expected = (wide["imagenet"] == labels).mean() - (wide["multistage"] == labels).mean()
    row = tests.iloc[0]
    assert (row["arm_a"], row["arm_b"]) == ("imagenet", "multistage") or (row["arm_a"], row["arm_b"]) == (
        "multistage", "imagenet")
    sign = 1 if row["arm_a"] == "imagenet" else -1
    assert row["mean_diff"] == pytest.approx(sign * expected)


def test_class_recall_counts_each_class_of_each_arm():
    oof = _oof()
    recall = protocol.class_recall(oof, CLASSES)
    assert set(recall["class"]) == set(CLASSES) and len(recall) == 6
    mine = oof[(oof["arm"] == "imagenet") & (oof["label"] == 1)]
    row = recall[(recall["arm"] == "imagenet") & (recall["class"] == "beta")].iloc[0]
    assert row["recall"] == pytest.approx((mine["pred"] == 1).mean()) and row["n"] == len(mine)
    binary = pd.DataFrame({"arm": "a", "repeat": 0, "image_id": ["1", "2", "3", "4"], "label": [0, 0, 1, 1],
                           "prob": [0.2, 0.7, 0.9, 0.4]})
    assert protocol.class_recall(binary, ("no", "yes"))["recall"].tolist() == [0.5, 0.5]


def test_the_papers_numbers_only_beside_the_papers_target():
    assert protocol.paper_gain(protocol.study_profile("smoke")) == pytest.approx(0.125)
    other = protocol.study_profile("smoke", target="chest_xray", bridge="head_ct")
    assert protocol.paper_accuracy(other) is None and protocol.paper_gain(other) is None


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_core_notebooks_study_a_three_class_folder_target_by_parameters_only(tmp_path, monkeypatch):
    target = synthetic.make_image_folder(tmp_path / "shapes", classes=CLASSES, n_per_class=12)
    runs = tmp_path / "runs"
    monkeypatch.setenv("MSTL_RUNS_DIR", str(runs))
    out = tmp_path / "out"
    outputs = study.run("smoke", output_dir=out, results_dir=out / "results", chapters="core",
                        settings={"target": str(target)})
    assert [p.stem for p in outputs] == list(study.CORE)
    tables = out / "results"
    folds = pd.read_csv(tables / "stage2_folds.csv")
    assert folds["auc"].notna().all() and folds["sensitivity"].isna().all()  # macro AUC; no positive class
    oof = pd.read_csv(tables / "stage2_oof.csv")
    assert [c for c in oof.columns if c.startswith("prob_")] == [f"prob_{c}" for c in CLASSES]
    assert len(oof) == 4 * 36  # every image once per arm in the smoke profile's one repeat
    recall = pd.read_csv(tables / "stage2_class_recall.csv")
    assert sorted(set(recall["class"])) == list(CLASSES)
    tests = pd.read_csv(tables / "stage2_tests.csv")
    assert not tests["test"].str.startswith("delong").any() and tests["test"].str.startswith("mcnemar").any()
    prov = json.loads((tables / "provenance.json").read_text())
    assert prov["profile"]["stage2"]["dataset"] == "<external>/shapes"  # the folder named, not where it lives
    # The target's folds live beside its runs; no page names the folder where the user keeps the data.
    assert (runs / "smoke" / "shapes_folds_v2.csv").is_file()
    for path in outputs:
        assert str(tmp_path) not in path.read_text(), f"{path.name} names the data's absolute folder"
    # Its runs are its own: the settings' digest differs from the default study's.
    stage2 = [p.name for p in (runs / "smoke").iterdir() if p.name.startswith("cv_")]
    assert stage2 and all(re.fullmatch(r"cv_\w+-[0-9a-f]{8}", name) for name in stage2)
