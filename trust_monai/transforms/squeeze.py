"""Image shortcut squeezing (ISS): simple compressions that remove perturbative availability poisons, after
"Image Shortcut Squeezing: Countering Perturbative Availability Poisons with Compression" (Liu et al., ICML 2023).

Array transforms take one image ``(C, *spatial)`` with intensities in [0, 1] (tensor or array) and return the same
shape and type; 3D volumes are squeezed slice by slice along the last axis. Each has a dict twin.
"""

from __future__ import annotations

import io
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from ..errors import TrustMonaiError

__all__ = ["JPEGCompress", "JPEGCompressd", "BitDepthReduce", "BitDepthReduced", "Grayscale", "Grayscaled", "SQUEEZES",
           "make_squeeze"]


def _as_numpy(img) -> tuple[np.ndarray, bool]:
    if torch.is_tensor(img):
        return img.detach().cpu().numpy(), True
    return np.asarray(img), False


def _back(arr: np.ndarray, like, was_tensor: bool):
    if not was_tensor:
        return arr.astype(np.asarray(like).dtype, copy=False)
    out = torch.as_tensor(arr, dtype=like.dtype, device=like.device)
    if hasattr(like, "meta"):  # keep MetaTensor geometry
        res = like.clone()
        res.copy_(out)
        return res
    return out


def _check(arr: np.ndarray, name: str) -> None:
    if arr.ndim < 3 or arr.size == 0:
        raise TrustMonaiError(f"{name} needs a channel-first image (C, H, W) or (C, H, W, D), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise TrustMonaiError(f"{name}: the image has NaN or Inf values")


class JPEGCompress(Transform):
    """JPEG round trip at ``quality`` (ISS uses 10): 8-bit quantisation plus the JPEG block transform."""

    def __init__(self, quality: int = 10) -> None:
        if not 1 <= int(quality) <= 95:
            raise TrustMonaiError(f"JPEG quality must be in 1..95, got {quality}")
        self.quality = int(quality)

    def _slice(self, s: np.ndarray) -> np.ndarray:
        from PIL import Image

        c = s.shape[0]
        u8 = np.clip(np.rint(s * 255.0), 0, 255).astype(np.uint8)
        im = Image.fromarray(u8[0] if c == 1 else u8[:3].transpose(1, 2, 0), mode="L" if c == 1 else "RGB")
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=self.quality)
        buf.seek(0)
        out = np.asarray(Image.open(buf).convert("L" if c == 1 else "RGB"), dtype=np.float32) / 255.0
        return out[None] if c == 1 else out.transpose(2, 0, 1)

    def __call__(self, img):
        arr, was_t = _as_numpy(img)
        _check(arr, "JPEGCompress")
        if arr.shape[0] not in (1, 3):
            raise TrustMonaiError(f"JPEGCompress takes 1 or 3 channels, got {arr.shape[0]}")
        a = arr.astype(np.float32)
        if a.ndim == 3:
            out = self._slice(a)
        else:
            out = np.stack([self._slice(a[..., k]) for k in range(a.shape[-1])], axis=-1)
        return _back(out, img, was_t)


class BitDepthReduce(Transform):
    """Quantise intensities to ``bits`` bits (ISS: 2 bits for small images): ``round(x * (2^b - 1)) / (2^b - 1)``."""

    def __init__(self, bits: int = 2) -> None:
        if not 1 <= int(bits) <= 8:
            raise TrustMonaiError(f"bit depth must be in 1..8, got {bits}")
        self.levels = 2 ** int(bits) - 1

    def __call__(self, img):
        arr, was_t = _as_numpy(img)
        _check(arr, "BitDepthReduce")
        out = np.round(np.clip(arr.astype(np.float32), 0, 1) * self.levels) / self.levels
        return _back(out, img, was_t)


class Grayscale(Transform):
    """RGB to grey (ITU-R 601 luma) replicated over the 3 channels, so the network input shape is kept."""

    WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)

    def __call__(self, img):
        arr, was_t = _as_numpy(img)
        _check(arr, "Grayscale")
        if arr.shape[0] == 1:
            return img  # already grey: nothing to squeeze
        if arr.shape[0] != 3:
            raise TrustMonaiError(f"Grayscale takes 1 or 3 channels, got {arr.shape[0]}")
        g = np.tensordot(self.WEIGHTS, arr.astype(np.float32), axes=(0, 0))
        return _back(np.repeat(g[None], 3, axis=0), img, was_t)


class _Squeezed(MapTransform):
    op: Transform

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.op(d[key])
        return d


class JPEGCompressd(_Squeezed):
    """Dict twin of :class:`JPEGCompress`."""

    def __init__(self, keys: KeysCollection, quality: int = 10, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.op = JPEGCompress(quality)


class BitDepthReduced(_Squeezed):
    """Dict twin of :class:`BitDepthReduce`."""

    def __init__(self, keys: KeysCollection, bits: int = 2, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.op = BitDepthReduce(bits)


class Grayscaled(_Squeezed):
    """Dict twin of :class:`Grayscale`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.op = Grayscale()


SQUEEZES = {"jpeg": JPEGCompress, "bit_depth": BitDepthReduce, "grayscale": Grayscale}


def make_squeeze(name: str, **kwargs) -> Transform:
    """A squeeze by name: ``jpeg`` (quality), ``bit_depth`` (bits) or ``grayscale``."""
    if name not in SQUEEZES:
        raise TrustMonaiError(f"unknown squeeze '{name}'; choose one of {', '.join(SQUEEZES)}")
    return SQUEEZES[name](**kwargs)
