"""Tampering transforms that make the fake side of a forgery-detection set (any spatial dims, ``(C, *spatial)``).

- :class:`CopyMoveForgery` / ``d``: copy-move with soft blending, motivated by "CT-GAN: Malicious Tampering of 3D
  Medical Imagery using Deep Learning" (2019): ``inject`` moves a lesion (from its mask) or a tissue blob to another
  place in the image; ``remove`` covers a lesion (or a blob) with healthy tissue copied from nearby.
- :class:`SelfBlend` / ``d``: a self-blended image ("Detecting Deepfakes with Self-Blended Images"): the image blended
  inside a soft blob with a slightly altered copy of itself (intensity, sharpness, sub-pixel shift and scale), which
  leaves only blending-boundary and statistics-mismatch traces.
- :class:`Lesion3D`: 3D-consistent tampering of a volume (the CT-GAN threat): a lesion injected or removed as one
  3D blob across several slices, with a smooth profile in every direction, so neighbouring slices agree.
- :class:`FaceSwap` / ``d``: the inner face region of a donor image, colour-matched and blended into the target with
  a soft ellipse (the classic face-swap pipeline without a generator).

All take values in [0, 1] and return the same type (numpy or torch) and shape, clipped to [0, 1]. Each array transform
also returns the blending mask through ``last_mask`` (where the forgery is), for pictures and localisation checks.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, RandomizableTransform
from monai.utils import convert_data_type, convert_to_dst_type

from ..errors import ArgumentError

__all__ = [
    "random_blob",
    "CopyMoveForgery",
    "CopyMoveForgeryd",
    "SelfBlend",
    "SelfBlendd",
    "FaceSwap",
    "FaceSwapd",
    "Lesion3D",
]


def _np(img) -> np.ndarray:
    arr = np.asarray(convert_data_type(img, np.ndarray)[0], dtype=np.float32)
    if arr.ndim < 2 or arr.size == 0:
        raise ArgumentError(f"forgery transforms need a channel-first image (C, *spatial), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ArgumentError("forgery transforms: the image has NaN or Inf values (or values beyond float32)")
    return arr


def _foreground(img: np.ndarray) -> np.ndarray:
    """Voxels that hold tissue: above 10% of the image's range (channel mean)."""
    m = img.mean(0)
    lo, hi = float(m.min()), float(m.max())
    return m > lo + 0.1 * (hi - lo)


def random_blob(shape: Sequence[int], center: Sequence[float], radii: Sequence[float], rng: np.random.RandomState,
                irregularity: float = 0.3, sigma: float = 1.5) -> np.ndarray:
    """Soft irregular blob in ``shape``: an ellipsoid warped by smooth noise, then Gaussian-blurred; values in [0, 1].

    Args:
        shape: spatial shape.
        center: blob centre (voxels).
        radii: semi-axes (voxels).
        rng: random state.
        irregularity: amplitude of the boundary warp (fraction of the radius).
        sigma: blur of the edge (voxels); 0 gives a hard edge.
    """
    from scipy.ndimage import gaussian_filter, zoom

    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    r = np.sqrt(sum(((g - c) / max(float(a), 0.5)) ** 2 for g, c, a in zip(grids, center, radii)))
    coarse = rng.standard_normal([4] * len(shape)).astype(np.float32)
    warp = zoom(coarse, [s / 4 for s in shape], order=1)[tuple(slice(0, s) for s in shape)]
    blob = (r < 1.0 + irregularity * warp).astype(np.float32)
    if sigma > 0:
        blob = gaussian_filter(blob, sigma)
    return np.clip(blob / max(float(blob.max()), 1e-6), 0.0, 1.0)


def _shift(img: np.ndarray, offset: Sequence[float]) -> np.ndarray:
    from scipy.ndimage import shift

    return np.stack([shift(c, offset, order=1, mode="nearest") for c in img])


def _pick(fg: np.ndarray, rng: np.random.RandomState, margin: Sequence[float]) -> np.ndarray:
    """A random foreground voxel at least ``margin`` from the border (any voxel when there is none)."""
    inner = np.zeros_like(fg)
    sl = tuple(slice(int(m), max(int(m) + 1, s - int(m))) for m, s in zip(margin, fg.shape))
    inner[sl] = fg[sl]
    idx = np.argwhere(inner)
    if len(idx) == 0:
        idx = np.argwhere(np.ones_like(fg))
    return idx[rng.randint(len(idx))].astype(np.float32)


class _SeededForgery(Randomizable):
    """A forgery drawn from one stored seed, so ``randomize`` fixes every draw of the next call (MONAI's contract)."""

    MODES: tuple[str, ...] = ()
    last_mask: np.ndarray | None = None

    def _check_mode(self, mode: str) -> str:
        if mode not in self.MODES:
            raise ArgumentError(f"mode must be one of {', '.join(map(repr, self.MODES))}, got {mode!r}")
        return mode

    def randomize(self, data=None) -> None:
        self._seed = self.R.randint(2**31 - 1)

    def _rng(self, randomize: bool) -> np.random.RandomState:
        if randomize:
            self.randomize()
        return np.random.RandomState(self._seed)


class CopyMoveForgery(_SeededForgery):
    """Copy-move tampering: inject a lesion / tissue blob elsewhere, or remove one by covering it with tissue.

    Args:
        mode: ``"inject"`` or ``"remove"``.
        radius: blob semi-axis range as a fraction of each spatial size (used when there is no lesion mask).
        min_shift: smallest move as a fraction of the image size (so the copy never lands on itself).
        sigma: range of the blending edge blur (voxels).
        contrast: range of the intensity gain applied to an injected blob (a lesion brighter or darker than its
            source), 1 for a plain copy.
    """

    MODES = ("inject", "remove")

    def __init__(self, mode: str = "inject", radius: tuple[float, float] = (0.06, 0.16), min_shift: float = 0.15,
                 sigma: tuple[float, float] = (0.8, 2.5), contrast: tuple[float, float] = (0.8, 1.3)):
        self.mode = self._check_mode(mode)
        self.radius, self.min_shift, self.sigma, self.contrast = radius, min_shift, sigma, contrast

    def __call__(self, img, mask=None, randomize: bool = True):
        rng = self._rng(randomize)
        x = _np(img)
        shape = x.shape[1:]
        fg = _foreground(x)
        lesion = None if mask is None else _np(mask).reshape(-1, *shape).max(0) > 0
        size = np.asarray(shape, np.float32)
        radii = rng.uniform(*self.radius, size=len(shape)) * size
        sigma = rng.uniform(*self.sigma)
        if lesion is not None and lesion.any():
            region = lesion
            center = np.argwhere(lesion).mean(0)
            radii = np.maximum((np.ptp(np.argwhere(lesion), 0) + 1) / 2.0, 2.0)
        else:
            center = _pick(fg, rng, radii)
            region = random_blob(shape, center, radii, rng, sigma=0) > 0.5
        from scipy.ndimage import binary_dilation, gaussian_filter

        region = binary_dilation(region, iterations=max(1, int(round(sigma)))).astype(np.float32)
        # move by at least min_shift of the image and at least the blob size, to a tissue voxel
        for _ in range(20):
            target = _pick(fg, rng, radii)
            offset = target - center
            if np.linalg.norm(offset) >= max(self.min_shift * size.min(), 1.5 * radii.max()):
                break
        else:
            offset = np.where(rng.rand(len(shape)) < 0.5, -1, 1) * np.maximum(radii * 2, self.min_shift * size)
        alpha = gaussian_filter(region, sigma)
        if self.mode == "inject":
            # content and mask both move from the source to the target
            content = _shift(x, offset) * rng.uniform(*self.contrast)
            alpha = _shift(alpha[None], offset)[0]
        else:
            # the lesion stays where it is and is covered by tissue from the target's neighbourhood
            content = _shift(x, -offset)
        alpha = np.clip(alpha * rng.uniform(0.75, 1.0), 0, 1)[None]
        out = np.clip((1 - alpha) * x + alpha * content, 0.0, 1.0)
        self.last_mask = alpha[0]
        return convert_to_dst_type(out, img)[0]


class SelfBlend(_SeededForgery):
    """Self-blended image: the image blended inside a soft blob with an altered copy of itself.

    Args:
        radius: blob semi-axis range as a fraction of each spatial size.
        sigma: edge-blur range (voxels).
        center: where blobs are centred: ``"foreground"`` (a random tissue voxel) or ``"middle"`` (the image centre
            jittered, for aligned face crops).
        gain, bias, gamma: intensity changes of the altered copy (ranges).
        max_shift: sub-pixel shift of the copy (voxels); ``scale``: range of its zoom.
    """

    def __init__(self, radius=(0.15, 0.35), sigma=(1.0, 3.0), center: str = "foreground", gain=(0.85, 1.15),
                 bias=(-0.06, 0.06), gamma=(0.8, 1.25), max_shift: float = 1.5, scale=(0.95, 1.05)):
        self.radius, self.sigma, self.center = radius, sigma, center
        self.gain, self.bias, self.gamma, self.max_shift, self.scale = gain, bias, gamma, max_shift, scale

    def altered(self, x: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
        """The source copy: intensity jitter, blur or sharpen, and a small zoom + shift about the centre."""
        from scipy.ndimage import affine_transform, gaussian_filter

        y = np.clip(x, 0, 1) ** rng.uniform(*self.gamma) * rng.uniform(*self.gain) + rng.uniform(*self.bias)
        s = rng.uniform(0.4, 1.0)
        blurred = np.stack([gaussian_filter(c, s) for c in y])
        y = blurred if rng.rand() < 0.5 else y + rng.uniform(0.3, 1.0) * (y - blurred)
        zoom = rng.uniform(*self.scale)
        nd = x.ndim - 1
        c = (np.asarray(x.shape[1:], np.float32) - 1) / 2
        shift = rng.uniform(-self.max_shift, self.max_shift, size=nd)
        offset = c - c / zoom + shift
        return np.stack([affine_transform(ch, np.full(nd, 1 / zoom), offset, order=1, mode="nearest") for ch in y])

    def __call__(self, img, randomize: bool = True):
        rng = self._rng(randomize)
        x = _np(img)
        shape = x.shape[1:]
        size = np.asarray(shape, np.float32)
        radii = rng.uniform(*self.radius, size=len(shape)) * size
        if self.center == "middle":
            center = (size - 1) / 2 + rng.uniform(-0.05, 0.05, size=len(shape)) * size
        else:
            center = _pick(_foreground(x), rng, radii * 0.5)
        alpha = random_blob(shape, center, radii, rng, sigma=rng.uniform(*self.sigma))
        alpha = (alpha * rng.choice([1.0, rng.uniform(0.5, 1.0)]))[None]
        out = np.clip((1 - alpha) * x + alpha * self.altered(x, rng), 0.0, 1.0)
        self.last_mask = alpha[0]
        return convert_to_dst_type(out, img)[0]


class Lesion3D(_SeededForgery):
    """3D-consistent lesion tampering of a volume ``(C, H, W, D)`` (slices along the last axis).

    ``inject``: a real lesion (from ``mask``) copied in-plane to another tissue place, every slice moved by the same
    offset; without a mask, a new lesion: an irregular 3D blob that brightens or darkens the tissue by a contrast
    factor, textured by the volume itself. ``remove``: the lesion (or a random tissue blob) covered by tissue copied
    in-plane from nearby, the same offset in every slice. The blending weight is a 3D blob, Gaussian-smoothed along
    all three axes (``sigma_z`` across slices), so the change fades in and out over neighbouring slices instead of
    stopping at a slice border: a per-slice or 2.5D detector sees no inconsistency between neighbours.

    Args:
        mode: ``"inject"`` or ``"remove"``.
        radius: in-plane semi-axis range as a fraction of the slice size.
        depth: semi-axis range across slices, in slices.
        contrast: range of the relative intensity change of a new lesion (its sign is drawn).
        sigma: in-plane edge blur range (voxels); ``sigma_z``: blur across slices (slices).
        min_shift: smallest in-plane move as a fraction of the slice size.
    """

    MODES = ("inject", "remove")

    def __init__(self, mode: str = "inject", radius=(0.05, 0.12), depth=(1.5, 4.0), contrast=(0.2, 0.45),
                 sigma=(1.0, 2.0), sigma_z: float = 0.8, min_shift: float = 0.15):
        self.mode = self._check_mode(mode)
        self.radius, self.depth, self.contrast = radius, depth, contrast
        self.sigma, self.sigma_z, self.min_shift = sigma, float(sigma_z), min_shift

    def __call__(self, img, mask=None, randomize: bool = True):
        from scipy.ndimage import binary_dilation, gaussian_filter

        rng = self._rng(randomize)
        x = _np(img)
        if x.ndim != 4:
            raise ArgumentError(f"Lesion3D needs a volume (C, H, W, D), got shape {x.shape}")
        shape = x.shape[1:]
        size = np.asarray(shape[:2], np.float32)
        fg = _foreground(x)
        lesion = None if mask is None else _np(mask).reshape(-1, *shape).max(0) > 0
        real_lesion = lesion is not None and lesion.any()
        radii = np.r_[rng.uniform(*self.radius, size=2) * size, min(rng.uniform(*self.depth), shape[2] / 2)]
        if real_lesion:
            in_plane = np.zeros((3, 3, 3), bool)
            in_plane[:, 1, 1] = in_plane[1, :, 1] = True  # grow the mask in-plane; across slices the blur fades it
            region = binary_dilation(lesion, in_plane, iterations=2)
            center = np.argwhere(lesion).mean(0)
        else:
            center = _pick(fg, rng, np.r_[radii[:2], 0])
            region = random_blob(shape, center, radii, rng, sigma=0) > 0.5
        sigma = rng.uniform(*self.sigma)
        alpha = gaussian_filter(region.astype(np.float32), (sigma, sigma, self.sigma_z))
        # an in-plane move (same in every slice) to tissue at least min_shift of the slice away
        offset = np.zeros(3, np.float32)
        for _ in range(20):
            target = _pick(fg, rng, np.r_[radii[:2], 0])
            offset[:2] = (target - center)[:2]
            if np.linalg.norm(offset) >= max(self.min_shift * size.min(), 1.5 * radii[:2].max()):
                break
        else:
            offset[:2] = np.where(rng.rand(2) < 0.5, -1, 1) * np.maximum(radii[:2] * 2, self.min_shift * size)
        if self.mode == "inject" and real_lesion:
            content, alpha = _shift(x, offset), _shift(alpha[None], offset)[0]
        elif self.mode == "inject":
            # a new lesion: the tissue itself, brighter or darker inside the blob, with its own texture
            gain = 1 + rng.choice([-1.0, 1.0]) * rng.uniform(*self.contrast)
            content = x * gain
        else:
            content = _shift(x, -offset)
        alpha = np.clip(alpha * rng.uniform(0.85, 1.0), 0, 1)[None]
        out = np.clip((1 - alpha) * x + alpha * content, 0.0, 1.0)
        self.last_mask = alpha[0]
        return convert_to_dst_type(out, img)[0]


class FaceSwap(_SeededForgery):
    """Blend a donor's central face region into the target: donor statistics matched inside the mask, soft ellipse.

    Args:
        radius: ellipse semi-axes range as a fraction of the image size (face crops are centred).
        sigma: edge-blur range (pixels).
    """

    def __init__(self, radius=(0.28, 0.4), sigma=(0.8, 2.0)):
        self.radius, self.sigma = radius, sigma

    def __call__(self, img, donor, randomize: bool = True):
        rng = self._rng(randomize)
        x, d = _np(img), _np(donor)
        if d.shape != x.shape:
            from scipy.ndimage import zoom

            d = np.stack([zoom(c, np.asarray(x.shape[1:]) / np.asarray(c.shape), order=1) for c in d])
            d = np.broadcast_to(d, x.shape) if d.shape[0] == 1 else d[: x.shape[0]]
        size = np.asarray(x.shape[1:], np.float32)
        radii = rng.uniform(*self.radius, size=len(size)) * size
        radii[0] *= 1.15  # faces are taller than wide
        center = (size - 1) / 2 + rng.uniform(-0.04, 0.04, size=len(size)) * size
        alpha = random_blob(x.shape[1:], center, radii, rng, irregularity=0.1, sigma=rng.uniform(*self.sigma))[None]
        w = alpha / max(float(alpha.sum()), 1e-6)
        # colour transfer: donor mean / std inside the mask made equal to the target's
        axes = tuple(range(1, x.ndim))
        mx, md = (x * w).sum(axes, keepdims=True), (d * w).sum(axes, keepdims=True)
        sx = np.sqrt(((x - mx) ** 2 * w).sum(axes, keepdims=True)) + 1e-6
        sd = np.sqrt(((d - md) ** 2 * w).sum(axes, keepdims=True)) + 1e-6
        d = (d - md) / sd * sx + mx
        out = np.clip((1 - alpha) * x + alpha * d, 0.0, 1.0)
        self.last_mask = alpha[0]
        return convert_to_dst_type(out, img)[0]


class _Forgeryd(MapTransform, RandomizableTransform):
    """Dict twin: one array transform, randomized once per call and reused for every key."""

    backend: list = []

    def __init__(self, keys: KeysCollection, transform, prob: float = 1.0, allow_missing_keys: bool = False,
                 mask_key: str | None = "forgery_mask"):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.t = transform
        self.mask_key = mask_key

    def set_random_state(self, seed=None, state=None):
        super().set_random_state(seed, state)
        self.t.set_random_state(seed, state)
        return self

    def _apply(self, d: dict, key, **extra):
        d[key] = self.t(d[key], randomize=False, **extra)
        if self.mask_key:
            d[self.mask_key] = self.t.last_mask[None]

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        self.t.randomize()
        for key in self.key_iterator(d):
            self._apply(d, key, **self._extra(d))
        return d

    def _extra(self, d) -> dict:
        return {}


class CopyMoveForgeryd(_Forgeryd):
    """Dict version of :class:`CopyMoveForgery`; ``lesion_key`` names an optional lesion mask in the dict."""

    def __init__(self, keys: KeysCollection, mode: str = "inject", lesion_key: str | None = None, prob: float = 1.0,
                 allow_missing_keys: bool = False, mask_key: str | None = "forgery_mask", **kwargs):
        super().__init__(keys, CopyMoveForgery(mode, **kwargs), prob, allow_missing_keys, mask_key)
        self.lesion_key = lesion_key

    def _extra(self, d) -> dict:
        return {"mask": d.get(self.lesion_key) if self.lesion_key else None}


class SelfBlendd(_Forgeryd):
    """Dict version of :class:`SelfBlend`."""

    def __init__(self, keys: KeysCollection, prob: float = 1.0, allow_missing_keys: bool = False,
                 mask_key: str | None = "forgery_mask", **kwargs):
        super().__init__(keys, SelfBlend(**kwargs), prob, allow_missing_keys, mask_key)


class FaceSwapd(_Forgeryd):
    """Dict version of :class:`FaceSwap`; ``donor_key`` names the donor image in the dict."""

    def __init__(self, keys: KeysCollection, donor_key: str = "donor", prob: float = 1.0,
                 allow_missing_keys: bool = False, mask_key: str | None = "forgery_mask", **kwargs):
        super().__init__(keys, FaceSwap(**kwargs), prob, allow_missing_keys, mask_key)
        self.donor_key = donor_key

    def _extra(self, d) -> dict:
        return {"donor": d[self.donor_key]}
