"""A small copy of the real LUNG1-001 study (NSCLC-Radiomics, CC BY-NC 3.0) for fast tests.

``subset(dst, margin)`` copies the CT slices that GTV-1 is drawn on plus ``margin`` slices on either side, and an
RTSTRUCT in which every contour (of any structure) lying on a slice that was not copied is dropped, as are the
ContourImageSequence entries of those slices: what remains is a valid, smaller study whose GTV-1 is complete.
``step > 1`` also keeps every ``step``-th row and column of each slice (same SOP Instance UIDs, pixel spacing times
``step``, first pixel where it was), so the contours, in patient millimetres, still lie on the smaller grid.
The study itself is never written to; tests skip when it is absent.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

LUNG1 = Path(__file__).resolve().parents[3] / "shared" / "data" / "NSCLC-Radiomics" / "LUNG1-001"
if not LUNG1.is_dir():
    LUNG1 = Path("/work/shared/data/NSCLC-Radiomics/LUNG1-001")
RTSTRUCT = LUNG1 / "mask_rtstruct" / "1-1.dcm"


def available() -> bool:
    return (LUNG1 / "image").is_dir() and RTSTRUCT.is_file()


def _z(values) -> float:
    return float(np.asarray(values, float).reshape(-1, 3)[:, 2].mean())


def _downsample(src: Path, dst: Path, step: int) -> None:
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    ds = pydicom.dcmread(src)
    arr = ds.pixel_array[::step, ::step]
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # pixels written back uncompressed
    ds.Rows, ds.Columns = arr.shape
    ds.PixelSpacing = [float(v) * step for v in ds.PixelSpacing]
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    ds.save_as(dst)


def subset(dst: Path, margin: int = 2, roi: str = "GTV-1", step: int = 1) -> Path:
    """Write ``dst/image/*.dcm`` and ``dst/mask_rtstruct/1-1.dcm``; returns ``dst``."""
    import pydicom

    rt = pydicom.dcmread(RTSTRUCT)
    number = next(int(r.ROINumber) for r in rt.StructureSetROISequence if r.ROIName == roi)
    roi_z = [_z(c.ContourData) for item in rt.ROIContourSequence if int(item.ReferencedROINumber) == number
             for c in item.ContourSequence]
    slices = sorted(((float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]), f)
                     for f in (LUNG1 / "image").iterdir() if f.suffix == ".dcm"))
    zs = np.array([z for z, _ in slices])
    lo = max(0, int(np.argmin(np.abs(zs - min(roi_z)))) - margin)
    hi = min(len(zs) - 1, int(np.argmin(np.abs(zs - max(roi_z)))) + margin)
    keep = slices[lo:hi + 1]
    kept_z = np.array([z for z, _ in keep])
    (dst / "image").mkdir(parents=True, exist_ok=True)
    uids = set()
    for _, f in keep:
        if step > 1:
            _downsample(f, dst / "image" / f.name, step)
        else:
            shutil.copyfile(f, dst / "image" / f.name)
        uids.add(str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID))
    for item in rt.ROIContourSequence:
        item.ContourSequence = [c for c in item.ContourSequence
                                if np.min(np.abs(kept_z - _z(c.ContourData))) < 0.5]
    for fr in rt.ReferencedFrameOfReferenceSequence:
        for st in fr.RTReferencedStudySequence:
            for se in st.RTReferencedSeriesSequence:
                se.ContourImageSequence = [c for c in se.ContourImageSequence if str(c.ReferencedSOPInstanceUID)
                                           in uids]
    (dst / "mask_rtstruct").mkdir(parents=True, exist_ok=True)
    rt.save_as(dst / "mask_rtstruct" / "1-1.dcm")
    return dst
