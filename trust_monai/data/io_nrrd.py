"""NRRD (``.nrrd``, detached ``.nhdr``) through pynrrd: read, write and probe with the space / axis conventions
of MONAI's NrrdReader. :mod:`trust_monai.data.io` dispatches here; use its ``read_image`` / ``write_image``."""

from __future__ import annotations

import copy
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from trust_monai.errors import InputFileError
from trust_monai.utils.fileio import atomic_path

from .io_base import ImageMeta, _check_suffix, _gzip_holds, _native, _spacing, _to_stored

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


