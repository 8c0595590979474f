"""Random crop with zero padding and random horizontal flip of a batch: the standard small-image augmentation of the
unlearnable-examples papers' victims, also used to train the error-minimizing surrogate as the victim would train."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["random_crop_flip"]


def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pad ``x`` (B, C, H, W) with ``pad`` zeros, crop back to ``H x W`` at a random offset and flip horizontally
    with probability 1/2, independently per image. ``generator`` (CPU) draws the offsets and flips."""
    b, _, h, w = x.shape
    xp = nn.functional.pad(x, (pad, pad, pad, pad))
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    out = torch.empty_like(x)
    for i in range(b):
        crop = xp[i, :, oy[i] : oy[i] + h, ox[i] : ox[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out
