"""Batches straight from decoded uint8 tensors, augmented as whole batches on the device.

A ``DataLoader`` over per-image ``Dataset`` items pays Python overhead per image
and augments on the CPU one image at a time. Here a batch is one index into the
decoded tensor (kept on the GPU when there is one), converted to float and
augmented there with one ``affine_grid``/``grid_sample`` call. Every random number
(shuffle order, augmentation) comes from one explicit ``torch.Generator``, so a
run that saves that generator's state each epoch resumes bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.nn import functional as F

#: Mild geometry only: intensity is the signal in CT and X-ray.
MAX_DEGREES = 10.0  # rotation in [-10, 10] degrees
MAX_SHIFT = 0.05  # translation up to 5 % of the side
MAX_ZOOM = 0.05  # scale in [0.95, 1.05]


def affine_matrices(u: torch.Tensor) -> torch.Tensor:
    """``[N, 2, 3]`` affine matrices from ``[N, 5]`` uniform numbers: flip (p = 0.5), rotation, shift, zoom."""
    flip = torch.where(u[:, 0] < 0.5, -1.0, 1.0).to(u.dtype)
    angle = (2 * u[:, 1] - 1) * math.radians(MAX_DEGREES)
    # affine_grid works in [-1, 1] coordinates: a shift of f of the side is 2f there.
    shift = (2 * u[:, 2:4] - 1) * 2 * MAX_SHIFT
    scale = 1 + (2 * u[:, 4] - 1) * MAX_ZOOM
    # The matrix maps output coordinates to input ones, hence 1/scale.
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return torch.stack([
        torch.stack([flip * cos, -sin, shift[:, 0]], 1),
        torch.stack([flip * sin, cos, shift[:, 1]], 1),
    ], 1)


def apply_affine(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Warp each image of a float ``[N, C, H, W]`` batch by its matrix; outside pixels are black."""
    theta = matrices.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_affine(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip, rotate, shift and zoom each image of a float ``[N, C, H, W]`` batch independently.

    The parameters are drawn on the CPU from ``generator`` (so they do not depend on
    the device) and applied on the batch's device.
    """
    u = torch.rand(images.shape[0], 5, generator=generator, dtype=torch.float64)
    return apply_affine(images, affine_matrices(u))


class TensorBatches:
    """Batches of ``(float images in [0, 1], labels)`` on ``device`` from a uint8 ``[N, 1, S, S]`` tensor.

    ``shuffle`` draws a new order each pass and ``augment`` applies ``random_affine``,
    both from ``generator``. ``drop_last`` drops a ragged last batch (a batch of one
    breaks batch norm in training).
    """

    def __init__(self, images: torch.Tensor, labels, *, batch_size: int, shuffle: bool = False,
                 augment: bool = False, drop_last: bool = False, generator: torch.Generator | None = None,
                 device: str | torch.device = "cpu"):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images: expected a uint8 [N, C, H, W] tensor, got {images.dtype} {tuple(images.shape)}")
        if (shuffle or augment) and generator is None:
            raise ValueError("shuffle/augment need an explicit torch.Generator (for reproducible, resumable runs)")
        self.device = torch.device(device)
        # On a GPU the whole decoded set lives on the card: no host-to-device copy per batch.
        self.images = images.to(self.device)
        self.labels = torch.as_tensor(np.array(labels), dtype=torch.long).to(self.device)
        if len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        self.batch_size = batch_size
        self.shuffle, self.augment, self.drop_last = shuffle, augment, drop_last
        self.generator = generator

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_images(self) -> int:
        """Images one pass yields."""
        return min(len(self) * self.batch_size, len(self.labels))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = order.to(self.device)
        if self.augment:
            # The whole pass's augmentation drawn at once (the same numbers, in the same order, as
            # batch by batch) and copied to the device once: no host-device copy, hence no
            # synchronisation, inside the step loop.
            u = torch.rand(self.num_images, 5, generator=self.generator, dtype=torch.float64)
            matrices = affine_matrices(u).to(self.device)
        for batch in range(len(self)):
            rows = slice(batch * self.batch_size, (batch + 1) * self.batch_size)
            images = self.images[order[rows]].float().div_(255)
            if self.augment:
                images = apply_affine(images, matrices[rows])
            yield images, self.labels[order[rows]]
