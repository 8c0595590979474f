"""Read and write medical images without losing geometry or headers: NIfTI, NRRD, DICOM series, PNG, TIFF.

Hospitals share data in the format they produced it in, so :func:`write_image` always writes the format
:func:`read_image` read, with the original header(s), geometry and on-disk data type.

Array axis convention (all 3D formats): voxel index order ``(i, j, k)`` as in nibabel and MONAI, i.e. the axis that
varies fastest in the file comes first.

* NIfTI: exactly nibabel's array; NRRD: pynrrd's Fortran-order array (non-spatial axes such as a vector or
  diffusion axis are moved to the end and moved back on write).
* DICOM: ``(columns, rows, slices)``: ``i`` runs along a row (ImageOrientationPatient[:3]), ``j`` down a column
  (ImageOrientationPatient[3:]) and ``k`` along the slice normal in increasing position, so
  ``array[:, :, k] == pixel_array.T`` of the k-th slice. A single DICOM file gives shape ``(columns, rows, 1)``.
  Values are modality values (RescaleSlope/RescaleIntercept applied, e.g. Hounsfield units).
* PNG / TIFF (2D pictures, no geometry; :mod:`trust_monai.data.io_picture`): ``H x W`` or ``H x W x C`` in the
  file's type (uint8, uint16, float32) as in PIL/torchvision, with an identity affine; palette images become RGB(A).

``ImageMeta.affine`` maps ``(i, j, k, 1)`` to RAS+ world millimetres, the convention of nibabel and of MONAI's
``MetaTensor.affine``; DICOM and NRRD (LPS) are converted on read and back on write.

Importing this module is cheap: nibabel, pydicom, pynrrd, PIL, torch and MONAI are imported inside the functions
that need them, so the command line starts fast.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from trust_monai.errors import ArgumentError, InputFileError, OutputExistsError, TrustMonaiError
from trust_monai.utils.fileio import atomic_path

from .io_picture import (
    PICTURE_FORMATS, PICTURE_SUFFIXES, picture_format, probe_picture, read_picture, sniff_picture, write_picture,
)

__all__ = [
    "IMAGE_FORMATS",
    "PICTURE_FORMATS",
    "ImageMeta",
    "detect_format",
    "probe_image",
    "read_image",
    "to_metatensor",
    "write_image",
    "deidentify_header",
]

IMAGE_FORMATS = ("nifti", "nrrd", "dicom") + PICTURE_FORMATS

# LPS (DICOM, ITK, most NRRD) <-> RAS (nibabel, MONAI): negate the first two world axes.
_LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# NRRD "space" values -> sign flips that take that space to RAS. A missing space is treated as LPS, as MONAI's
# NrrdReader and ITK do; any other named space (scanner-xyz, 3D-right-handed, ...) is taken as already RAS, as MONAI.
_NRRD_SPACE_TO_RAS = {
    "right-anterior-superior": (1.0, 1.0, 1.0),
    "ras": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0),
    "las": (-1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0),
    "lps": (-1.0, -1.0, 1.0),
}
_NRRD_LAYOUT_KEYS = ("data file", "datafile", "line skip", "lineskip", "byte skip", "byteskip")
_DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}
_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR: an index, not an image
_UNCOMPRESSED_TS = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


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
# public API
# --------------------------------------------------------------------------------------------------------------------


def detect_format(path: str | os.PathLike) -> str:
    """Name the image format of ``path`` from its suffix, or from its magic bytes when the suffix says nothing.

    Args:
        path: a file, or a folder (taken as a DICOM series).

    Returns:
        One of :data:`IMAGE_FORMATS`.

    Raises:
        InputFileError: the path does not exist or is not one of the supported formats.
    """
    p = Path(path)
    try:
        exists, is_dir = p.exists(), p.is_dir()
    except (OSError, ValueError) as e:  # a name too long for the filesystem, a NUL byte, a symlink loop
        raise InputFileError(p, f"cannot access: {getattr(e, 'strerror', None) or e}") from None
    if not exists:
        raise InputFileError(p, "does not exist")
    if is_dir:
        return "dicom"
    name = p.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith((".nrrd", ".nhdr")):
        return "nrrd"
    if fmt := picture_format(p):
        return fmt
    if p.suffix.lower() in _DICOM_SUFFIXES:
        return "dicom"
    # No telling suffix (DICOM files are often named by UID or number): look at the magic bytes.
    try:
        with open(p, "rb") as f:
            head = f.read(352)
    except OSError as e:
        raise InputFileError(p, f"cannot open: {e.strerror or e}") from None
    if head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"NRRD"):
        return "nrrd"
    if fmt := sniff_picture(head):
        return fmt
    if head[344:348] in (b"n+1\x00", b"n+2\x00"):
        return "nifti"
    raise InputFileError(p, "unsupported file type (expected .nii/.nii.gz, .nrrd/.nhdr, .png, .tif/.tiff, DICOM file or folder)")


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, ImageMeta]:
    """Read an image and the metadata needed to write it back unchanged.

    Args:
        path: a NIfTI file (.nii, .nii.gz), an NRRD file (.nrrd, .nhdr), a DICOM series folder (one series; files
            sorted by position along the slice normal, not by name; sub-folders are not searched), a single DICOM
            file, or a PNG / TIFF picture.

    Returns:
        ``(array, meta)``: the array in the axis convention described in the module docstring (native byte order),
        and its :class:`ImageMeta`.

    Raises:
        InputFileError: missing, corrupt or unsupported input; the message names the file and the problem.
    """
    p = Path(path)
    fmt = detect_format(p)
    with _as_input_error(p, fmt):
        if fmt in PICTURE_FORMATS:
            arr, meta = read_picture(p, fmt)
        else:
            arr, meta = {"nifti": _read_nifti, "nrrd": _read_nrrd, "dicom": _read_dicom}[fmt](p)
    return arr, meta


def write_image(
    array: np.ndarray,
    meta: ImageMeta,
    out_path: str | os.PathLike,
    derivation: str = "",
    derivation_code: Any = None,
    deidentify: bool = False,
) -> Path:
    """Write ``array`` in ``meta.format`` with the original header, geometry and stored data type.

    Values are cast to the stored type of the source: rounded and clipped to the type's range for integers (for
    DICOM to the BitsStored range, after inverting RescaleSlope/RescaleIntercept so the written stored values map
    back to ``array``). Output appears atomically: a temp file/folder next to ``out_path`` is renamed into place.

    DICOM is written as one file per slice into the folder ``out_path`` (or a single file when the source had one
    slice and ``out_path`` ends in ``.dcm``), with every input header kept except: a new SOPInstanceUID per slice
    (also in the file meta), one new SeriesInstanceUID, ImageType ``DERIVED\\SECONDARY``, DerivationDescription,
    a SourceImageSequence pointing at the input slice, uncompressed Explicit VR Little Endian pixel data. The new
    UIDs are derived from the source UIDs, the derivation and the pixel values, so writing the same result twice gives
    the same bytes, and a different result different UIDs.
    For NIfTI the derivation goes into ``descrip`` (80 bytes), for NRRD into a ``derivation:=`` key/value, for PNG
    into a ``Derivation`` text chunk, for TIFF after the ImageDescription.

    Args:
        array: image in the convention of :func:`read_image` (numpy, or a CPU/GPU torch tensor); for DICOM its
            shape must match the source slices.
        meta: the :class:`ImageMeta` from :func:`read_image`. For NIfTI/NRRD ``meta.affine`` is written (so a changed
            affine is honoured); DICOM geometry comes from the slice headers and must match ``meta.affine``.
        out_path: output file (``.nii``/``.nii.gz``, ``.nrrd``/``.nhdr``, ``.png``, ``.tif``/``.tiff``) or DICOM folder. An existing
            output file is replaced; an existing non-empty DICOM output folder is refused.
        derivation: free-text note of what was done to the image (e.g. "adversarial protection, eps=2/255").
        derivation_code: optional DICOM code for DerivationCodeSequence: a ``pydicom.sr.coding.Code`` or a
            ``(value, scheme designator, meaning)`` tuple, e.g. ``pydicom.sr.codedict.codes.cid7203.Smoothing``.
        deidentify: DICOM only: apply :func:`deidentify_header` to every slice (patient identity replaced by a
            pseudonym, identifying attributes and private tags removed, study / frame-of-reference UIDs remapped).

    Returns:
        The output path.

    Raises:
        OutputExistsError: ``out_path`` is (or is inside) the input, or is a non-empty folder for a DICOM series.
        ArgumentError: (a ``ValueError``) ``out_path`` suffix does not match ``meta.format``, the array's rank or
            values cannot be stored in that format, or a DICOM array does not fit the source.
    """
    out = Path(out_path)
    if meta.format not in IMAGE_FORMATS:
        raise ArgumentError(f"unknown image format {meta.format!r}; expected one of {IMAGE_FORMATS}")
    _check_not_input(out, meta)
    if hasattr(array, "detach"):  # a torch tensor / MetaTensor from a bundle; no torch import needed
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if meta.format == "dicom":
        _write_dicom(array, meta, out, derivation, derivation_code, deidentify=deidentify)
        return out
    writer = {"nifti": _write_nifti, "nrrd": _write_nrrd, "png": write_picture, "tiff": write_picture}[meta.format]
    writer(array, meta, out, derivation, derivation_code)
    return out


def to_metatensor(array: np.ndarray, meta: ImageMeta):
    """Wrap an array from :func:`read_image` as a ``monai.data.MetaTensor`` with its RAS affine.

    Unsigned 16/32-bit arrays are widened to signed types because most torch operations do not support them.

    Args:
        array: the image array.
        meta: its :class:`ImageMeta`.

    Returns:
        A MetaTensor whose ``affine`` is ``meta.affine`` and whose ``meta`` carries ``filename_or_obj``,
        ``original_affine``, ``spatial_shape`` and ``space="RAS"`` like MONAI's ``LoadImage``.
    """
    import torch  # lazy: keep `import trust_monai.data.io` free of torch/monai
    from monai.data import MetaTensor

    arr = np.ascontiguousarray(array)
    widen = {np.dtype(np.uint16): np.int32, np.dtype(np.uint32): np.int64}
    if arr.dtype in widen:
        arr = arr.astype(widen[arr.dtype])
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    channel_last = meta.format in PICTURE_FORMATS and arr.ndim == 3
    spatial = arr.shape[:2] if meta.format in PICTURE_FORMATS else arr.shape[:3]
    info = {
        "filename_or_obj": meta.source,
        "original_affine": np.array(meta.affine, dtype=np.float64),
        "spatial_shape": np.asarray(spatial),
        "space": "RAS",
        "original_channel_dim": -1 if channel_last else "no_channel",
        "format": meta.format,
    }
    return MetaTensor(torch.as_tensor(arr), affine=torch.as_tensor(meta.affine, dtype=torch.float64), meta=info)


def probe_image(path: str | os.PathLike) -> dict:
    """Check cheaply that an image can be read, without decoding the pixel data.

    Reads headers only (nibabel / pynrrd header, pydicom with ``stop_before_pixels``, PIL verify) and checks that
    the file holds as many data bytes as the header promises (for gzip via the stored uncompressed size, with a
    full decompression only when that looks wrong). A DICOM folder is also checked for a single series, image
    objects only and uniform slice spacing. Lets a bundle fail before it writes any output.

    Args:
        path: anything :func:`read_image` accepts.

    Returns:
        ``{"format": ..., "shape": ...}`` (shape as :func:`read_image` would return it).

    Raises:
        InputFileError: the file is missing, unsupported or corrupt.
    """
    p = Path(path)
    fmt = detect_format(p)
    with _as_input_error(p, fmt):
        if fmt in PICTURE_FORMATS:
            shape = probe_picture(p, fmt)
        else:
            shape = {"nifti": _probe_nifti, "nrrd": _probe_nrrd, "dicom": _probe_dicom}[fmt](p)
    return {"format": fmt, "shape": tuple(int(s) for s in shape)}


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


def _check_not_input(out: Path, meta: ImageMeta) -> None:
    """Refuse an output that is the input, or lies inside an input folder: inputs must never be modified."""
    src = Path(meta.source)
    src_r, out_r = src.resolve(), out.resolve()
    same = out_r == src_r
    if not same and out.exists() and src.exists():
        with contextlib.suppress(OSError):
            same = os.path.samefile(out, src)  # hard links
    inside = src.is_dir() and out_r.is_relative_to(src_r)
    if same or inside:
        raise OutputExistsError(f"{out}: refusing to write onto the input {src}; choose another output path")
    if meta.format == "nrrd" and isinstance(meta.header, dict):
        data_file = meta.header.get("data file") or meta.header.get("datafile")
        if data_file and out.name.lower().endswith(".nhdr"):
            if (src.parent / str(data_file)).resolve() == (out.parent / _nhdr_data_name(out, meta.header)).resolve():
                raise OutputExistsError(f"{out}: its data file would overwrite the input data file {data_file}")
    if meta.format == "dicom" and isinstance(meta.header, list) and out_r.is_dir():
        # output folder that already holds one of the input slices (single-file input)
        if src.is_file() and src_r.parent == out_r:
            raise OutputExistsError(f"{out}: refusing to write a series into the folder holding the input {src}")


def _check_suffix(out: Path, fmt: str) -> None:
    name = out.name.lower()
    allowed = {"nifti": (".nii", ".nii.gz"), "nrrd": (".nrrd", ".nhdr"), **PICTURE_SUFFIXES}[fmt]
    if not name.endswith(allowed):
        raise ArgumentError(f"{out}: a {fmt} image must be written to a file ending in {' or '.join(allowed)}")


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


# --------------------------------------------------------------------------------------------------------------------
# NIfTI
# --------------------------------------------------------------------------------------------------------------------


def _load_nifti(path: Path):
    import nibabel as nib

    img = nib.load(str(path), mmap=False)
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputFileError(path, f"not a single-file NIfTI image ({type(img).__name__})")
    return nib, img


def _read_nifti(path: Path) -> tuple[np.ndarray, ImageMeta]:
    _, img = _load_nifti(path)
    arr = _native(np.asanyarray(img.dataobj))
    hdr = img.header.copy()
    # nibabel moves scl_slope/scl_inter from the header into the data proxy on load; put them back on our copy so
    # the writer can restore the original quantisation instead of letting nibabel pick a new one.
    slope, inter = float(getattr(img.dataobj, "slope", 1.0)), float(getattr(img.dataobj, "inter", 0.0))
    if (slope, inter) != (1.0, 0.0):
        hdr.set_slope_inter(slope, inter)
    affine = np.array(img.affine, dtype=np.float64)
    meta = ImageMeta("nifti", str(path), affine, _spacing(affine, min(arr.ndim, 3)), arr.dtype, arr.shape, hdr)
    return arr, meta


def _write_nifti(array: np.ndarray, meta: ImageMeta, out: Path, derivation: str, _code: Any) -> None:
    import nibabel as nib

    _check_suffix(out, "nifti")
    hdr = meta.header.copy()
    stored = hdr.get_data_dtype()
    slope, inter = hdr.get_slope_inter()
    data = _to_stored(array, stored, 1.0 if slope is None else slope, 0.0 if inter is None else inter)
    klass = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
    img = klass(data, np.asarray(meta.affine, dtype=np.float64), header=hdr)
    img.header.set_data_dtype(stored)
    if slope is not None or inter is not None:
        # set after construction: nibabel clears scaling in the constructor, and keeps it on write only if set
        img.header.set_slope_inter(1.0 if slope is None else slope, 0.0 if inter is None else inter)
    if derivation:
        img.header["descrip"] = derivation.encode("ascii", "replace")[:79]
    with atomic_path(out) as tmp:
        img.to_filename(str(tmp))


def _probe_nifti(path: Path) -> tuple[int, ...]:
    _, img = _load_nifti(path)
    hdr = img.header
    nbytes = int(np.prod(hdr.get_data_shape(), dtype=np.int64)) * hdr.get_data_dtype().itemsize
    offset = int(hdr.get_data_offset())
    if path.name.lower().endswith(".gz"):
        _gzip_holds(path, offset + nbytes)
    elif path.stat().st_size < offset + nbytes:
        raise InputFileError(path, f"truncated: {path.stat().st_size} bytes, header promises {offset + nbytes}")
    return tuple(hdr.get_data_shape())


# --------------------------------------------------------------------------------------------------------------------
# NRRD
# --------------------------------------------------------------------------------------------------------------------


def _nrrd_spatial_axes(header: dict, ndim: int) -> list[int]:
    dirs = header.get("space directions")
    if dirs is None:
        return list(range(ndim))
    return [i for i, row in enumerate(dirs) if row is not None and np.all(np.isfinite(np.asarray(row, dtype=float)))]


def _nrrd_flip(header: dict) -> np.ndarray:
    space = str(header.get("space", "left-posterior-superior")).lower()
    return np.array(_NRRD_SPACE_TO_RAS.get(space, (1.0, 1.0, 1.0)))


def _nrrd_affine(header: dict, ndim: int) -> np.ndarray:
    """RAS affine of the spatial axes (in array order after non-spatial axes were moved to the end)."""
    affine = np.eye(4)
    dirs = header.get("space directions")
    if dirs is not None:
        axes = _nrrd_spatial_axes(header, ndim)
        for col, ax in enumerate(axes[:3]):
            vec = np.asarray(dirs[ax], dtype=float)[:3]
            affine[: vec.size, col] = vec
        origin = header.get("space origin")
        if origin is not None:
            origin = np.nan_to_num(np.asarray(origin, dtype=float)[:3])
            affine[: origin.size, 3] = origin
        flip = _nrrd_flip(header)
        affine[:3, :] = flip[:, None] * affine[:3, :]
    elif header.get("spacings") is not None:
        # no world frame in the file: only voxel sizes, like nibabel's fallback for a NIfTI without q/sform
        sp = np.nan_to_num(np.asarray(header["spacings"], dtype=float), nan=1.0)[:3]
        affine[: sp.size, : sp.size] = np.diag(sp)
    return affine


def _nrrd_permutation(header: dict, ndim: int) -> list[int]:
    """Array axis order that puts the spatial axes first (pynrrd order -> our order)."""
    spatial = _nrrd_spatial_axes(header, ndim)
    return spatial + [i for i in range(ndim) if i not in spatial]


def _read_nrrd(path: Path) -> tuple[np.ndarray, ImageMeta]:
    import nrrd

    data, header = nrrd.read(str(path), index_order="F")
    perm = _nrrd_permutation(header, data.ndim)
    arr = _native(np.transpose(data, perm) if perm != list(range(data.ndim)) else data)
    affine = _nrrd_affine(header, data.ndim)
    n_spatial = min(len(_nrrd_spatial_axes(header, data.ndim)), 3)
    meta = ImageMeta("nrrd", str(path), affine, _spacing(affine, n_spatial), arr.dtype, arr.shape, dict(header))
    return arr, meta


def _nhdr_data_name(out: Path, header: dict) -> str:
    """Detached data file name for an .nhdr output, following the NRRD naming convention for its encoding."""
    enc = str(header.get("encoding", "gzip")).lower()
    ext = {"raw": ".raw", "gzip": ".raw.gz", "gz": ".raw.gz", "bzip2": ".raw.bz2", "bz2": ".raw.bz2"}.get(enc, ".txt")
    return out.name[: -len(".nhdr")] + ext


def _write_nrrd(array: np.ndarray, meta: ImageMeta, out: Path, derivation: str, _code: Any) -> None:
    import nrrd

    _check_suffix(out, "nrrd")
    header = copy.deepcopy(meta.header)
    for key in _NRRD_LAYOUT_KEYS:  # byte/line skips and data file names describe the input file's layout only
        header.pop(key, None)
    ndim = array.ndim
    dirs = header.get("space directions")
    dirs_fit = dirs is not None and len(dirs) == ndim
    perm = _nrrd_permutation(header, ndim) if dirs_fit else list(range(ndim))
    if perm != list(range(ndim)):
        array = np.transpose(array, np.argsort(perm))  # non-spatial axes back where the file had them
    spatial = _nrrd_spatial_axes(header, ndim) if dirs_fit else []
    if dirs is not None and len(spatial) == 3 and np.asarray(dirs[spatial[0]]).size == 3:
        # write the geometry from meta.affine so an edited affine is honoured; identical to the input otherwise
        flip = _nrrd_flip(header)
        lin = flip[:, None] * np.asarray(meta.affine, dtype=float)[:3, :3]
        new_dirs = np.full((ndim, 3), np.nan)
        for col, ax in enumerate(spatial):
            new_dirs[ax] = lin[:, col]
        header["space directions"] = new_dirs
        header["space origin"] = flip * np.asarray(meta.affine, dtype=float)[:3, 3]
    if derivation:
        # NRRD headers are ASCII and line based
        header["derivation"] = " ".join(derivation.split()).encode("ascii", "replace").decode("ascii")
    data = _to_stored(array, meta.dtype)
    if not out.name.lower().endswith(".nhdr"):
        with atomic_path(out) as tmp:
            nrrd.write(str(tmp), data, header, index_order="F")
            _strip_nrrd_timestamp(tmp)
        return
    # Detached header: write header and data into a temp folder, then move the data file first and the header
    # last, so a reader never sees a header whose data file is missing or half written.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        data_name = _nhdr_data_name(out, header)
        nrrd.write(str(tmpdir / out.name), data, header, detached_header=str(tmpdir / data_name), index_order="F")
        _strip_nrrd_timestamp(tmpdir / out.name)
        os.replace(tmpdir / data_name, out.parent / data_name)
        os.replace(tmpdir / out.name, out)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


_NRRD_TIMESTAMP = re.compile(rb"# on \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\(GMT\)\.\n")


def _strip_nrrd_timestamp(path: Path) -> None:
    """Drop the ``# on <UTC time>(GMT).`` comment pynrrd writes into every header, so equal images give equal files
    (a rerun of a protection run must be byte-identical); the header is otherwise untouched."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    end = head.find(b"\n\n")
    m = _NRRD_TIMESTAMP.search(head, 0, end if end >= 0 else len(head))
    if m is None:
        return
    stripped = path.with_name(path.name + ".strip")  # beside the temp file it replaces, inside the same temp naming
    with open(path, "rb") as src, open(stripped, "wb") as dst:
        dst.write(head[: m.start()])
        src.seek(m.end())
        shutil.copyfileobj(src, dst, 1 << 22)
    os.replace(stripped, path)


def _nrrd_itemsize(nrrd_type: str) -> int:
    """Bytes per value of an NRRD ``type`` (all its spellings: "short", "signed short int", "int16_t", ...)."""
    t = nrrd_type.lower()
    if "block" in t:
        raise ValueError("NRRD block type is not supported")
    if "double" in t:
        return 8
    if "float" in t:
        return 4
    if "char" in t or "int8" in t:
        return 1
    if "short" in t or "16" in t:
        return 2
    if "long" in t or "64" in t:
        return 8
    return 4


def _probe_nrrd(path: Path) -> tuple[int, ...]:
    import nrrd

    with open(path, "rb") as f:
        header = nrrd.read_header(f)
        data_start = f.tell()
    sizes = [int(s) for s in header["sizes"]]
    nbytes = int(np.prod(sizes, dtype=np.int64)) * _nrrd_itemsize(str(header.get("type", "")))
    enc = str(header.get("encoding", "raw")).lower()
    data_file = header.get("data file") or header.get("datafile")
    if data_file is not None:
        if not isinstance(data_file, str) or data_file.upper().startswith("LIST"):
            target, start = None, 0  # multi-file datasets: check the header only
        else:
            target, start = (path.parent / data_file), 0
            if not target.exists():
                raise InputFileError(path, f"detached data file {data_file} does not exist")
    else:
        target, start = path, data_start
    perm = _nrrd_permutation(header, len(sizes))
    shape = tuple(sizes[i] for i in perm)
    if target is None or int(header.get("byte skip", 0) or 0) != 0 or header.get("line skip"):
        return shape
    if enc in ("gzip", "gz"):
        _gzip_holds(target, nbytes, offset=start)
    elif enc == "raw" and target.stat().st_size - start < nbytes:
        raise InputFileError(target, f"truncated: {target.stat().st_size - start} data bytes, header says {nbytes}")
    return shape


# --------------------------------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------------------------------


def _dcmread(path: Path, headers_only: bool, required: bool = True):
    """Read one DICOM file; ``None`` for a non-DICOM file when not ``required`` (READMEs in a series folder)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    def read(force: bool):
        with open(path, "rb") as fh:
            ds = pydicom.dcmread(fh, stop_before_pixels=headers_only, force=force)
            if headers_only:
                ds._tm_pixel_offset = fh.tell()  # where the pixel data starts, for the cheap truncation check
        return ds

    try:
        return read(force=False)
    except InvalidDicomError:
        if not required and path.suffix.lower() not in _DICOM_SUFFIXES:
            return None
    except Exception as e:
        raise InputFileError(path, f"corrupt DICOM: {_one_line(e)}") from None
    # Some exporters (and many RT objects) omit the 128-byte preamble; they are DICOM if they parse to a SOP.
    try:
        ds = read(force=True)
        if "SOPClassUID" not in ds:
            raise ValueError("no SOPClassUID")
    except Exception as e:
        raise InputFileError(path, f"not a DICOM file ({_one_line(e)})") from None
    return ds


def _sop_name(ds) -> str:
    uid = ds.get("SOPClassUID", None)
    if uid is None:
        return "unknown SOP class"
    name = getattr(uid, "name", "") or ""
    return f"{name} ({uid})" if name and name != str(uid) else str(uid)


def _series_headers(path: Path) -> list[tuple[Path, Any]]:
    """Header-only read of every DICOM object of a folder (or one file); checks one series of image objects."""
    if path.is_dir():
        items = []
        for f in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
            ds = _dcmread(f, headers_only=True, required=False)
            if ds is not None and str(ds.get("SOPClassUID", "")) != _MEDIA_STORAGE_DIRECTORY:
                items.append((f, ds))
        if not items:
            raise InputFileError(path, "no DICOM files in folder (sub-folders are not searched)")
        series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in items}
        if len(series) > 1:
            raise InputFileError(
                path, f"mixed series: {len(series)} SeriesInstanceUIDs in one folder; give one series per folder"
            )
    else:
        items = [(path, _dcmread(path, headers_only=True))]
    for f, ds in items:
        if "Rows" not in ds or "Columns" not in ds:
            raise InputFileError(f, f"no pixel data: {_sop_name(ds)} is not an image")
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:
            raise InputFileError(f, f"multi-frame DICOM ({frames} frames, {_sop_name(ds)}) is not supported")
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise InputFileError(f, f"colour DICOM (SamplesPerPixel={ds.SamplesPerPixel}) is not supported")
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise InputFileError(f, "float pixel data is not supported")
    return items


def _floats(ds, key: str, n: int, default: Sequence[float] | None, f: Path) -> np.ndarray:
    value = ds.get(key, None)
    if value is None or len(value) != n:
        if default is None:
            raise InputFileError(f, f"missing or malformed {key}; cannot place the slice in space")
        return np.asarray(default, dtype=float)
    return np.asarray([float(v) for v in value], dtype=float)


def _sort_and_geometry(items: list[tuple[Path, Any]], source: Path) -> tuple[list[tuple[Path, Any]], np.ndarray]:
    """Sort slices along the slice normal, check that they form a regular grid, return (sorted items, RAS affine)."""
    multi = len(items) > 1
    # a lone slice (e.g. secondary capture) may lack geometry: identity fallback; a series cannot be sorted without
    iop0 = _floats(items[0][1], "ImageOrientationPatient", 6, None if multi else [1, 0, 0, 0, 1, 0], items[0][0])
    ps0 = _floats(items[0][1], "PixelSpacing", 2, [1.0, 1.0], items[0][0])
    shape0 = (int(items[0][1].Rows), int(items[0][1].Columns))
    for f, ds in items[1:]:
        if (int(ds.Rows), int(ds.Columns)) != shape0:
            raise InputFileError(f, f"slice size {ds.Rows}x{ds.Columns} differs from {shape0[0]}x{shape0[1]}")
        if not np.allclose(_floats(ds, "ImageOrientationPatient", 6, None, f), iop0, atol=1e-4):
            raise InputFileError(f, "ImageOrientationPatient differs from the other slices of the series")
        if not np.allclose(_floats(ds, "PixelSpacing", 2, [1.0, 1.0], f), ps0, rtol=1e-4):
            raise InputFileError(f, "PixelSpacing differs from the other slices of the series")
    row_dir, col_dir = iop0[:3], iop0[3:]
    normal = np.cross(row_dir, col_dir)
    ipps = [_floats(ds, "ImagePositionPatient", 3, None if multi else [0, 0, 0], f) for f, ds in items]
    pos = np.array([float(np.dot(p, normal)) for p in ipps])
    order = np.argsort(pos, kind="stable")
    items = [items[i] for i in order]
    ipps = [ipps[i] for i in order]
    pos = pos[order]
    if multi:
        gaps = np.diff(pos)
        if np.min(gaps) < 1e-3:
            i = int(np.argmin(gaps))
            raise InputFileError(
                source, f"duplicate slice position {pos[i]:.3f} mm ({items[i][0].name}, {items[i + 1][0].name})"
            )
        med = float(np.median(gaps))
        # 1% tolerance absorbs rounding in the headers; a missing slice doubles one gap
        if np.max(np.abs(gaps - med)) > max(0.01 * med, 1e-3):
            i = int(np.argmax(np.abs(gaps - med)))
            raise InputFileError(
                source,
                f"non-uniform slice spacing (missing slice?): gap of {gaps[i]:.3f} mm between {items[i][0].name} "
                f"and {items[i + 1][0].name}, expected {med:.3f} mm",
            )
        step = (ipps[-1] - ipps[0]) / (len(ipps) - 1)  # keeps a gantry-tilt shear instead of forcing the normal
    else:
        ds = items[0][1]
        thickness = ds.get("SpacingBetweenSlices", None) or ds.get("SliceThickness", None) or 1.0
        step = normal * float(thickness)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * ps0[1]  # i runs along a row: column spacing
    lps[:3, 1] = col_dir * ps0[0]  # j runs down a column: row spacing
    lps[:3, 2] = step
    lps[:3, 3] = ipps[0]
    return items, _LPS_RAS @ lps


def _rescale(ds) -> tuple[float, float]:
    slope = ds.get("RescaleSlope", None)
    inter = ds.get("RescaleIntercept", None)
    return (1.0 if slope in (None, "") else float(slope)), (0.0 if inter in (None, "") else float(inter))


def _stored_type(ds) -> tuple[np.dtype, int, int]:
    """(numpy dtype, lowest, highest) of the stored pixel values allowed by BitsAllocated/BitsStored."""
    bits = int(ds.BitsAllocated)
    stored = int(ds.get("BitsStored", bits) or bits)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    if bits not in (8, 16, 32):
        raise ValueError(f"BitsAllocated={bits} is not supported")
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    lo, hi = (-(1 << (stored - 1)), (1 << (stored - 1)) - 1) if signed else (0, (1 << stored) - 1)
    return dtype, lo, hi


def _read_dicom(path: Path) -> tuple[np.ndarray, ImageMeta]:
    items, affine = _sort_and_geometry(_series_headers(path), path)
    headers, slices, scales = [], [], []
    for f, _ in items:
        ds = _dcmread(f, headers_only=False)
        if "PixelData" not in ds:
            raise InputFileError(f, f"no pixel data ({_sop_name(ds)})")
        try:
            stored = ds.pixel_array
        except Exception as e:  # missing decoder for a compressed transfer syntax, truncated pixel data, ...
            raise InputFileError(f, f"cannot decode pixel data: {_one_line(e)}") from None
        scales.append(_rescale(ds))
        slices.append(np.asarray(stored).T)  # (rows, cols) -> (i=column, j=row)
        del ds.PixelData  # the pixels live in the array; keeping them would double the memory held by meta
        headers.append(ds)
    if all(s == (1.0, 0.0) for s in scales):
        vol = np.stack(slices, axis=-1)
    else:
        # modality values (e.g. HU); float32 is exact for 16-bit stored values under typical slopes
        vol = np.stack([s.astype(np.float32) * np.float32(m) + np.float32(b) for s, (m, b) in zip(slices, scales)], -1)
    vol = _native(vol)
    meta = ImageMeta("dicom", str(path), affine, _spacing(affine, 3), vol.dtype, vol.shape, headers)
    return vol, meta


def _derivation_code_item(code: Any):
    from pydicom.dataset import Dataset

    if hasattr(code, "value") and hasattr(code, "scheme_designator"):
        value, scheme, meaning = code.value, code.scheme_designator, code.meaning
    else:
        value, scheme, meaning = code
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = str(value), str(scheme), str(meaning)[:64]
    return item


def _derived_slice(hdr, values: np.ndarray, series_uid: str, derivation: str, code: Any, uid: str | None = None):
    """A copy of the input slice header with new pixels and the identity/derivation fields of a derived image."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = copy.deepcopy(hdr)
    dtype, lo, hi = _stored_type(ds)
    slope, inter = _rescale(ds)
    stored = _to_stored(values, dtype, slope, inter, lo, hi)
    ds.PixelData = np.ascontiguousarray(stored.T).tobytes()  # (i, j) -> (rows, cols) row-major
    ds["PixelData"].VR = "OB" if dtype.itemsize == 1 else "OW"
    for stale in ("LargestImagePixelValue", "SmallestImagePixelValue"):  # would describe the old pixels
        if stale in ds:
            delattr(ds, stale)
    uid = uid or generate_uid()
    source_ref = Dataset()
    source_ref.ReferencedSOPClassUID = hdr.SOPClassUID
    source_ref.ReferencedSOPInstanceUID = hdr.SOPInstanceUID
    ds.SOPInstanceUID = uid
    ds.SeriesInstanceUID = series_uid
    image_type = [str(v) for v in (ds.get("ImageType", None) or [])]
    if isinstance(ds.get("ImageType", None), str):
        image_type = [str(ds.ImageType)]
    ds.ImageType = ["DERIVED", "SECONDARY", *image_type[2:]]
    if derivation:
        ds.DerivationDescription = derivation[:1024]  # ST: at most 1024 characters
    if code is not None:
        ds.DerivationCodeSequence = [_derivation_code_item(code)]
    ds.SourceImageSequence = [source_ref]
    meta = ds.file_meta if isinstance(getattr(ds, "file_meta", None), FileMetaDataset) else FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = uid
    # always write uncompressed: the pixels were decoded, and re-encoding lossy would alter them again
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


# Attributes that identify a patient or the circumstances of the visit (a subset of the Basic Application Level
# Confidentiality Profile, DICOM PS3.15 Annex E) that carry no information a viewer or a model needs.
_PHI_REMOVE = (
    "PatientBirthDate", "PatientBirthTime", "PatientAddress", "PatientTelephoneNumbers", "OtherPatientIDs",
    "OtherPatientNames", "OtherPatientIDsSequence", "PatientMotherBirthName", "MilitaryRank", "EthnicGroup",
    "PatientComments", "MedicalRecordLocator", "ReferringPhysicianName", "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers", "PerformingPhysicianName", "OperatorsName", "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy", "RequestingPhysician", "InstitutionName", "InstitutionAddress",
    "InstitutionalDepartmentName", "StationName", "DeviceSerialNumber", "AccessionNumber", "StudyID",
    "RequestAttributesSequence", "AdmissionID", "IssuerOfPatientID", "CurrentPatientLocation",
    "PatientInstitutionResidence", "StudyDescription", "ImageComments", "AdditionalPatientHistory",
    "RequestedProcedureDescription", "PerformedProcedureStepDescription", "ScheduledProcedureStepDescription",
)
_DATES_REMOVE = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate", "StudyTime", "SeriesTime",
                 "AcquisitionTime", "ContentTime", "AcquisitionDateTime")


def deidentify_header(ds) -> None:
    """Remove patient identity from one DICOM slice header in place, keeping everything a viewer or model needs.

    Patient name and ID become ``ANON-<12 hex digits>``, a one-way hash of the original ID (the same patient gets the
    same pseudonym across studies and runs, so linked studies stay linked); birth date, names of staff, institution,
    accession number, dates / times, free-text comments and all private tags are removed; StudyInstanceUID and
    FrameOfReferenceUID are replaced by UIDs derived from the originals (slices of one study stay together, and the
    original UIDs cannot be read back); SourceImageSequence (which names the identified source) is dropped. Geometry,
    pixel description and windowing are untouched. PatientIdentityRemoved is ``YES`` and DeidentificationMethod says
    what was done. This covers the header only: text burnt into the pixels is not detected.
    """
    import hashlib

    from pydicom.uid import generate_uid

    pid = str(ds.get("PatientID", "") or ds.get("PatientName", "") or "")
    pseudonym = "ANON-" + hashlib.sha256(pid.encode()).hexdigest()[:12]
    ds.PatientName = pseudonym
    ds.PatientID = pseudonym
    for key in (*_PHI_REMOVE, *_DATES_REMOVE, "SourceImageSequence"):
        if key in ds:
            delattr(ds, key)
    for key in ("StudyInstanceUID", "FrameOfReferenceUID"):
        if key in ds:
            setattr(ds, key, generate_uid(entropy_srcs=["trust_monai deidentify", str(ds.get(key))]))
    ds.remove_private_tags()
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "trust_monai: PS3.15 basic subset, pseudonym ID, no dates"  # LO: 64 chars


def _save_dicom(ds, path: Path) -> None:
    import pydicom

    # dcmwrite, not Dataset.save_as: save_as refuses to re-encode a big-endian source as little endian
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)


def _write_dicom(array: np.ndarray, meta: ImageMeta, out: Path, derivation: str, code: Any,
                 deidentify: bool = False) -> None:
    from pydicom.uid import generate_uid

    headers = list(meta.header or [])
    if not headers:
        raise ArgumentError("meta.header holds no DICOM slice headers")
    h0 = headers[0]
    expected = (int(h0.Columns), int(h0.Rows), len(headers))
    if array.ndim == 2 and len(headers) == 1:
        array = array[:, :, None]
    if tuple(array.shape) != expected:
        raise ArgumentError(
            f"DICOM array shape {array.shape} does not match the source slices {expected} (cols, rows, n)")
    header_affine = _sort_and_geometry([(Path(meta.source), h) for h in headers], Path(meta.source))[1]
    if not np.allclose(header_affine, meta.affine, atol=1e-4):
        raise ArgumentError(
            "DICOM geometry comes from the slice headers; meta.affine was changed and cannot be written")
    single = len(headers) == 1 and out.suffix.lower() in _DICOM_SUFFIXES
    if out.suffix.lower() in _DICOM_SUFFIXES and not single:
        raise ArgumentError(f"{out}: a {len(headers)}-slice series is written to a folder, not a .dcm file")
    # UIDs derived from the source, the derivation and the pixels, not random: the same run writes the same bytes
    # (a rerun or a second run with the same seed is byte-identical), while any other content gets other UIDs
    import hashlib

    content = hashlib.sha256(np.ascontiguousarray(array).tobytes() + str((array.dtype, array.shape)).encode())
    series_uid = generate_uid(entropy_srcs=[
        "trust_monai derived series", str(h0.get("SeriesInstanceUID", "")), derivation, repr(code), str(deidentify),
        content.hexdigest(),
    ])
    slices = [_derived_slice(h, array[:, :, k], series_uid, derivation, code,
                             uid=generate_uid(entropy_srcs=[series_uid, str(h.get("SOPInstanceUID", "")), str(k)]))
              for k, h in enumerate(headers)]
    if deidentify:
        for ds in slices:
            deidentify_header(ds)
    if single:
        with atomic_path(out) as tmp:
            _save_dicom(slices[0], tmp)
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputExistsError(f"{out}: exists and is not an empty folder; a series is written into a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        width = max(4, len(str(len(slices))))
        for k, ds in enumerate(slices):
            _save_dicom(ds, tmpdir / f"IM{k + 1:0{width}d}.dcm")
        os.chmod(tmpdir, 0o755)  # mkdtemp makes 0700; a normal output folder should be as readable as a file
        os.replace(tmpdir, out)  # atomic; also replaces an empty folder on POSIX
    except BaseException:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise


def _probe_dicom(path: Path) -> tuple[int, ...]:
    items, _ = _sort_and_geometry(_series_headers(path), path)
    for f, ds in items:
        ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "1.2.840.10008.1.2"))
        if ts in _UNCOMPRESSED_TS:
            # stop_before_pixels cannot see truncated pixel data; the file must at least hold the pixel bytes
            need = getattr(ds, "_tm_pixel_offset", 0) + int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated) // 8
            if f.stat().st_size < need:
                raise InputFileError(f, f"truncated: {f.stat().st_size} bytes, header and pixel data need {need}")
    return int(items[0][1].Columns), int(items[0][1].Rows), len(items)
