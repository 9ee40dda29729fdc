"""The model registry: one way to build a network, reset its head and load weights.

Every model takes one grey channel in [0, 1]; ``GreyInput`` repeats it to the
three channels the ImageNet stem expects and applies the normalisation that
belongs to the weights (ImageNet mean/std for torchvision weights). The
normalisation therefore travels with the model and its checkpoints. A model built
with ``in_chans=3`` takes RGB instead (only the colour-shortcut experiment does).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torchvision import models as tvm

from . import paths, repro

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """How to build one architecture and where its ImageNet weights come from."""

    name: str
    build: Callable[[], nn.Module]  # the architecture with random weights
    classifier: str  # attribute path of the final linear layer, e.g. "classifier.1"
    official_weights: str  # torchvision weights enum, e.g. "MobileNet_V2_Weights.IMAGENET1K_V1"
    local_file: str | None  # file name in the local weights folder, if one exists
    local_note: str = ""  # what the local file is, for the provenance record
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


MODELS: dict[str, ModelSpec] = {
    "mobilenet_v2": ModelSpec(
        name="mobilenet_v2",
        build=lambda: tvm.mobilenet_v2(weights=None),
        classifier="classifier.1",
        official_weights="MobileNet_V2_Weights.IMAGENET1K_V1",
        local_file="mobilenet_v2_imagenet_backbone.pth",
        local_note="independently trained ImageNet MobileNetV2 backbone (not torchvision's IMAGENET1K_V1); no classifier",
    ),
}


@dataclass(frozen=True)
class WeightsInfo:
    """Which weights a model started from; goes into every run's provenance."""

    init: str  # "imagenet", "scratch" or "checkpoint"
    source: str  # "torchvision-official", "local-file", "random", or the checkpoint's stage
    file: str | None = None  # file name (never an absolute path)
    sha256: str | None = None
    note: str = ""


class WeightsNotFoundError(FileNotFoundError):
    """ImageNet weights were asked for and none could be found."""


class GreyInput(nn.Module):
    """Adapts a 3-channel ImageNet network to one grey channel in [0, 1] (or ``in_chans=3``: RGB in [0, 1])."""

    def __init__(self, backbone: nn.Module, *, mean: tuple[float, ...], std: tuple[float, ...], in_chans: int = 1):
        super().__init__()
        if in_chans not in (1, len(mean)):
            raise ValueError(f"in_chans={in_chans}; expected 1 (grey) or {len(mean)}")
        self.backbone = backbone
        # A plain attribute, not a buffer: the state_dict (and every checkpoint) stays as it was.
        self.in_chans = in_chans
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # expand() would also stretch one channel to three: a grey image fed to a colour model
        # must be a decision of the caller, never a silent broadcast.
        if x.shape[1] != self.in_chans:
            raise ValueError(f"input has {x.shape[1]} channel(s); this model takes in_chans={self.in_chans}")
        x = x.expand(-1, self.mean.shape[1], -1, -1)
        return self.backbone((x - self.mean) / self.std)


def _get_attr(module: nn.Module, dotted: str) -> nn.Module:
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def reset_classifier(model: GreyInput, spec: ModelSpec, num_classes: int) -> None:
    """Replace the final linear layer with a fresh one of ``num_classes`` outputs."""
    parent_name, _, leaf = spec.classifier.rpartition(".")
    parent = _get_attr(model.backbone, parent_name) if parent_name else model.backbone
    old = getattr(parent, leaf)
    setattr(parent, leaf, nn.Linear(old.in_features, num_classes))


def num_outputs(model: GreyInput, spec: ModelSpec) -> int:
    return _get_attr(model.backbone, spec.classifier).out_features


def _official_state_dict(spec: ModelSpec) -> dict[str, torch.Tensor] | None:
    """torchvision's official weights (cached or downloaded); None when unreachable."""
    if paths.offline():
        return None
    enum_name, member = spec.official_weights.split(".")
    weights = getattr(getattr(tvm, enum_name), member)
    try:
        return weights.get_state_dict(progress=False)
    except Exception as error:  # URLError, socket errors, HTTP errors...
        log.info("official weights %s unreachable: %s", spec.official_weights, error)
        return None


def load_imagenet(backbone: nn.Module, spec: ModelSpec, *, weights_dir: str | Path | None = None) -> WeightsInfo:
    """Load ImageNet weights into ``backbone`` (1000-class head still attached).

    A configured local folder (``weights_dir`` or ``$MSTL_WEIGHTS_DIR``) wins, so
    that runs on offline machines are reproducible; otherwise torchvision's
    official weights. Never falls back to random weights.
    """
    folder = paths.weights_dir(weights_dir)
    looked = []
    if folder is not None and spec.local_file:
        file = folder / spec.local_file
        if file.is_file():
            state = torch.load(file, map_location="cpu", weights_only=True)
            missing, unexpected = backbone.load_state_dict(state, strict=False)
            head = {f"{spec.classifier}.weight", f"{spec.classifier}.bias"}
            if unexpected or set(missing) - head:
                raise ValueError(f"{file}: does not fit {spec.name} (missing {sorted(set(missing) - head)[:5]}, unexpected {unexpected[:5]})")
            return WeightsInfo("imagenet", "local-file", file.name, repro.sha256_file(file), spec.local_note)
        looked.append(f"local file {file}")
    elif spec.local_file:
        looked.append(f"a local folder (${paths.ENV_WEIGHTS_DIR} is not set)")
    state = _official_state_dict(spec)
    if state is not None:
        backbone.load_state_dict(state)
        return WeightsInfo("imagenet", "torchvision-official", spec.official_weights, None, "torchvision official")
    looked.append(f"torchvision {spec.official_weights} (offline or unreachable)")
    raise WeightsNotFoundError(
        f"no ImageNet weights for {spec.name}. Looked for: " + "; ".join(looked)
        + f". Set {paths.ENV_WEIGHTS_DIR} to a folder holding {spec.local_file or 'the weights'}, run where "
        "download.pytorch.org is reachable, or pass init='scratch' to train from random weights knowingly."
    )


def build_model(
    name: str,
    *,
    num_classes: int,
    init: str = "imagenet",
    weights_dir: str | Path | None = None,
    allow_random: bool = False,
    in_chans: int = 1,
) -> tuple[GreyInput, WeightsInfo]:
    """Build ``name`` for ``num_classes`` classes, starting from ``imagenet`` or ``scratch`` weights,
    taking ``in_chans`` input channels (1: grey, 3: RGB).

    ``allow_random=True`` turns missing ImageNet weights into a random start that is
    labelled as such (source ``random (ImageNet unavailable)``) instead of an error.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    spec = MODELS[name]
    backbone = spec.build()
    if init == "imagenet":
        try:
            info = load_imagenet(backbone, spec, weights_dir=weights_dir)
        except WeightsNotFoundError as error:
            if not allow_random:
                raise
            log.warning("%s -- continuing from RANDOM weights, as allowed", error)
            info = WeightsInfo("imagenet", "random (ImageNet unavailable)", note=str(error).split(". Set")[0])
    elif init == "scratch":
        info = WeightsInfo("scratch", "random", note="random initialisation, chosen explicitly")
    else:
        raise ValueError(f"init={init!r}; expected 'imagenet' or 'scratch' (checkpoints: see load_from_checkpoint)")
    model = GreyInput(backbone, mean=spec.mean, std=spec.std, in_chans=in_chans)
    reset_classifier(model, spec, num_classes)
    return model, info


def load_from_checkpoint(
    checkpoint: dict, *, num_classes: int, stage: str, file: str | None = None, sha256: str | None = None
) -> tuple[GreyInput, WeightsInfo]:
    """A model continued from an earlier stage's checkpoint; the head is replaced when the
    class count differs (e.g. 3-class chest X-ray -> 2-class head CT). The input channels are the
    checkpoint's (``in_chans``; absent: 1, grey)."""
    spec = MODELS[checkpoint["model"]]
    model = GreyInput(spec.build(), mean=spec.mean, std=spec.std, in_chans=checkpoint.get("in_chans", 1))
    reset_classifier(model, spec, checkpoint["num_classes"])
    model.load_state_dict(checkpoint["state_dict"])
    if checkpoint["num_classes"] != num_classes:
        reset_classifier(model, spec, num_classes)
    origin = checkpoint.get("weights", {})
    # The chain's first weights stay visible however many stages follow: a checkpoint that
    # itself continued another passes on where its chain began.
    began = (origin.get("note", "").partition("chain began with ")[2] if origin.get("init") == "checkpoint" else
             f"{origin.get('source')} {origin.get('file') or ''} {origin.get('sha256') or ''}")
    note = f"continued from {stage}; chain began with {began}"
    return model, WeightsInfo("checkpoint", stage, file, sha256, " ".join(note.split()))
