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
import os
from pathlib import Path
from typing import Any

import numpy as np

from trust_monai.errors import ArgumentError, InputFileError, OutputExistsError
from trust_monai.utils.fileio import atomic_path

from .io_base import ImageMeta, _as_input_error, _check_suffix, _gzip_holds, _native, _spacing, _to_stored
from .io_dicom import _DICOM_SUFFIXES, _probe_dicom, _read_dicom, _write_dicom, deidentify_header
from .io_nrrd import _nhdr_data_name, _probe_nrrd, _read_nrrd, _write_nrrd
from .io_picture import (
    PICTURE_FORMATS, picture_format, probe_picture, read_picture, sniff_picture, write_picture,
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


