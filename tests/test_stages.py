"""One stage run through the lifecycle: provenance, reuse, chained starts, a clear error when a start is missing."""

import shutil

import pandas as pd
import pytest
import torch

from mstl_utils.core import config
from mstl_utils.engine import executors, lifecycle, stages, train
from mstl_utils.engine.spec import RunSpec
from mstl_utils.experiments import protocol


@pytest.fixture
def profile(synthetic_root, monkeypatch):
    monkeypatch.setenv("MSTL_DATA_DIR", str(synthetic_root))
    monkeypatch.delenv("MSTL_WEIGHTS_DIR", raising=False)  # the smoke profile's labelled random fallback
    return config.get_profile("smoke", data="real")


@pytest.mark.slow
def test_stage1_then_multistage_chain(profile):
    first = lifecycle.run(protocol.bridge_spec(profile))
    assert list(first.history.columns) == ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds"]
    assert len(first.history) == profile.stage1.num_epochs
    prov = first.provenance
    assert prov["data"]["kind"] == "real" and len(prov["data"]["sha256"]) == 64
    assert prov["weights"]["source"] == "random (ImageNet unavailable)"  # labelled, never silent
    assert {"commit", "dirty"} <= set(prov["code"]) and prov["hardware"]["torch"] == torch.__version__
    assert prov["run"] == protocol.bridge_spec(profile).relpath.as_posix()

    [chained] = executors.run_specs([protocol.paper_split_spec(profile, "multistage", seed=0)], workers=1)
    weights = chained.provenance["weights"]
    assert weights["init"] == "checkpoint" and weights["source"] == "stage1" and len(weights["sha256"]) == 64
    assert chained.predictions["file"].str.startswith("head_ct/").all()
    assert 0.0 <= chained.metrics["accuracy"] <= 1.0 and chained.metrics["n"] == len(chained.predictions)


@pytest.mark.slow
def test_complete_run_is_reused_and_changed_settings_rerun_in_their_own_folder(profile):
    spec = RunSpec(name="stage2_scratch", stage="stage2", profile=profile, init="scratch")
    first = lifecycle.run(spec)
    stamp = (first.run_dir / "metrics.json").stat().st_mtime_ns
    again = lifecycle.run(spec)
    assert (again.run_dir / "metrics.json").stat().st_mtime_ns == stamp
    changed = lifecycle.run(spec.replace(profile=profile.replace(stage2={"num_epochs": 1})))
    assert len(changed.history) == 1 and changed.run_dir != first.run_dir
    assert (first.run_dir / "metrics.json").stat().st_mtime_ns == stamp  # the default run untouched


@pytest.mark.slow
def test_same_seed_same_result(profile):
    spec = RunSpec(name="stage2_scratch", stage="stage2", profile=profile, init="scratch")
    a = lifecycle.run(spec)
    b = lifecycle.run(spec, force=True)
    pd.testing.assert_frame_equal(a.predictions, b.predictions)
    pd.testing.assert_frame_equal(a.history.drop(columns="seconds"), b.history.drop(columns="seconds"))


def test_a_run_whose_start_is_missing_is_a_clear_error(profile, tmp_path):
    spec = protocol.paper_split_spec(profile, "multistage", seed=0)
    with pytest.raises(FileNotFoundError, match=r"starts from run smoke/stage1/seed0, which is missing"):
        lifecycle.run(spec)
    with pytest.raises(FileNotFoundError, match=r"run smoke/stage1/seed0 .* is missing or incomplete"):
        lifecycle.load_spec(spec.init)


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


@pytest.mark.slow
def test_chained_run_reruns_when_its_starting_checkpoint_changes(profile):
    bridges = [lifecycle.run(protocol.bridge_spec(profile, seed=seed)) for seed in (0, 1)]
    spec = protocol.paper_split_spec(profile, "multistage", seed=0)
    first = lifecycle.run(spec)
    stamp = (first.run_dir / "metrics.json").stat().st_mtime_ns
    again = lifecycle.run(spec)
    assert (again.run_dir / "metrics.json").stat().st_mtime_ns == stamp  # same bridge: reused
    shutil.copy(bridges[1].run_dir / "checkpoint.pt", bridges[0].run_dir / "checkpoint.pt")
    assert not lifecycle.is_complete(spec)
    changed = lifecycle.run(spec)
    assert (changed.run_dir / "metrics.json").stat().st_mtime_ns != stamp
    assert changed.config["inputs"]["init_sha256"] != first.config["inputs"]["init_sha256"]
    assert changed.provenance["weights"]["sha256"] == changed.config["inputs"]["init_sha256"]
