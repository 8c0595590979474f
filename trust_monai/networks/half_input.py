"""Run a full-resolution network on one half of a dual split (Dual Randomized Smoothing's base classifiers).

"Dual Randomized Smoothing" (ICLR 2024) feeds each base classifier one half-resolution sub-image and lets it
interpolate back to full resolution. :class:`HalfInput` does that interpolation deterministically: the half's
elements go back to their own grid positions and every missing position (the other parity) gets the mean of its
``2 * spatial_dims`` axis neighbours, which all belong to this half. A deterministic function of the noisy half
leaves the smoothing certificate intact, and the wrapped network never sees the other half.
"""

from __future__ import annotations

import torch
from torch import nn

from ..transforms.dual_split import dual_merge

__all__ = ["HalfInput", "fill_half"]


def fill_half(half: torch.Tensor, spatial_dims: int, which: str = "l") -> torch.Tensor:
    """Full-resolution image from one half ``(B, C, *spatial[:-1], W/2)``: own positions kept, the others the mean
    of their in-bounds axis neighbours. Returns ``(B, C, *spatial)``."""
    zeros = torch.zeros_like(half)
    ones = torch.ones_like(half[:, :1])
    if which == "l":
        full, mask = dual_merge(half, zeros, spatial_dims), dual_merge(ones, torch.zeros_like(ones), spatial_dims)
    elif which == "r":
        full, mask = dual_merge(zeros, half, spatial_dims), dual_merge(torch.zeros_like(ones), ones, spatial_dims)
    else:
        raise ValueError(f"which must be 'l' or 'r', got {which!r}")
    conv = (nn.functional.conv2d, nn.functional.conv3d)[spatial_dims - 2]
    kernel = torch.zeros((3,) * spatial_dims, dtype=half.dtype, device=half.device)
    centre = (1,) * spatial_dims
    for ax in range(spatial_dims):  # the axis neighbours: a cross, not the full 3^d block
        for s in (0, 2):
            idx = list(centre)
            idx[ax] = s
            kernel[tuple(idx)] = 1.0
    c = half.shape[1]
    nsum = conv(full, kernel.expand(c, 1, *kernel.shape), padding=1, groups=c)
    ncount = conv(mask, kernel[None, None], padding=1).clamp_min(1.0)
    return full * mask + (nsum / ncount) * (1.0 - mask)


class HalfInput(nn.Module):
    """Wrap ``network`` so it reads one dual-split half and sees it at full resolution (:func:`fill_half`).

    Args:
        network: any full-resolution network (classifier or segmenter).
        spatial_dims: 2 or 3.
        which: ``"l"`` (even coordinate sum) or ``"r"`` (odd); only the positions of that half are reconstructed.

    Shapes:
        input ``(B, C, *spatial[:-1], W/2)``; output whatever ``network`` returns for ``(B, C, *spatial)``.
    """

    def __init__(self, network: nn.Module, spatial_dims: int = 2, which: str = "l"):
        super().__init__()
        if which not in ("l", "r"):
            raise ValueError(f"which must be 'l' or 'r', got {which!r}")
        self.network, self.spatial_dims, self.which = network, int(spatial_dims), which

    def forward(self, half: torch.Tensor) -> torch.Tensor:
        return self.network(fill_half(half, self.spatial_dims, self.which))
