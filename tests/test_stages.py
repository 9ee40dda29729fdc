import json

import numpy as np
import pandas as pd
import pytest
import torch

from mstl_utils.core import config
from mstl_utils.engine import stages, train


@pytest.fixture
def profile(synthetic_root, monkeypatch):
    monkeypatch.setenv("MSTL_DATA_DIR", str(synthetic_root))
    monkeypatch.delenv("MSTL_WEIGHTS_DIR", raising=False)  # the smoke profile's labelled random fallback
    return config.get_profile("smoke", data="real")


def test_stage1_then_multistage_chain(profile):
    first = stages.run_stage("stage1", profile, stage="stage1", init_from="imagenet")
    assert list(first.history.columns) == ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds"]
    assert len(first.history) == profile.stage1.num_epochs
    prov = first.metrics["provenance"]
    assert prov["data"]["kind"] == "real" and len(prov["data"]["sha256"]) == 64
    assert prov["weights"]["source"] == "random (ImageNet unavailable)"  # labelled, never silent
    assert {"commit", "dirty"} <= set(prov["code"]) and prov["hardware"]["torch"] == torch.__version__

    chained = stages.run_stage("stage2_multistage", profile, stage="stage2", init_from="stage1")
    weights = chained.metrics["provenance"]["weights"]
    assert weights["init"] == "checkpoint" and weights["source"] == "stage1" and len(weights["sha256"]) == 64
    assert chained.predictions["file"].str.startswith("head_ct/").all()
    assert 0.0 <= chained.metrics["accuracy"] <= 1.0 and chained.metrics["n"] == len(chained.predictions)


def test_complete_run_is_reused_and_changed_settings_rerun(profile):
    first = stages.run_stage("stage2_imagenet", profile, stage="stage2", init_from="scratch")
    stamp = (first.run_dir / "metrics.json").stat().st_mtime_ns
    again = stages.run_stage("stage2_imagenet", profile, stage="stage2", init_from="scratch")
    assert (again.run_dir / "metrics.json").stat().st_mtime_ns == stamp
    changed = stages.run_stage("stage2_imagenet", profile.replace(stage2={"num_epochs": 1}), stage="stage2", init_from="scratch")
    assert len(changed.history) == 1


def test_same_seed_same_result(profile):
    a = stages.run_stage("stage2_scratch", profile, stage="stage2", init_from="scratch")
    b = stages.run_stage("stage2_scratch", profile, stage="stage2", init_from="scratch", force=True)
    pd.testing.assert_frame_equal(a.predictions, b.predictions)
    pd.testing.assert_frame_equal(a.history.drop(columns="seconds"), b.history.drop(columns="seconds"))


def test_multistage_without_stage1_is_a_clear_error(profile):
    with pytest.raises(FileNotFoundError, match="checkpoint not found; run the stage that writes it first"):
        stages.run_stage("stage2_multistage", profile, stage="stage2", init_from="stage1")


def test_training_lowers_the_loss_on_a_learnable_task():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 8, 8)
    y = (x.mean(dim=(1, 2, 3)) > 0.5).long()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True)
    history = train.fit(model, loader, loader, num_epochs=30, lr=0.05, device=torch.device("cpu"))
    assert history["train_loss"].iloc[-1] < 0.7 * history["train_loss"].iloc[0]


def test_atomic_write_leaves_nothing_half_written(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        train.atomic_write(target, broken)
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def test_chained_run_reruns_when_its_starting_checkpoint_changes(profile):
    import shutil

    for seed in (0, 1):
        stages.run_stage("stage1", profile, stage="stage1", init_from="imagenet", seed=seed)
    first = stages.run_stage("stage2_multistage", profile, stage="stage2", init_from="stage1")
    stamp = (first.run_dir / "metrics.json").stat().st_mtime_ns
    again = stages.run_stage("stage2_multistage", profile, stage="stage2", init_from="stage1")
    assert (again.run_dir / "metrics.json").stat().st_mtime_ns == stamp  # same bridge: reused
    bridge = stages.run_dir_for(profile, "stage1", 0) / "checkpoint.pt"
    shutil.copy(stages.run_dir_for(profile, "stage1", 1) / "checkpoint.pt", bridge)
    changed = stages.run_stage("stage2_multistage", profile, stage="stage2", init_from="stage1")
    assert (changed.run_dir / "metrics.json").stat().st_mtime_ns != stamp
    assert changed.config["init_sha256"] != first.config["init_sha256"]
    assert changed.metrics["provenance"]["weights"]["sha256"] == changed.config["init_sha256"]
