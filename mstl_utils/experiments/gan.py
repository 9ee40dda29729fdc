"""A Wasserstein GAN with gradient penalty (Gulrajani et al. 2017) for minority-class chest X-rays.

One generator per class (the class's training images only: never its validation or
test images), DCGAN-shaped networks, the paper's settings (Adam 1e-4, betas (0, 0.9),
penalty weight 10, 5 critic steps per generator step). A class's run is a ``GANSpec`` trained
through the engine's one lifecycle (``engine.lifecycle``), in

    runs/<profile>/gan/<class>-<digest>/seed<k>/
        config.json   what was asked (the GAN's settings, the training images' sha256)
        history.csv   per generator step: critic loss, Wasserstein estimate, penalty, generator loss
        resume.pt     generator + critic + optimisers + random state: saved now and then while it
                      trains (a killed run continues where it stopped) and kept at the end: the
                      trained GAN that sampling loads (``lifecycle.STATE_FILE``)
        metrics.json  written last: marks a complete run (steps, time per step, provenance)

The digest leaves out the run's length (``LENGTH_FIELDS``): a longer run continues a shorter one.
The GAN trains on the profile's device: networks, optimiser states, the real images and every
random draw (batch indices, noise, penalty mixing weights, from a generator on that device). On
the CPU the draws are those of a CPU generator seeded the same, so CPU results do not depend on
where the code runs (a GPU draws other numbers: a GPU run is another run, in another folder).

The quality checks (``frechet_distance``, ``nearest_distances``) use the pooled features of
the project's ImageNet MobileNetV2: a Frechet distance in that feature space, which is NOT
the standard FID (Inception-v3 features, not available offline here); its values are only
comparable with each other, e.g. with the same distance between two halves of the real data.

The chapter (``notebooks/10_gan.ipynb``): ``run`` trains the GANs, judges their images, trains the
stage-1 variants (real only, class weights, oversampling, real + generated) and carries the 2-class
ones through the head-CT folds; ``tables``, ``glue_values`` and ``verdict`` report them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from scipy import linalg
from torch import nn
from torch.nn import functional as F

from ..core import paths, repro
from ..core.config import Profile
from ..data import generated
from ..engine import executors, lifecycle, stages, train
from ..engine.lifecycle import RunResult
from ..engine.spec import RunSpec, digest
from ..models import registry as models
from ..report import analysis, statistics
from . import protocol

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
    checkpoint_every: int = 100  # generator steps between saved states (saved when due: lifecycle.state_every)


#: The GAN settings of each profile (the chapter's plan): seconds for tests, a CPU budget, and a GPU-sized run.
GAN_PROFILES = {
    "smoke": GANConfig(image_size=32, width=4, num_steps=3, batch_size=8, checkpoint_every=2),
    # 1-3 s per generator step at 64 px on the shared 2-core CPU (two classes side by side): 400 steps fit the budget.
    "quick": GANConfig(image_size=64, width=16, num_steps=400),
    "paper": GANConfig(image_size=128, width=64, num_steps=5000),
}
#: The chapter contract's name for the plans: the GAN settings of each profile.
PLANS = GAN_PROFILES


def get_config(profile: str, **changes: Any) -> GANConfig:
    """The GAN settings of ``profile`` (a profile name), with changes; None values are ignored."""
    if profile not in GAN_PROFILES:
        raise ValueError(f"no GAN settings for profile {profile!r}; expected one of {sorted(GAN_PROFILES)}")
    return dataclasses.replace(GAN_PROFILES[profile], **{k: v for k, v in changes.items() if v is not None})


#: The chapter contract's name for ``get_config``.
get_plan = get_config


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
    (one mixing weight per image, drawn on the images' device), differentiable with respect to the
    critic's weights."""
    eps = torch.rand(len(real), *([1] * (real.dim() - 1)), generator=generator, dtype=real.dtype, device=real.device)
    mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [-1, 1] (the generator's tanh range)."""
    return images.float().div(127.5).sub(1)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    return images.detach().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


#: Settings that change how long a run is, not what it computes up to a step: a run continues
#: from its saved state when only these changed (train longer, or stop sooner than planned).
LENGTH_FIELDS = ("num_steps", "checkpoint_every")
#: Columns of a GAN run's ``history.csv``: one row per generator step.
HISTORY_COLUMNS = ["step", "critic_loss", "wasserstein", "penalty", "generator_loss"]


def _trajectory(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in LENGTH_FIELDS}


def _device(device: str | torch.device) -> torch.device:
    """``device`` with its index (``cuda`` -> ``cuda:0``): tensors report theirs, so the two compare equal."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class WGANGP:
    """The two networks, their optimisers and the random generator every draw comes from, on ``device``.

    The initial weights are drawn on the CPU (the same on every device) and moved to ``device``;
    every later draw comes from ``rng``, a generator on ``device`` seeded with ``seed``."""

    def __init__(self, config: GANConfig, *, seed: int = 0, device: str | torch.device = "cpu"):
        self.config = config
        self.device = _device(device)
        torch.manual_seed(seed)  # the initial weights
        self.generator = Generator(image_size=config.image_size, latent_dim=config.latent_dim,
                                   width=config.width).to(self.device)
        self.critic = Critic(image_size=config.image_size, width=config.width).to(self.device)
        betas = (config.beta1, config.beta2)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=config.lr, betas=betas)
        self.opt_c = torch.optim.Adam(self.critic.parameters(), lr=config.lr, betas=betas)
        self.rng = torch.Generator(device=self.device).manual_seed(seed)  # batches, noise, penalty mixing weights
        self.step = 0
        self.history: list[dict[str, float]] = []

    def noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.config.latent_dim, generator=self.rng, device=self.device)

    def train_step(self, real_images: torch.Tensor) -> dict[str, float]:
        """``n_critic`` critic steps and one generator step on batches drawn (with replacement)
        from ``real_images`` (uint8 ``[N, 1, S, S]``, best already on the GAN's device); returns this
        step's losses."""
        cfg = self.config
        real_images = real_images.to(self.device)
        self.generator.train()
        self.critic.train()
        for _ in range(cfg.n_critic):
            idx = torch.randint(len(real_images), (cfg.batch_size,), generator=self.rng, device=self.device)
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
        losses = torch.stack([critic_loss, gap, penalty, generator_loss]).detach().cpu().tolist()  # one transfer
        row = {"step": self.step, **dict(zip(HISTORY_COLUMNS[1:], losses))}
        self.history.append(row)
        return row

    @torch.no_grad()
    def sample(self, n: int, *, seed: int = 0, batch_size: int = 256) -> np.ndarray:
        """``n`` generated images, uint8 ``[n, 1, S, S]``, from their own seed (training's draws untouched),
        drawn on the GAN's device."""
        self.generator.eval()  # batch norm with its running statistics
        rng = torch.Generator(device=self.device).manual_seed(seed)
        parts = [self.generator(torch.randn(min(batch_size, n - i), self.config.latent_dim, generator=rng,
                                            device=self.device))
                 for i in range(0, n, batch_size)]
        size = self.config.image_size
        return to_uint8(torch.cat(parts)) if parts else np.zeros((0, 1, size, size), np.uint8)

    def state(self) -> dict[str, Any]:
        """Everything needed to continue or to sample (tensors on the GAN's device; files load onto the CPU)."""
        return {"config": asdict(self.config), "step": self.step, "history": list(self.history),
                "device": self.device.type,
                "generator": self.generator.state_dict(), "critic": self.critic.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_c": self.opt_c.state_dict(),
                "rng": self.rng.get_state(), "torch_rng": torch.get_rng_state()}

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: same settings, except perhaps the run's length (``LENGTH_FIELDS``), and a
        state saved on the same kind of device (a CPU generator's state is not a GPU generator's)."""
        if _trajectory(state["config"]) != _trajectory(asdict(self.config)) or state["step"] > self.config.num_steps:
            raise ValueError(f"checkpoint made with {state['config']}; this GAN has {asdict(self.config)}")
        saved_on = state.get("device", "cpu")
        if saved_on != self.device.type:
            raise ValueError(f"checkpoint saved by a GAN on the {saved_on}; this GAN is on the {self.device.type} "
                             "(its random draws cannot continue there)")
        self.generator.load_state_dict(state["generator"])
        self.critic.load_state_dict(state["critic"])
        self.opt_g.load_state_dict(state["opt_g"])  # the optimisers' states move to their parameters' device
        self.opt_c.load_state_dict(state["opt_c"])
        self.rng.set_state(state["rng"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        self.step, self.history = state["step"], list(state["history"])

    def save(self, path: str | Path) -> Path:
        return train.save_checkpoint(path, self.state())

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device | None = None) -> "WGANGP":
        """The GAN saved at ``path`` (``save``, or a GAN run's state file), on ``device`` (None: the kind of
        device it was saved on, when this machine has it; else the CPU)."""
        state = train.load_checkpoint(path)  # onto the CPU
        if device is None:
            saved_on = state.get("device", "cpu")
            device = saved_on if saved_on == "cpu" or torch.cuda.is_available() else "cpu"
        config = {k: v for k, v in state["config"].items() if k in {f.name for f in dataclasses.fields(GANConfig)}}
        gan = cls(GANConfig(**config), device=device)
        gan.load_state(state)
        return gan


# --------------------------------------------------------------------------- one class's images


#: Which classes each chest X-ray task treats as minorities, and the tasks sharing a class's images.
MINORITY = {"chest_xray": ("NORMAL",), "chest_xray3": ("normal", "viral")}
#: The stage-1 tasks of the chapter: 2-class and 3-class chest X-ray.
TASKS = ("chest_xray", "chest_xray3")


def task_profile(profile: Profile, task: str) -> Profile:
    return profile.replace(stage1={"dataset": task})


def _data_spec(profile: Profile, task: str, *, seed: int, data_dir: str | Path | None,
               image_size: int | None = None) -> RunSpec:
    """A stage-1 spec that only names the data of ``task`` (as its stage-1 runs with ``seed`` split them)."""
    changes = {"image_size": image_size} if image_size is not None else {}
    return RunSpec(name="data", stage="stage1", profile=task_profile(profile, task).replace(**changes), seed=seed,
                   data_dir=data_dir)


def class_images(profile: Profile, class_name: str, *, image_size: int, seed: int = 0,
                 tasks: tuple[str, ...] = TASKS, part: str = "train",
                 data_dir: str | Path | None = None) -> tuple[torch.Tensor, list[str], Path]:
    """The images of ``class_name`` in the ``part`` (training by default) of EVERY task in ``tasks``
    that has the class (their validation and test parts differ; the intersection keeps any generated
    image away from each task's validation and test images), decoded at ``image_size``: (uint8
    images, paths, the dataset's root).

    Read once per process for the same request and environment (the run's checksum, its training
    and the chapter all ask for them); the tensor is shared: do not change it in place."""
    env = tuple(os.environ.get(k) for k in (paths.ENV_DATA_DIR, paths.ENV_RUNS_DIR, paths.ENV_CACHE_DIR))
    return _class_images(profile, class_name.lower(), image_size, seed, tuple(tasks), part,
                         None if data_dir is None else str(data_dir), env)


@functools.lru_cache(maxsize=16)
def _class_images(profile: Profile, class_name: str, image_size: int, seed: int, tasks: tuple[str, ...], part: str,
                  data_dir: str | None, env: tuple) -> tuple[torch.Tensor, list[str], Path]:
    keep: set[str] | None = None
    images: dict[str, torch.Tensor] = {}
    root = None
    for task in tasks:
        stage_data = stages.prepare_data(_data_spec(profile, task, seed=seed, data_dir=data_dir, image_size=image_size))
        names = [c.lower() for c in stage_data.class_names]
        if class_name not in names:
            continue
        table = stage_data.table
        rows = np.flatnonzero((table["part"] == part).to_numpy()
                              & (table["label"] == names.index(class_name)).to_numpy())
        paths_here = table["path"].to_numpy()[rows]
        images.update(zip(paths_here, stage_data.images[torch.from_numpy(rows)]))
        keep = set(paths_here) if keep is None else keep & set(paths_here)
        root = stage_data.source.root
    if not keep:
        raise ValueError(f"class {class_name!r}: no images in the {part} part of tasks {tasks}")
    ordered = sorted(keep)
    return torch.stack([images[p] for p in ordered]), ordered, root


@functools.lru_cache(maxsize=16)
def _fingerprint(files: tuple[str, ...], root: Path) -> str:
    return repro.fingerprint(files, root)


# --------------------------------------------------------------------------- one class's run


@dataclass(frozen=True)
class GANSpec:
    """One class's WGAN-GP run: a spec of the engine's lifecycle (``lifecycle.run``, ``executors.run_specs``).

    Its identity: the class, the tasks whose training parts it learns from, the seed, the GAN's
    settings, the profile's name and data mode and the device type it trains on; its input: the
    checksum of the class's training images. Its folder leaves the run's length out, so that a
    longer run continues a shorter one from its saved state (``resume_key``)."""

    class_name: str  # lower case: "normal", "viral"
    profile: Profile  # the study's profile: data mode, device and the stage-1 settings that split the data
    config: GANConfig = GANConfig()
    tasks: tuple[str, ...] = TASKS  # the tasks whose training parts (all of them) hold the images learned from
    seed: int = 0  # initial weights, every draw of training, and the data split of the tasks
    data_dir: str | None = field(default=None, compare=False)  # where the data are read from: not identity

    kind: ClassVar[str] = "gan"
    keep_state: ClassVar[bool] = True  # the final state is the trained GAN

    def __post_init__(self):
        object.__setattr__(self, "class_name", self.class_name.lower())
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", str(self.data_dir))
        _levels(self.config.image_size)
        if not self.tasks:
            raise ValueError(f"GAN of class {self.class_name!r}: no tasks to take its images from")

    @property
    def device(self) -> str:
        """The device type the GAN trains on (``profile.device`` resolved on this machine)."""
        return repro.pick_device(self.profile.device).type

    def identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "class_name": self.class_name, "tasks": list(self.tasks), "seed": self.seed,
                "gan": asdict(self.config), "profile": self.profile.name, "data": self.profile.data,
                "device": self.device}

    @property
    def family(self) -> str:
        """``<profile>/gan/<class>-<digest>``: every seed and length of this GAN."""
        same = {k: v for k, v in self.identity().items() if k != "seed"}
        same["gan"] = _trajectory(same["gan"])
        return f"{self.profile.name}/gan/{self.class_name}-{digest(same)}"

    @property
    def relpath(self) -> PurePosixPath:
        return PurePosixPath(self.family) / f"seed{self.seed}"

    @property
    def label(self) -> str:
        return f"{self.profile.name}/gan/{self.class_name}/seed{self.seed}"

    def upstream(self) -> tuple:
        return ()

    def resources(self) -> dict[str, float]:
        return {"gpu": 0.5} if self.device == "cuda" else {}

    def images(self, part: str = "train", tasks: tuple[str, ...] | None = None) -> tuple[torch.Tensor, list[str], Path]:
        """The class's images of ``part`` in ``tasks`` (default: the GAN's), at the GAN's size."""
        return class_images(self.profile, self.class_name, image_size=self.config.image_size, seed=self.seed,
                            tasks=self.tasks if tasks is None else tasks, part=part, data_dir=self.data_dir)

    def inputs(self, runs_root: Path) -> dict[str, Any]:
        _, files, root = self.images()
        return {"n_train_images": len(files), "train_images_sha256": _fingerprint(tuple(files), root)}

    def resume_key(self, request: dict[str, Any]) -> dict[str, Any]:
        """The request without the run's length: a saved state of a shorter or longer run continues."""
        return {**request, "gan": _trajectory(request["gan"])}

    def execute(self, run: lifecycle.Run) -> dict[str, Any]:
        """Train the GAN into ``run`` (resuming from its saved state); the lifecycle calls this."""
        cfg, profile = self.config, self.profile
        if profile.num_threads:
            torch.set_num_threads(profile.num_threads)
        repro.seed_everything(self.seed, deterministic=profile.deterministic)
        device = repro.pick_device(profile.device)
        real, files, _ = self.images()
        gan = WGANGP(cfg, seed=self.seed, device=device)
        state, seconds_before = run.resume_state(), 0.0
        if state is not None and state["step"] <= cfg.num_steps:
            gan.load_state(state)
            seconds_before = float(state.get("train_seconds", 0.0))
            log.info("%s: continuing after step %d/%d", self.label, gan.step, cfg.num_steps)
        elif state is not None:
            log.info("%s: the saved state is past step %d (step %d); starting again", self.label, cfg.num_steps,
                     state["step"])
            run.resumed_after = None  # not resumed: trained from the start
        real = real.to(device)
        first, clock = gan.step, time.perf_counter()

        def payload() -> dict[str, Any]:
            return {**gan.state(), "train_seconds": seconds_before + time.perf_counter() - clock}

        while gan.step < cfg.num_steps:
            row = gan.train_step(real)
            if gan.step % cfg.checkpoint_every == 0 and gan.step < cfg.num_steps:
                run.save_state(payload())
                log.info("%s step %d/%d  critic %.3f  W %.3f  gp %.3f  G %.3f", self.class_name, gan.step,
                         cfg.num_steps, row["critic_loss"], row["wasserstein"], row["penalty"], row["generator_loss"])
        final = payload()
        run.save_state(final, force=True)  # kept: the trained GAN that sampling loads
        run.write_table("history.csv", pd.DataFrame(gan.history, columns=HISTORY_COLUMNS))
        seconds = final["train_seconds"]
        last = gan.history[-1] if gan.history else {}
        provenance = {
            "class_name": self.class_name, "tasks": list(self.tasks), "seed": self.seed, "profile": profile.name,
            "steps": gan.step, "steps_this_session": gan.step - first,
            "seconds_this_session": time.perf_counter() - clock,
            "seconds": seconds, "seconds_per_step": seconds / max(1, gan.step),
            "n_train_images": len(files), "device": repro.describe_device(device), "device_type": device.type,
            "num_threads": torch.get_num_threads(),
        }
        return {"steps": gan.step, "final": {k: last.get(k) for k in HISTORY_COLUMNS[1:]}, "provenance": provenance}


@dataclass
class GANRun:
    """A class's trained GAN, read back or just trained, with the real images it learned from."""

    class_name: str  # lower case: "normal", "viral"
    run_dir: Path
    gan: WGANGP
    history: pd.DataFrame
    real: torch.Tensor  # the class's training images at the GAN's size, uint8 [N, 1, S, S]
    info: dict[str, Any]  # the run's provenance: steps, seconds, seconds_per_step, n_train_images, device, hardware

    @property
    def state_file(self) -> Path:
        return self.run_dir / lifecycle.STATE_FILE


def gan_run(spec: GANSpec, result: RunResult) -> GANRun:
    """The trained GAN of ``spec``'s complete run ``result``, on the spec's device."""
    gan = WGANGP.load(result.run_dir / lifecycle.STATE_FILE, device=repro.pick_device(spec.profile.device))
    real, _, _ = spec.images()
    return GANRun(spec.class_name, result.run_dir, gan, result.history, real, result.provenance)


def gan_specs(profile: Profile, config: GANConfig, *, tasks: tuple[str, ...] = TASKS, seed: int = 0,
              data_dir: str | Path | None = None) -> list[GANSpec]:
    """One GAN per minority class of ``tasks`` (``MINORITY``), learning from every task that has the class."""
    return [GANSpec(name, profile, config, tasks=owners, seed=seed, data_dir=data_dir)
            for name, owners in minority_classes(tasks).items()]


def minority_classes(tasks: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """The classes to synthesise (lower case) and the tasks whose training parts each class's GAN learns from."""
    found: dict[str, list[str]] = {}
    for task in tasks:
        if task not in MINORITY:
            raise ValueError(f"task {task!r}: no minority classes known; expected one of {sorted(MINORITY)}")
        for name in MINORITY[task]:
            found.setdefault(name.lower(), []).append(task)
    return {name: tuple(owners) for name, owners in found.items()}


def train_class_gan(profile: Profile, class_name: str, *, config: GANConfig = GANConfig(), seed: int = 0,
                    tasks: tuple[str, ...] = TASKS, data_dir: str | Path | None = None, force: bool = False,
                    executor: str | executors.Executor = "local") -> GANRun:
    """Train (or reuse, or continue) the WGAN-GP of one class (``GANSpec``) and return it."""
    spec = GANSpec(class_name, profile, config, tasks=tuple(tasks), seed=seed, data_dir=data_dir)
    (result,) = executors.run_specs([spec], executor=executor, force=force, description="GAN runs")
    return gan_run(spec, result)


# --------------------------------------------------------------------------- judging the images

#: The network whose pooled features the quality checks use (NOT Inception-v3: not the standard FID).
FEATURE_NETWORK = "mobilenet_v2 (ImageNet, pooled 1280-d features)"


def feature_model(*, allow_random: bool = False, device: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
    """The project's ImageNet MobileNetV2 without its classifier, on ``device``: grey image -> 1280 pooled features."""
    model, weights = models.build_model("mobilenet_v2", num_classes=1, init="imagenet", allow_random=allow_random)
    model.backbone.classifier = nn.Identity()  # torchvision's MobileNetV2: pooling, then the classifier
    return model.eval().to(device), weights


@torch.no_grad()
def features(model: nn.Module, images: torch.Tensor | np.ndarray, *, size: int = 128,
             batch_size: int = 128) -> np.ndarray:
    """Pooled features ``[N, D]`` (float64) of uint8 grey images, resized to ``size`` (bilinear), computed
    on the model's device."""
    device = next(model.parameters()).device
    images = torch.as_tensor(np.asarray(images))
    parts = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device).float().div(255)
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        parts.append(model(x).double().cpu())
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


def quality_summary(found: list[dict[str, Any]]) -> pd.DataFrame:
    """Per class: the two Frechet distances and nearest-neighbour medians, and their ratios
    (``fd_ratio``: generated over the real floor; ``nn_ratio``: generated over held-out real)."""
    columns = ["class", "n_per_set", "fd_generated", "fd_real", "nn_generated_median", "nn_held_out_median",
               "n_held_out"]
    summary = pd.DataFrame([{k: q[k] for k in columns} for q in found], columns=columns)
    return summary.assign(fd_ratio=summary["fd_generated"] / summary["fd_real"],
                          nn_ratio=summary["nn_generated_median"] / summary["nn_held_out_median"])


# --------------------------------------------------------------------------- the augmentation experiment

#: Stage-1 variants: ``none`` (real images only), the cheap baselines, and real + generated images.
AUGMENTATIONS = ("none", "class_weights", "oversample", "synthetic")

#: The existing real-only stage-1 run of each task (the 2-class bridge; the chain chapter's 3-class link).
REAL_ONLY_RUN = {"chest_xray": "stage1", "chest_xray3": "chain_imagenet-chest_xray3"}


def run_name(task: str, augmentation: str) -> str:
    """The stage-1 run of ``task`` with ``augmentation`` (``none``: the existing real-only run)."""
    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation={augmentation!r}; expected one of {AUGMENTATIONS}")
    return REAL_ONLY_RUN[task] if augmentation == "none" else f"aug_{task}_{augmentation}"


def synthetic_folder(profile: Profile, task: str, gans: dict[str, GANRun], *, seed: int = 0,
                     data_dir: str | Path | None = None) -> Path:
    """Generate, for each minority class of ``task`` (``MINORITY``), the images that make it as large
    as the largest class of the training part, into ``runs/<profile>/gan/synthetic_<task>_seed<k>`` (rewritten only
    when the GANs or the counts changed). The images come from their own sampling seed."""
    stage_data = stages.prepare_data(_data_spec(profile, task, seed=seed, data_dir=data_dir))
    missing = generated.balancing_counts(stage_data)
    # Only the task's minority classes are synthesised (on other data a class may lack nothing).
    wanted = {name: missing[name] for name in MINORITY[task] if missing[name] > 0}
    absent = sorted(name for name in wanted if name.lower() not in gans)
    if absent:
        raise ValueError(f"{task}: classes {absent} need generated images but have no GAN (have {sorted(gans)})")
    runs_root = paths.runs_dir()
    folder = runs_root / profile.name / "gan" / f"synthetic_{task}_seed{seed}"
    info = {"task": task, "seed": seed, "counts": wanted,
            "gans": {name: {"run": paths.relative(gans[name.lower()].run_dir, runs_root),
                            "checkpoint_sha256": repro.sha256_file(gans[name.lower()].state_file),
                            "steps": gans[name.lower()].gan.step} for name in wanted}}
    info_file = folder / generated.INFO
    if info_file.is_file() and json.loads(info_file.read_text()) == json.loads(json.dumps(info)):
        return folder
    # Sampling seeds differ by class and task, so no two folders share an image by construction.
    images = {name: gans[name.lower()].gan.sample(n, seed=1000 + 100 * seed + 10 * k + len(task))
              for k, (name, n) in enumerate(wanted.items())}
    return generated.write_folder(folder, images, info=info)


def stage1_spec(profile: Profile, task: str, augmentation: str, *, seed: int = 0,
                synthetic_dir: str | Path | None = None, data_dir: str | Path | None = None) -> RunSpec:
    """The stage-1 run (ImageNet -> ``task``) of one variant. ``none`` is the existing real-only run:
    the protocol's bridge (2 classes) or the chain chapter's first link (3 classes), shared with them."""
    name = run_name(task, augmentation)
    if augmentation == "none" and task == "chest_xray":
        return protocol.bridge_spec(task_profile(profile, task), seed=seed, data_dir=data_dir)
    if augmentation == "none" and task == "chest_xray3":
        from . import chain  # the chain chapter owns this run

        (first,) = chain.link_specs(profile, ("imagenet", task, chain.TARGET), seed=seed, data_dir=data_dir)
        if first.name != name:
            raise RuntimeError(f"the chain chapter names its first link {first.name!r}; expected {name!r}")
        return first
    if augmentation == "synthetic" and synthetic_dir is None:
        raise ValueError("augmentation 'synthetic' needs synthetic_dir (see synthetic_folder)")
    return RunSpec(name=name, stage="stage1", profile=task_profile(profile, task), init="imagenet", seed=seed,
                   balance=augmentation if augmentation in generated.BALANCE_CHOICES else None,
                   synthetic_dir=synthetic_dir if augmentation == "synthetic" else None, data_dir=data_dir)


def fold_specs(profile: Profile, start: RunSpec, folds: pd.DataFrame, *,
               data_dir: str | Path | None = None) -> list[RunSpec]:
    """A 2-class stage-1 variant carried through every head-CT protocol fold (``cv_<variant>``): a
    ``multistage``-like arm whose every repeat starts from ``start``."""
    return [protocol.fold_spec(profile, "multistage", split, start=start, name=f"cv_{start.name}", data_dir=data_dir)
            for split in protocol.splits(folds)]


#: Columns of ``gan.csv`` (the results contract).
RESULT_COLUMNS = ["task", "augmentation", "model", "seed", "accuracy", "auc_macro", "recall_per_class",
                  "n_synthetic", "profile"]
#: Columns of ``gan_tests.csv``: each variant minus the real-only run of its task, on the same test images.
TEST_COLUMNS = ["task", "augmentation", "diff", "ci_low", "ci_high", "only_this_right", "only_baseline_right",
                "p_value", "n"]


def class_recalls(result: RunResult) -> dict[str, float]:
    """Recall of each class of a stage-1 run on its test part, by class name."""
    m = result.metrics
    classes = [c.removeprefix("prob_") for c in result.predictions.columns if c.startswith("prob_")]
    if len(classes) == 2:  # binary metrics: recall of class 0 is the specificity, of class 1 the sensitivity
        recall = [m["specificity"], m["sensitivity"]]
    else:
        recall = [m[f"recall_{c}"] for c in classes]
    return {c: float(r) for c, r in zip(classes, recall)}


def result_row(task: str, augmentation: str, result: RunResult) -> dict[str, Any]:
    """One ``gan.csv`` row (plus the accuracy interval and balanced accuracy) from a stage-1 run."""
    m = result.metrics
    balancing = m["provenance"].get("balancing") or {}
    return {"task": task, "augmentation": augmentation, "model": m["provenance"]["model"],
            "seed": m["provenance"]["seed"], "accuracy": m["accuracy"],
            "auc_macro": m.get("auc_macro", m.get("auc")),  # binary: the one AUC is the macro average
            "recall_per_class": "; ".join(f"{c}={r:.3f}" for c, r in class_recalls(result).items()),
            "n_synthetic": int(balancing.get("n_generated", 0)), "profile": m["provenance"]["profile"],
            "accuracy_ci_low": m["accuracy_ci_low"], "accuracy_ci_high": m["accuracy_ci_high"],
            "balanced_accuracy": m["balanced_accuracy"], "n_test": m["n"]}


def paired_test_accuracy(result: RunResult, baseline: RunResult) -> dict[str, Any]:
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


# --------------------------------------------------------------------------- the chapter


@dataclass
class GANResult:
    """Everything the chapter measured: the GANs and their images' quality, the stage-1 variants,
    and the 2-class variants on the head-CT folds beside the protocol's ``multistage`` arm."""

    profile: Profile
    config: GANConfig
    seed: int
    tasks: tuple[str, ...]
    augmentations: tuple[str, ...]
    stage2_augmentations: tuple[str, ...]  # asked for in stage 2
    carried: tuple[str, ...]  # those carried through stage 2 (the others lack their stage-1 run)
    skip_runs: tuple[tuple[str, str], ...]  # (task, augmentation) left out
    minority: dict[str, tuple[str, ...]]  # class -> the tasks its GAN learned from
    gans: dict[str, GANRun]  # class -> its trained GAN
    quality: list[dict[str, Any]]  # per class: ``quality``'s measures (and the images they were measured on)
    folders: dict[str, Path]  # task -> its folder of generated images
    stage1: dict[tuple[str, str], RunResult]  # (task, augmentation) -> its stage-1 run
    folds: list[RunResult]  # the 2-class variants' head-CT fold runs
    baseline: list[RunResult]  # the protocol's multistage fold runs on the same folds
    recalls: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)  # per-class test recall

    def __post_init__(self):
        if not self.recalls:
            self.recalls = {key: class_recalls(run) for key, run in self.stage1.items()}

    @property
    def stage2_arms(self) -> list[str]:
        """The fold tables' arms of the 2-class variants carried through stage 2."""
        return [run_name("chest_xray", aug) for aug in self.carried]

    def runs(self) -> list[RunResult]:
        """The chapter's own stage runs (stage-1 variants and their folds): its run time and provenance."""
        return list(self.stage1.values()) + list(self.folds)


def _stage2_left_out(task_ok: bool, augmentation: str, augmentations: tuple[str, ...],
                     skip: tuple[tuple[str, str], ...]) -> str | None:
    """Why a 2-class variant asked for in stage 2 has no stage-1 run to start from (None: it has one)."""
    if not task_ok:
        return "chest_xray is not among `tasks`"
    if augmentation not in augmentations:
        return "not in `augmentations`"
    if ("chest_xray", augmentation) in skip:
        return "its stage-1 run is left out by the `skip_runs` parameter"
    return None


def run(profile: Profile, config: GANConfig, *, tasks: tuple[str, ...] | list[str] = TASKS,
        augmentations: tuple[str, ...] | list[str] = ("none", "class_weights", "synthetic"),
        stage2_augmentations: tuple[str, ...] | list[str] = ("class_weights", "synthetic"),
        skip_runs: tuple | list = (), seed: int = 0, executor: str | executors.Executor = "local",
        workers: int | None = None, force: bool = False, data_dir: str | Path | None = None) -> GANResult:
    """The chapter: a GAN per minority class, its images judged, the stage-1 variants of every task,
    and the 2-class variants on every head-CT fold with the protocol's ``multistage`` arm beside them.

    ``force`` trains the chapter's own runs again (GANs, variants, their folds), never the real-only runs
    (the protocol's bridge and the chain's first link) nor the protocol's folds, which other chapters own."""
    tasks, augmentations = tuple(tasks), tuple(augmentations)
    stage2_augmentations = tuple(stage2_augmentations)
    skip = tuple(tuple(pair) for pair in skip_runs)
    unknown = [a for a in augmentations + stage2_augmentations if a not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"augmentations {unknown}: expected some of {AUGMENTATIONS}")
    if "none" in stage2_augmentations:
        raise ValueError("stage2_augmentations: 'none' is the protocol's multistage arm itself")
    minority = minority_classes(tasks)
    device = repro.pick_device(profile.device)
    specs = gan_specs(profile, config, tasks=tasks, seed=seed, data_dir=data_dir)
    ex = executors.get_executor(executor, workers=workers)
    # An executor made here is closed here (a Ray cluster started for the chapter); one passed in is the caller's.
    with ex if ex is not executor else contextlib.nullcontext(ex):
        gan_results = ex.run(specs, force=force, description="GAN runs")
        gans = {spec.class_name: gan_run(spec, result) for spec, result in zip(specs, gan_results)}
        model, _ = feature_model(allow_random=profile.allow_random, device=device)
        found_quality = []
        for spec in specs:  # held-out images: the validation part of the class's first task
            held_out, _, _ = spec.images(part="val", tasks=spec.tasks[:1])
            found_quality.append(quality(gans[spec.class_name], held_out, model, seed=seed))
        del model
        folders = {task: synthetic_folder(profile, task, gans, seed=seed, data_dir=data_dir)
                   for task in tasks if "synthetic" in augmentations}
        wanted = {(task, aug): stage1_spec(profile, task, aug, seed=seed, synthetic_dir=folders.get(task),
                                           data_dir=data_dir)
                  for task in tasks for aug in augmentations if (task, aug) not in skip}
        carried = tuple(aug for aug in stage2_augmentations
                        if _stage2_left_out("chest_xray" in tasks, aug, augmentations, skip) is None)
        folds, _ = protocol.target_folds(profile, data_dir=data_dir)
        variant_folds = [s for aug in carried
                         for s in fold_specs(profile, wanted["chest_xray", aug], folds, data_dir=data_dir)]
        baseline_specs = [r.spec for r in protocol.plan(profile, folds, arms=("multistage",), data_dir=data_dir)]
        real_only = [key for key in wanted if key[1] == "none"]
        own = [key for key in wanted if key[1] != "none"]
        # The real-only runs and the protocol's folds belong to other chapters: trained when missing, never forced.
        shared = ex.run([wanted[k] for k in real_only] + baseline_specs,
                        description="real-only runs and protocol folds")
        mine = ex.run([wanted[k] for k in own] + variant_folds, force=force, description="stage-1 variants and folds")
    stage1_runs = dict(zip(real_only, shared[:len(real_only)])) | dict(zip(own, mine[:len(own)]))
    stage1_runs = {key: stage1_runs[key] for key in wanted}  # in the order asked
    return GANResult(profile=profile, config=config, seed=seed, tasks=tasks, augmentations=augmentations,
                     stage2_augmentations=stage2_augmentations, carried=carried, skip_runs=skip, minority=minority,
                     gans=gans, quality=found_quality, folders=folders, stage1=stage1_runs, folds=mine[len(own):],
                     baseline=shared[len(real_only):])


# --------------------------------------------------------------------------- tables, glue, verdict


def stage1_table(result: GANResult) -> pd.DataFrame:
    """Every stage-1 variant on its task's test set: ``gan.csv``'s columns, the accuracy interval,
    the balanced accuracy and the number of test images."""
    rows = [result_row(task, aug, run) for (task, aug), run in result.stage1.items()]
    extra = ["accuracy_ci_low", "accuracy_ci_high", "balanced_accuracy", "n_test"]
    return pd.DataFrame(rows, columns=RESULT_COLUMNS + extra)


def paired_tests(result: GANResult) -> pd.DataFrame:
    """``gan_tests.csv``: each variant minus the real-only run of its task, on the same test images."""
    rows = [{"task": task, "augmentation": aug, **paired_test_accuracy(run, result.stage1[task, "none"])}
            for (task, aug), run in result.stage1.items() if aug != "none" and (task, "none") in result.stage1]
    return pd.DataFrame(rows, columns=TEST_COLUMNS)


def both_folds(result: GANResult) -> pd.DataFrame:
    """The variants' fold results and the protocol's ``multistage`` ones on the same folds."""
    return pd.concat([protocol.fold_table(result.folds), protocol.fold_table(result.baseline)], ignore_index=True)


def tables(result: GANResult) -> dict[str, pd.DataFrame]:
    """The chapter's tables (the results contract): ``gan.csv``, ``gan_quality.csv``, ``gan_tests.csv``,
    ``gan_folds.csv`` and ``gan_stage2_tests.csv``."""
    arms = result.stage2_arms
    if arms:
        stage2_tests = analysis.corrected_tests(both_folds(result), pairs=[(arm, "multistage") for arm in arms])
    else:
        stage2_tests = pd.DataFrame(columns=analysis.TEST_COLUMNS)
    return {"gan.csv": stage1_table(result)[RESULT_COLUMNS], "gan_quality.csv": quality_table(result.quality),
            "gan_tests.csv": paired_tests(result), "gan_folds.csv": protocol.fold_table(result.folds),
            "gan_stage2_tests.csv": stage2_tests}


def gan_overview(result: GANResult) -> pd.DataFrame:
    """Per class: its training images, generator steps, seconds per step and the tasks it learned from."""
    return pd.DataFrame({name: {"training images": len(run.real), "generator steps": run.gan.step,
                                "seconds per step": run.info["seconds_per_step"],
                                "tasks": ", ".join(result.minority[name])}
                         for name, run in result.gans.items()}).T


def training_counts(result: GANResult) -> pd.DataFrame:
    """Real training images per class of each task (from its real-only run) and the generated ones added."""
    counts = {}
    for task in result.tasks:
        if (task, "none") in result.stage1:
            real_only = result.stage1[task, "none"]
            names = [c.removeprefix("prob_") for c in real_only.predictions.columns if c.startswith("prob_")]
            train_part = pd.DataFrame(real_only.provenance["split_counts"]).query("part == 'train'")
            counts[task, "real"] = pd.Series(train_part["n"].to_numpy(), index=[names[i] for i in train_part["label"]])
        if task in result.folders:
            manifest = generated.read_manifest(result.folders[task], verify=False)
            counts[task, "generated"] = manifest["class"].value_counts()
    return pd.DataFrame(counts).fillna(0).astype(int).rename_axis("training images per class")


def fold_means(result: GANResult) -> pd.DataFrame:
    """Mean head-CT test metrics over the folds, per arm (the variants and ``multistage``)."""
    return both_folds(result).groupby("arm", sort=False)[["accuracy", "auc", "sensitivity", "specificity"]].mean()


def glue_values(result: GANResult, tables_: dict[str, pd.DataFrame]) -> dict[str, Any]:
    """Every number the chapter's prose glues (the verdict is glued on its own, as Markdown)."""
    values: dict[str, Any] = {"gan_image_size": result.config.image_size, "gan_feature_network": FEATURE_NETWORK,
                              "gan_seed": result.seed}
    for row in quality_summary(result.quality).itertuples(index=False):
        name = row[0]  # the class
        values[f"gan_fd_{name}"] = float(row.fd_generated)
        values[f"gan_fd_real_{name}"] = float(row.fd_real)
        values[f"gan_nn_ratio_{name}"] = float(row.nn_ratio)
    for row in tables_["gan_tests.csv"].itertuples():
        key = f"gan_{row.task}_{row.augmentation}"
        values[f"{key}_diff"] = 100 * row.diff
        values[f"{key}_ci"] = f"{100 * row.ci_low:+.1f} to {100 * row.ci_high:+.1f}"
        values[f"{key}_p"] = row.p_value
    values["gan_n_folds"] = int(len(result.baseline))
    values["gan_minutes"] = sum(run.info["seconds_per_step"] * run.gan.step for run in result.gans.values()) / 60
    values["gan_steps"] = result.config.num_steps
    on_gpu = any(run.info.get("device_type") == "cuda" for run in result.gans.values())
    values["gan_device"] = "the GPU" if on_gpu else "the CPU"  # where the GANs trained
    values["gan_run_minutes"] = sum(r.provenance["wall_seconds"] for r in result.runs()) / 60
    return values


def verdict(result: GANResult, tables_: dict[str, pd.DataFrame]) -> str:
    """The chapter's verdict, one markdown bullet per finding (and one per comparison not measured)."""
    lines = []
    for row in tables_["gan_tests.csv"].itertuples():
        effect = "no evidence of an effect" if row.p_value >= 0.05 else ("better" if row.diff > 0 else "worse")
        lines.append(f"- **{row.task}, {row.augmentation}** against real images only: accuracy {100 * row.diff:+.1f} "
                     f"percentage points (95 % CI {100 * row.ci_low:+.1f} to {100 * row.ci_high:+.1f}, "
                     f"McNemar p {'< 0.001' if row.p_value < 0.001 else f'= {row.p_value:.3f}'}): {effect}.")
    for arm in result.stage2_arms:
        lines.append(f"- **Head CT, bridge {arm}** against the real-only bridge (`multistage`): "
                     + analysis.verdict(tables_["gan_stage2_tests.csv"], arm_a=arm, arm_b="multistage"))
    # Where balancing should act: the recall of the classes that were given generated images.
    recalls = result.recalls
    lines += [f"- **{task}, recall of the classes given generated images** (real only -> with generated images): "
              + ", ".join(f"{name} {recalls[task, 'none'][name]:.3f} -> {recalls[task, 'synthetic'][name]:.3f}"
                          for name in recalls[task, "synthetic"] if name.lower() in result.minority)
              + "." for task in result.tasks if (task, "synthetic") in recalls and (task, "none") in recalls]
    for row in quality_summary(result.quality).itertuples(index=False):
        lines.append(f"- **Generated {row[0]} images**: Frechet distance {row.fd_generated:.1f} against "
                     f"{row.fd_real:.1f} between two halves of the real images ({row.fd_ratio:.1f} times the floor); "
                     f"the median distance to the nearest real image is {row.nn_ratio:.2f} times that of held-out real "
                     "images " + ("(no sign of copying)." if row.nn_ratio >= 0.9
                                  else "(closer than new real images: possible copying)."))
    lines += [f"- **{task}, {augmentation}**: not run (left out by the `skip_runs` parameter): not measured."
              for task, augmentation in result.skip_runs]
    lines += [f"- **Head CT, bridge aug_chest_xray_{augmentation}**: not run (not in `stage2_augmentations`): "
              "not measured." for augmentation in AUGMENTATIONS[1:]
              if augmentation in result.augmentations and augmentation not in result.stage2_augmentations
              and ("chest_xray", augmentation) not in result.skip_runs]
    for augmentation in result.stage2_augmentations:
        why = _stage2_left_out("chest_xray" in result.tasks, augmentation, result.augmentations, result.skip_runs)
        if why is not None:
            lines.append(f"- **Head CT, bridge aug_chest_xray_{augmentation}**: not run ({why}): not measured.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- figures


def loss_curves(gans: dict[str, GANRun], *, window: int = 25):
    """Per generator step, smoothed over ``window`` steps: the Wasserstein estimate, the gradient
    penalty and the generator's loss, one line per class."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for name, gan_result in gans.items():
        smooth = gan_result.history.set_index("step").rolling(window, min_periods=1).mean()
        for ax, column in zip(axes, ("wasserstein", "penalty", "generator_loss")):
            ax.plot(smooth.index, smooth[column], label=name)
            ax.set_xlabel("generator step")
            ax.set_title(column.replace("_", " "))
    axes[0].legend()
    fig.tight_layout()
    return fig


def sample_figures(result: GANResult, *, n_show: int = 8) -> list:
    """Per class: real training images (top row) and generated ones (bottom row)."""
    from ..report import plots

    figures = []
    for name, gan_result in result.gans.items():
        n = min(n_show, len(gan_result.real))
        real_pick = gan_result.real[np.random.default_rng(result.seed).choice(len(gan_result.real), n,
                                                                               replace=False)].numpy()
        fake_pick = gan_result.gan.sample(n, seed=result.seed + 7)
        figures.append(plots.image_grid(np.concatenate([real_pick, fake_pick]), ["real"] * n + ["generated"] * n,
                                        ncols=n, title=f"{name}: real (top) and generated (bottom)"))
    return figures


def neighbour_figures(result: GANResult, *, n_show: int = 6) -> list:
    """Per class: the generated images closest to a real training image, each beside that image."""
    from ..report import plots

    figures = []
    for q in result.quality:
        order = np.argsort(q["nn_fake"])[:n_show]
        real = result.gans[q["class"]].real
        pairs = np.concatenate([np.stack([q["fake"][i], real[q["nn_index"][i]].numpy()]) for i in order])
        titles = [t for i in order for t in (f"generated\n{q['nn_fake'][i]:.1f}", "nearest real")]
        figures.append(plots.image_grid(pairs, titles, ncols=n_show,
                                        title=f"{q['class']}: the closest generated images and their neighbours"))
    return figures
