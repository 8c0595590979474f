"""DICOM RT Structure Sets (RTSTRUCT): read the contours of a series, rasterise them, re-reference them.

Radiotherapy departments keep segmentations as planar contours in an RTSTRUCT that points at its CT series by
Series / SOP Instance UIDs. This module

* places a series on its voxel grid (:class:`SeriesGrid`, the grid :func:`trust_monai.data.io.read_image` returns),
* rasterises chosen structures into a label map on that grid (:func:`rasterise_rtstruct`), and
* writes a copy of a structure set whose references point at a derived series (new UIDs, same contours,
  optionally de-identified like the images: :func:`rereference_rtstruct`).

Rasterisation: each CLOSED_PLANAR contour is mapped from patient coordinates (LPS mm) into voxel indices of the
series; its slice is the nearest slice plane (the contour must lie within a quarter slice of it, the referenced
ContourImageSequence instance, when given, must be that slice); a voxel belongs to the contour when its centre lies
inside the polygon (a scanline fill, :func:`fill_polygon`). Several contours of one structure on one slice combine by the even-odd
rule (exclusive or), so an inner contour cuts a hole. POINT and OPEN_PLANAR contours enclose no area and are skipped.

rt-utils 1.2.7 was tried (it installs with pydicom 3): it rounds every vertex to a whole pixel before filling, sizes
its mask as (Columns, Rows) while OpenCV fills (Rows, Columns) (wrong for non-square images), reads every file of a
folder with its pixels and skips unreadable files silently, and needs OpenCV. The rasteriser here is small and tested
against contour areas on a real study instead (tests/unit/test_dicom_rt.py).

Errors are :class:`~trust_monai.errors.InputFileError` naming the RTSTRUCT file and what is wrong, on one line.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputFileError

__all__ = [
    "RTSTRUCT_SOP_CLASS",
    "SEG_SOP_CLASS",
    "SeriesGrid",
    "series_grid",
    "rtstruct_roi_names",
    "rtstruct_referenced_series",
    "select_names",
    "rasterise_rtstruct",
    "rasterise_contours",
    "fill_polygon",
    "rereference_rtstruct",
    "deidentify_uid",
]

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_PLANE_TOL = 0.25  # a contour may sit this many slice spacings off its slice plane (header rounding)
_LPS_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class SeriesGrid:
    """Where the voxels of one DICOM image series lie, in the axis order of :func:`~trust_monai.data.io.read_image`.

    Attributes:
        files: slice files in array ``k`` order (sorted along the slice normal).
        headers: their pydicom headers (no pixel data), same order.
        affine: 4x4 voxel index ``(i, j, k)`` -> RAS mm (as ``ImageMeta.affine``).
        shape: ``(columns, rows, slices)``.
    """

    files: list[Path]
    headers: list[Any] = field(repr=False)
    affine: np.ndarray
    shape: tuple[int, int, int]

    @property
    def series_uid(self) -> str:
        return str(self.headers[0].SeriesInstanceUID)

    @property
    def sop_uids(self) -> list[str]:
        return [str(h.SOPInstanceUID) for h in self.headers]

    @property
    def affine_lps(self) -> np.ndarray:
        return _LPS_RAS @ self.affine

    def to_voxel(self, points_lps: np.ndarray) -> np.ndarray:
        """``(N, 3)`` patient coordinates (LPS mm, as DICOM stores them) -> ``(N, 3)`` fractional ``(i, j, k)``."""
        pts = np.c_[np.asarray(points_lps, float), np.ones(len(points_lps))]
        return (np.linalg.inv(self.affine_lps) @ pts.T).T[:, :3]


def series_grid(items: Sequence[tuple[Path, Any]], source: Path) -> SeriesGrid:
    """The grid of a series from its ``(file, header)`` pairs (image objects of one series, any order).

    Raises:
        InputFileError: the slices do not form a regular grid (missing slice, mixed sizes ...), naming the file.
    """
    from .io_dicom import _sort_and_geometry  # the one place that knows how a series is sorted and placed

    items, affine = _sort_and_geometry(list(items), Path(source))
    h0 = items[0][1]
    return SeriesGrid([f for f, _ in items], [h for _, h in items], affine,
                      (int(h0.Columns), int(h0.Rows), len(items)))


def _read(path: Path):
    from .io_dicom import _dcmread

    ds = _dcmread(Path(path), headers_only=False)
    if str(ds.get("SOPClassUID", "")) != RTSTRUCT_SOP_CLASS:
        raise InputFileError(path, f"not an RT Structure Set (SOP class {ds.get('SOPClassUID', '?')})")
    return ds


def rtstruct_referenced_series(ds) -> list[str]:
    """SeriesInstanceUIDs an RTSTRUCT refers to (ReferencedFrameOfReferenceSequence > study > series)."""
    out = []
    for fr in ds.get("ReferencedFrameOfReferenceSequence", None) or []:
        for st in fr.get("RTReferencedStudySequence", None) or []:
            for se in st.get("RTReferencedSeriesSequence", None) or []:
                uid = str(se.get("SeriesInstanceUID", "") or "")
                if uid and uid not in out:
                    out.append(uid)
    return out


def rtstruct_contour_images(ds) -> set[str]:
    """Every SOP Instance UID an RTSTRUCT names in a ContourImageSequence (series list and contours)."""
    uids = set()
    for fr in ds.get("ReferencedFrameOfReferenceSequence", None) or []:
        for st in fr.get("RTReferencedStudySequence", None) or []:
            for se in st.get("RTReferencedSeriesSequence", None) or []:
                uids.update(str(c.ReferencedSOPInstanceUID) for c in se.get("ContourImageSequence", None) or [])
    for roi in ds.get("ROIContourSequence", None) or []:
        for c in roi.get("ContourSequence", None) or []:
            uids.update(str(i.ReferencedSOPInstanceUID) for i in c.get("ContourImageSequence", None) or [])
    return uids


def rtstruct_roi_names(ds) -> list[str]:
    """Structure names in StructureSetROISequence order."""
    return [str(r.get("ROIName", "") or f"ROI {r.ROINumber}") for r in ds.get("StructureSetROISequence", None) or []]


def select_names(present: Sequence[str], wanted: Sequence[str] | None, path: Path, what: str = "structure"
                 ) -> list[int]:
    """Indices into ``present`` of the ``wanted`` names (case-insensitive), in the order wanted; all when None.

    Raises:
        InputFileError: a wanted name is not present; the message lists the names that are.
    """
    if not wanted:
        return list(range(len(present)))
    lower = [p.lower() for p in present]
    out = []
    for name in wanted:
        if name.lower() not in lower:
            raise InputFileError(path, f"no {what} named {name!r}; the {what}s present are: {', '.join(present)}")
        out.append(lower.index(name.lower()))
    return out


def _contour_data(contour) -> list | np.ndarray | None:
    """ContourData as numbers; parsed from the raw bytes when pydicom has not converted it yet (pydicom's DS
    conversion makes one Python object per coordinate, seconds for a lung structure)."""
    elem = contour.get_item(0x30060050) if 0x30060050 in contour else None
    if elem is None:
        return None
    value = elem.value
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value).strip(b" \x00")
        return np.asarray(text.split(b"\\"), dtype=float) if text else []
    if value is None:
        return []
    return np.atleast_1d(np.asarray(value, dtype=float))


def _polygon_points(contour, path: Path, name: str, index: int) -> np.ndarray:
    try:
        data = _contour_data(contour)
    except ValueError as e:
        raise InputFileError(path, f"structure {name!r}: contour {index + 1} has unreadable ContourData ({e})"
                             ) from None
    n_values = 0 if data is None else len(data)
    n_points = int(contour.get("NumberOfContourPoints", 0) or 0)
    if n_values < 9 or n_values % 3:
        raise InputFileError(path, f"structure {name!r}: contour {index + 1} is empty or has fewer than 3 points "
                                   f"({n_values} coordinates)")
    pts = np.asarray(data, float).reshape(-1, 3)
    if n_points and n_points != len(pts):
        raise InputFileError(path, f"structure {name!r}: contour {index + 1} says {n_points} points but holds "
                                   f"{len(pts)}")
    if not np.isfinite(pts).all():
        raise InputFileError(path, f"structure {name!r}: contour {index + 1} has non-finite coordinates")
    return pts


def fill_polygon(cols: np.ndarray, rows: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels of a ``shape = (n_rows, n_cols)`` image whose centre lies inside a polygon (even-odd rule).

    Args:
        cols, rows: vertex coordinates in pixel units (column ``x``, row ``y``; pixel ``(r, c)`` has its centre at
            ``(x=c, y=r)``). The polygon is closed implicitly; it may cross itself and leave the image.

    Returns:
        Boolean ``(n_rows, n_cols)`` mask. A scanline fill: along each pixel row, edge crossings left of a pixel
        centre are counted (half-open in ``y``, so a vertex on the row is counted once); odd = inside.
    """
    n_rows, n_cols = shape
    out = np.zeros(shape, bool)
    x0, y0 = np.asarray(cols, float), np.asarray(rows, float)
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    r0, r1 = max(0, int(np.ceil(y0.min()))), min(n_rows - 1, int(np.floor(y0.max())))
    if r1 < r0:
        return out
    ys = np.arange(r0, r1 + 1, dtype=float)[:, None]
    crosses = (np.minimum(y0, y1) <= ys) & (ys < np.maximum(y0, y1))
    dy = np.where(y1 != y0, y1 - y0, 1.0)
    xs = x0 + (ys - y0) * (x1 - x0) / dy
    r_idx, e_idx = np.nonzero(crosses)
    first_inside = np.clip(np.floor(xs[r_idx, e_idx]).astype(np.int64) + 1, 0, n_cols)
    parity = np.zeros((r1 - r0 + 1, n_cols + 1), np.int32)
    np.add.at(parity, (r_idx, first_inside), 1)
    out[r0:r1 + 1] = (np.cumsum(parity, axis=1)[:, :n_cols] & 1).astype(bool)
    return out


def rasterise_rtstruct(path: str | Path, grid: SeriesGrid, names: Sequence[str] | None = None,
                       ds=None) -> tuple[np.ndarray, list[str]]:
    """Label map of the chosen structures of an RTSTRUCT on the grid of its series.

    Args:
        path: the RTSTRUCT file (named in errors).
        grid: the referenced series' :class:`SeriesGrid`.
        names: structures to rasterise, in class order (1, 2, ...), matched case-insensitively; None: all, in the
            structure set's order. Where structures overlap, the one listed first keeps the voxel.
        ds: the already-read dataset, to skip reading ``path`` again.

    Returns:
        ``(label, chosen)``: a ``uint8`` array of ``grid.shape`` (0 background, ``c`` the ``c``-th chosen
        structure) and the chosen names as the structure set spells them.

    Raises:
        InputFileError: unknown name, empty contour, contour off the series' slices or outside the image, a
            contour referring to an image that is not in the series.
    """
    path = Path(path)
    ds = _read(path) if ds is None else ds
    rois = list(ds.get("StructureSetROISequence", None) or [])
    present = rtstruct_roi_names(ds)
    chosen = select_names(present, names, path)
    if len(chosen) > 255:
        raise InputFileError(path, f"{len(chosen)} structures do not fit a uint8 label map; choose some with --roi")
    contours_of = {int(c.ReferencedROINumber): list(c.get("ContourSequence", None) or [])
                   for c in ds.get("ROIContourSequence", None) or []}
    uid_to_k = {uid: k for k, uid in enumerate(grid.sop_uids)}
    cols, rows, n = grid.shape
    label = np.zeros((n, rows, cols), np.uint8)  # slice-major while painting: each slice is contiguous
    for cls in range(len(chosen), 0, -1):  # last first, so the structure listed first is painted last and wins
        roi = rois[chosen[cls - 1]]
        mask = _rasterise(contours_of.get(int(roi.ROINumber), []), grid, path, present[chosen[cls - 1]], uid_to_k)
        label[mask] = cls
    return np.ascontiguousarray(label.transpose(2, 1, 0)), [present[i] for i in chosen]


def rasterise_contours(contours: Sequence[Any], grid: SeriesGrid, path: Path, name: str,
                       uid_to_k: dict[str, int] | None = None) -> np.ndarray:
    """Boolean mask (``grid.shape``) of one structure's ContourSequence items (even-odd rule per slice)."""
    return np.ascontiguousarray(_rasterise(contours, grid, path, name, uid_to_k).transpose(2, 1, 0))


def _rasterise(contours: Sequence[Any], grid: SeriesGrid, path: Path, name: str,
               uid_to_k: dict[str, int] | None = None) -> np.ndarray:
    """:func:`rasterise_contours` in ``(k, j, i)`` order."""
    cols, rows, n = grid.shape
    uid_to_k = uid_to_k if uid_to_k is not None else {uid: k for k, uid in enumerate(grid.sop_uids)}
    mask = np.zeros((n, rows, cols), bool)
    for index, contour in enumerate(contours):
        kind = str(contour.get("ContourGeometricType", "CLOSED_PLANAR") or "CLOSED_PLANAR").upper()
        if kind != "CLOSED_PLANAR":
            continue  # POINT / OPEN_PLANAR / OPEN_NONPLANAR enclose no area
        pts = _polygon_points(contour, path, name, index)
        ijk = grid.to_voxel(pts)
        k = int(np.rint(ijk[:, 2].mean()))
        if np.ptp(ijk[:, 2]) > 2 * _PLANE_TOL or abs(ijk[:, 2].mean() - k) > _PLANE_TOL:
            raise InputFileError(path, f"structure {name!r}: contour {index + 1} does not lie on a slice plane of "
                                       f"the series (slice index {ijk[:, 2].min():.2f}..{ijk[:, 2].max():.2f})")
        if not 0 <= k < n:
            raise InputFileError(path, f"structure {name!r}: contour {index + 1} lies outside the series (slice "
                                       f"{k}, the series has slices 0..{n - 1})")
        for ref in contour.get("ContourImageSequence", None) or []:
            uid = str(ref.get("ReferencedSOPInstanceUID", ""))
            if uid not in uid_to_k:
                raise InputFileError(path, f"structure {name!r}: contour {index + 1} refers to image {uid}, which "
                                           "is not in the series")
            if uid_to_k[uid] != k:
                raise InputFileError(path, f"structure {name!r}: contour {index + 1} lies on slice {k} but refers "
                                           f"to the image of slice {uid_to_k[uid]}")
        i, j = ijk[:, 0], ijk[:, 1]
        if i.max() < -0.5 or i.min() > cols - 0.5 or j.max() < -0.5 or j.min() > rows - 0.5:
            raise InputFileError(path, f"structure {name!r}: contour {index + 1} lies outside the image "
                                       f"(columns {i.min():.1f}..{i.max():.1f}, rows {j.min():.1f}..{j.max():.1f} "
                                       f"of a {cols}x{rows} image)")
        mask[k] ^= fill_polygon(i, j, (rows, cols))  # even-odd: a contour inside another cuts a hole
    return mask


def deidentify_uid(uid: str) -> str:
    """The UID :func:`trust_monai.data.io.deidentify_header` gives a StudyInstanceUID / FrameOfReferenceUID, so
    objects that refer to a de-identified study keep pointing at it."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["trust_monai deidentify", str(uid)])


def rereference_rtstruct(path: str | Path, old: SeriesGrid, new: SeriesGrid, derivation: str,
                         deidentify: bool = False, ds=None):
    """A copy of an RTSTRUCT whose references point at the derived series ``new`` of ``old``; contours unchanged.

    Slices are matched by position (``new`` has ``old``'s geometry, slice for slice). The copy gets a new SOP
    Instance UID and Series Instance UID (derived from the original and the new series, so a rerun writes the same
    bytes), the new series / study / frame of reference in every reference, a StructureSetDescription noting the
    derivation and, unless de-identified, a PredecessorStructureSetSequence naming the original. With
    ``deidentify`` the header gets :func:`~trust_monai.data.io.deidentify_header` (the images' pseudonym and UID
    remapping) and the structure set's own dates and ROI interpreters are blanked.

    Raises:
        InputFileError: the series do not match slice for slice, or the structure set refers to an image that is
            not in ``old``.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from .io_dicom import deidentify_header

    path = Path(path)
    src = _read(path) if ds is None else ds
    if old.shape != new.shape or not np.allclose(old.affine, new.affine, atol=1e-3):
        raise InputFileError(path, "the derived series does not have the geometry of the series it was made from")
    sop_map = dict(zip(old.sop_uids, new.sop_uids))
    missing = sorted(rtstruct_contour_images(src) - set(sop_map))
    if missing:
        raise InputFileError(path, f"refers to {len(missing)} image(s) not in series {old.series_uid} "
                                   f"(first: {missing[0]})")
    h_new = new.headers[0]
    ds = copy.deepcopy(src)
    old_study, old_frame = str(old.headers[0].get("StudyInstanceUID", "")), str(old.headers[0].get(
        "FrameOfReferenceUID", ""))
    new_study = str(h_new.get("StudyInstanceUID", old_study))
    new_frame = str(h_new.get("FrameOfReferenceUID", old_frame))
    for fr in ds.get("ReferencedFrameOfReferenceSequence", None) or []:
        if str(fr.get("FrameOfReferenceUID", "")) == old_frame:
            fr.FrameOfReferenceUID = new_frame
        for st in fr.get("RTReferencedStudySequence", None) or []:
            if str(st.get("ReferencedSOPInstanceUID", "")) == old_study:
                st.ReferencedSOPInstanceUID = new_study
            for se in st.get("RTReferencedSeriesSequence", None) or []:
                if str(se.get("SeriesInstanceUID", "")) == old.series_uid:
                    se.SeriesInstanceUID = new.series_uid
                for c in se.get("ContourImageSequence", None) or []:
                    c.ReferencedSOPInstanceUID = sop_map[str(c.ReferencedSOPInstanceUID)]
    for roi in ds.get("StructureSetROISequence", None) or []:
        if str(roi.get("ReferencedFrameOfReferenceUID", "")) == old_frame:
            roi.ReferencedFrameOfReferenceUID = new_frame
    for roi in ds.get("ROIContourSequence", None) or []:
        for c in roi.get("ContourSequence", None) or []:
            for i in c.get("ContourImageSequence", None) or []:
                i.ReferencedSOPInstanceUID = sop_map[str(i.ReferencedSOPInstanceUID)]
    if "StudyInstanceUID" in ds and str(ds.StudyInstanceUID) == old_study:
        ds.StudyInstanceUID = new_study
    if "FrameOfReferenceUID" in ds and str(ds.FrameOfReferenceUID) == old_frame:
        ds.FrameOfReferenceUID = new_frame
    entropy = ["trust_monai rtstruct", str(src.SOPInstanceUID), new.series_uid, str(deidentify)]
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[*entropy, "sop"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[*entropy, "series"])
    note = f"{derivation}; contours of structure set {src.SOPInstanceUID} re-referenced to series {new.series_uid}"
    ds.StructureSetDescription = note[:1024]
    if not deidentify:
        pred = Dataset()
        pred.ReferencedSOPClassUID = src.SOPClassUID
        pred.ReferencedSOPInstanceUID = src.SOPInstanceUID
        ds.PredecessorStructureSetSequence = [pred]
    else:
        # the study was remapped already (above, from the de-identified images); deidentify_header would remap it
        # a second time, so hand it the original study and frame and let it remap those
        if "StudyInstanceUID" in ds:
            ds.StudyInstanceUID = old_study
        had_frame = "FrameOfReferenceUID" in ds
        if had_frame:
            ds.FrameOfReferenceUID = old_frame
        deidentify_header(ds)
        for key in ("StructureSetDate", "StructureSetTime", "InstanceCreationDate", "InstanceCreationTime"):
            if key in ds:
                setattr(ds, key, "")
        for obs in ds.get("RTROIObservationsSequence", None) or []:
            if "ROIInterpreter" in obs:
                obs.ROIInterpreter = ""
        for key in ("PredecessorStructureSetSequence",):
            if key in ds:
                delattr(ds, key)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds
