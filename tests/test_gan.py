"""The WGAN-GP (on its device), its run through the engine's lifecycle, the quality measures,
generated-image folders, class balancing and the chapter's stage-1 variants."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import linalg
from torch import nn

from mstl_utils import data
from mstl_utils.core import config
from mstl_utils.data import generated
from mstl_utils.engine import executors, lifecycle, stages
from mstl_utils.engine.spec import RunSpec
from mstl_utils.experiments import gan, protocol

TINY = gan.GANConfig(image_size=32, width=4, latent_dim=8, batch_size=4, num_steps=2, checkpoint_every=1)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks: one CPU thread is the fastest (several threads waiting on each other cost more
    than they save, the more so on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fixed_real(n: int = 10) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


class Linear(nn.Module):
    """critic(x) = <w, x>: its gradient is w everywhere."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return (x.flatten(1) * self.w.flatten()).sum(1)


def test_gradient_penalty_of_linear_critics():
    real, fake = torch.rand(5, 1, 4, 4), torch.rand(5, 1, 4, 4)
    unit = torch.randn(16)
    unit /= unit.norm()
    assert gan.gradient_penalty(Linear(unit), real, fake).item() == pytest.approx(0.0, abs=1e-10)
    # ||w|| = 3: (3 - 1)^2 = 4 at every point, whatever the mixing weights.
    penalty = gan.gradient_penalty(Linear(3 * unit), real, fake)
    assert penalty.item() == pytest.approx(4.0, rel=1e-5)
    penalty.backward()  # differentiable in the critic's weights (create_graph)


def test_gradient_penalty_matches_a_hand_computed_quadratic_critic():
    # critic(x) = 0.5 * sum(x^2): gradient x, so the penalty is mean((|x_mixed| - 1)^2).
    class Quadratic(nn.Module):
        def forward(self, x):
            return 0.5 * (x.flatten(1) ** 2).sum(1)
    real, fake = torch.ones(3, 1, 2, 2), torch.zeros(3, 1, 2, 2)
    rng = torch.Generator().manual_seed(1)
    eps = torch.rand(3, 1, 1, 1, generator=torch.Generator().manual_seed(1))
    expected = ((eps.flatten() * 2 - 1) ** 2).mean()  # |eps * ones(4)| = 2 eps
    assert gan.gradient_penalty(Quadratic(), real, fake, rng).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("size", [32, 64])
def test_generator_and_critic_shapes(size):
    generator = gan.Generator(image_size=size, latent_dim=8, width=4)
    critic = gan.Critic(image_size=size, width=4)
    images = generator(torch.randn(3, 8))
    assert images.shape == (3, 1, size, size) and images.abs().max() <= 1
    assert critic(images).shape == (3,)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in critic.modules())  # no batch norm in the critic


def test_bad_image_size_is_refused():
    with pytest.raises(ValueError, match="power of two"):
        gan.Generator(image_size=48)


def test_a_training_step_changes_weights_and_is_deterministic():
    real = torch.randint(0, 256, (10, 1, 32, 32), dtype=torch.uint8)
    first, second = gan.WGANGP(TINY, seed=3), gan.WGANGP(TINY, seed=3)
    before = [p.detach().clone() for p in first.generator.parameters()]
    critic_before = [p.detach().clone() for p in first.critic.parameters()]
    row = first.train_step(real)
    second.train_step(real)
    assert set(row) == {"step", "critic_loss", "wasserstein", "penalty", "generator_loss"}
    assert any(not torch.equal(b, p) for b, p in zip(before, first.generator.parameters()))
    assert any(not torch.equal(b, p) for b, p in zip(critic_before, first.critic.parameters()))
    for a, b in zip(first.generator.state_dict().values(), second.generator.state_dict().values()):
        assert torch.equal(a, b)
    assert np.array_equal(first.sample(4, seed=1), second.sample(4, seed=1))


#: Three steps of a tiny GAN at seed 0 on ``fixed_real()``, computed by the previous implementation
#: (a CPU torch.Generator, before the GAN took a device) with one torch thread. Another thread count
#: changes the last bits of the losses (convolutions sum in another order), never more than 1e-6.
PREVIOUS_HISTORY = [
    {"step": 1, "critic_loss": 1.154119849205017, "wasserstein": -0.07767912745475769,
     "penalty": 0.10764406621456146, "generator_loss": 0.0738968700170517},
    {"step": 2, "critic_loss": 0.2959887981414795, "wasserstein": 0.48721587657928467,
     "penalty": 0.0783204659819603, "generator_loss": 0.2355964183807373},
    {"step": 3, "critic_loss": 0.19888684153556824, "wasserstein": 0.28202274441719055,
     "penalty": 0.04809095710515976, "generator_loss": 0.3031569719314575},
]
#: The next three draws of the GAN's generator after those steps (the same number of draws were made).
PREVIOUS_NEXT_DRAWS = [0.8509949445724487, 0.1292743682861328, 0.6149360537528992]
#: ``sample(4, seed=1)`` after those steps: the sum of its pixels and each image's first six pixels.
PREVIOUS_SAMPLE_SUM = 551019
PREVIOUS_SAMPLE_START = [[134, 126, 133, 128, 132, 122], [134, 127, 133, 129, 132, 127],
                         [134, 126, 131, 127, 130, 126], [134, 126, 133, 131, 129, 127]]


def test_cpu_results_are_those_of_the_previous_implementation():
    """On the CPU the GAN draws the same numbers in the same order as before it took a device:
    the committed tables do not change."""
    tiny = dataclasses.replace(TINY, num_steps=3)
    real = fixed_real()
    model = gan.WGANGP(tiny, seed=0)
    assert model.device == torch.device("cpu") and model.rng.device == torch.device("cpu")
    for _ in range(3):
        model.train_step(real)
    for found, expected in zip(model.history, PREVIOUS_HISTORY, strict=True):
        assert found["step"] == expected["step"]
        for key in ("critic_loss", "wasserstein", "penalty", "generator_loss"):
            assert found[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-7), key
    sample = model.sample(4, seed=1)
    assert torch.rand(3, generator=model.rng).tolist() == PREVIOUS_NEXT_DRAWS  # exactly as many draws
    assert np.abs(sample.reshape(4, -1)[:, :6].astype(int) - np.array(PREVIOUS_SAMPLE_START)).max() <= 1
    assert abs(int(sample.astype(np.int64).sum()) - PREVIOUS_SAMPLE_SUM) <= 16


def test_every_draw_is_made_on_the_gan_device(monkeypatch):
    """Batch indices, noise and penalty mixing weights all come from the GAN's generator, on its device
    (a draw without ``device=`` would fail on a GPU: a CUDA generator cannot make CPU tensors)."""
    model = gan.WGANGP(TINY, seed=0)
    real = fixed_real().to(model.device)
    calls = []
    for name in ("rand", "randn", "randint"):
        original = getattr(torch, name)

        def record(*args, _original=original, _name=name, **kwargs):
            calls.append((_name, kwargs.get("generator"), kwargs.get("device")))
            return _original(*args, **kwargs)
        monkeypatch.setattr(torch, name, record)
    model.train_step(real)
    # Per critic step: indices, noise, mixing weights; then the generator step's noise.
    assert [c[0] for c in calls] == ["randint", "randn", "rand"] * TINY.n_critic + ["randn"]
    assert all(generator is model.rng for _, generator, _ in calls)
    assert all(torch.device(device) == model.device for _, _, device in calls)
    assert model.rng.device == model.device
    calls.clear()
    model.sample(3, seed=5)
    assert [c[0] for c in calls] == ["randn"]
    assert calls[0][1].device == model.device and torch.device(calls[0][2]) == model.device
    # Networks and optimiser states live there too.
    assert {p.device for p in list(model.generator.parameters()) + list(model.critic.parameters())} == {model.device}
    assert {v.device for opt in (model.opt_g, model.opt_c) for s in opt.state.values() for k, v in s.items()
            if k != "step"} == {model.device}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_the_gan_trains_samples_and_resumes_on_a_gpu(tmp_path):
    model = gan.WGANGP(TINY, seed=0, device="cuda")
    real = fixed_real().to(model.device)
    model.train_step(real)
    assert model.device.type == "cuda" and model.rng.device.type == "cuda"
    assert all(p.device == model.device for p in model.generator.parameters())
    assert all(v.device == model.device for s in model.opt_c.state.values() for k, v in s.items() if k != "step")
    model.save(tmp_path / "gan.pt")
    model.train_step(real)
    resumed = gan.WGANGP.load(tmp_path / "gan.pt", device="cuda")
    resumed.train_step(real)
    assert resumed.history == model.history
    for a, b in zip(model.generator.state_dict().values(), resumed.generator.state_dict().values()):
        assert torch.equal(a, b)
    assert np.array_equal(model.sample(5, seed=2), resumed.sample(5, seed=2))
    with pytest.raises(ValueError, match="cuda"):
        gan.WGANGP(TINY, seed=0).load_state(gan.train.load_checkpoint(tmp_path / "gan.pt"))


def test_checkpoint_round_trip_continues_identically(tmp_path):
    real = torch.randint(0, 256, (10, 1, 32, 32), dtype=torch.uint8)
    straight = gan.WGANGP(TINY, seed=0)
    straight.train_step(real)
    straight.save(tmp_path / "gan.pt")
    straight.train_step(real)
    resumed = gan.WGANGP.load(tmp_path / "gan.pt")
    assert resumed.step == 1 and len(resumed.history) == 1 and resumed.device == torch.device("cpu")
    resumed.train_step(real)
    for a, b in zip(straight.generator.state_dict().values(), resumed.generator.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed.history == straight.history


def test_a_longer_run_continues_from_its_checkpoint(tmp_path):
    real = torch.randint(0, 256, (10, 1, 32, 32), dtype=torch.uint8)
    short = gan.WGANGP(TINY, seed=0)
    short.train_step(real)
    short.save(tmp_path / "gan.pt")
    longer = gan.WGANGP(dataclasses.replace(TINY, num_steps=5), seed=0)
    longer.load_state(gan.train.load_checkpoint(tmp_path / "gan.pt"))  # only the length differs
    assert longer.step == 1
    with pytest.raises(ValueError, match="checkpoint made with"):
        gan.WGANGP(dataclasses.replace(TINY, gp_weight=1.0), seed=0).load_state(short.state())


def test_frechet_distance_known_cases():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 3))
    assert gan.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # 1-d: (mu_a - mu_b)^2 + (sd_a - sd_b)^2 for Gaussians.
    x, y = np.array([[0.0], [2.0]]), np.array([[5.0], [9.0]])  # means 1, 7; variances 2, 8
    assert gan.frechet_distance(x, y) == pytest.approx(36 + (np.sqrt(2) - np.sqrt(8)) ** 2)
    with pytest.raises(ValueError):
        gan.frechet_distance(a, a[:, :2])
    # The textbook formula with a matrix square root, on full-rank covariances.
    b = rng.normal(size=(150, 3)) * [1.0, 2.0, 0.5] + [0.3, 0.0, -1.0]
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    textbook = (((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca) + np.trace(cb)
                - 2 * np.trace(linalg.sqrtm(ca @ cb).real))
    assert gan.frechet_distance(a, b) == pytest.approx(textbook, rel=1e-8)


def test_nearest_distances():
    refs = np.array([[0.0, 0.0], [10.0, 0.0]])
    dist, index = gan.nearest_distances(np.array([[1.0, 0.0], [9.0, 1.0]]), refs)
    assert np.allclose(dist, [1.0, np.sqrt(2)]) and list(index) == [0, 1]


def test_features_on_the_model_device():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 3))
    images = np.random.default_rng(0).integers(0, 256, (5, 1, 16, 16), dtype=np.uint8)
    found = gan.features(model, images, size=16, batch_size=2)
    assert found.shape == (5, 3) and found.dtype == np.float64


# --------------------------------------------------------------------------- a GAN run through the lifecycle


@pytest.fixture
def chest(synthetic_root, monkeypatch):
    monkeypatch.setenv("MSTL_DATA_DIR", str(synthetic_root))
    monkeypatch.delenv("MSTL_WEIGHTS_DIR", raising=False)
    profile = config.get_profile("smoke", data="real")
    return profile, stages.prepare_data(RunSpec(name="data", stage="stage1", profile=profile))


def test_gan_spec_identity_folder_and_resume_key(chest):
    profile, _ = chest
    spec = gan.GANSpec("NORMAL", profile, TINY, tasks=["chest_xray"], seed=1)
    assert spec.class_name == "normal" and spec.tasks == ("chest_xray",) and spec.upstream() == ()
    assert spec.keep_state and spec.device == "cpu"
    identity = spec.identity()
    assert identity["gan"] == dataclasses.asdict(TINY) and identity["profile"] == "smoke" and identity["data"] == "real"
    assert str(spec.relpath).startswith("smoke/gan/normal-") and spec.relpath.name == "seed1"
    elsewhere = dataclasses.replace(spec, data_dir="/somewhere")  # a location, not the identity
    assert elsewhere == spec and elsewhere.identity() == identity and elsewhere.relpath == spec.relpath
    # The length is not part of the folder: a longer run continues a shorter one there.
    longer = dataclasses.replace(spec, config=dataclasses.replace(TINY, num_steps=9, checkpoint_every=3))
    assert longer.relpath == spec.relpath
    assert dataclasses.replace(spec, config=dataclasses.replace(TINY, lr=1e-3)).relpath != spec.relpath
    request = lifecycle.requested(spec)
    assert request["inputs"]["n_train_images"] > 0 and len(request["inputs"]["train_images_sha256"]) == 64
    assert spec.resume_key(request) == longer.resume_key(lifecycle.requested(longer))
    assert "num_steps" not in spec.resume_key(request)["gan"]


def test_a_gan_run_trains_once_continues_longer_and_matches_a_straight_run(chest, monkeypatch, tmp_path):
    profile, _ = chest
    monkeypatch.setenv("MSTL_STATE_EVERY", "0")  # save the state at every checkpoint step
    first = gan.train_class_gan(profile, "normal", config=TINY, tasks=("chest_xray",))
    folder = first.run_dir
    assert {"config.json", "metrics.json", "history.csv", lifecycle.STATE_FILE} <= {p.name for p in folder.iterdir()}
    assert first.gan.step == 2 and list(first.history["step"]) == [1, 2] and first.gan.device.type == "cpu"
    assert first.info["n_train_images"] == len(first.real) and first.info["steps"] == 2
    assert first.info["seconds_per_step"] > 0 and first.info["device_type"] == "cpu" and "hardware" in first.info
    assert first.real.dtype == torch.uint8 and first.real.shape[1:] == (1, 32, 32)
    marker = (folder / "metrics.json").read_text()
    again = gan.train_class_gan(profile, "normal", config=TINY, tasks=("chest_xray",))
    assert (folder / "metrics.json").read_text() == marker  # complete with the same settings: reused
    assert np.array_equal(again.gan.sample(3, seed=4), first.gan.sample(3, seed=4))
    # Two more steps continue from the kept state, in the same folder.
    longer = gan.train_class_gan(profile, "normal", config=dataclasses.replace(TINY, num_steps=4),
                                 tasks=("chest_xray",))
    assert longer.run_dir == folder and longer.gan.step == 4
    assert longer.info["resumed_after_epoch"] == 2 and longer.info["steps_this_session"] == 2
    # The same as four steps straight, in another runs folder.
    monkeypatch.setenv("MSTL_RUNS_DIR", str(tmp_path / "straight"))
    straight = gan.train_class_gan(profile, "normal", config=dataclasses.replace(TINY, num_steps=4),
                                   tasks=("chest_xray",))
    assert straight.info["resumed_after_epoch"] is None
    pd.testing.assert_frame_equal(longer.history, straight.history)
    for a, b in zip(longer.gan.generator.state_dict().values(), straight.gan.generator.state_dict().values()):
        assert torch.equal(a, b)
    # A shorter run than the saved state starts again (and ends where the longer one was at its step).
    shorter = gan.train_class_gan(profile, "normal", config=dataclasses.replace(TINY, num_steps=3),
                                  tasks=("chest_xray",))
    assert shorter.run_dir == straight.run_dir and shorter.info["resumed_after_epoch"] is None
    pd.testing.assert_frame_equal(shorter.history, straight.history.iloc[:3])


def test_a_killed_gan_run_continues_from_its_saved_state(chest, monkeypatch, tmp_path):
    profile, _ = chest
    monkeypatch.setenv("MSTL_STATE_EVERY", "0")
    tiny = dataclasses.replace(TINY, num_steps=4)
    train_step = gan.WGANGP.train_step

    def dies_at_step_3(self, real):
        if self.step == 2:
            raise KeyboardInterrupt("killed")
        return train_step(self, real)
    monkeypatch.setattr(gan.WGANGP, "train_step", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        gan.train_class_gan(profile, "normal", config=tiny, tasks=("chest_xray",))
    monkeypatch.setattr(gan.WGANGP, "train_step", train_step)
    resumed = gan.train_class_gan(profile, "normal", config=tiny, tasks=("chest_xray",))
    assert resumed.info["resumed_after_epoch"] == 2
    monkeypatch.setenv("MSTL_RUNS_DIR", str(tmp_path / "straight"))
    straight = gan.train_class_gan(profile, "normal", config=tiny, tasks=("chest_xray",))
    pd.testing.assert_frame_equal(resumed.history, straight.history)


def test_class_images_are_training_images_of_every_task_with_the_class(chest):
    profile, stage_data = chest
    images, files, root = gan.class_images(profile, "NORMAL", image_size=32, tasks=("chest_xray", "chest_xray3"))
    table = stage_data.table
    normal_train = set(table.loc[(table["part"] == "train") & (table["label"] == 0), "path"])
    assert set(files) <= normal_train and len(files) == len(images) and images.shape[1:] == (1, 32, 32)
    with pytest.raises(ValueError, match="no images"):
        gan.class_images(profile, "viral", image_size=32, tasks=("chest_xray",))


# --------------------------------------------------------------------------- generated images and balancing


def test_generated_images_join_the_training_part_only(chest, tmp_path):
    profile, stage_data = chest
    images = {"NORMAL": np.full((3, 1, 32, 32), 200, np.uint8)}
    folder = generated.write_folder(tmp_path / "generated", images, info={"test": True})
    assert len(generated.read_manifest(folder)) == 3
    added = generated.add_to_train(stage_data, folder)
    new = added.table.iloc[len(stage_data.table):]
    assert (new["part"] == "train").all() and (new["split"] == generated.SPLIT).all() and (new["label"] == 0).all()
    for part in ("val", "test"):  # untouched
        assert added.table[added.table["part"] == part]["path"].tolist() == \
            stage_data.table[stage_data.table["part"] == part]["path"].tolist()
    assert added.images.shape[0] == len(added.table) and added.images.shape[-1] == stage_data.images.shape[-1]
    # A changed file is caught by the manifest.
    (folder / "NORMAL" / "gan_normal_00000.png").write_bytes(b"changed")
    with pytest.raises(data.DataFormatError, match="changed"):
        generated.add_to_train(stage_data, folder)


def test_class_weights_and_oversampling(chest):
    _, stage_data = chest
    table = stage_data.table
    drop = table.index[(table["part"] == "train") & (table["label"] == 0)][:3]  # make class 0 smaller
    keep = np.flatnonzero(~table.index.isin(drop))
    unequal = dataclasses.replace(stage_data, table=table.iloc[keep].reset_index(drop=True),
                                  images=stage_data.images[torch.from_numpy(keep)])
    counts = generated.train_counts(unequal).to_numpy()
    assert counts[0] < counts[1]
    weights = generated.class_weights(unequal)
    assert torch.allclose(weights, torch.tensor(counts.sum() / (2 * counts), dtype=torch.float32))
    # Each class carries the same total weight.
    assert (weights * torch.tensor(counts, dtype=torch.float32)).tolist() == pytest.approx([counts.sum() / 2] * 2)
    balanced = generated.oversample(unequal, seed=0)
    assert list(generated.train_counts(balanced)) == [counts.max()] * 2
    added = balanced.table.iloc[len(unequal.table):]
    assert (added["label"] == 0).all() and added["path"].isin(unequal.table["path"]).all()  # its own images again
    assert (balanced.table["part"] == "val").sum() == (unequal.table["part"] == "val").sum()
    assert generated.balancing_counts(balanced) == {"NORMAL": 0, "PNEUMONIA": 0}


def test_a_stage_run_records_new_options_only_when_used(chest, tmp_path):
    profile, stage_data = chest
    plain = RunSpec(name="aug", stage="stage1", profile=profile).settings()
    assert "balance" not in plain and "synthetic" not in plain  # earlier runs keep their folders
    folder = generated.write_folder(tmp_path / "generated", {"NORMAL": np.zeros((2, 1, 32, 32), np.uint8)}, info={})
    spec = RunSpec(name="aug", stage="stage1", profile=profile, synthetic_dir=folder, balance="class_weights")
    [run] = executors.run_specs([spec], workers=1)
    config_json = json.loads((run.run_dir / "config.json").read_text())
    assert config_json["balance"] == "class_weights" and config_json["synthetic"] == "generated"
    assert config_json["inputs"]["synthetic_sha256"] == generated.folder_sha256(folder)
    balancing = run.metrics["provenance"]["balancing"]
    assert balancing["n_generated"] == 2 and len(balancing["class_weights"]) == 2
    assert len(run.predictions) == (stage_data.table["part"] == "test").sum()  # test part: real images only
    assert lifecycle.is_complete(spec)
    with pytest.raises(ValueError, match="balance"):
        RunSpec(name="x", stage="stage1", profile=profile, balance="smote")


# --------------------------------------------------------------------------- the chapter's runs


def test_stage1_variants_share_the_real_only_runs_of_other_chapters(tmp_path):
    profile = config.get_profile("smoke")
    bridge = gan.stage1_spec(profile, "chest_xray", "none", seed=2)
    assert bridge == protocol.bridge_spec(profile, seed=2)
    assert bridge.relpath == protocol.bridge_spec(profile, seed=2).relpath
    three = gan.stage1_spec(profile, "chest_xray3", "none", seed=0)
    assert three.name == "chain_imagenet-chest_xray3" and three.dataset == "chest_xray3" and three.init == "imagenet"
    from mstl_utils.experiments import chain

    assert three == chain.link_specs(profile, "imagenet -> chest_xray3 -> head_ct", seed=0)[0]
    weighted = gan.stage1_spec(profile, "chest_xray3", "class_weights")
    assert weighted.name == "aug_chest_xray3_class_weights" and weighted.balance == "class_weights"
    assert weighted.synthetic_dir is None and weighted.stage == "stage1" and weighted.dataset == "chest_xray3"
    assert gan.stage1_spec(profile, "chest_xray", "oversample").balance == "oversample"
    with pytest.raises(ValueError, match="synthetic_dir"):
        gan.stage1_spec(profile, "chest_xray", "synthetic")
    folder = tmp_path / "synthetic_chest_xray_seed0"
    synthetic = gan.stage1_spec(profile, "chest_xray", "synthetic", synthetic_dir=folder)
    assert synthetic.balance is None and synthetic.settings()["synthetic"] == "synthetic_chest_xray_seed0"
    with pytest.raises(ValueError, match="augmentation"):
        gan.run_name("chest_xray", "smote")


def test_fold_specs_carry_a_variant_through_every_fold():
    profile = config.get_profile("smoke")
    start = gan.stage1_spec(profile, "chest_xray", "class_weights")
    folds = pd.DataFrame({"image_id": [f"{i:03d}" for i in range(6)] * 2, "label": [0, 1] * 6,
                          "repeat": [0] * 6 + [1] * 6, "fold": [0, 1, 2] * 4})
    specs = gan.fold_specs(profile, start, folds)
    assert len(specs) == len(protocol.splits(folds)) == 6
    assert all(s.name == "cv_aug_chest_xray_class_weights" and s.init == start and s.stage == "stage2" for s in specs)
    assert [s.seed for s in specs] == [s.split.repeat for s in specs]  # as the protocol's arms
    multistage = [r.spec for r in protocol.plan(profile, folds, arms=("multistage",))]
    assert [s.split for s in specs] == [s.split for s in multistage]


def test_minority_classes_and_gan_specs():
    profile = config.get_profile("smoke")
    assert gan.minority_classes(("chest_xray", "chest_xray3")) == {"normal": ("chest_xray", "chest_xray3"),
                                                                   "viral": ("chest_xray3",)}
    specs = gan.gan_specs(profile, TINY, tasks=("chest_xray3",), seed=4)
    assert [(s.class_name, s.tasks, s.seed) for s in specs] == [("normal", ("chest_xray3",), 4),
                                                                 ("viral", ("chest_xray3",), 4)]
    with pytest.raises(ValueError, match="minority"):
        gan.minority_classes(("head_ct",))


def fake_result(**changes) -> gan.GANResult:
    values = dict(profile=config.get_profile("smoke"), config=TINY, seed=0, tasks=("chest_xray", "chest_xray3"),
                  augmentations=("none", "class_weights", "synthetic"), stage2_augmentations=("synthetic",),
                  carried=(), skip_runs=(("chest_xray", "synthetic"),), minority={"normal": ("chest_xray",),
                                                                                   "viral": ("chest_xray3",)},
                  gans={}, quality=[{"class": "normal", "n_per_set": 5, "fd_generated": 30.0, "fd_real": 10.0,
                                     "nn_generated_median": 4.0, "nn_held_out_median": 5.0, "n_held_out": 3}],
                  folders={}, stage1={}, folds=[], baseline=[],
                  recalls={("chest_xray3", "none"): {"bacterial": 0.9, "normal": 0.5, "viral": 0.25},
                           ("chest_xray3", "synthetic"): {"bacterial": 0.8, "normal": 0.6125, "viral": 0.3}})
    values.update(changes)
    return gan.GANResult(**values)


def test_verdict_lines_from_the_numbers():
    result = fake_result()
    tests = pd.DataFrame([{"task": "chest_xray3", "augmentation": "class_weights", "diff": 0.05, "ci_low": 0.01,
                           "ci_high": 0.09, "only_this_right": 9, "only_baseline_right": 2, "p_value": 0.0004,
                           "n": 100}], columns=gan.TEST_COLUMNS)
    lines = gan.verdict(result, {"gan_tests.csv": tests, "gan_stage2_tests.csv": pd.DataFrame()}).split("\n")
    assert lines[0] == ("- **chest_xray3, class_weights** against real images only: accuracy +5.0 percentage points "
                        "(95 % CI +1.0 to +9.0, McNemar p < 0.001): better.")
    # Recalls are numbers in the result (never parsed back from gan.csv's text).
    assert lines[1] == ("- **chest_xray3, recall of the classes given generated images** (real only -> with generated "
                        "images): normal 0.500 -> 0.613, viral 0.250 -> 0.300.")
    assert lines[2].startswith("- **Generated normal images**: Frechet distance 30.0 against 10.0") \
        and "3.0 times the floor" in lines[2] and "0.80 times" in lines[2] and "possible copying" in lines[2]
    assert "- **chest_xray, synthetic**: not run (left out by the `skip_runs` parameter): not measured." in lines
    assert ("- **Head CT, bridge aug_chest_xray_class_weights**: not run (not in `stage2_augmentations`): "
            "not measured.") in lines
    assert ("- **Head CT, bridge aug_chest_xray_synthetic**: not run (its stage-1 run is left out by the "
            "`skip_runs` parameter): not measured.") in lines
    values = gan.glue_values(result, {"gan_tests.csv": tests})
    assert values["gan_chest_xray3_class_weights_diff"] == pytest.approx(5.0)
    assert values["gan_chest_xray3_class_weights_ci"] == "+1.0 to +9.0"
    assert values["gan_fd_normal"] == 30.0 and values["gan_fd_real_normal"] == 10.0
    assert values["gan_nn_ratio_normal"] == pytest.approx(0.8)
    assert values["gan_n_folds"] == 0 and values["gan_steps"] == TINY.num_steps and values["gan_seed"] == 0


def test_unknown_settings_of_the_chapter_are_refused():
    profile = config.get_profile("smoke")
    with pytest.raises(ValueError, match="augmentations"):
        gan.run(profile, TINY, augmentations=("none", "smote"))
    with pytest.raises(ValueError, match="multistage"):
        gan.run(profile, TINY, stage2_augmentations=("none",))
    with pytest.raises(ValueError, match="no GAN settings"):
        gan.get_plan("huge")
    assert gan.get_plan("smoke", num_steps=None) == gan.PLANS["smoke"] == gan.get_config("smoke")


@pytest.mark.slow
def test_the_chapter_runs_and_reports_in_the_smoke_profile(monkeypatch):
    """GAN, quality, the 2-class variants and their folds beside multistage; every table and glue key."""
    profile = config.get_profile("smoke")
    result = gan.run(profile, gan.get_config("smoke"), tasks=["chest_xray"], augmentations=["none", "class_weights"],
                     stage2_augmentations=["class_weights"])
    assert set(result.gans) == {"normal"} and result.gans["normal"].gan.step == 3
    assert set(result.stage1) == {("chest_xray", "none"), ("chest_xray", "class_weights")}
    assert result.stage1["chest_xray", "none"].run_dir.parent.name.startswith("stage1-")  # the protocol's bridge
    tables = gan.tables(result)
    assert list(tables) == ["gan.csv", "gan_quality.csv", "gan_tests.csv", "gan_folds.csv", "gan_stage2_tests.csv"]
    assert list(tables["gan.csv"].columns) == gan.RESULT_COLUMNS and len(tables["gan.csv"]) == 2
    assert list(tables["gan_quality.csv"].columns) == gan.QUALITY_COLUMNS and len(tables["gan_quality.csv"]) == 2
    assert list(tables["gan_tests.csv"].columns) == gan.TEST_COLUMNS and len(tables["gan_tests.csv"]) == 1
    assert set(tables["gan_folds.csv"]["arm"]) == {"aug_chest_xray_class_weights"}
    assert len(tables["gan_folds.csv"]) == len(result.baseline) == profile.cv_folds * profile.cv_repeats
    assert set(tables["gan_stage2_tests.csv"]["arm_a"]) == {"aug_chest_xray_class_weights"}
    values = gan.glue_values(result, tables)
    assert {"gan_image_size", "gan_feature_network", "gan_fd_normal", "gan_fd_real_normal", "gan_nn_ratio_normal",
            "gan_seed", "gan_chest_xray_class_weights_diff", "gan_chest_xray_class_weights_ci",
            "gan_chest_xray_class_weights_p", "gan_n_folds", "gan_minutes", "gan_steps", "gan_device",
            "gan_run_minutes"} == set(values)
    assert values["gan_device"] == "the CPU" and values["gan_steps"] == 3
    text = gan.verdict(result, tables)
    assert "**Head CT, bridge aug_chest_xray_class_weights** against the real-only bridge" in text
    assert result.recalls["chest_xray", "none"].keys() == {"NORMAL", "PNEUMONIA"}
    assert gan.training_counts(result).shape[0] == 2 and len(gan.gan_overview(result)) == 1
    assert len(gan.sample_figures(result)) == len(gan.neighbour_figures(result)) == 1
    gan.loss_curves(result.gans)
