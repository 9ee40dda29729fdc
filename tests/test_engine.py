"""The training engine: run specs and their folders, the lifecycle (resume, reuse, saved state), executors,
run locks, the decoded-image cache and batches."""

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

from mstl_utils import data
from mstl_utils.core import config, repro
from mstl_utils.data import batches, datasets, decoded
from mstl_utils.engine import executors, lifecycle, locks, train
from mstl_utils.engine.spec import RunSpec
from mstl_utils.experiments import protocol

# The smoke profile with more epochs, so that a run can be killed in the middle.
EPOCHS = 6
KILL_AFTER = 3  # the child dies right after training epoch 3, before that epoch's state is saved


@pytest.fixture
def profile(synthetic_root, monkeypatch):
    monkeypatch.setenv("MSTL_DATA_DIR", str(synthetic_root))
    monkeypatch.delenv("MSTL_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv(lifecycle.ENV_STATE_EVERY, "0")  # a state after every epoch, so that kills are exact
    return config.get_profile("smoke", data="real").replace(stage2={"num_epochs": EPOCHS})


def scratch_spec(profile, seed=0, **changes):
    return RunSpec(name="stage2_scratch", stage="stage2", profile=profile, init="scratch", seed=seed, **changes)


KILLED_CHILD = textwrap.dedent("""
    import logging, os, signal
    from mstl_utils.core import config
    from mstl_utils.engine import lifecycle
    from mstl_utils.engine.spec import RunSpec

    class KillAfter(logging.Handler):
        # SIGKILL: no cleanup, no atexit, no flushing -- as when a machine or a scheduler kills a job.
        def emit(self, record):
            if record.getMessage().startswith("epoch {kill}/"):
                os.kill(os.getpid(), signal.SIGKILL)

    logging.getLogger("mstl_utils.engine.train").addHandler(KillAfter())
    logging.getLogger("mstl_utils.engine.train").setLevel(logging.INFO)
    profile = config.get_profile("smoke", data="real").replace(stage2={{"num_epochs": {epochs}}})
    lifecycle.run(RunSpec(name="stage2_scratch", stage="stage2", profile=profile, init="scratch", seed=0))
""")


@pytest.mark.slow
def test_killed_run_resumes_and_ends_bit_for_bit_like_an_uninterrupted_one(profile, tmp_path, monkeypatch):
    killed_root = tmp_path / "killed"
    env = {**os.environ, "MSTL_RUNS_DIR": str(killed_root), "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.run([sys.executable, "-c", KILLED_CHILD.format(kill=KILL_AFTER, epochs=EPOCHS)], env=env,
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    spec = scratch_spec(profile)
    run_dir = lifecycle.run_dir(spec, killed_root)
    assert not (run_dir / "metrics.json").exists()  # incomplete, so never used as a result
    saved = train.load_checkpoint(run_dir / lifecycle.STATE_FILE)
    assert saved["epoch"] == KILL_AFTER - 1  # epoch 3 was trained but its state was never written

    resumed = lifecycle.run(spec, runs_root=killed_root)
    straight = lifecycle.run(spec, runs_root=tmp_path / "straight")
    assert resumed.provenance["resumed_after_epoch"] == KILL_AFTER - 1
    assert straight.provenance["resumed_after_epoch"] is None
    assert not (run_dir / lifecycle.STATE_FILE).exists()  # removed once the run is complete
    pd.testing.assert_frame_equal(resumed.history.drop(columns="seconds"), straight.history.drop(columns="seconds"))
    pd.testing.assert_frame_equal(resumed.predictions, straight.predictions)
    for key in ("accuracy", "auc", "sensitivity", "specificity"):
        assert resumed.metrics[key] == straight.metrics[key]
    a = train.load_checkpoint(resumed.run_dir / "checkpoint.pt")["state_dict"]
    b = train.load_checkpoint(straight.run_dir / "checkpoint.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_resume_state_of_other_settings_is_not_used(profile):
    spec = scratch_spec(profile)
    run = lifecycle.run(spec)
    # A leftover epoch state written under other settings (here: another learning rate).
    other = json.loads(json.dumps(run.config))
    other["config"]["lr"] = 0.5
    (run.run_dir / "metrics.json").unlink()
    train.save_checkpoint(run.run_dir / lifecycle.STATE_FILE, {"requested": other, "epoch": 5})
    again = lifecycle.run(spec)
    assert again.provenance["resumed_after_epoch"] is None
    pd.testing.assert_frame_equal(again.predictions, run.predictions)


@pytest.mark.slow
def test_state_is_saved_only_when_due(profile, monkeypatch):
    """Per-epoch state costs a checkpoint write (27 MB for MobileNetV2): only every $MSTL_STATE_EVERY seconds."""
    short = profile.replace(stage2={"num_epochs": 2})
    monkeypatch.setenv(lifecycle.ENV_STATE_EVERY, "3600")
    assert lifecycle.run(scratch_spec(short, seed=1)).provenance["states_saved"] == 0
    monkeypatch.setenv(lifecycle.ENV_STATE_EVERY, "0")
    assert lifecycle.run(scratch_spec(short, seed=2)).provenance["states_saved"] == 2
    monkeypatch.setenv(lifecycle.ENV_STATE_EVERY, "soon")
    with pytest.raises(ValueError, match="MSTL_STATE_EVERY"):
        lifecycle.state_every()


@pytest.mark.slow
def test_two_runs_with_the_same_seed_are_identical_in_deterministic_mode(profile):
    assert profile.deterministic
    spec = RunSpec(name="stage2_imagenet", stage="stage2", profile=profile, init="imagenet", seed=3)
    a = lifecycle.run(spec)
    b = lifecycle.run(spec, force=True)
    c = lifecycle.run(spec.replace(seed=4))
    assert a.metrics["accuracy"] == b.metrics["accuracy"] and a.metrics["auc"] == b.metrics["auc"]
    np.testing.assert_array_equal(a.predictions["prob_hemorrhage"], b.predictions["prob_hemorrhage"])
    assert not np.array_equal(a.predictions["prob_hemorrhage"], c.predictions["prob_hemorrhage"])


def test_deterministic_mode_does_not_fill_new_memory_and_results_do_not_depend_on_it():
    repro.seed_everything(0, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.utils.deterministic.fill_uninitialized_memory is False

    def train_once(fill: bool):
        repro.seed_everything(0, deterministic=True)
        torch.utils.deterministic.fill_uninitialized_memory = fill
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                    torch.nn.Flatten(), torch.nn.Linear(8 * 14 * 14, 2))
        x = torch.randint(0, 256, (32, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
        loader = batches.TensorBatches(x, np.arange(32) % 2, batch_size=8)
        history = train.fit(model, loader, None, num_epochs=2, lr=1e-2, device=torch.device("cpu"), progress=False)
        return history.drop(columns="seconds"), model.state_dict()

    try:
        (h1, w1), (h2, w2) = train_once(True), train_once(False)
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = False
    pd.testing.assert_frame_equal(h1, h2)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_predictions_are_fp32_whatever_the_training_precision():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    loader = batches.TensorBatches(torch.randint(0, 256, (10, 1, 8, 8), dtype=torch.uint8), np.zeros(10), batch_size=4)
    probs, _ = train.predict(model, loader, device=torch.device("cpu"))
    with torch.no_grad():
        exact = torch.cat([torch.softmax(model(x), dim=1) for x, _ in loader]).numpy()
    assert probs.dtype == np.float32 and np.array_equal(probs, exact)  # no bf16 rounding of the logits


# --------------------------------------------------------------------------- specs and their folders


def test_a_spec_names_its_folder_and_a_changed_setting_gets_another(profile):
    spec = scratch_spec(profile)
    assert spec.relpath.as_posix().startswith("smoke/stage2_scratch-") and spec.relpath.name == "seed0"
    # Another learning rate of stage 2: another folder; a stage-1 change does not touch a stage-2 run.
    assert scratch_spec(profile.replace(stage2={"lr": 0.01})).family != spec.family
    assert scratch_spec(profile.replace(stage1={"lr": 0.01})).family == spec.family
    # Device and precision are part of a run's identity: a CPU fp32 run is never reused by a bf16 study.
    settings = spec.settings()
    assert (settings["device"], settings["precision"]) == ("cpu", "fp32")
    assert scratch_spec(profile.replace(precision="bf16")).family != spec.family
    # Options appear in the identity only when used.
    assert "strategy" not in settings and "in_chans" not in settings
    assert scratch_spec(profile, in_chans=3).family != spec.family
    with pytest.raises(ValueError, match="balance"):
        scratch_spec(profile, balance="smote")
    with pytest.raises(ValueError, match="init"):
        RunSpec(name="stage2_x", stage="stage2", profile=profile, init="stage1")


@pytest.mark.slow
def test_a_chained_run_names_its_upstream_and_is_trained_after_it(profile):
    folds, _ = protocol.target_folds(profile)
    split = protocol.splits(folds)[0]
    fold = protocol.fold_spec(profile.replace(stage2={"num_epochs": 1}), "multistage", split)
    bridge = fold.init
    assert isinstance(bridge, RunSpec) and fold.upstream() == (bridge,)
    assert not lifecycle.is_complete(bridge)
    with pytest.raises(FileNotFoundError, match="starts from run .*stage1"):
        lifecycle.run(fold)  # alone, the lifecycle refuses: the executor orders runs
    [result] = executors.run_specs([fold], workers=1)
    assert lifecycle.is_complete(bridge) and result.config["init_run"] == bridge.relpath.as_posix()
    assert result.config["inputs"]["init_sha256"] == repro.sha256_file(lifecycle.run_dir(bridge) / "checkpoint.pt")
    # Repeat 1 of a profile with one seed starts from the bridge of seed 0: its folder says so.
    later = protocol.fold_spec(profile, "multistage", protocol.splits(folds)[-1]).replace(
        split=protocol.splits(folds)[-1].__class__(1, 0, split.test_ids), seed=1)
    assert later.leaf == "repeat01_fold0_from-seed0"


# --------------------------------------------------------------------------- executors


@pytest.mark.slow
def test_runs_side_by_side_give_complete_runs_in_job_order(profile, monkeypatch):
    specs = [scratch_spec(profile.replace(stage2={"num_epochs": 1}), seed=seed) for seed in (0, 1, 2)]
    results = executors.run_specs(specs, workers=2)
    assert [r.config["seed"] for r in results] == [0, 1, 2]
    assert all(r.provenance["num_threads"] >= 1 for r in results)
    stamps = [(r.run_dir / "metrics.json").stat().st_mtime_ns for r in results]
    # Complete runs are reused, whatever the number of workers, without starting a worker process.
    assert all(lifecycle.is_complete(s) for s in specs)
    again = executors.run_specs(specs, workers=1)
    assert [(r.run_dir / "metrics.json").stat().st_mtime_ns for r in again] == stamps

    def no_processes(*args, **kwargs):
        raise AssertionError("a worker process was started for complete runs")

    monkeypatch.setattr(executors.multiprocessing, "get_context", no_processes)
    assert [r.config["seed"] for r in executors.run_specs(specs, workers=2)] == [0, 1, 2]
    # One run made incomplete: only it trains again.
    (results[1].run_dir / "metrics.json").unlink()
    assert not lifecycle.is_complete(specs[1])
    redone = executors.run_specs(specs, workers=1)
    assert [(r.run_dir / "metrics.json").stat().st_mtime_ns == s for r, s in zip(redone, stamps)] == [True, False, True]


@pytest.mark.slow
def test_a_failing_run_among_several_names_its_run(profile):
    broken = profile.replace(stage2={"dataset": "no_such_dataset", "num_epochs": 1})
    specs = [scratch_spec(broken, seed=seed) for seed in (0, 1)]
    with pytest.raises(RuntimeError, match=r"run smoke/stage2_scratch/seed\d failed: .*no_such_dataset"):
        executors.run_specs(specs, workers=2)
    with pytest.raises(ValueError, match="executor"):
        executors.get_executor("slurm")


def test_side_by_side_only_for_many_runs_on_a_cpu_and_for_two_or_more_on_a_gpu(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert executors.default_workers(3, "cpu") == 1  # 3 seeds: a third round on one thread would cost more
    assert executors.default_workers(60, "cpu") == 2  # 60 folds: one run per core
    assert executors.default_workers(6, "cuda") == 4  # the six bridges of a study share the GPU
    assert executors.default_workers(2, "cuda") == 2 and executors.default_workers(1, "cuda") == 1


# --------------------------------------------------------------------------- sharing a runs folder

STUDY_CHILD = textwrap.dedent("""
    import logging, sys
    from mstl_utils.core import config
    from mstl_utils.engine import executors
    from mstl_utils.engine.spec import RunSpec

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    profile = config.get_profile("smoke", data="real").replace(stage2={"num_epochs": 2})
    seeds = [0, 1, 2, 3]
    specs = [RunSpec(name="stage2_scratch", stage="stage2", profile=profile, init="scratch", seed=s) for s in seeds]
    executors.run_specs(specs[::-1] if sys.argv[1] == "reversed" else specs, workers=1)
""")


@pytest.mark.slow
def test_two_studies_on_one_runs_folder_train_each_run_exactly_once(profile, tmp_path):
    env = {**os.environ, "MSTL_RUNS_DIR": str(tmp_path / "shared"), "PYTHONPATH": os.pathsep.join(sys.path)}
    children = [subprocess.Popen([sys.executable, "-c", STUDY_CHILD, order], env=env, stderr=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL, text=True) for order in ("forward", "reversed")]
    logs = [child.communicate(timeout=600)[1] for child in children]
    assert all(child.returncode == 0 for child in children), logs
    trained = [line.split(":")[0] for text in logs for line in text.splitlines() if line.endswith(" s") and ": trained in" in line]
    assert sorted(trained) == sorted(f"smoke/stage2_scratch/seed{s}" for s in range(4)), logs


LOCK_HOLDER = textwrap.dedent("""
    import sys, time
    from mstl_utils.engine import locks
    with locks.RunLock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(60)
""")


def test_a_busy_run_is_named_and_a_dead_holder_is_taken_over(tmp_path, caplog):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(run_dir)], env=env, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(locks.RunBusy, match=rf"still being trained by process {holder.pid} on "):
            locks.RunLock(run_dir, label="smoke/x/seed0", timeout=0.5, poll=0.1).acquire()
        holder.kill()  # SIGKILL: no release, the file still names the dead holder
        holder.wait()
        assert locks.holder(run_dir)["pid"] == holder.pid
        with caplog.at_level("INFO", logger="mstl_utils.engine.locks"):
            with locks.RunLock(run_dir, label="smoke/x/seed0", timeout=5):
                assert locks.holder(run_dir)["pid"] == os.getpid()
        assert f"taking over from process {holder.pid}" in caplog.text
        assert locks.holder(run_dir) == {}  # released
    finally:
        holder.kill()


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


# --------------------------------------------------------------------------- precision


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


def test_compile_compiles_the_training_step_only(monkeypatch):
    """torch.compile: evaluation stays eager (its last short batch would recompile), and on a GPU the training
    step asks for CUDA graphs ("reduce-overhead"); here on the CPU for the default mode."""
    compiled = []

    def fake_compile(model, **options):
        compiled.append(options)

        class Recorded(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner, self.calls = model, 0

            def forward(self, x):
                self.calls += 1
                assert self.inner.training, "the compiled model ran in evaluation"
                return self.inner(x)

        recorded = Recorded()
        compiled.append(recorded)
        return recorded

    monkeypatch.setattr(train.torch, "compile", fake_compile)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    data = batches.TensorBatches(torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8), np.arange(16) % 2, batch_size=8)
    train.fit(model, data, data, num_epochs=2, lr=1e-2, device=torch.device("cpu"), compile=True, progress=False)
    options, recorded = compiled
    assert options == {"mode": None, "dynamic": False} and recorded.calls == 2 * 2  # 2 epochs x 2 training batches


def test_a_worker_mirrors_the_drivers_configuration_unset_variables_included(monkeypatch, tmp_path):
    monkeypatch.setenv("MSTL_DATA_DIR", "/data/here")
    monkeypatch.delenv("MSTL_WEIGHTS_DIR", raising=False)
    env = executors._env(tmp_path)
    assert env["MSTL_DATA_DIR"] == "/data/here" and env["MSTL_WEIGHTS_DIR"] is None
    assert env["MSTL_RUNS_DIR"] == str(tmp_path)
    monkeypatch.setenv("MSTL_WEIGHTS_DIR", "/a/worker/own/value")  # as a Ray worker inherits from its cluster
    executors._set_env(env)
    assert "MSTL_WEIGHTS_DIR" not in os.environ and os.environ["MSTL_DATA_DIR"] == "/data/here"
