"""What every image format of :mod:`trust_monai.data.io` shares: :class:`ImageMeta`, the LPS / RAS flip, error
wrapping, value casting and the gzip size check. Use :mod:`trust_monai.data.io` for reading and writing."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from trust_monai.errors import ArgumentError, InputFileError, TrustMonaiError

from .io_picture import PICTURE_SUFFIXES

# LPS (DICOM, ITK, most NRRD) <-> RAS (nibabel, MONAI): negate the first two world axes.
_LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class ImageMeta:
    """Everything :func:`write_image` needs to write an array back in its original format.

    Attributes:
        format: one of ``"nifti"``, ``"nrrd"``, ``"dicom"``, ``"png"``, ``"tiff"``.
        source: the path that was read (a file, or the DICOM series folder).
        affine: 4x4 voxel-index -> RAS world (mm) matrix, as ``nibabel.affine`` / ``MetaTensor.affine``.
        spacing: voxel size along each spatial array axis (column norms of the affine).
        dtype: dtype of the array :func:`read_image` returned; on write the array is cast back to the file's
            stored type (with the original rescale for DICOM / scaled NIfTI), so reading the output gives this dtype.
        shape: shape of the array that was read.
        header: what is needed to write back: a nibabel header (NIfTI, with the original scl_slope/scl_inter set),
            the pynrrd header dict (NRRD), a list of pydicom Datasets per slice in array ``k`` order with PixelData
            removed (DICOM), or the PIL ``info`` dict / kept TIFF tags plus ``"mode"`` (PNG / TIFF).
    """

    format: str
    source: str
    affine: np.ndarray
    spacing: tuple[float, ...]
    dtype: np.dtype
    shape: tuple[int, ...] = ()
    header: Any = field(default=None, repr=False)

    @property
    def origin(self) -> np.ndarray:
        """World (RAS, mm) position of voxel (0, 0, 0)."""
        return np.asarray(self.affine, dtype=float)[:3, 3].copy()

    @property
    def modality(self) -> str | None:
        """DICOM Modality (``"CT"``, ``"MR"`` ...) of the first slice; None for formats that do not record it."""
        if self.format == "dicom" and self.header:
            return str(getattr(self.header[0], "Modality", "") or "") or None
        return None

    @property
    def value_step(self) -> float:
        """Spacing of the values the file can store, in the units :func:`read_image` returns (0: continuous).

        A DICOM series stores integers times RescaleSlope, an integer NIfTI integers times scl_slope, NRRD / PNG / TIFF
        integer types whole numbers. A change meant to stay within a budget must be rounded to this grid *before*
        the budget is checked, or the writer's rounding could carry it past the budget.
        """
        if self.format == "dicom" and self.header:
            from .io_dicom import _rescale

            return abs(_rescale(self.header[0])[0])
        if self.format == "nifti" and self.header is not None:
            if np.issubdtype(self.header.get_data_dtype(), np.integer):
                slope = self.header.get_slope_inter()[0]
                return abs(float(slope)) if slope is not None and np.isfinite(slope) and slope != 0 else 1.0
            return 0.0
        return 1.0 if np.issubdtype(np.dtype(self.dtype), np.integer) else 0.0

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit RAS directions of array axes i, j, k."""
        a = np.asarray(self.affine, dtype=float)[:3, :3]
        norms = np.linalg.norm(a, axis=0)
        return a / np.where(norms > 0, norms, 1.0)


# --------------------------------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _as_input_error(path: Path, fmt: str) -> Iterator[None]:
    """Turn any library exception into a one-line InputFileError naming the file (ours pass through)."""
    try:
        yield
    except TrustMonaiError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # nibabel/pydicom/pynrrd/PIL/zlib raise many unrelated types for a bad file
        raise InputFileError(path, f"cannot read as {fmt}: {_one_line(e)}") from e


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    msg = text[0] if text else ""
    msg = msg if len(msg) <= 200 else msg[:197] + "..."
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _native(arr: np.ndarray) -> np.ndarray:
    """A plain in-memory array in native byte order (nibabel keeps big-endian on-disk types; torch refuses them)."""
    if isinstance(arr, np.memmap):
        arr = np.array(arr)
    arr = np.asarray(arr)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _spacing(affine: np.ndarray, ndim: int) -> tuple[float, ...]:
    return tuple(float(s) for s in np.linalg.norm(np.asarray(affine, float)[:3, :ndim], axis=0))


def _to_stored(
    values: np.ndarray,
    dtype: np.dtype,
    slope: float = 1.0,
    inter: float = 0.0,
    lo: float | None = None,
    hi: float | None = None,
) -> np.ndarray:
    """Invert ``value = stored * slope + inter`` and cast to ``dtype``: round and clip for integers, clip for floats.

    Clipping is explicit because numpy's cast wraps around silently (300 -> 44 in uint8), which would corrupt
    an image that a perturbation pushed past the type's range.
    """
    dtype = np.dtype(dtype)
    values = np.asarray(values)
    scaled = slope != 1.0 or inter != 0.0
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        lo = info.min if lo is None else max(lo, info.min)
        hi = info.max if hi is None else min(hi, info.max)
        if values.dtype.kind in "iub" and not scaled:
            # exact integer path: no float round trip for large int64 values
            return np.clip(values.astype(np.int64), lo, hi).astype(dtype)
        v = values.astype(np.float64)
        if scaled:
            v = (v - inter) / slope
        v = np.nan_to_num(np.rint(v), nan=0.0, posinf=hi, neginf=lo)
        return np.clip(v, lo, hi).astype(dtype)
    if dtype.kind == "f":
        v = values.astype(np.float64) if scaled or values.dtype.kind != "f" else values
        if scaled:
            v = (v - inter) / slope
        info = np.finfo(dtype)
        # clip finite values so float64 -> float32 cannot overflow to inf; genuine inf/nan stay as they are
        return np.where(np.isfinite(v), np.clip(v, info.min, info.max), v).astype(dtype)
    if dtype.kind == "b":
        return values.astype(bool)
    raise ArgumentError(f"cannot write values as dtype {dtype}")


# --------------------------------------------------------------------------------------------------------------------
# gzip size check (used by the probes)
# --------------------------------------------------------------------------------------------------------------------


def _gzip_holds(path: Path, expected: int, offset: int = 0) -> None:
    """Raise InputFileError unless the gzip stream starting at ``offset`` inflates to at least ``expected`` bytes.

    The last 4 bytes of a gzip stream store the uncompressed size mod 2**32, so a complete file is confirmed
    without inflating it. A mismatch (truncated file, but also multi-member gzip or trailing bytes) falls back to
    inflating the stream, so a valid file is never rejected.
    """
    import gzip
    import zlib

    size = path.stat().st_size
    if size - offset >= 18:
        with open(path, "rb") as f:
            f.seek(size - 4)
            isize = int.from_bytes(f.read(4), "little")
        if isize == expected % (1 << 32):
            return
    total = 0
    try:
        with open(path, "rb") as raw:
            raw.seek(offset)
            with gzip.GzipFile(fileobj=raw) as g:
                for block in iter(lambda: g.read(1 << 22), b""):
                    total += len(block)
    except (EOFError, OSError, zlib.error) as e:
        raise InputFileError(path, f"corrupt or truncated gzip data: {_one_line(e)}") from None
    if total < expected:
        raise InputFileError(path, f"truncated: {total} data bytes, header promises {expected}")


def _check_suffix(out: Path, fmt: str) -> None:
    name = out.name.lower()
    allowed = {"nifti": (".nii", ".nii.gz"), "nrrd": (".nrrd", ".nhdr"), **PICTURE_SUFFIXES}[fmt]
    if not name.endswith(allowed):
        raise ArgumentError(f"{out}: a {fmt} image must be written to a file ending in {' or '.join(allowed)}")
