"""Transfer strategies: which parameters a stage trains, at which learning rate, and what
the batch-norm layers of the frozen part do.

A strategy is data (``Strategy``), named in ``STRATEGIES`` and passed to a stage by
name (``RunSpec(..., strategy="features")``, or a profile's ``strategy``). ``apply`` prepares a freshly
built or loaded model for it and returns the optimiser's parameter groups.

Batch norm is the known pitfall: a "frozen" block whose batch-norm layers stay in
training mode still normalises with the statistics of each small batch and keeps
overwriting its running statistics with the new data's, so the features it feeds the
head drift although no weight is trained. ``frozen_bn="eval"`` keeps them as
pretrained; ``"train"`` reproduces the pitfall, to measure it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from . import registry as models

#: What the batch-norm layers of frozen blocks do (see the module docstring).
FROZEN_BN = ("eval", "train")


@dataclass(frozen=True)
class Strategy:
    """How a stage fine-tunes: the trainable top of the network, batch norm, learning rates."""

    name: str
    trainable_blocks: int | None = None  # blocks trained, counted from the output end (None: all; 0: head only)
    frozen_bn: str = "eval"  # batch norm in frozen blocks: "eval" (kept as pretrained) or "train" (the pitfall)
    lowest_lr_factor: float = 1.0  # learning-rate factor of the first block; rises geometrically to 1 at the head
    note: str = ""

    def __post_init__(self) -> None:
        if self.frozen_bn not in FROZEN_BN:
            raise ValueError(f"frozen_bn={self.frozen_bn!r}; expected one of {FROZEN_BN}")
        if self.trainable_blocks is not None and self.trainable_blocks < 0:
            raise ValueError(f"trainable_blocks={self.trainable_blocks}; expected None (all) or >= 0")
        if not 0 < self.lowest_lr_factor <= 1:
            raise ValueError(f"lowest_lr_factor={self.lowest_lr_factor}; expected a factor in (0, 1]")


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("full", note="every parameter trained at the stage's learning rate (the papers' setting)"),
    Strategy("features", trainable_blocks=0, note="feature extraction: backbone frozen, batch norm kept as pretrained"),
    Strategy("features_bn_train", trainable_blocks=0, frozen_bn="train",
             note="feature extraction with the frozen batch norm left in training mode (the pitfall)"),
    Strategy("top3", trainable_blocks=3, note="partial freezing: the top 3 blocks and the head trained"),
    Strategy("discriminative", lowest_lr_factor=0.01,
             note="everything trained, learning rates rising from 1/100 at the first block to 1 at the head"),
)}

DEFAULT = "full"


def get(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown transfer strategy {name!r}; expected one of {sorted(STRATEGIES)}")
    return STRATEGIES[name]


def apply(model: models.GreyInput, model_name: str, strategy: str | Strategy, lr: float) -> list[dict]:
    """Freeze what ``strategy`` keeps fixed (``requires_grad=False``, batch norm per ``frozen_bn``) and
    return Adam's parameter groups: the trainable parameters with their learning rates.

    Parameters outside the listed blocks and the head (none in the registered models)
    belong with the first block."""
    strategy = get(strategy) if isinstance(strategy, str) else strategy
    spec = models.spec_of(model_name)
    blocks = models.blocks(model.backbone, spec)
    head = model.backbone.get_submodule(models.head_path(spec))
    n = len(blocks)
    first_trained = 0 if strategy.trainable_blocks is None else max(0, n - strategy.trainable_blocks)
    # Depth of each block from the input (0) to the head (n): geometric learning-rate factors.
    factor = [strategy.lowest_lr_factor ** ((n - depth) / n) for depth in range(n + 1)]
    owner: dict[int, int] = {}
    for depth, (_, block) in enumerate(blocks):
        for p in block.parameters():
            owner.setdefault(id(p), depth)
    for p in head.parameters():
        owner[id(p)] = n
    groups: dict[int, list[nn.Parameter]] = {}
    for p in model.backbone.parameters():
        depth = owner.get(id(p), 0)
        p.requires_grad_(depth >= first_trained)
        if p.requires_grad:
            groups.setdefault(depth, []).append(p)
    frozen_norms = []
    if strategy.frozen_bn == "eval":
        for name, block in blocks[:first_trained]:
            frozen_norms += [f"{name}.{sub}" if sub else name for sub, m in block.named_modules()
                             if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.frozen_norms = tuple(frozen_norms)
    return [{"params": params, "lr": lr * factor[depth]} for depth, params in sorted(groups.items())]


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
