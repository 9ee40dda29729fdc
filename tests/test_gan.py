"""The WGAN-GP, the quality measures, generated-image folders and class balancing."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from scipy import linalg
from torch import nn

from mstl_utils.core import config
from mstl_utils import data
from mstl_utils.experiments import gan
from mstl_utils.data import generated
from mstl_utils.engine import stages

TINY = gan.GANConfig(image_size=32, width=4, latent_dim=8, batch_size=4, num_steps=2, checkpoint_every=1)


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


def test_checkpoint_round_trip_continues_identically(tmp_path):
    real = torch.randint(0, 256, (10, 1, 32, 32), dtype=torch.uint8)
    straight = gan.WGANGP(TINY, seed=0)
    straight.train_step(real)
    straight.save(tmp_path / "gan.pt")
    straight.train_step(real)
    resumed = gan.WGANGP.load(tmp_path / "gan.pt")
    assert resumed.step == 1 and len(resumed.history) == 1
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


@pytest.fixture
def chest(synthetic_root, monkeypatch):
    monkeypatch.setenv("MSTL_DATA_DIR", str(synthetic_root))
    monkeypatch.delenv("MSTL_WEIGHTS_DIR", raising=False)
    profile = config.get_profile("smoke", data="real")
    return profile, stages.prepare_data(profile, "stage1", seed=0)


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


def test_run_stage_records_new_options_only_when_used(chest, tmp_path):
    profile, stage_data = chest
    plain = stages.settings(profile, "stage1", "stage1", "imagenet", 0, 0, None, None)
    assert "balance" not in plain and "synthetic" not in plain  # earlier runs stay valid
    folder = generated.write_folder(tmp_path / "generated", {"NORMAL": np.zeros((2, 1, 32, 32), np.uint8)}, info={})
    run = stages.run_stage("aug", profile, stage="stage1", init_from="imagenet", synthetic_dir=folder,
                           balance="class_weights", progress=False)
    config_json = json.loads((run.run_dir / "config.json").read_text())
    assert config_json["balance"] == "class_weights" and len(config_json["synthetic"]["sha256"]) == 64
    balancing = run.metrics["provenance"]["balancing"]
    assert balancing["n_generated"] == 2 and len(balancing["class_weights"]) == 2
    assert len(run.predictions) == (stage_data.table["part"] == "test").sum()  # test part: real images only
    assert stages.is_complete("aug", profile, stage="stage1", init_from="imagenet", synthetic_dir=folder,
                              balance="class_weights")
    with pytest.raises(ValueError, match="balance"):
        stages.settings(profile, "x", "stage1", "imagenet", 0, 0, None, None, balance="smote")
