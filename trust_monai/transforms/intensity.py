"""Map scan intensities to [0, 1] through a stated window, and back, so budgets are in normalised units.

CT uses a fixed Hounsfield window (default -1000..1000 HU: lung to dense soft tissue); MR and other modalities a
per-image percentile window (0.5..99.5 %). The window is stored beside the image (``<key>_window``) so a change made
in [0, 1] maps back to the scan's own units exactly: ``delta_native = delta * (high - low)``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_tensor

from ..errors import TrustMonaiError

__all__ = ["CT_WINDOW", "LUMA", "is_colour", "to_luminance", "scan_window", "ScanNormalize", "ScanNormalized", "GreyChannelFirstd"]

CT_WINDOW = (-1000.0, 1000.0)
# ITU-R BT.601 luma weights: colour photographs (fundus, dermoscopy) enter the networks as one luminance channel
LUMA = (0.299, 0.587, 0.114)


def is_colour(image, spatial_dims: int) -> bool:
    """True for a channel-last RGB / RGBA array of ``spatial_dims`` spatial axes (what PNG / TIFF readers return)."""
    return image.ndim == spatial_dims + 1 and image.shape[-1] in (3, 4)


def to_luminance(image):
    """Luminance of a channel-last RGB(A) array (alpha ignored), as float; numpy or torch in, same kind out."""
    rgb = image[..., :3]
    if isinstance(rgb, torch.Tensor):
        return (rgb.float() * torch.as_tensor(LUMA, device=rgb.device)).sum(-1)
    return (np.asarray(rgb, dtype=np.float64) * np.asarray(LUMA)).sum(-1)


def to_channels(change, channels: int):
    """A luminance change as a channel-last colour change: the same value in R, G and B (so luminance moves by exactly
    ``change`` and each channel stays within any bound on it), alpha (a 4th channel) unchanged."""
    return np.stack([change] * 3 + [np.zeros_like(change)] * (channels - 3), -1)


def scan_window(image, modality: str = "MR", ct_window: Sequence[float] = CT_WINDOW, percentiles=(0.5, 99.5)):
    """``(low, high)`` intensity window of an image: fixed for CT, percentiles of the image otherwise."""
    if str(modality).upper() == "CT":
        low, high = float(ct_window[0]), float(ct_window[1])
    else:
        arr = convert_to_tensor(image, track_meta=False).float().flatten()
        finite = arr[torch.isfinite(arr)]
        if finite.numel() == 0:
            raise TrustMonaiError("image has no finite voxel; cannot set an intensity window")
        q = torch.quantile(finite[:: max(1, finite.numel() // 2_000_000)], torch.tensor(percentiles) / 100.0)
        low, high = float(q[0]), float(q[1])
    if not high > low:
        # a constant image: any window keeps it representable; width 1, or wider where low + 1 rounds back to low
        high = low + max(1.0, abs(low) * 2.0**-20)
    return low, high


class ScanNormalize(Transform):
    """``(x - low) / (high - low)`` clipped to [0, 1]; returns ``(normalised, (low, high))``."""

    def __init__(self, ct_window: Sequence[float] = CT_WINDOW, percentiles: Sequence[float] = (0.5, 99.5)) -> None:
        self.ct_window, self.percentiles = tuple(ct_window), tuple(percentiles)

    def __call__(self, img, modality: str = "MR"):
        x = convert_to_tensor(img, track_meta=False).float()
        if not torch.isfinite(x).all():
            raise TrustMonaiError("image contains NaN or Inf voxels")
        low, high = scan_window(x, modality, self.ct_window, self.percentiles)
        return ((x - low) / (high - low)).clamp(0.0, 1.0), (low, high)


class ScanNormalized(MapTransform):
    """Dict twin of :class:`ScanNormalize`; reads the modality from ``modality_key`` (default MR when absent)."""

    def __init__(
        self,
        keys: KeysCollection,
        modality_key: str = "modality",
        ct_window: Sequence[float] = CT_WINDOW,
        percentiles: Sequence[float] = (0.5, 99.5),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.op = ScanNormalize(ct_window, percentiles)
        self.modality_key = modality_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            modality = d.get(self.modality_key, "MR")
            norm, window = self.op(d[key], modality)
            if hasattr(d[key], "meta"):  # keep MetaTensor geometry
                out = d[key].clone().float()
                out.copy_(norm)
                d[key] = out
            else:
                d[key] = norm
            d[f"{key}_window"] = np.asarray(window, dtype=np.float64)
        return d


class GreyChannelFirstd(MapTransform):
    """Add the channel axis: ``(*spatial)`` -> ``(1, *spatial)``; a colour image ``(*spatial, 3|4)`` becomes its
    luminance first. A colour *label* is refused: a mask must hold one class index per pixel.

    Args:
        keys: image keys (colour allowed).
        spatial_dims: 2 or 3.
        label_keys: keys that must be single-channel masks.
    """

    def __init__(self, keys: KeysCollection, spatial_dims: int, label_keys: KeysCollection = (),
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_dims = int(spatial_dims)
        self.label_keys = (label_keys,) if isinstance(label_keys, str) else tuple(label_keys)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in (*self.key_iterator(d), *[k for k in self.label_keys if k in d]):
            x = d[key]
            if x.ndim == self.spatial_dims + 1 and key in self.label_keys:
                name = getattr(x, "meta", {}).get("filename_or_obj", key)
                raise TrustMonaiError(f"{name}: mask has {x.shape[-1]} channels (an RGB mask?); save one class "
                                      "index per pixel (0 background, 1, 2 ... classes) as a grey PNG / NIfTI")
            if is_colour(x, self.spatial_dims):
                x = to_luminance(x)
            elif x.ndim != self.spatial_dims:
                name = getattr(x, "meta", {}).get("filename_or_obj", key)
                raise TrustMonaiError(f"{name}: shape {tuple(x.shape)} is not a {self.spatial_dims}D image")
            d[key] = x[None]
        return d
