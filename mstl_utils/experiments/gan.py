"""A Wasserstein GAN with gradient penalty (Gulrajani et al. 2017) for minority-class chest X-rays.

One generator per class (the class's training images only: never its validation or
test images), DCGAN-shaped networks, the paper's settings (Adam 1e-4, betas (0, 0.9),
penalty weight 10, 5 critic steps per generator step). A class's run lives in

    runs/<profile>/gan/<task>_<class>/seed<k>/
        config.json   what was asked (GANConfig, the training images' sha256)
        history.csv   per generator step: critic loss, Wasserstein estimate, penalty, generator loss
        gan.pt        generator + critic + optimisers + random state; written atomically every
                      ``checkpoint_every`` steps, so a killed run continues where it stopped
        done.json     written last: marks a complete run

The quality checks (``frechet_distance``, ``nearest_distances``) use the pooled features of
the project's ImageNet MobileNetV2: a Frechet distance in that feature space, which is NOT
the standard FID (Inception-v3 features, not available offline here); its values are only
comparable with each other, e.g. with the same distance between two halves of the real data.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import linalg
from torch import nn
from torch.nn import functional as F

from ..data import generated
from ..models import registry as models
from ..core import paths, repro
from ..engine import stages, train
from ..report import statistics
from ..core.config import Profile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GANConfig:
    """Settings of one class's WGAN-GP (defaults: the paper's, at a CPU-sized resolution)."""

    image_size: int = 64  # square side of generated images; a power of two >= 16
    latent_dim: int = 128  # length of the noise vector z
    width: int = 32  # channels of the critic's first / generator's last hidden layer (DCGAN's ndf/ngf)
    num_steps: int = 1000  # generator steps
    n_critic: int = 5  # critic steps per generator step
    gp_weight: float = 10.0  # lambda of the gradient penalty
    lr: float = 1e-4  # Adam learning rate of both networks
    beta1: float = 0.0  # Adam betas (0, 0.9) as in the paper
    beta2: float = 0.9
    batch_size: int = 64  # images per critic / generator step
    checkpoint_every: int = 100  # generator steps between resumable checkpoints


#: The GAN settings of each profile: seconds for tests, a CPU budget, and a GPU-sized run.
GAN_PROFILES = {
    "smoke": GANConfig(image_size=32, width=4, num_steps=3, batch_size=8, checkpoint_every=2),
    # 1-3 s per generator step at 64 px on the shared 2-core CPU (two classes side by side): 400 steps fit the budget.
    "quick": GANConfig(image_size=64, width=16, num_steps=400),
    "paper": GANConfig(image_size=128, width=64, num_steps=5000),
}


def get_config(profile: str, **changes: Any) -> GANConfig:
    """The GAN settings of ``profile`` (a profile name), with changes; None values are ignored."""
    if profile not in GAN_PROFILES:
        raise ValueError(f"no GAN settings for profile {profile!r}; expected one of {sorted(GAN_PROFILES)}")
    return dataclasses.replace(GAN_PROFILES[profile], **{k: v for k, v in changes.items() if v is not None})


def _levels(image_size: int) -> int:
    """Stride-2 layers between 4 x 4 and ``image_size``."""
    levels = math.log2(image_size) - 2
    if image_size < 16 or levels != int(levels):
        raise ValueError(f"image_size={image_size}; expected a power of two >= 16 (16, 32, 64, 128, ...)")
    return int(levels)


class Generator(nn.Module):
    """z ``[N, latent_dim]`` -> grey image ``[N, 1, S, S]`` in [-1, 1]: DCGAN transposed convolutions."""

    def __init__(self, *, image_size: int = 64, latent_dim: int = 128, width: int = 32):
        super().__init__()
        levels = _levels(image_size)
        channels = [width * 2 ** k for k in reversed(range(levels))]  # e.g. 256, 128, 64, 32 at 64 px
        layers: list[nn.Module] = [nn.ConvTranspose2d(latent_dim, channels[0], 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(channels[0]), nn.ReLU(True)]
        for c_in, c_out in zip(channels, channels[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(channels[-1], 1, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.latent_dim = latent_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(len(z), -1, 1, 1))


class Critic(nn.Module):
    """Image ``[N, 1, S, S]`` -> score ``[N]``. No batch norm: the gradient penalty is per image,
    and batch norm would couple the images of a batch (the paper's advice); layer norm instead
    (``GroupNorm`` with one group: normalised over channels and pixels, affine per channel)."""

    def __init__(self, *, image_size: int = 64, width: int = 32):
        super().__init__()
        levels = _levels(image_size)
        channels = [width * 2 ** k for k in range(levels)]  # e.g. 32, 64, 128, 256 at 64 px
        layers: list[nn.Module] = [nn.Conv2d(1, channels[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for c_in, c_out in zip(channels, channels[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.GroupNorm(1, c_out), nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(channels[-1], 1, 4, 1, 0)]  # 4 x 4 -> one number, no sigmoid
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(len(x))


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """``E[(||grad_x critic(x)||_2 - 1)^2]`` at random points ``x`` between real and fake images
    (one mixing weight per image), differentiable with respect to the critic's weights."""
    eps = torch.rand(len(real), *([1] * (real.dim() - 1)), generator=generator, dtype=real.dtype)
    mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [-1, 1] (the generator's tanh range)."""
    return images.float().div(127.5).sub(1)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    return images.detach().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


#: Settings that change how long a run is, not what it computes up to a step: a run continues
#: from its checkpoint when only these changed (train longer, or stop sooner than planned).
LENGTH_FIELDS = ("num_steps", "checkpoint_every")


def _trajectory(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in LENGTH_FIELDS}


class WGANGP:
    """The two networks, their optimisers and the random generator every draw comes from."""

    def __init__(self, config: GANConfig, *, seed: int = 0):
        self.config = config
        torch.manual_seed(seed)  # the initial weights
        self.generator = Generator(image_size=config.image_size, latent_dim=config.latent_dim, width=config.width)
        self.critic = Critic(image_size=config.image_size, width=config.width)
        betas = (config.beta1, config.beta2)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=config.lr, betas=betas)
        self.opt_c = torch.optim.Adam(self.critic.parameters(), lr=config.lr, betas=betas)
        self.rng = torch.Generator().manual_seed(seed)  # batches, noise, penalty mixing weights
        self.step = 0
        self.history: list[dict[str, float]] = []

    def noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.config.latent_dim, generator=self.rng)

    def train_step(self, real_images: torch.Tensor) -> dict[str, float]:
        """``n_critic`` critic steps and one generator step on batches drawn (with replacement)
        from ``real_images`` (uint8 ``[N, 1, S, S]``); returns this step's losses."""
        cfg = self.config
        self.generator.train()
        self.critic.train()
        for _ in range(cfg.n_critic):
            idx = torch.randint(len(real_images), (cfg.batch_size,), generator=self.rng)
            real = to_unit(real_images[idx])
            with torch.no_grad():
                fake = self.generator(self.noise(cfg.batch_size))
            gap = self.critic(real).mean() - self.critic(fake).mean()  # the Wasserstein estimate
            penalty = gradient_penalty(self.critic, real, fake, self.rng)
            critic_loss = -gap + cfg.gp_weight * penalty
            self.opt_c.zero_grad(set_to_none=True)
            critic_loss.backward()
            self.opt_c.step()
        for p in self.critic.parameters():  # no critic gradients during the generator step
            p.requires_grad_(False)
        generator_loss = -self.critic(self.generator(self.noise(cfg.batch_size))).mean()
        self.opt_g.zero_grad(set_to_none=True)
        generator_loss.backward()
        self.opt_g.step()
        for p in self.critic.parameters():
            p.requires_grad_(True)
        self.step += 1
        row = {"step": self.step, "critic_loss": critic_loss.item(), "wasserstein": gap.item(),
               "penalty": penalty.item(), "generator_loss": generator_loss.item()}
        self.history.append(row)
        return row

    @torch.no_grad()
    def sample(self, n: int, *, seed: int = 0, batch_size: int = 256) -> np.ndarray:
        """``n`` generated images, uint8 ``[n, 1, S, S]``, from their own seed (training's draws untouched)."""
        self.generator.eval()  # batch norm with its running statistics
        rng = torch.Generator().manual_seed(seed)
        parts = [self.generator(torch.randn(min(batch_size, n - i), self.config.latent_dim, generator=rng))
                 for i in range(0, n, batch_size)]
        size = self.config.image_size
        return to_uint8(torch.cat(parts)) if parts else np.zeros((0, 1, size, size), np.uint8)

    def state(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "step": self.step, "history": list(self.history),
                "generator": self.generator.state_dict(), "critic": self.critic.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_c": self.opt_c.state_dict(),
                "rng": self.rng.get_state(), "torch_rng": torch.get_rng_state()}

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: same settings, except perhaps the run's length (``LENGTH_FIELDS``)."""
        if _trajectory(state["config"]) != _trajectory(asdict(self.config)) or state["step"] > self.config.num_steps:
            raise ValueError(f"checkpoint made with {state['config']}; this GAN has {asdict(self.config)}")
        self.generator.load_state_dict(state["generator"])
        self.critic.load_state_dict(state["critic"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_c.load_state_dict(state["opt_c"])
        self.rng.set_state(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.history = state["step"], list(state["history"])

    def save(self, path: str | Path) -> Path:
        return train.save_checkpoint(path, self.state())

    @classmethod
    def load(cls, path: str | Path) -> "WGANGP":
        state = train.load_checkpoint(path)
        gan = cls(GANConfig(**state["config"]))
        gan.load_state(state)
        return gan


# --------------------------------------------------------------------------- one class's run


#: Which classes each chest X-ray task treats as minorities, and the tasks sharing a class's images.
MINORITY = {"chest_xray": ("NORMAL",), "chest_xray3": ("normal", "viral")}


@dataclass
class GANRun:
    """A class's trained GAN, read back or just trained, with the real images it learned from."""

    class_name: str  # lower case: "normal", "viral"
    run_dir: Path
    gan: WGANGP
    history: pd.DataFrame
    real: torch.Tensor  # the class's training images at the GAN's size, uint8 [N, 1, S, S]
    info: dict[str, Any]  # done.json: steps, seconds, hardware


def class_images(profile: Profile, class_name: str, *, image_size: int, seed: int = 0,
                 tasks: tuple[str, ...] = ("chest_xray", "chest_xray3"), part: str = "train",
                 data_dir: str | Path | None = None) -> tuple[torch.Tensor, list[str], Path]:
    """The images of ``class_name`` in the ``part`` (training by default) of EVERY task in ``tasks``
    that has the class (their validation and test parts differ; the intersection keeps any generated
    image away from each task's validation and test images), decoded at ``image_size``: (uint8
    images, paths, the dataset's root)."""
    keep: set[str] | None = None
    images: dict[str, torch.Tensor] = {}
    for task in tasks:
        task_profile = profile.replace(image_size=image_size, stage1={"dataset": task})
        stage_data = stages.prepare_data(task_profile, "stage1", seed=seed, data_dir=data_dir)
        names = [c.lower() for c in stage_data.class_names]
        if class_name.lower() not in names:
            continue
        table = stage_data.table
        rows = np.flatnonzero((table["part"] == part).to_numpy()
                              & (table["label"] == names.index(class_name.lower())).to_numpy())
        paths_here = table["path"].to_numpy()[rows]
        images.update(zip(paths_here, stage_data.images[torch.from_numpy(rows)]))
        keep = set(paths_here) if keep is None else keep & set(paths_here)
        root = stage_data.source.root
    if not keep:
        raise ValueError(f"class {class_name!r}: no images in the {part} part of tasks {tasks}")
    ordered = sorted(keep)
    return torch.stack([images[p] for p in ordered]), ordered, root


def _write_json(path: Path, value: Any) -> None:
    repro.atomic_write(path, lambda tmp: tmp.write_text(json.dumps(value, indent=2, sort_keys=True, default=str)))


def _requested(profile: Profile, class_name: str, config: GANConfig, seed: int, tasks: tuple[str, ...],
               files: list[str], root: Path) -> dict[str, Any]:
    return json.loads(json.dumps({
        "class_name": class_name, "tasks": list(tasks), "seed": seed, "gan": asdict(config),
        "profile": profile.name, "data": profile.data, "n_train_images": len(files),
        "train_images_sha256": repro.fingerprint(files, root),
    }))


def _continues(previous: dict[str, Any], requested: dict[str, Any]) -> bool:
    """True when a run asked as ``previous`` can be continued as ``requested`` (only its length differs)."""
    return ({**previous, "gan": _trajectory(previous["gan"])} == {**requested, "gan": _trajectory(requested["gan"])})


def train_class_gan(profile: Profile, class_name: str, *, config: GANConfig = GANConfig(), seed: int = 0,
                    tasks: tuple[str, ...] = ("chest_xray", "chest_xray3"), data_dir: str | Path | None = None,
                    runs_root: str | Path | None = None, force: bool = False) -> GANRun:
    """Train (or reuse, or continue) the WGAN-GP of one class in ``runs/<profile>/gan/<class>/seed<k>``."""
    class_name = class_name.lower()
    real, files, root = class_images(profile, class_name, image_size=config.image_size, seed=seed, tasks=tasks,
                               data_dir=data_dir)
    run_dir = paths.runs_dir(runs_root) / profile.name / "gan" / class_name / f"seed{seed}"
    requested = _requested(profile, class_name, config, seed, tasks, files, root)
    checkpoint, done = run_dir / "gan.pt", run_dir / "done.json"
    previous = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else None
    same = previous == requested
    gan = WGANGP(config, seed=seed)
    state = train.load_checkpoint(checkpoint) if previous and not force and checkpoint.is_file() else None
    if state is not None and not same and _continues(previous, requested) and state["step"] <= config.num_steps:
        log.info("%s: only the length changed (%d -> %d steps); continuing from step %d", paths.relative(run_dir),
                 previous["gan"]["num_steps"], config.num_steps, state["step"])
        done.unlink(missing_ok=True)
        _write_json(run_dir / "config.json", requested)
        same = True
    if same and state is not None:
        gan.load_state(state)
        if done.is_file():
            log.info("%s: complete with the same settings, reused", paths.relative(run_dir))
            return GANRun(class_name, run_dir, gan, pd.DataFrame(gan.history), real, json.loads(done.read_text()))
        log.info("%s: continuing after step %d/%d", paths.relative(run_dir), gan.step, config.num_steps)
    else:
        done.unlink(missing_ok=True)
        _write_json(run_dir / "config.json", requested)
    started, clock, first = repro.now(), time.perf_counter(), gan.step
    while gan.step < config.num_steps:
        row = gan.train_step(real)
        if gan.step % config.checkpoint_every == 0 or gan.step == config.num_steps:
            gan.save(checkpoint)
            log.info("%s step %d/%d  critic %.3f  W %.3f  gp %.3f  G %.3f", class_name, gan.step, config.num_steps,
                     row["critic_loss"], row["wasserstein"], row["penalty"], row["generator_loss"])
    history = pd.DataFrame(gan.history)
    repro.atomic_write(run_dir / "history.csv", lambda tmp: history.to_csv(tmp, index=False))
    seconds = time.perf_counter() - clock
    info = {"steps": gan.step, "steps_this_session": gan.step - first, "seconds_this_session": seconds,
            "seconds_per_step": seconds / max(1, gan.step - first), "started": started, "finished": repro.now(),
            "n_train_images": len(files), "num_threads": torch.get_num_threads(), "hardware": repro.hardware()}
    _write_json(done, info)
    return GANRun(class_name, run_dir, gan, history, real, info)


# --------------------------------------------------------------------------- judging the images

#: The network whose pooled features the quality checks use (NOT Inception-v3: not the standard FID).
FEATURE_NETWORK = "mobilenet_v2 (ImageNet, pooled 1280-d features)"


def feature_model(*, weights_dir: str | Path | None = None, allow_random: bool = False) -> tuple[nn.Module, Any]:
    """The project's ImageNet MobileNetV2 without its classifier: grey image -> 1280 pooled features."""
    model, weights = models.build_model("mobilenet_v2", num_classes=1, init="imagenet", weights_dir=weights_dir,
                                        allow_random=allow_random)
    model.backbone.classifier = nn.Identity()  # torchvision's MobileNetV2: pooling, then the classifier
    return model.eval(), weights


@torch.no_grad()
def features(model: nn.Module, images: torch.Tensor | np.ndarray, *, size: int = 128,
             batch_size: int = 128) -> np.ndarray:
    """Pooled features ``[N, D]`` (float64) of uint8 grey images, resized to ``size`` (bilinear)."""
    images = torch.as_tensor(np.asarray(images))
    parts = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].float().div(255)
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        parts.append(model(x).double())
    return torch.cat(parts).numpy() if parts else np.zeros((0, 0))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets ``[N, D]``:
    ``|mu_a - mu_b|^2 + Tr(C_a) + Tr(C_b) - 2 Tr((C_a C_b)^(1/2))`` (the FID formula, any features).

    With centred features A and B, ``C_a C_b`` has the eigenvalues of ``(A B^T)(A B^T)^T`` scaled,
    so ``Tr((C_a C_b)^(1/2))`` is the sum of the singular values of ``A B^T`` over
    ``sqrt((n_a - 1)(n_b - 1))``: exact, real, and an ``n_a x n_b`` problem instead of a
    ``D x D`` matrix square root (1280 x 1280 here)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"feature sets of shape {a.shape} and {b.shape}: expected [N >= 2, D] with the same D")
    mu = a.mean(0) - b.mean(0)
    centred_a, centred_b = a - a.mean(0), b - b.mean(0)
    trace_a = (centred_a ** 2).sum() / (len(a) - 1)
    trace_b = (centred_b ** 2).sum() / (len(b) - 1)
    cross = linalg.svdvals(centred_a @ centred_b.T).sum() / np.sqrt((len(a) - 1) * (len(b) - 1))
    return float(mu @ mu + trace_a + trace_b - 2 * cross)


def nearest_distances(queries: np.ndarray, references: np.ndarray, *, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance from each query row to its nearest reference row, and that row's index."""
    refs = torch.as_tensor(np.asarray(references, dtype=np.float64))
    dist, index = [], []
    for i in range(0, len(queries), chunk):
        d = torch.cdist(torch.as_tensor(np.asarray(queries[i:i + chunk], dtype=np.float64)), refs)
        best = d.min(1)
        dist.append(best.values)
        index.append(best.indices)
    return torch.cat(dist).numpy(), torch.cat(index).numpy()


#: Columns of ``gan_quality.csv`` (the results contract).
QUALITY_COLUMNS = ["class", "image_size", "frechet_distance", "feature_network", "nn_distance_median"]


def quality(run: GANRun, held_out: torch.Tensor, model: nn.Module, *, feature_size: int = 128,
            seed: int = 0) -> dict[str, Any]:
    """How far the class's generated images are from its real ones, with real-data references.

    The real training images are split at random into halves A and B (h images each);
    ``fd_generated`` = FD(h generated, A), ``fd_real`` = FD(B, A): the floor that finite
    samples of the same distribution give. Memorisation: each generated image's distance to
    its nearest real training image, against the same for ``held_out`` real images of the class
    (never seen by the GAN); generated images much closer than held-out ones would be copies.
    """
    order = np.random.default_rng(seed).permutation(len(run.real))
    half = len(order) // 2
    real_features = features(model, run.real, size=feature_size)
    fake = run.gan.sample(half, seed=seed + 1)
    fake_features = features(model, fake, size=feature_size)
    a, b = real_features[order[:half]], real_features[order[half:2 * half]]
    nn_fake, nn_index = nearest_distances(fake_features, real_features)
    nn_held, _ = nearest_distances(features(model, held_out, size=feature_size), real_features)
    return {"class": run.class_name, "image_size": run.gan.config.image_size, "n_per_set": half,
            "fd_generated": frechet_distance(fake_features, a), "fd_real": frechet_distance(b, a),
            "nn_generated_median": float(np.median(nn_fake)), "nn_held_out_median": float(np.median(nn_held)),
            "n_held_out": len(held_out), "fake": fake, "nn_fake": nn_fake, "nn_index": nn_index}


def quality_table(found: list[dict[str, Any]]) -> pd.DataFrame:
    """``gan_quality.csv``: per class a row for the generated images and a reference row for real
    ones (``<class> (real reference)``: FD between the two real halves, held-out nearest distance)."""
    rows = []
    for q in found:
        rows.append({"class": q["class"], "image_size": q["image_size"], "frechet_distance": q["fd_generated"],
                     "feature_network": FEATURE_NETWORK, "nn_distance_median": q["nn_generated_median"]})
        rows.append({"class": f"{q['class']} (real reference)", "image_size": q["image_size"],
                     "frechet_distance": q["fd_real"], "feature_network": FEATURE_NETWORK,
                     "nn_distance_median": q["nn_held_out_median"]})
    return pd.DataFrame(rows, columns=QUALITY_COLUMNS)


# --------------------------------------------------------------------------- the augmentation experiment

#: Stage-1 variants: ``none`` (real images only), the cheap baselines, and real + generated images.
AUGMENTATIONS = ("none", "class_weights", "oversample", "synthetic")

#: The existing real-only stage-1 run of each task (the 2-class bridge; the chain chapter's 3-class link).
REAL_ONLY_RUN = {"chest_xray": "stage1", "chest_xray3": "chain_imagenet-chest_xray3"}


def task_profile(profile: Profile, task: str) -> Profile:
    return profile.replace(stage1={"dataset": task})


def run_name(task: str, augmentation: str) -> str:
    """The stage-1 run of ``task`` with ``augmentation`` (``none``: the existing real-only run)."""
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation={augmentation!r}; expected one of {AUGMENTATIONS}")
    return REAL_ONLY_RUN[task] if augmentation == "none" else f"aug_{task}_{augmentation}"


def synthetic_folder(profile: Profile, task: str, gans: dict[str, GANRun], *, seed: int = 0,
                     data_dir: str | Path | None = None, runs_root: str | Path | None = None) -> Path:
    """Generate, for each minority class of ``task`` (``MINORITY``), the images that make it as large
    as the largest class of the training part, into ``runs/<profile>/gan/synthetic_<task>_seed<k>`` (rewritten only
    when the GANs or the counts changed). The images come from their own sampling seed."""
    stage_data = stages.prepare_data(task_profile(profile, task), "stage1", seed=seed, data_dir=data_dir)
    missing = generated.balancing_counts(stage_data)
    # Only the task's minority classes are synthesised (on other data a class may lack nothing).
    wanted = {name: missing[name] for name in MINORITY[task] if missing[name] > 0}
    absent = sorted(name for name in wanted if name.lower() not in gans)
    if absent:
        raise ValueError(f"{task}: classes {absent} need generated images but have no GAN (have {sorted(gans)})")
    folder = paths.runs_dir(runs_root) / profile.name / "gan" / f"synthetic_{task}_seed{seed}"
    info = {"task": task, "seed": seed, "counts": wanted,
            "gans": {name: {"run": paths.relative(gans[name.lower()].run_dir, paths.runs_dir(runs_root)),
                            "checkpoint_sha256": repro.sha256_file(gans[name.lower()].run_dir / "gan.pt"),
                            "steps": gans[name.lower()].gan.step} for name in wanted}}
    info_file = folder / generated.INFO
    if info_file.is_file() and json.loads(info_file.read_text()) == json.loads(json.dumps(info)):
        return folder
    # Sampling seeds differ by class and task, so no two folders share an image by construction.
    images = {name: gans[name.lower()].gan.sample(n, seed=1000 + 100 * seed + 10 * k + len(task))
              for k, (name, n) in enumerate(wanted.items())}
    return generated.write_folder(folder, images, info=info)


def stage1_job(profile: Profile, task: str, augmentation: str, *, seed: int = 0,
               synthetic_dir: str | Path | None = None, **common: Any) -> dict[str, Any]:
    """The ``stages.run_stage`` arguments of one stage-1 variant (ImageNet -> ``task``)."""
    job = dict(name=run_name(task, augmentation), profile=task_profile(profile, task), stage="stage1",
               init_from="imagenet", seed=seed, **common)
    if augmentation in ("class_weights", "oversample"):
        job["balance"] = augmentation
    if augmentation == "synthetic":
        if synthetic_dir is None:
            raise ValueError("augmentation 'synthetic' needs synthetic_dir (see synthetic_folder)")
        job["synthetic_dir"] = synthetic_dir
    return job


#: Columns of ``gan.csv`` (the results contract).
RESULT_COLUMNS = ["task", "augmentation", "model", "seed", "accuracy", "auc_macro", "recall_per_class",
                  "n_synthetic", "profile"]


def result_row(task: str, augmentation: str, result: stages.StageResult) -> dict[str, Any]:
    """One ``gan.csv`` row (plus the accuracy interval and balanced accuracy) from a stage-1 run."""
    m = result.metrics
    classes = [c.removeprefix("prob_") for c in result.predictions.columns if c.startswith("prob_")]
    if len(classes) == 2:  # binary metrics: recall of class 0 is the specificity, of class 1 the sensitivity
        recall = [m["specificity"], m["sensitivity"]]
    else:
        recall = [m[f"recall_{c}"] for c in classes]
    balancing = m["provenance"].get("balancing") or {}
    return {"task": task, "augmentation": augmentation, "model": m["provenance"]["model"],
            "seed": m["provenance"]["seed"], "accuracy": m["accuracy"],
            "auc_macro": m.get("auc_macro", m.get("auc")),  # binary: the one AUC is the macro average
            "recall_per_class": "; ".join(f"{c}={r:.3f}" for c, r in zip(classes, recall)),
            "n_synthetic": int(balancing.get("n_generated", 0)), "profile": m["provenance"]["profile"],
            "accuracy_ci_low": m["accuracy_ci_low"], "accuracy_ci_high": m["accuracy_ci_high"],
            "balanced_accuracy": m["balanced_accuracy"], "n_test": m["n"]}


def paired_test_accuracy(result: stages.StageResult, baseline: stages.StageResult) -> dict[str, Any]:
    """``result`` minus ``baseline`` on the same test images: accuracy difference with a paired
    bootstrap 95 % interval, and the exact McNemar test on per-image correctness."""
    merged = result.predictions.merge(baseline.predictions, on="file", suffixes=("", "_base"))
    if len(merged) != len(result.predictions) or (merged["label"] != merged["label_base"]).any():
        raise ValueError(f"{result.name} and {baseline.name} were not tested on the same labelled images")
    test = statistics.paired_accuracy_difference((merged["pred"] == merged["label"]).to_numpy(),
                                                 (merged["pred_base"] == merged["label"]).to_numpy())
    return {"diff": test["diff"], "ci_low": test["ci_low"], "ci_high": test["ci_high"],
            "only_this_right": test["only_a_right"], "only_baseline_right": test["only_b_right"],
            "p_value": test["p_value"], "n": test["n"]}
