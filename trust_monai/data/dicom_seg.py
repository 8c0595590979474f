"""DICOM Segmentation objects (SEG) through highdicom: read one onto its series' grid, write label maps as SEG.

* :func:`read_seg_labels`: the chosen segments of a SEG as a label map on the grid of the series it was made from
  (frames are matched to slices by their source image references; the frame size, pixel spacing, orientation and
  plane positions must be those of the series).
* :func:`write_seg`: a label map on a series' grid as a BINARY SEG referencing that series (one segment per class),
  used for certify's certified label maps (abstain is its own segment) and for re-referencing an input SEG to a
  protected / purified series (:func:`rereference_seg`, same segments, derivation noted).

Errors are :class:`~trust_monai.errors.InputFileError` naming the SEG file and what is wrong, on one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputFileError
from .dicom_rt import SEG_SOP_CLASS, SeriesGrid, select_names

__all__ = ["seg_referenced_series", "seg_segment_names", "read_seg_labels", "write_seg", "rereference_seg"]


def _one_line(e: BaseException) -> str:
    from .io_base import _one_line as one_line

    return one_line(e)


def seg_referenced_series(ds) -> list[str]:
    """SeriesInstanceUIDs a SEG names in its ReferencedSeriesSequence."""
    out = []
    for se in ds.get("ReferencedSeriesSequence", None) or []:
        uid = str(se.get("SeriesInstanceUID", "") or "")
        if uid and uid not in out:
            out.append(uid)
    return out


def seg_source_instances(ds) -> set[str]:
    """SOP Instance UIDs of the images a SEG was derived from (ReferencedSeriesSequence and per-frame sources)."""
    uids = set()
    for se in ds.get("ReferencedSeriesSequence", None) or []:
        uids.update(str(i.ReferencedSOPInstanceUID) for i in se.get("ReferencedInstanceSequence", None) or [])
    for fg in ds.get("PerFrameFunctionalGroupsSequence", None) or []:
        for der in fg.get("DerivationImageSequence", None) or []:
            uids.update(str(s.ReferencedSOPInstanceUID) for s in der.get("SourceImageSequence", None) or [])
    return uids


def seg_segment_names(ds) -> list[str]:
    """Segment labels in SegmentSequence order."""
    return [str(s.get("SegmentLabel", "") or f"segment {s.SegmentNumber}") for s in ds.get("SegmentSequence", None)
            or []]


def _read(path: Path):
    import highdicom as hd

    try:
        seg = hd.seg.segread(str(path))
    except Exception as e:  # highdicom / pydicom raise many types for a malformed object
        raise InputFileError(path, f"cannot read as DICOM SEG: {_one_line(e)}") from None
    return seg


def _check_geometry(seg, grid: SeriesGrid, path: Path) -> dict[str, int]:
    """SOP Instance UID -> slice index for every frame's source, after checking that the frames lie on the grid."""
    cols, rows, n = grid.shape
    if (int(seg.Rows), int(seg.Columns)) != (rows, cols):
        raise InputFileError(path, f"frames are {seg.Rows}x{seg.Columns}, the series' slices {rows}x{cols}: the SEG "
                                   "does not match the series geometry")
    uid_to_k = {uid: k for k, uid in enumerate(grid.sop_uids)}
    h0 = grid.headers[0]
    shared = (seg.get("SharedFunctionalGroupsSequence", None) or [None])[0]
    per_frame = seg.get("PerFrameFunctionalGroupsSequence", None) or []

    def group(fg, key):
        item = fg.get(key, None) if fg is not None else None
        return item[0] if item else None

    for f, fg in enumerate(per_frame):
        measures = group(fg, "PixelMeasuresSequence") or group(shared, "PixelMeasuresSequence")
        orient = group(fg, "PlaneOrientationSequence") or group(shared, "PlaneOrientationSequence")
        if measures is not None and "PixelSpacing" in measures and not np.allclose(
                [float(v) for v in measures.PixelSpacing], [float(v) for v in h0.PixelSpacing], rtol=1e-3):
            raise InputFileError(path, f"frame {f + 1}: pixel spacing {list(measures.PixelSpacing)} differs from the "
                                       f"series' {list(h0.PixelSpacing)}: the SEG does not match the series geometry")
        if orient is not None and "ImageOrientationPatient" in orient and not np.allclose(
                [float(v) for v in orient.ImageOrientationPatient], [float(v) for v in h0.ImageOrientationPatient],
                atol=1e-3):
            raise InputFileError(path, f"frame {f + 1}: orientation differs from the series': the SEG does not match "
                                       "the series geometry")
        sources = [str(s.ReferencedSOPInstanceUID) for der in fg.get("DerivationImageSequence", None) or []
                   for s in der.get("SourceImageSequence", None) or []]
        if not sources:
            raise InputFileError(path, f"frame {f + 1} names no source image (DerivationImageSequence); cannot "
                                       "place it on the series")
        for uid in sources:
            if uid not in uid_to_k:
                raise InputFileError(path, f"frame {f + 1} was derived from image {uid}, which is not in series "
                                           f"{grid.series_uid}")
        pos = group(fg, "PlanePositionSequence")
        if pos is not None and "ImagePositionPatient" in pos:
            want = [float(v) for v in grid.headers[uid_to_k[sources[0]]].ImagePositionPatient]
            got = [float(v) for v in pos.ImagePositionPatient]
            if not np.allclose(got, want, atol=max(1e-2, 0.1 * float(h0.PixelSpacing[0]))):
                raise InputFileError(path, f"frame {f + 1} lies at {got} mm, its source slice at {want} mm: the SEG "
                                           "does not match the series geometry")
    return uid_to_k


def read_seg_labels(path: str | Path, grid: SeriesGrid, names: Sequence[str] | None = None
                    ) -> tuple[np.ndarray, list[str]]:
    """Label map of the chosen segments of a SEG on the grid of the series it references.

    Args:
        path: the SEG file.
        grid: the referenced series' grid.
        names: segment labels in class order (case-insensitive); None: every segment in SegmentSequence order.
            Where segments overlap the one listed first keeps the voxel.

    Returns:
        ``(label, chosen)``: ``uint8`` array of ``grid.shape`` and the chosen segment labels.

    Raises:
        InputFileError: unreadable SEG, unknown segment, frames that do not lie on the series' grid.
    """
    path = Path(path)
    seg = _read(path)
    present = seg_segment_names(seg)
    chosen = select_names(present, names, path, what="segment")
    if len(chosen) > 255:
        raise InputFileError(path, f"{len(chosen)} segments do not fit a uint8 label map; choose some with --roi")
    _check_geometry(seg, grid, path)
    numbers = [int(seg.SegmentSequence[i].SegmentNumber) for i in chosen]
    try:
        arr = seg.get_pixels_by_source_instance(grid.sop_uids, segment_numbers=numbers, combine_segments=False,
                                                assert_missing_frames_are_empty=True, rescale_fractional=True)
    except Exception as e:
        raise InputFileError(path, f"cannot place the SEG's frames on the series: {_one_line(e)}") from None
    # (slices, rows, cols, segments); fractional segments count where they are at least one half
    arr = np.asarray(arr)
    binary = arr >= 0.5 if arr.dtype.kind == "f" else arr > 0
    label = np.zeros(binary.shape[:3], np.uint8)
    for cls in range(len(numbers), 0, -1):  # the segment listed first wins an overlap
        label[binary[..., cls - 1]] = cls
    return np.ascontiguousarray(label.transpose(2, 1, 0)), [present[i] for i in chosen]


def _algorithm(name: str):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from .. import __version__ as version

    return hd.AlgorithmIdentificationSequence(name=name, family=codes.cid7162.ArtificialIntelligence,
                                              version=str(version))


def write_seg(label: np.ndarray, grid: SeriesGrid, names: Sequence[str], out_path: str | Path, description: str,
              algorithm: str = "trust_monai", segment_descriptions: Sequence[Any] | None = None,
              uid_seed: Sequence[str] = ()) -> Path:
    """Write a label map on ``grid`` as a BINARY DICOM SEG that references the series of ``grid``.

    Args:
        label: integer array of ``grid.shape``; value ``c`` (1..len(names)) is segment ``c``, 0 is background.
        grid: the series the label map lies on (headers without pixel data are enough).
        names: segment labels, in value order.
        out_path: the ``.dcm`` file to write (atomically).
        description: SeriesDescription / ContentDescription (derivation note).
        algorithm: AlgorithmName of the segments (when ``segment_descriptions`` is not given).
        segment_descriptions: highdicom SegmentDescriptions to keep (a re-referenced input SEG); default: one
            AUTOMATIC segment per name.
        uid_seed: strings the new SOP / Series Instance UIDs are derived from (a rerun gives the same UIDs).

    Returns:
        ``out_path``.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    from ..utils.fileio import atomic_path

    label = np.asarray(label)
    if label.shape != grid.shape:
        raise ValueError(f"label map shape {label.shape} is not the series' {grid.shape}")
    if segment_descriptions is None:
        segment_descriptions = [
            hd.seg.SegmentDescription(
                segment_number=c, segment_label=str(n)[:64], segmented_property_category=codes.SCT.AnatomicalStructure,
                segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=_algorithm(algorithm))
            for c, n in enumerate(names, start=1)]
    seed = ["trust_monai seg", grid.series_uid, *map(str, uid_seed)]
    pixels = np.ascontiguousarray(label.transpose(2, 1, 0)).astype(np.uint8)  # (slices, rows, cols)
    from .. import __version__ as version

    import warnings

    with warnings.catch_warnings():  # "LUNG1-001 is unlikely to be a person name": the source's name, kept as is
        warnings.simplefilter("ignore", UserWarning)
        seg = _segmentation(hd, grid, pixels, segment_descriptions, seed, algorithm, description, version)
    out = Path(out_path)
    with atomic_path(out) as tmp:
        seg.save_as(str(tmp))
    return out


# type 2 attributes highdicom copies from the first source image; a de-identified series has dropped some of them
_TYPE2_FROM_SOURCE = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                      "StudyDate", "StudyTime")


def _segmentation(hd, grid, pixels, segment_descriptions, seed, algorithm, description, version):
    import copy

    from pydicom.uid import generate_uid

    first = copy.deepcopy(grid.headers[0])
    for key in _TYPE2_FROM_SOURCE:
        if key not in first:
            setattr(first, key, "")
    seg = hd.seg.Segmentation(
        source_images=[first, *grid.headers[1:]], pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=list(segment_descriptions),
        series_instance_uid=generate_uid(entropy_srcs=[*seed, "series"]), series_number=int(
            grid.headers[0].get("SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=generate_uid(entropy_srcs=[*seed, "sop"]), instance_number=1,
        manufacturer="trust_monai", manufacturer_model_name=algorithm[:64], software_versions=str(version),
        device_serial_number="0", series_description=description[:64], content_description=description[:64],
        content_label="TRUSTMONAI", omit_empty_frames=True)
    for key in ("PatientIdentityRemoved", "DeidentificationMethod"):  # the source's de-identification holds here too
        if key in first:
            setattr(seg, key, first.get(key))
    return seg


def rereference_seg(path: str | Path, old: SeriesGrid, new: SeriesGrid, out_path: str | Path, derivation: str
                    ) -> Path:
    """Write the segments of the SEG ``path`` (made on ``old``) as a new SEG referencing the derived series ``new``.

    Same segments (descriptions, numbers, voxels); the new SEG takes its patient / study identity from ``new``'s
    headers, so a de-identified series gets a de-identified SEG with the same pseudonym and remapped UIDs.
    """
    import highdicom as hd

    path = Path(path)
    if old.shape != new.shape or not np.allclose(old.affine, new.affine, atol=1e-3):
        raise InputFileError(path, "the derived series does not have the geometry of the series it was made from")
    seg = _read(path)
    label, names = read_seg_labels(path, old)
    numbers = [int(s.SegmentNumber) for s in seg.SegmentSequence]
    descriptions = [hd.seg.SegmentDescription.from_dataset(s) for s in seg.SegmentSequence]
    # segments are renumbered 1..S in SegmentSequence order (DICOM SEG requires consecutive numbers from 1)
    for c, d in enumerate(descriptions, start=1):
        d.SegmentNumber = c
    del numbers
    return write_seg(label, new, names, out_path, description=derivation, segment_descriptions=descriptions,
                     uid_seed=[str(seg.SOPInstanceUID), new.series_uid])


def is_seg(ds) -> bool:
    return str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS
