"""DICOM studies with an RTSTRUCT or SEG through the hospital staging, without running a bundle.

A "protected" series is made here with :func:`trust_monai.data.io.write_image` (what the CaseWriter calls), so the
tests check what this layer adds: masks from UID-linked objects, the re-referenced RTSTRUCT / SEG, de-identification
consistency, certify's SEG, and the bad-input rules (one line naming the file, other series complete, input
untouched). The real study is a copy of the GTV-1 slices of LUNG1-001 (see :mod:`tests.unit.lung1_subset`); the
tests skip when it is absent. The full CLI run is in tests/integration/test_dicom_study_cli.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.unit import lung1_subset

pytestmark = pytest.mark.skipif(not lung1_subset.available(), reason="LUNG1-001 not in ../shared/data")


def tree_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return lung1_subset.subset(tmp_path_factory.mktemp("lung1") / "LUNG1-001", margin=1)


def _grid(folder: Path):
    from trust_monai.data.dicom_rt import series_grid
    from trust_monai.data.io_dicom import _series_headers

    return series_grid(_series_headers(folder), folder)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _renamed_series(src: Path, dst: Path, tag: str) -> str:
    """Copy the series folder ``src`` to ``dst`` as another series (new Series / SOP Instance UIDs)."""
    import pydicom
    from pydicom.uid import generate_uid

    dst.mkdir(parents=True)
    series_uid = generate_uid(entropy_srcs=[tag])
    for f in sorted(src.iterdir()):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[tag, f.name])
        ds.save_as(dst / f.name)
    return series_uid


def _point_rtstruct_at(rt_src: Path, dst: Path, series_uid: str, series_dir: Path | None) -> Path:
    """A copy of an RTSTRUCT that refers to ``series_uid`` (its images: those of ``series_dir``, matched by order)."""
    import pydicom

    rt = pydicom.dcmread(rt_src)
    se = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    se.SeriesInstanceUID = series_uid
    if series_dir is None:
        se.ContourImageSequence = []
    else:
        new = {pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]:
               pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in series_dir.iterdir()}
        old = {}
        for f in (rt_src.parent.parent / "image").iterdir():
            h = pydicom.dcmread(f, stop_before_pixels=True)
            old[str(h.SOPInstanceUID)] = h.ImagePositionPatient[2]
        for c in se.ContourImageSequence:
            c.ReferencedSOPInstanceUID = new[old[str(c.ReferencedSOPInstanceUID)]]
    dst.parent.mkdir(parents=True, exist_ok=True)
    rt.save_as(dst)
    return dst


def test_stage_uses_the_rtstruct_that_refers_to_the_series(study, tmp_path):
    from trust_monai.data.dicom_rt import rasterise_rtstruct
    from trust_monai.data.io import read_image
    from trust_monai.hospital import stage_input

    before = tree_digest(study)
    staged, generated = stage_input(study, tmp_path / "out", roi="gtv-1")
    assert generated and tree_digest(study) == before, "the input is never written to"
    doc = json.loads((staged / "dataset.json").read_text())
    assert doc["cases"] == [{"image": "image", "label": "image_label.nii.gz"}], "mask_rtstruct/ is not a series"
    assert doc["labels"] == {"0": "background", "1": "GTV-1"}
    label, meta = read_image(staged / "image_label.nii.gz")
    image, image_meta = read_image(staged / "image")
    expected, _ = rasterise_rtstruct(study / "mask_rtstruct" / "1-1.dcm", _grid(study / "image"), ["GTV-1"])
    assert np.array_equal(label, expected) and label.shape == image.shape and label.sum() > 1000
    np.testing.assert_allclose(meta.affine, image_meta.affine, atol=1e-3)
    record = json.loads((staged / "dicom_objects.json").read_text())
    assert record["links"][0]["object"] == "mask_rtstruct/1-1.dcm" and record["errors"] == []

    # default: every structure, in the structure set's order
    staged, _ = stage_input(study, tmp_path / "out_all")
    doc = json.loads((staged / "dataset.json").read_text())
    assert list(doc["labels"].values()) == ["background", "GTV-1", "Spinal-Cord", "Lung-Left", "Lung-Right"]


def _protect_by_hand(staged: Path, out: Path, deidentify: bool, delta: float = 5.0, series: str = "image"
                     ) -> tuple[np.ndarray, Path]:
    """What the protect bundle does to the series, with a known change (+delta HU inside the mask)."""
    from trust_monai.data.io import read_image, write_image

    image, meta = read_image(staged / series)
    mask, _ = read_image(staged / f"{series}_label.nii.gz")
    write_image(image + delta * (mask > 0), meta, out / series, derivation="test protection",
                deidentify=deidentify)
    return mask, out / series


@pytest.mark.parametrize("deidentify", [False, True])
def test_rtstruct_rewritten_for_the_new_series(study, tmp_path, deidentify):
    """Same contours, every reference on the new series (and, de-identified, on the same pseudonym and remapped
    study / frame of reference as the images); reading it back on the new series gives the input mask exactly."""
    import pydicom

    from trust_monai.data.dicom_rt import rasterise_rtstruct
    from trust_monai.data.dicom_study import write_derived_objects
    from trust_monai.hospital import stage_input

    out = tmp_path / "out"
    staged, _ = stage_input(study, out, roi="GTV-1")
    mask, new_series = _protect_by_hand(staged, out, deidentify)
    record = json.loads((staged / "dicom_objects.json").read_text())
    written, errors = write_derived_objects(record, study, staged, out, "trust_monai protect: test", deidentify)
    assert errors == [] and written == [out / "mask_rtstruct" / "1-1.dcm"]

    src = pydicom.dcmread(study / "mask_rtstruct" / "1-1.dcm")
    rt = pydicom.dcmread(written[0])
    new = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(new_series.iterdir())]
    new_uids = {str(d.SOPInstanceUID) for d in new}
    h = new[0]
    assert rt.SOPInstanceUID != src.SOPInstanceUID and rt.SeriesInstanceUID != src.SeriesInstanceUID
    fr = rt.ReferencedFrameOfReferenceSequence[0]
    st = fr.RTReferencedStudySequence[0]
    se = st.RTReferencedSeriesSequence[0]
    assert se.SeriesInstanceUID == h.SeriesInstanceUID and st.ReferencedSOPInstanceUID == h.StudyInstanceUID
    assert fr.FrameOfReferenceUID == h.FrameOfReferenceUID == rt.StructureSetROISequence[0].ReferencedFrameOfReferenceUID
    assert rt.StudyInstanceUID == h.StudyInstanceUID
    refs = [str(c.ReferencedSOPInstanceUID) for c in se.ContourImageSequence]
    assert refs and set(refs) <= new_uids, "every ContourImageSequence UID is an image of the new series"
    assert "re-referenced to series" in rt.StructureSetDescription
    for a, b in zip(src.ROIContourSequence, rt.ROIContourSequence):  # the contours themselves are untouched
        assert [list(c.ContourData) for c in a.ContourSequence] == [list(c.ContourData) for c in b.ContourSequence]
    back, _ = rasterise_rtstruct(written[0], _grid(new_series), ["GTV-1"])
    assert np.array_equal(back, mask), "read back on the protected series: the input mask, voxel for voxel"
    if deidentify:
        assert rt.PatientID == h.PatientID == str(h.PatientName) and rt.PatientID.startswith("ANON-")
        assert rt.PatientIdentityRemoved == "YES" and "PredecessorStructureSetSequence" not in rt
        assert h.StudyInstanceUID != src.StudyInstanceUID
        assert src.PatientID.encode() not in written[0].read_bytes()
        assert not any(e.tag.is_private for e in rt)
    else:
        assert rt.PatientID == src.PatientID == h.PatientID
        assert rt.PredecessorStructureSetSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID


def test_seg_input_and_certified_seg(study, tmp_path):
    """A SEG in the input gives the mask like an RTSTRUCT; after protect it is re-written for the new series; certify's
    label map (abstain its own segment) is written as a SEG that highdicom reads back into the same labels."""
    import highdicom as hd
    import nibabel as nib

    from trust_monai.data.dicom_rt import rasterise_rtstruct
    from trust_monai.data.dicom_seg import read_seg_labels, write_seg
    from trust_monai.data.dicom_study import write_certified_segs, write_derived_objects
    from trust_monai.hospital import stage_input

    inp = tmp_path / "study"
    shutil.copytree(study / "image", inp / "ct")
    grid = _grid(inp / "ct")
    label, names = rasterise_rtstruct(study / "mask_rtstruct" / "1-1.dcm", grid)
    write_seg(label, grid, names, inp / "seg" / "seg.dcm", "reference segmentation")
    out = tmp_path / "out"
    staged, _ = stage_input(inp, out, roi="Lung-Right,GTV-1")
    doc = json.loads((staged / "dataset.json").read_text())
    assert doc["cases"] == [{"image": "ct", "label": "ct_label.nii.gz"}]
    assert doc["labels"] == {"0": "background", "1": "Lung-Right", "2": "GTV-1"}
    staged_label = np.asarray(nib.load(str(staged / "ct_label.nii.gz")).dataobj)
    assert np.array_equal(staged_label == 1, label == 4) and np.array_equal(staged_label == 2, label == 1)

    from trust_monai.data.io import read_image, write_image

    image, meta = read_image(staged / "ct")
    write_image(image + 3.0 * (staged_label > 0), meta, out / "ct", derivation="test", deidentify=True)
    record = json.loads((staged / "dicom_objects.json").read_text())
    written, errors = write_derived_objects(record, inp, staged, out, "trust_monai protect: test", deidentify=True)
    assert errors == [] and written == [out / "seg" / "seg.dcm"]
    seg = hd.seg.segread(str(written[0]))
    new_grid = _grid(out / "ct")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == new_grid.series_uid
    assert seg.PatientID == new_grid.headers[0].PatientID != grid.headers[0].PatientID
    assert seg.StudyInstanceUID == new_grid.headers[0].StudyInstanceUID
    back, back_names = read_seg_labels(written[0], new_grid)
    assert back_names == names and np.array_equal(back, label)

    # certify: <series>.nii.gz with classes 0..C-1 and abstain = C, written as SEG beside it
    certified = np.where(staged_label > 0, staged_label, 0).astype(np.uint8)
    certified[:5] = 3  # abstain
    (out / "drs").mkdir()
    nib.save(nib.Nifti1Image(certified, meta.affine), str(out / "drs" / "ct.nii.gz"))
    written, errors = write_certified_segs(staged, out, ["drs"], ["background", "Lung-Right", "GTV-1"])
    assert errors == [] and written == [out / "drs" / "ct_seg.dcm"]
    seg = hd.seg.segread(str(written[0]))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Lung-Right", "GTV-1", "abstain"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == grid.series_uid, "certify refers to the input series"
    back, _ = read_seg_labels(written[0], _grid(staged / "ct"))
    assert np.array_equal(back, certified), "highdicom reads back the label map of the NIfTI output"


def test_bad_objects_leave_other_series_complete(study, tmp_path, capsys):
    """An RTSTRUCT of a series that is not there, two structure sets for one series, a broken contour: one line each
    naming the file; the series concerned is left out, the others are staged; the input is untouched."""
    import pydicom

    from trust_monai.hospital import stage_input

    inp = tmp_path / "pacs"
    _copy(study / "image", inp / "good" / "ct")
    _copy(study / "mask_rtstruct", inp / "good" / "rt")
    uid_b = _renamed_series(study / "image", inp / "twice" / "ct", "series b")
    for name in ("a.dcm", "b.dcm"):
        _point_rtstruct_at(study / "mask_rtstruct" / "1-1.dcm", inp / "twice" / "rt" / name, uid_b,
                           inp / "twice" / "ct")
    _point_rtstruct_at(study / "mask_rtstruct" / "1-1.dcm", inp / "orphan" / "rt.dcm", "1.2.3.999", None)
    uid_c = _renamed_series(study / "image", inp / "broken" / "ct", "series c")
    broken = _point_rtstruct_at(study / "mask_rtstruct" / "1-1.dcm", inp / "broken" / "rt" / "rt.dcm", uid_c,
                                inp / "broken" / "ct")
    rt = pydicom.dcmread(broken)
    rt.ROIContourSequence[0].ContourSequence[0].ContourData = ["1.0", "2.0", "3.0"]
    rt.ROIContourSequence[0].ContourSequence[0].NumberOfContourPoints = 1
    rt.save_as(broken)
    before = tree_digest(inp)

    staged, _ = stage_input(inp, tmp_path / "out", roi="GTV-1")
    err = capsys.readouterr().err.strip().splitlines()
    doc = json.loads((staged / "dataset.json").read_text())
    assert [c["image"] for c in doc["cases"]] == ["good/ct"] and doc["cases"][0]["label"] == "good/ct_label.nii.gz"
    assert len(err) == 3, err
    assert any(str(inp / "orphan" / "rt.dcm") in line and "refers to series 1.2.3.999, which is not in" in line
               for line in err)
    assert any(str(inp / "twice" / "rt" / "a.dcm") in line and "2 structure sets / SEGs refer to series" in line
               for line in err)
    assert any(str(broken) in line and "contour 1 is empty" in line and "broken/ct is left out" in line
               for line in err)
    assert all(line.startswith("trust-monai: error: ") for line in err)
    assert tree_digest(inp) == before
    assert not (staged / "twice").exists() and not (staged / "broken").exists()


def test_rtstruct_inside_the_series_folder(study, tmp_path):
    """An RTSTRUCT saved among its CT slices: the series is staged without it, and its re-referenced copy is written
    beside the protected series folder (which holds images only)."""
    from trust_monai.data.dicom_study import write_derived_objects
    from trust_monai.hospital import stage_input

    inp = tmp_path / "export"
    _copy(study / "image", inp / "series")
    shutil.copy(study / "mask_rtstruct" / "1-1.dcm", inp / "series" / "RS.dcm")
    out = tmp_path / "out"
    staged, _ = stage_input(inp, out, roi="GTV-1")
    assert not (staged / "series" / "RS.dcm").exists()
    assert len(list((staged / "series").iterdir())) == len(list((study / "image").iterdir()))
    _protect_by_hand(staged, out, False, series="series")
    written, errors = write_derived_objects(json.loads((staged / "dicom_objects.json").read_text()), inp, staged,
                                            out, "test", False)
    assert errors == [] and written == [out / "series_rtstruct.dcm"]


def test_roi_needs_an_rtstruct(tmp_path):
    from trust_monai.errors import TrustMonaiError
    from trust_monai.hospital import stage_input

    folder = tmp_path / "scans"
    folder.mkdir()
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), str(folder / "a.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.eye(4)), str(folder / "a_label.nii.gz"))
    with pytest.raises(TrustMonaiError, match="--roi chooses structures of DICOM RTSTRUCT / SEG"):
        stage_input(folder, tmp_path / "out", roi="GTV-1")
