"""DICOM series through pydicom: read a series (sorted and placed in space), write a derived series with new UIDs,
de-identify headers, probe. :mod:`trust_monai.data.io` dispatches here; use its ``read_image`` / ``write_image``."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from trust_monai.errors import ArgumentError, InputFileError, OutputExistsError
from trust_monai.utils.fileio import atomic_path

from .io_base import _LPS_RAS, ImageMeta, _native, _one_line, _spacing, _to_stored

_DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}
_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR: an index, not an image
_UNCOMPRESSED_TS = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


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

