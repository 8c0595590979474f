"""Dual split: two disjoint half-resolution sub-images by coordinate parity, and its exact inverse.

Dual Randomized Smoothing ("Dual Randomized Smoothing: Breaking the Curse of Dimensionality in Randomized
Smoothing", ICLR 2024) smooths two sub-images of half the dimension each. One rule serves 2D and 3D: an element
belongs to half ``l`` when the sum of its spatial coordinates is even and to half ``r`` when it is odd (in 2D these are
the two diagonals of every 2x2 block; in 3D the voxel-parity checkerboard). Every row along the last spatial axis has
exactly half of its elements in each half, alternating, so each half is stored densely with the last axis halved:
``(C, H, W)`` -> two ``(C, H, W/2)``, ``(C, D, H, W)`` -> two ``(C, D, H, W/2)``, the kept elements of each row in
their original order. The two halves partition the coordinates, so for any perturbation ``e`` of the full image,
``||e||^2 = ||e_l||^2 + ||e_r||^2``, the fact the DRS certificate rests on.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_tensor

from ..errors import TrustMonaiError

__all__ = ["dual_split", "dual_merge", "parity_offset", "DualSplit", "DualMerge", "DualSplitd", "DualMerged"]


def parity_offset(spatial_shape: Sequence[int], device=None) -> torch.Tensor:
    """``(s_1 + ... + s_{k-1}) % 2`` for every row of the last axis: the column of half ``l``'s first element.

    Shape ``spatial_shape[:-1] + (1,)`` (broadcasts against the halves), dtype bool (True = odd offset).
    """
    lead = spatial_shape[:-1]
    off = torch.zeros((), dtype=torch.long, device=device)
    for i, n in enumerate(lead):
        shape = [1] * len(lead)
        shape[i] = n
        off = off + torch.arange(n, device=device).view(shape)
    return (off % 2 == 1).reshape(*lead, 1) if lead else off.reshape(1).bool()


def _check(x: torch.Tensor, spatial_dims: int) -> None:
    if spatial_dims not in (1, 2, 3):
        raise TrustMonaiError(f"dual split: spatial_dims must be 1, 2 or 3, got {spatial_dims}")
    if x.ndim < spatial_dims:
        raise TrustMonaiError(f"dual split: input of shape {tuple(x.shape)} has fewer than {spatial_dims} spatial axes")
    if x.shape[-1] % 2:
        raise TrustMonaiError(
            f"dual split needs an even last spatial axis, got shape {tuple(x.shape)}; pad it first "
            "(e.g. monai.transforms.DivisiblePad(k=2))"
        )


def dual_split(x: torch.Tensor, spatial_dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the last ``spatial_dims`` axes of ``x`` into the even- and odd-parity halves.

    Args:
        x: ``(..., *spatial)``, any leading (batch / channel) axes; the last axis must be even.
        spatial_dims: number of trailing spatial axes (2 or 3; 1 works too).

    Returns:
        ``(x_l, x_r)``, each ``(..., *spatial[:-1], spatial[-1] // 2)``: ``x_l`` holds the elements whose coordinate
        sum is even, ``x_r`` the odd ones, each row in its original order.
    """
    _check(x, spatial_dims)
    spatial = x.shape[x.ndim - spatial_dims:]
    pairs = x.reshape(*x.shape[:-1], spatial[-1] // 2, 2)  # (..., W/2, 2): the two columns 2k and 2k+1
    odd = parity_offset(spatial, x.device)  # True where the row's even-parity element sits in column 2k+1
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.where(odd, b, a), torch.where(odd, a, b)


def dual_merge(x_l: torch.Tensor, x_r: torch.Tensor, spatial_dims: int) -> torch.Tensor:
    """Exact inverse of :func:`dual_split`: ``dual_merge(*dual_split(x, d), d) == x``."""
    if x_l.shape != x_r.shape:
        raise TrustMonaiError(f"dual merge: halves differ in shape, {tuple(x_l.shape)} vs {tuple(x_r.shape)}")
    if x_l.ndim < spatial_dims:
        raise TrustMonaiError(f"dual merge: halves of shape {tuple(x_l.shape)} have fewer than {spatial_dims} axes")
    spatial = list(x_l.shape[x_l.ndim - spatial_dims:])
    spatial[-1] *= 2
    odd = parity_offset(spatial, x_l.device)
    a, b = torch.where(odd, x_r, x_l), torch.where(odd, x_l, x_r)
    return torch.stack((a, b), dim=-1).reshape(*x_l.shape[:-1], spatial[-1])


class DualSplit(Transform):
    """Array transform: channel-first image ``(C, *spatial)`` -> ``(x_l, x_r)``, each with the last axis halved.

    Args:
        spatial_dims: spatial axes of the input; ``None`` = ``img.ndim - 1`` (channel-first image).
    """

    def __init__(self, spatial_dims: int | None = None) -> None:
        self.spatial_dims = spatial_dims

    def __call__(self, img) -> tuple[torch.Tensor, torch.Tensor]:
        x = convert_to_tensor(img, track_meta=False)
        return dual_split(x, self.spatial_dims or x.ndim - 1)


class DualMerge(Transform):
    """Array transform, inverse of :class:`DualSplit`: ``(x_l, x_r)`` -> the full image."""

    def __init__(self, spatial_dims: int | None = None) -> None:
        self.spatial_dims = spatial_dims

    def __call__(self, x_l, x_r) -> torch.Tensor:
        a, b = convert_to_tensor(x_l, track_meta=False), convert_to_tensor(x_r, track_meta=False)
        return dual_merge(a, b, self.spatial_dims or a.ndim - 1)


class DualSplitd(MapTransform):
    """Dict twin of :class:`DualSplit`: writes ``<key><suffixes[0]>`` and ``<key><suffixes[1]>`` (``image_l``,
    ``image_r``); the full image stays under ``key`` unless ``remove_source``."""

    def __init__(
        self,
        keys: KeysCollection,
        spatial_dims: int | None = None,
        suffixes: Sequence[str] = ("_l", "_r"),
        remove_source: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.op = DualSplit(spatial_dims)
        self.suffixes, self.remove_source = tuple(suffixes), remove_source

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            x_l, x_r = self.op(d[key])
            d[f"{key}{self.suffixes[0]}"], d[f"{key}{self.suffixes[1]}"] = x_l, x_r
            if self.remove_source:
                del d[key]
        return d


class DualMerged(MapTransform):
    """Dict twin of :class:`DualMerge`: ``<key><suffixes[0]>`` + ``<key><suffixes[1]>`` -> ``key``."""

    def __init__(
        self,
        keys: KeysCollection,
        spatial_dims: int | None = None,
        suffixes: Sequence[str] = ("_l", "_r"),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.op = DualMerge(spatial_dims)
        self.suffixes = tuple(suffixes)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.keys:
            kl, kr = f"{key}{self.suffixes[0]}", f"{key}{self.suffixes[1]}"
            if kl not in d or kr not in d:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"DualMerged: needs both {kl!r} and {kr!r}")
            d[key] = self.op(d[kl], d[kr])
        return d
