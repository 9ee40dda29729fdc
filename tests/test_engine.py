"""The training engine: resuming a killed run, the decoded-image cache, batches and side-by-side runs."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch

from mstl_utils.data import batches, decoded
from mstl_utils.core import config
from mstl_utils import data
from mstl_utils.data import datasets
from mstl_utils.engine import stages, train

# The smoke profile with more epochs, so that a run can be killed in the middle.
EPOCHS = 6
KILL_AFTER = 3  # the child dies right after training epoch 3, before that epoch's state is saved


@pytest.fixture
def profile(synthetic_root, monkeypatch):
    monkeypatch.setenv("MSTL_DATA_DIR", str(synthetic_root))
    monkeypatch.delenv("MSTL_WEIGHTS_DIR", raising=False)
    return config.get_profile("smoke", data="real").replace(stage2={"num_epochs": EPOCHS})


KILLED_CHILD = textwrap.dedent("""
    import logging, os, signal
    from mstl_utils.core import config
    from mstl_utils.engine import stages

    class KillAfter(logging.Handler):
        # SIGKILL: no cleanup, no atexit, no flushing -- as when a machine or a scheduler kills a job.
        def emit(self, record):
            if record.getMessage().startswith("epoch {kill}/"):
                os.kill(os.getpid(), signal.SIGKILL)

    logging.getLogger("mstl_utils.engine.train").addHandler(KillAfter())
    logging.getLogger("mstl_utils.engine.train").setLevel(logging.INFO)
    profile = config.get_profile("smoke", data="real").replace(stage2={{"num_epochs": {epochs}}})
    stages.run_stage("stage2_scratch", profile, stage="stage2", init_from="scratch", seed=0)
""")


def test_killed_run_resumes_and_ends_bit_for_bit_like_an_uninterrupted_one(profile, tmp_path, monkeypatch):
    killed_root = tmp_path / "killed"
    env = {**os.environ, "MSTL_RUNS_DIR": str(killed_root), "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.run([sys.executable, "-c", KILLED_CHILD.format(kill=KILL_AFTER, epochs=EPOCHS)], env=env,
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    run_dir = stages.run_dir_for(profile, "stage2_scratch", 0, killed_root)
    assert not (run_dir / "metrics.json").exists()  # incomplete, so never used as a result
    saved = train.load_checkpoint(run_dir / stages.RESUME_FILE)
    assert saved["epoch"] == KILL_AFTER - 1  # epoch 3 was trained but its state was never written

    resumed = stages.run_stage("stage2_scratch", profile, stage="stage2", init_from="scratch", seed=0,
                               runs_root=killed_root)
    straight = stages.run_stage("stage2_scratch", profile, stage="stage2", init_from="scratch", seed=0,
                                runs_root=tmp_path / "straight")
    assert resumed.metrics["provenance"]["resumed_after_epoch"] == KILL_AFTER - 1
    assert straight.metrics["provenance"]["resumed_after_epoch"] is None
    assert not (run_dir / stages.RESUME_FILE).exists()  # removed once the run is complete
    pd.testing.assert_frame_equal(resumed.history.drop(columns="seconds"), straight.history.drop(columns="seconds"))
    pd.testing.assert_frame_equal(resumed.predictions, straight.predictions)
    for key in ("accuracy", "auc", "sensitivity", "specificity"):
        assert resumed.metrics[key] == straight.metrics[key]
    a = train.load_checkpoint(resumed.run_dir / "checkpoint.pt")["state_dict"]
    b = train.load_checkpoint(straight.run_dir / "checkpoint.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_state_of_other_settings_is_not_used(profile, tmp_path):
    run = stages.run_stage("stage2_scratch", profile, stage="stage2", init_from="scratch")
    state = train.load_checkpoint(run.run_dir / "checkpoint.pt")
    # A leftover epoch state written under other settings (here: another learning rate).
    other = json.loads(json.dumps(state["config"]))
    other["profile"]["stage2"]["lr"] = 0.5
    (run.run_dir / "metrics.json").unlink()
    train.save_checkpoint(run.run_dir / stages.RESUME_FILE, {"requested": other, "epoch": 5})
    again = stages.run_stage("stage2_scratch", profile, stage="stage2", init_from="scratch")
    assert again.metrics["provenance"]["resumed_after_epoch"] is None
    pd.testing.assert_frame_equal(again.predictions, run.predictions)


def test_two_runs_with_the_same_seed_are_identical_in_deterministic_mode(profile):
    assert profile.deterministic
    a = stages.run_stage("stage2_imagenet", profile, stage="stage2", init_from="imagenet", seed=3)
    b = stages.run_stage("stage2_imagenet", profile, stage="stage2", init_from="imagenet", seed=3, force=True)
    c = stages.run_stage("stage2_imagenet", profile, stage="stage2", init_from="imagenet", seed=4)
    assert a.metrics["accuracy"] == b.metrics["accuracy"] and a.metrics["auc"] == b.metrics["auc"]
    np.testing.assert_array_equal(a.predictions["prob_hemorrhage"], b.predictions["prob_hemorrhage"])
    assert not np.array_equal(a.predictions["prob_hemorrhage"], c.predictions["prob_hemorrhage"])


# --------------------------------------------------------------------------- decoded-image cache


def test_decoded_cache_is_hit_the_second_time_and_decodes_nothing(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MSTL_CACHE_DIR", str(tmp_path / "cache"))
    first = data.prepare("head_ct", data="real", data_dir=synthetic_root, image_size=32)
    assert first.decoded_cache == "built"

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(datasets, "load_images", no_decoding)
    second = data.prepare("head_ct", data="real", data_dir=synthetic_root, image_size=32)
    assert second.decoded_cache == "hit" and second.describe()["decoded_cache"] == "hit"
    assert torch.equal(first.images, second.images)
    index = json.loads(next((tmp_path / "cache" / "decoded").glob("*.json")).read_text())
    assert not any(f.startswith("/") for f in index["files"])  # relative paths only


def test_decoded_cache_is_keyed_by_content_and_size(tmp_path, monkeypatch):
    monkeypatch.setenv("MSTL_CACHE_DIR", str(tmp_path / "cache"))
    from mstl_utils.data import synthetic
    root = tmp_path / "data"
    synthetic.make_head_ct(root / "head_ct", n_per_class=12)
    a = data.prepare("head_ct", data="real", data_dir=root, image_size=32)
    b = data.prepare("head_ct", data="real", data_dir=root, image_size=40)
    assert (a.decoded_cache, b.decoded_cache) == ("built", "built") and b.images.shape[-1] == 40
    # Same size, one file's content changed: a new entry, not a stale hit.
    victim = sorted((root / "head_ct").rglob("*.png"))[0]
    from PIL import Image
    Image.fromarray(np.full((64, 64), 7, dtype=np.uint8)).save(victim)
    c = data.prepare("head_ct", data="real", data_dir=root, image_size=32)
    assert c.decoded_cache == "built" and c.checksum != a.checksum


def test_damaged_cache_entry_is_decoded_again(tmp_path):
    files = [str(tmp_path / f"{i}.png") for i in range(3)]
    calls = []

    def decode(fs, size):
        calls.append(len(fs))
        return np.arange(len(fs) * size * size, dtype=np.uint8).reshape(len(fs), size, size)

    cache = tmp_path / "cache"
    array, hit = decoded.load_or_decode(files, tmp_path, "f" * 64, 8, decode, cache_root=cache)
    assert not hit and array.shape == (3, 8, 8)
    expected = np.array(array)  # a copy: the memory map would show the damage below
    array_file, _ = decoded.entry_paths("f" * 64, 8, cache)
    array_file.write_bytes(b"not an npy file")
    again, hit = decoded.load_or_decode(files, tmp_path, "f" * 64, 8, decode, cache_root=cache)
    assert not hit and calls == [3, 3] and np.array_equal(again, expected)


# --------------------------------------------------------------------------- batches


def test_batches_cover_every_image_once_and_augment_reproducibly():
    images = torch.randint(0, 256, (21, 1, 16, 16), dtype=torch.uint8)
    labels = np.arange(21) % 2

    def one_pass(seed):
        loader = batches.TensorBatches(images, labels, batch_size=8, shuffle=True, augment=True,
                                       generator=torch.Generator().manual_seed(seed))
        return list(loader)

    a, b, c = one_pass(0), one_pass(0), one_pass(1)
    assert [len(y) for _, y in a] == [8, 8, 5]
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, b))
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, c))
    x = torch.cat([x for x, _ in a])
    assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
    plain = batches.TensorBatches(images, labels, batch_size=8, drop_last=True)
    assert len(plain) == 2 and plain.num_images == 16
    assert torch.equal(next(iter(plain))[0], images[:8].float() / 255)  # no shuffle, no augmentation


def test_random_affine_is_a_mild_geometric_change():
    image = torch.zeros(1, 1, 64, 64)
    image[..., 24:40, 24:40] = 1.0
    out = batches.random_affine(image.repeat(50, 1, 1, 1), torch.Generator().manual_seed(0))
    # The square moves and turns a little but keeps about its area; nothing is created from nothing.
    area = out.sum(dim=(1, 2, 3)) / image.sum()
    assert ((area > 0.85) & (area < 1.15)).all()
    assert not torch.equal(out[0], out[1])


def test_batches_refuse_float_images_and_unseeded_shuffling():
    with pytest.raises(ValueError, match="uint8"):
        batches.TensorBatches(torch.rand(4, 1, 8, 8), [0, 1, 0, 1], batch_size=2)
    with pytest.raises(ValueError, match="Generator"):
        batches.TensorBatches(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), [0, 1, 0, 1], batch_size=2, shuffle=True)


# --------------------------------------------------------------------------- precision, side-by-side runs


def test_precision_auto_is_fp32_on_cpu_and_bf16_trains_on_cpu():
    cpu = torch.device("cpu")
    assert train.resolve_precision("auto", cpu) == "fp32"
    assert train.resolve_precision("auto", torch.device("cuda")) == "bf16"
    with pytest.raises(ValueError, match="precision"):
        train.resolve_precision("fp8", cpu)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    x = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    loader = batches.TensorBatches(x, np.arange(16) % 2, batch_size=8)
    model(torch.zeros(1, 1, 8, 8))
    history = train.fit(model, loader, None, num_epochs=2, lr=1e-2, device=cpu, precision="bf16")
    assert np.isfinite(history["train_loss"]).all()


def test_runs_side_by_side_give_complete_runs_in_job_order(profile, monkeypatch):
    jobs = [dict(name="stage2_scratch", profile=profile.replace(stage2={"num_epochs": 1}), stage="stage2",
                 init_from="scratch", seed=seed) for seed in (0, 1, 2)]
    results = stages.run_stages(jobs, workers=2)
    assert [r.config["seed"] for r in results] == [0, 1, 2]
    assert all(r.metrics["provenance"]["num_threads"] >= 1 for r in results)
    stamps = [(r.run_dir / "metrics.json").stat().st_mtime_ns for r in results]
    # Complete runs are reused, whatever the number of workers, without starting a worker process.
    assert all(stages.is_complete(**job) for job in jobs)
    again = stages.run_stages(jobs, workers=1)
    assert [(r.run_dir / "metrics.json").stat().st_mtime_ns for r in again] == stamps

    def no_processes(*args, **kwargs):
        raise AssertionError("a worker process was started for complete runs")

    monkeypatch.setattr(stages.multiprocessing, "get_context", no_processes)
    assert [r.config["seed"] for r in stages.run_stages(jobs, workers=2)] == [0, 1, 2]
    # One run made incomplete: only it trains again.
    (results[1].run_dir / "metrics.json").unlink()
    assert not stages.is_complete(**jobs[1])
    redone = stages.run_stages(jobs)
    assert [(r.run_dir / "metrics.json").stat().st_mtime_ns == s for r, s in zip(redone, stamps)] == [True, False, True]


def test_a_failing_run_among_several_names_its_run(profile):
    jobs = [dict(name="stage2_multistage", profile=profile, stage="stage2", init_from="stage1", seed=seed)
            for seed in (0, 1)]
    with pytest.raises(RuntimeError, match=r"stage2_multistage/seed\d.*checkpoint not found"):
        stages.run_stages(jobs, workers=2)


def test_side_by_side_only_for_many_runs(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert stages.default_workers(3, "cpu") == 1  # 3 seeds: a third round on one thread would cost more
    assert stages.default_workers(60, "cpu") == 2  # 60 folds: one run per core


def test_augmenting_a_whole_pass_at_once_draws_what_batch_by_batch_would():
    # TensorBatches draws a pass's augmentation at once (one copy to the device, no
    # synchronisation per step); random_affine draws per batch. Same numbers, same images.
    images = torch.randint(0, 256, (21, 1, 16, 16), dtype=torch.uint8)
    loader = batches.TensorBatches(images, np.zeros(21), batch_size=8, shuffle=True, augment=True,
                                   generator=torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(5)
    order = torch.randperm(21, generator=generator)
    for index, (x, _) in enumerate(loader):
        rows = order[index * 8:(index + 1) * 8]
        assert torch.equal(x, batches.random_affine(images[rows].float() / 255, generator))
