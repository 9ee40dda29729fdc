"""Configuration as data: frozen dataclasses and named profiles.

A profile is a named set of values (never a code path). Every run writes
``asdict(config)`` into its run directory and checkpoint, so that a result can
always be traced back to the settings that produced it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from typing import Any

#: Values that ``data`` may take: ``auto`` uses real data when it can be found
#: and falls back to synthetic data (loudly); ``real`` insists on real data;
#: ``synthetic`` always uses the generated stand-in.
DATA_MODES = ("auto", "real", "synthetic")

#: Where a stage's weights come from: ImageNet, random initialisation, or the
#: checkpoint of an earlier stage (given by that stage's name, e.g. ``stage1``).
INIT_CHOICES = ("imagenet", "scratch")


@dataclass(frozen=True)
class StageConfig:
    """Settings of one fine-tuning stage."""

    dataset: str  # "chest_xray", "head_ct", or a path to an ImageFolder dataset
    num_epochs: int  # passes over the stage's training part
    batch_size: int  # images per optimiser step
    lr: float = 1e-3  # Adam learning rate; the paper gives none, 1e-3 is the Keras default it used
    weight_decay: float = 0.0  # Adam's L2 penalty; the paper uses none
    val_fraction: float = 0.2  # share of the training part held out for validation curves
    max_per_class: int | None = None  # cap on images per class and split (None = all); for fast profiles


@dataclass(frozen=True)
class Profile:
    """A named set of values for a whole study run."""

    name: str
    data: str  # one of DATA_MODES
    image_size: int  # square side in pixels fed to the network
    model: str  # a name from mstl_utils.models.MODELS
    stage1: StageConfig  # ImageNet -> chest X-ray
    stage2: StageConfig  # -> head CT
    head_ct_test_fraction: float = 0.2  # the paper's 80/20 split: 40 of 200 images for testing
    seeds: tuple[int, ...] = (0,)  # one run per seed: stage 1 and the paper's single 80/20 split
    cv_folds: int = 5  # head-CT protocol: stratified folds per repeat
    cv_repeats: int = 10  # head-CT protocol: repeats of the k-fold (repeat r trains with seed r)
    num_threads: int | None = None  # torch CPU threads (None = torch's default)
    deterministic: bool = True  # torch deterministic algorithms; costs little on CPU
    strategy: str = "full"  # transfer strategy of the target runs (mstl_utils.models.transfer): what stage 2 trains
    device: str = "auto"  # where runs train: "auto" (the GPU when there is one), "cpu", "cuda", "cuda:1"
    precision: str = "auto"  # training numerics: "auto" (bf16 autocast on GPU, fp32 on CPU), "fp32", "bf16"
    compile: bool = False  # torch.compile the model (measured slower on the 2-core CI CPU: benchmark appendix)
    # When no ImageNet weights can be found: False stops with an error; True trains
    # from random weights and labels every result "random (ImageNet unavailable)".
    allow_random: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, **changes: Any) -> "Profile":
        """A copy with top-level fields changed; ``stage1``/``stage2`` accept dicts of changes."""
        for key in ("stage1", "stage2"):
            if isinstance(changes.get(key), dict):
                changes[key] = dataclasses.replace(getattr(self, key), **changes[key])
        return dataclasses.replace(self, **changes)


PROFILES: dict[str, Profile] = {
    # Tiny and synthetic: exercises every code path in seconds, for tests.
    "smoke": Profile(
        name="smoke",
        data="synthetic",
        image_size=32,
        model="mobilenet_v2",
        stage1=StageConfig("chest_xray", num_epochs=1, batch_size=8, max_per_class=12),
        stage2=StageConfig("head_ct", num_epochs=2, batch_size=8),
        cv_folds=3,
        cv_repeats=1,
        allow_random=True,  # tests must run on machines without any weights
    ),
    # Real data on a laptop CPU (about an hour on 2 cores): smaller images, fewer
    # stage-1 epochs and 3 of the 10 cross-validation repeats; everything else as the paper.
    "quick": Profile(
        name="quick",
        data="auto",
        image_size=128,
        model="mobilenet_v2",
        stage1=StageConfig("chest_xray", num_epochs=3, batch_size=16),
        stage2=StageConfig("head_ct", num_epochs=10, batch_size=8),
        seeds=(0, 1, 2),
        cv_repeats=3,
    ),
    # The paper's settings (Godasu et al. 2020), meant for a GPU.
    "paper": Profile(
        name="paper",
        data="auto",
        image_size=224,
        model="mobilenet_v2",
        stage1=StageConfig("chest_xray", num_epochs=20, batch_size=16),
        stage2=StageConfig("head_ct", num_epochs=10, batch_size=8),
        seeds=(0, 1, 2),
    ),
}


#: The two bridge stages: chest X-ray fine-tuning from ImageNet (the paper's stage 1)
#: or from random weights (to tell the bridge's contribution from ImageNet's).
STAGE1_INIT = {"stage1": "imagenet", "stage1_scratch": "scratch"}

#: Stage-2 arms and where each starts: ImageNet, random weights or a bridge stage.
ARM_INIT = {
    "scratch": "scratch",  # random -> head CT
    "imagenet": "imagenet",  # ImageNet -> head CT (the paper's single-stage baseline)
    "bridge_only": "stage1_scratch",  # random -> chest X-ray -> head CT
    "multistage": "stage1",  # ImageNet -> chest X-ray -> head CT (the paper's system)
}


def arm_name(init_from: str) -> str:
    """The arm whose stage 2 starts from ``init_from`` (``stage1`` -> ``multistage``)."""
    for arm, init in ARM_INIT.items():
        if init == init_from:
            return arm
    raise ValueError(f"init_from={init_from!r}; expected one of {sorted(ARM_INIT.values())}")


def stage1_name(init_from: str) -> str:
    """The bridge stage that starts from ``init_from`` (``imagenet`` -> ``stage1``)."""
    for name, init in STAGE1_INIT.items():
        if init == init_from:
            return name
    raise ValueError(f"init_from={init_from!r}; a bridge stage starts from one of {sorted(STAGE1_INIT.values())}")


#: The study's settings by their flat names -- notebook parameters and ``make study SET="name=value"`` --
#: and where each lives in a profile. A value of None means "the profile's".
SETTINGS: dict[str, tuple[tuple[str, ...], ...]] = {
    "data": (("data",),),
    "model": (("model",),),
    "image_size": (("image_size",),),
    "bridge": (("stage1", "dataset"),),  # the stage-1 dataset: a name or an ImageFolder folder
    "target": (("stage2", "dataset"),),  # the stage-2 dataset: a name or an ImageFolder folder
    "stage1_epochs": (("stage1", "num_epochs"),),
    "stage2_epochs": (("stage2", "num_epochs"),),
    "stage1_batch_size": (("stage1", "batch_size"),),
    "stage2_batch_size": (("stage2", "batch_size"),),
    "stage1_lr": (("stage1", "lr"),),
    "stage2_lr": (("stage2", "lr"),),
    "weight_decay": (("stage1", "weight_decay"), ("stage2", "weight_decay")),
    "seeds": (("seeds",),),
    "cv_folds": (("cv_folds",),),
    "cv_repeats": (("cv_repeats",),),
    "strategy": (("strategy",),),
    "device": (("device",),),
    "precision": (("precision",),),
}

#: Numeric precisions of the training step (see ``mstl_utils.engine.train``).
PRECISIONS = ("auto", "fp32", "bf16")


def _setting_error(name: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"setting {name}={value!r} is not allowed; expected {allowed}")


def check(profile: Profile) -> Profile:
    """Stop on a setting no run could use, naming it, its value and what is allowed (before any training).
    Names that need the layers above (models, strategies, datasets) are checked there
    (``mstl_utils.experiments.protocol.study_profile``)."""
    if profile.data not in DATA_MODES:
        raise _setting_error("data", profile.data, f"one of {list(DATA_MODES)}")
    if not isinstance(profile.image_size, int) or profile.image_size < 32:
        raise _setting_error("image_size", profile.image_size, "a whole number of pixels >= 32")
    for stage in ("stage1", "stage2"):
        cfg: StageConfig = getattr(profile, stage)
        if not isinstance(cfg.num_epochs, int) or cfg.num_epochs < 1:
            raise _setting_error(f"{stage}_epochs", cfg.num_epochs, "a whole number >= 1")
        if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
            raise _setting_error(f"{stage}_batch_size", cfg.batch_size, "a whole number >= 1")
        if not cfg.lr > 0:
            raise _setting_error(f"{stage}_lr", cfg.lr, "a learning rate > 0")
        if cfg.weight_decay < 0:
            raise _setting_error("weight_decay", cfg.weight_decay, "a penalty >= 0")
    if profile.stage1.dataset == profile.stage2.dataset:
        raise _setting_error("bridge", profile.stage1.dataset, f"a dataset other than the target ({profile.stage2.dataset!r}): "
                             "a bridge that is the target is not a bridge")
    if not profile.seeds or any(not isinstance(seed, int) or seed < 0 for seed in profile.seeds):
        raise _setting_error("seeds", list(profile.seeds), "a non-empty list of whole numbers >= 0")
    if not isinstance(profile.cv_folds, int) or profile.cv_folds < 2:
        raise _setting_error("cv_folds", profile.cv_folds, "a whole number >= 2")
    if not isinstance(profile.cv_repeats, int) or profile.cv_repeats < 1:
        raise _setting_error("cv_repeats", profile.cv_repeats, "a whole number >= 1")
    if profile.precision not in PRECISIONS:
        raise _setting_error("precision", profile.precision, f"one of {list(PRECISIONS)}")
    if not (profile.device in ("auto", "cpu", "cuda", "mps") or str(profile.device).startswith("cuda:")):
        raise _setting_error("device", profile.device, "'auto', 'cpu', 'cuda', 'cuda:<n>' or 'mps'")
    return profile


def get_profile(name: str, **changes: Any) -> Profile:
    """The profile called ``name`` with ``changes``: flat settings (``SETTINGS``: ``model="efficientnet_lite0"``,
    ``stage1_epochs=10``, ``bridge="chest_xray3"``; None keeps the profile's value) or the profile's own fields
    (``stage1={"lr": 1e-4}``, see ``Profile.replace``). An unknown name or a value no run could use stops here."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; expected one of {sorted(PROFILES)}")
    profile = PROFILES[name]
    fields = {f.name for f in dataclasses.fields(Profile)} - {"name"}
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in changes.items():
        if value is None:
            continue
        if key in SETTINGS:
            if key == "seeds":
                value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
            for path in SETTINGS[key]:
                if len(path) == 1:
                    direct[path[0]] = value
                else:
                    nested.setdefault(path[0], {})[path[1]] = value
        elif key in fields:
            if key in ("stage1", "stage2") and isinstance(value, dict):
                nested.setdefault(key, {}).update(value)
            else:
                direct[key] = value
        else:
            raise ValueError(f"unknown setting {key!r}; expected one of {sorted(SETTINGS)} (or a field of Profile: "
                             f"{sorted(fields - set(SETTINGS))})")
    if direct or nested:
        profile = profile.replace(**direct, **nested)
    return check(profile)


def profile_from_dict(values: dict[str, Any]) -> Profile:
    """Rebuild a profile from ``Profile.to_dict()`` (e.g. read back from a run directory)."""
    values = dict(values)
    values["stage1"] = StageConfig(**values["stage1"])
    values["stage2"] = StageConfig(**values["stage2"])
    values["seeds"] = tuple(values["seeds"])
    return Profile(**values)


def dumps(config: Any) -> str:
    """JSON text of a dataclass config, stable for hashing and diffing."""
    return json.dumps(asdict(config), indent=2, sort_keys=True)


#: The core chapters (by their executed notebook's name): the paper's question answered, what ``make study``
#: runs by default and what the speed targets of a study count (data, stage 1, the paper's setting,
#: cross-validation, results).
CORE_CHAPTERS = ("data", "stage1", "stage1_scratch", "stage2_imagenet", "stage2_multistage", "crossval", "results")

#: Head-CT test accuracies reported by Godasu, El-Gayar & Sutrave (AMCIS 2020), shown
#: beside (never instead of) this study's own measurements.
PAPER_HEAD_CT_ACCURACY = {"imagenet": 0.75, "multistage": 0.875}
