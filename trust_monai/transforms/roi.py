"""Where UMed may perturb and by how much: the contour band of a mask and a texture map inside the ROI.

One code path for 2D and 3D: the spatial rank is read from the tensor (``(B, C, *spatial)`` for the functions,
``(C, *spatial)`` for the transforms, as in MONAI).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.transforms.utils_morphological_ops import dilate, erode
from monai.utils import convert_to_tensor

from ..errors import TrustMonaiError

__all__ = [
    "contour_band",
    "texture_map",
    "budget_map",
    "ContourBand",
    "ContourBandd",
    "TextureMap",
    "TextureMapd",
]


def _check_batched(x: torch.Tensor, name: str) -> None:
    if x.ndim not in (4, 5):
        raise TrustMonaiError(f"{name} must be (B, C, H, W) or (B, C, D, H, W), got shape {tuple(x.shape)}")


def contour_band(mask: torch.Tensor, width: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Contour band and protected region of a (multi-class) mask.

    Args:
        mask: (B, C, *spatial) label map (any integer classes; foreground is ``> 0``) or one-hot / binary mask.
        width: band half-width in voxels; the band is dilation minus erosion with a ``2 * width + 1`` cube.

    Returns:
        ``(band, region)``: float tensors of shape (B, 1, *spatial) with values in {0, 1}. ``band`` is the contour band
        of the foreground, ``region`` = foreground OR band, i.e. everywhere UMed may change a voxel.
    """
    _check_batched(mask, "mask")
    fg = (mask > 0).any(dim=1, keepdim=True).float()
    if width <= 0:
        return torch.zeros_like(fg), fg
    k = 2 * int(width) + 1
    grown = dilate(fg, filter_size=k)
    shrunk = erode(fg, filter_size=k)
    band = (grown - shrunk).clamp_(0, 1)
    return band, torch.maximum(band, fg)


def _sobel_kernels(spatial_dims: int, device, dtype) -> torch.Tensor:
    """Separable Sobel kernels, one per axis: derivative along the axis, smoothing along the others."""
    d = torch.tensor([-1.0, 0.0, 1.0], device=device, dtype=dtype)
    s = torch.tensor([1.0, 2.0, 1.0], device=device, dtype=dtype)
    kernels = []
    for axis in range(spatial_dims):
        k = torch.ones((1,) * spatial_dims, device=device, dtype=dtype)
        for a in range(spatial_dims):
            v = (d if a == axis else s).reshape([3 if b == a else 1 for b in range(spatial_dims)])
            k = k * v
        kernels.append(k)
    return torch.stack(kernels)[:, None]  # (spatial_dims, 1, 3, ...)


def texture_map(image: torch.Tensor, region: torch.Tensor, floor: float = 0.25) -> torch.Tensor:
    """Texture strength in ``[floor, 1]`` inside ``region`` (zero outside): normalised Sobel gradient magnitude.

    Textured tissue hides a change better than flat tissue, so the per-voxel budget scales with it; the floor keeps
    flat parts of the ROI protectable.

    Args:
        image: (B, C, *spatial) intensities (channels are averaged).
        region: (B, 1, *spatial) where perturbation is allowed.
        floor: smallest weight inside the region.

    Returns:
        (B, 1, *spatial) float weights.
    """
    _check_batched(image, "image")
    if not bool(torch.isfinite(image).all()):
        raise TrustMonaiError("texture map: the image has NaN or Inf voxels")
    sd = image.ndim - 2
    x = image.float().mean(dim=1, keepdim=True)
    peak = float(x.abs().max()) if x.numel() else 0.0
    if peak > 1e15:
        # squared gradients of values this large overflow float32 (inf, then NaN budgets); the map is scale-free
        x = x / peak
    kernels = _sobel_kernels(sd, x.device, x.dtype)
    conv = F.conv2d if sd == 2 else F.conv3d
    pad = (1,) * (2 * sd)
    grads = conv(F.pad(x, pad, mode="replicate"), kernels)
    mag = grads.pow(2).sum(dim=1, keepdim=True).sqrt() * region
    flat = mag.flatten(1)
    # the 99th percentile inside the region, not the max, so one edge voxel does not flatten the whole map
    hi = torch.stack([
        torch.quantile(f[r > 0], 0.99) if (r > 0).any() else f.new_tensor(1.0)
        for f, r in zip(flat, region.flatten(1))
    ]).clamp_min(1e-8)
    hi = hi.reshape((-1,) + (1,) * (image.ndim - 1))
    weight = floor + (1.0 - floor) * (mag / hi).clamp(0, 1)
    return weight * region


def budget_map(
    image: torch.Tensor, mask: torch.Tensor, epsilon: float, width: int = 2, floor: float = 0.25
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-voxel L-inf budget: ``epsilon`` on the contour band, ``epsilon * texture`` inside the ROI, 0 elsewhere.

    Returns:
        ``(eps_map, band, region)``, each (B, 1, *spatial).
    """
    band, region = contour_band(mask, width)
    interior = region - band
    tex = texture_map(image, interior, floor)
    return epsilon * torch.maximum(band, tex), band, region


class ContourBand(Transform):
    """Array transform: (C, *spatial) mask -> (2, *spatial) ``[band, region]`` (see :func:`contour_band`)."""

    def __init__(self, width: int = 2) -> None:
        self.width = width

    def __call__(self, mask):
        m = convert_to_tensor(mask, track_meta=False)
        band, region = contour_band(m[None], self.width)
        return torch.cat([band, region], dim=1)[0]


class ContourBandd(MapTransform):
    """Dict twin of :class:`ContourBand`: writes ``band_key`` and ``region_key`` from the mask at ``keys``."""

    def __init__(
        self,
        keys: KeysCollection,
        width: int = 2,
        band_key: str = "band",
        region_key: str = "region",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.op = ContourBand(width)
        self.band_key, self.region_key = band_key, region_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            out = self.op(d[key])
            d[self.band_key], d[self.region_key] = out[:1], out[1:]
        return d


class TextureMap(Transform):
    """Array transform: (C, *spatial) image and (1, *spatial) region -> (1, *spatial) weights in [floor, 1]."""

    def __init__(self, floor: float = 0.25) -> None:
        self.floor = floor

    def __call__(self, image, region):
        img = convert_to_tensor(image, track_meta=False)
        reg = convert_to_tensor(region, track_meta=False).to(img.device)
        return texture_map(img[None], reg[None].float(), self.floor)[0]


class TextureMapd(MapTransform):
    """Dict twin of :class:`TextureMap`: reads the image at ``keys`` and ``region_key``, writes ``texture_key``."""

    def __init__(
        self,
        keys: KeysCollection,
        region_key: str = "region",
        texture_key: str = "texture",
        floor: float = 0.25,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.op = TextureMap(floor)
        self.region_key, self.texture_key = region_key, texture_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.texture_key] = self.op(d[key], d[self.region_key])
        return d
