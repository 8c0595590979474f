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

__all__ = ["CT_WINDOW", "scan_window", "ScanNormalize", "ScanNormalized"]

CT_WINDOW = (-1000.0, 1000.0)


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
