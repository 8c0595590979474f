"""Round trips, geometry cross-checks and bad-input handling of trust_monai.data.io on real small images."""

from __future__ import annotations

import copy
import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from trust_monai.data import io_dicom as tio_dicom
from trust_monai.data.io import ImageMeta, detect_format, probe_image, read_image, to_metatensor, write_image
from trust_monai.errors import ArgumentError, InputFileError, OutputExistsError

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"
CT_SMALL = get_testdata_file("CT_small.dcm", download=False)

# An oblique orientation (20 degrees about z) so a swapped row/column or a lost sign would show.
_ANG = np.deg2rad(20.0)
_ROW_DIR = np.array([np.cos(_ANG), np.sin(_ANG), 0.0])
_COL_DIR = np.array([-np.sin(_ANG), np.cos(_ANG), 0.0])
_NORMAL = np.cross(_ROW_DIR, _COL_DIR)


# ------------------------------------------------------------------------------------------------ sample builders


def make_series(folder: Path, n: int = 4, spacing: float = 2.5, series_uid: str | None = None) -> list[Path]:
    """Write an n-slice CT series built from pydicom's CT_small.dcm.

    File names run opposite to the slice position so a reader sorting by name gets it wrong, and each slice has
    distinct pixels so a wrong order is visible in the array.
    """
    folder.mkdir(parents=True, exist_ok=True)
    base = pydicom.dcmread(CT_SMALL)
    base.ImageOrientationPatient = [f"{v:.6f}" for v in (*_ROW_DIR, *_COL_DIR)]
    base.SeriesInstanceUID = series_uid or generate_uid()
    base.WindowCenter, base.WindowWidth = "40", "400"
    origin = np.array([-158.135803, -179.035797, -75.699997])
    pixels = base.pixel_array
    paths = []
    for k in range(n):
        ds = copy.deepcopy(base)
        ds.ImagePositionPatient = [f"{v:.6f}" for v in origin + k * spacing * _NORMAL]
        ds.SliceLocation = f"{float(np.dot(origin, _NORMAL)) + k * spacing:.6f}"
        ds.InstanceNumber = k + 1
        uid = generate_uid()
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.PixelData = (pixels + 10 * k).astype(pixels.dtype).tobytes()
        path = folder / f"slice_{n - k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def make_nrrd(path: Path, detached: bool = False) -> Path:
    """A small int16 NRRD in LPS with an oblique direction, anisotropic spacing and a non-zero origin."""
    rng = np.random.default_rng(1)
    data = rng.integers(-500, 1500, size=(7, 6, 5)).astype(np.int16)
    rot = np.array([[np.cos(_ANG), -np.sin(_ANG), 0.0], [np.sin(_ANG), np.cos(_ANG), 0.0], [0.0, 0.0, 1.0]])
    spacing = np.array([0.7, 0.8, 2.5])
    header = {
        "space": "left-posterior-superior",
        "space directions": (rot * spacing).T,  # rows are the world vectors of axes i, j, k
        "space origin": np.array([10.5, -20.25, 33.0]),
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
    }
    nrrd.write(str(path), data, header, index_order="F", detached_header=detached)
    return path


@pytest.fixture
def nifti_path(tmp_path: Path) -> Path:
    # a copy, so tests that try to overwrite "the input" never come near the installed package data
    dst = tmp_path / "in" / "anatomical.nii"
    dst.parent.mkdir(exist_ok=True)
    shutil.copy(NIB_DATA / "anatomical.nii", dst)
    return dst


@pytest.fixture
def nrrd_path(tmp_path: Path) -> Path:
    (tmp_path / "in").mkdir(exist_ok=True)
    return make_nrrd(tmp_path / "in" / "vol.nrrd")


@pytest.fixture
def dicom_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "in" / "series"
    make_series(folder)
    return folder


@pytest.fixture
def sample(request) -> tuple[str, Path]:
    """(format, input path) for an indirect parameter "nifti" / "nrrd" / "dicom"; builds only that input."""
    fixture = {"nifti": "nifti_path", "nrrd": "nrrd_path", "dicom": "dicom_dir"}[request.param]
    return request.param, request.getfixturevalue(fixture)


def _out_path(tmp_path: Path, fmt: str) -> Path:
    return tmp_path / "out" / {"nifti": "x.nii.gz", "nrrd": "x.nrrd", "dicom": "x_series", "png": "x.png"}[fmt]


def _assert_same_geometry(a: ImageMeta, b: ImageMeta) -> None:
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-5)
    np.testing.assert_allclose(a.spacing, b.spacing, atol=1e-6)
    np.testing.assert_allclose(a.origin, b.origin, atol=1e-5)
    np.testing.assert_allclose(a.direction, b.direction, atol=1e-6)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("sample", ["nifti", "nrrd", "dicom"], indirect=True)
def test_round_trip_keeps_values_geometry_and_dtype(sample, tmp_path):
    fmt, src = sample
    arr, meta = read_image(src)
    assert meta.format == fmt and arr.shape == meta.shape and arr.dtype == meta.dtype
    assert probe_image(src) == {"format": fmt, "shape": arr.shape}
    rng = np.random.default_rng(0)
    intended = arr + rng.integers(-3, 4, size=arr.shape).astype(arr.dtype)
    out = _out_path(tmp_path, fmt)

    assert write_image(intended, meta, out, derivation="test perturbation") == out

    back, meta2 = read_image(out)
    assert back.dtype == arr.dtype
    np.testing.assert_array_equal(back, intended)
    _assert_same_geometry(meta, meta2)
    assert _leftovers(out.parent) == []  # no temp files next to the output


def test_dicom_axis_convention_and_slice_order(dicom_dir):
    arr, meta = read_image(dicom_dir)
    ds = pydicom.dcmread(CT_SMALL)
    cols, rows = int(ds.Columns), int(ds.Rows)
    assert arr.shape == (cols, rows, 4)
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    for k in range(4):  # sorted by position although the file names run backwards
        np.testing.assert_array_equal(arr[:, :, k], hu.T + 10 * k)
    assert meta.spacing == pytest.approx((float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0]), 2.5), abs=1e-5)
    lps = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(meta.direction, lps @ np.stack([_ROW_DIR, _COL_DIR, _NORMAL], axis=1), atol=1e-5)


def test_dicom_headers_of_derived_series(dicom_dir, tmp_path):
    from pydicom.sr.codedict import codes

    arr, meta = read_image(dicom_dir)
    out = tmp_path / "derived"
    write_image(arr + 7, meta, out, derivation="adversarial protection", derivation_code=codes.cid7203.Smoothing)

    src = sorted((pydicom.dcmread(p) for p in dicom_dir.iterdir()), key=lambda d: d.InstanceNumber)
    new = sorted((pydicom.dcmread(p) for p in out.iterdir()), key=lambda d: d.InstanceNumber)
    assert len(new) == len(src) == 4
    assert {d.SeriesInstanceUID for d in new} == {new[0].SeriesInstanceUID} != {src[0].SeriesInstanceUID}
    new_sops = {d.SOPInstanceUID for d in new}
    assert len(new_sops) == 4 and not new_sops & {d.SOPInstanceUID for d in src}
    for s, d in zip(src, new):
        assert d.PatientID == s.PatientID and d.PatientName == s.PatientName
        assert d.StudyInstanceUID == s.StudyInstanceUID and d.FrameOfReferenceUID == s.FrameOfReferenceUID
        assert d.file_meta.MediaStorageSOPInstanceUID == d.SOPInstanceUID
        assert list(d.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert d.DerivationDescription == "adversarial protection"
        assert d.DerivationCodeSequence[0].CodeMeaning == codes.cid7203.Smoothing.meaning
        assert d.SourceImageSequence[0].ReferencedSOPInstanceUID == s.SOPInstanceUID
        for key in (
            "ImagePositionPatient",
            "ImageOrientationPatient",
            "PixelSpacing",
            "RescaleSlope",
            "RescaleIntercept",
            "WindowCenter",
            "WindowWidth",
            "BitsStored",
            "PixelRepresentation",
        ):
            assert d.get(key) == s.get(key), key
        # stored values are what the unchanged rescale maps to the intended modality values
        np.testing.assert_array_equal(d.pixel_array.astype(np.int32), s.pixel_array.astype(np.int32) + 7)


def test_dicom_geometry_seen_by_itk(dicom_dir, tmp_path):
    itk = pytest.importorskip("itk")
    arr, meta = read_image(dicom_dir)
    out = tmp_path / "derived"
    write_image(arr, meta, out, derivation="copy")

    def itk_geometry(folder: Path):
        names = itk.GDCMSeriesFileNames.New(Directory=str(folder)).GetInputFileNames()
        img = itk.imread([str(n) for n in names])
        return np.array(img.GetSpacing()), np.array(img.GetOrigin()), itk.array_from_matrix(img.GetDirection())

    sp_in, org_in, dir_in = itk_geometry(dicom_dir)
    sp_out, org_out, dir_out = itk_geometry(out)
    np.testing.assert_allclose(sp_out, sp_in, atol=1e-5)
    np.testing.assert_allclose(org_out, org_in, atol=1e-4)
    np.testing.assert_allclose(dir_out, dir_in, atol=1e-6)
    # and ITK's LPS geometry is ours after the LPS->RAS flip
    flip = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(flip @ org_in, meta.origin, atol=1e-4)
    np.testing.assert_allclose(flip @ dir_in, meta.direction, atol=1e-5)
    np.testing.assert_allclose(sp_in, meta.spacing, atol=1e-5)


def test_nifti_scaled_and_clipped(tmp_path):
    # a scaled int16 NIfTI keeps its slope/intercept, and out-of-range values are clipped, not wrapped
    src = tmp_path / "scaled.nii.gz"
    img = nib.Nifti1Image(np.arange(60, dtype=np.int16).reshape(3, 4, 5), np.diag([1.5, 1.5, 3.0, 1.0]))
    img.header.set_slope_inter(0.5, -10.0)
    img.to_filename(src)
    arr, meta = read_image(src)
    intended = arr.copy()
    intended[0, 0, 0] = 1e9  # beyond int16 after unscaling -> clipped to 32767 * 0.5 - 10
    intended[1, 1, 1] = arr[1, 1, 1] + 0.5 * 3
    write_image(intended, meta, tmp_path / "o.nii.gz", derivation="scaled")
    back, meta2 = read_image(tmp_path / "o.nii.gz")
    assert back.dtype == arr.dtype and meta2.header.get_slope_inter() == (0.5, -10.0)
    assert back[0, 0, 0] == 32767 * 0.5 - 10.0
    np.testing.assert_array_equal(back.ravel()[1:], intended.ravel()[1:])
    assert meta2.header["descrip"].item() == b"scaled"


def test_integer_cast_rounds_and_clips(nifti_path, tmp_path):
    arr, meta = read_image(nifti_path)
    intended = arr.astype(np.float64)
    intended[0, 0, 0], intended[1, 0, 0], intended[2, 0, 0] = 1.6, 40000.0, np.nan
    write_image(intended, meta, tmp_path / "o.nii")
    back, _ = read_image(tmp_path / "o.nii")
    assert back.dtype == np.int16 and back[0, 0, 0] == 2 and back[1, 0, 0] == 32767 and back[2, 0, 0] == 0


def test_nrrd_detached_header_round_trip(tmp_path):
    src = make_nrrd(tmp_path / "vol.nhdr", detached=True)
    arr, meta = read_image(src)
    out = tmp_path / "out" / "res.nhdr"
    write_image(arr * 2, meta, out, derivation="doubled")
    back, meta2 = read_image(out)
    np.testing.assert_array_equal(back, arr * 2)
    _assert_same_geometry(meta, meta2)
    assert sorted(p.name for p in out.parent.iterdir()) == ["res.nhdr", "res.raw.gz"]
    assert meta2.header["derivation"] == "doubled"


@pytest.mark.parametrize("mode,shape", [("L", (9, 13)), ("RGB", (9, 13, 3))])
def test_png_round_trip(tmp_path, mode, shape):
    from PIL import Image

    rng = np.random.default_rng(2)
    src = tmp_path / "img.png"
    Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode=mode).save(src)
    arr, meta = read_image(src)
    assert arr.shape == shape and arr.dtype == np.uint8 and meta.format == "png"
    assert probe_image(src)["shape"] == shape
    intended = arr.astype(np.int32) + 100  # pushes some values past 255: clipped, not wrapped
    write_image(intended, meta, tmp_path / "o.png", derivation="brighter")
    back, meta2 = read_image(tmp_path / "o.png")
    np.testing.assert_array_equal(back, np.clip(intended, 0, 255))
    assert meta2.header["Derivation"] == "brighter"


@pytest.mark.parametrize("mode,dtype,shape,compression", [
    ("RGB", np.uint8, (9, 13, 3), "tiff_lzw"), ("I;16", np.uint16, (9, 13), "raw"), ("F", np.float32, (9, 13), "jpeg"),
])
def test_tiff_round_trip(tmp_path, mode, dtype, shape, compression):
    from PIL import Image

    rng = np.random.default_rng(3)
    src = tmp_path / "img.tif"
    arr0 = (rng.random(shape) * (1 if dtype == np.float32 else 250)).astype(dtype)
    save_kw = {"compression": "tiff_lzw" if compression == "jpeg" else compression, "description": "fundus, left eye"}
    Image.fromarray(arr0).save(src, **save_kw)
    arr, meta = read_image(src)
    assert meta.format == "tiff" and arr.dtype == dtype and arr.shape == shape and probe_image(src)["shape"] == shape
    np.testing.assert_array_equal(arr, arr0)
    # a source the writer must not re-compress lossily (JPEG) is written with LZW instead
    meta.header["compression"] = compression
    intended = arr.astype(np.float64) + (0.25 if dtype == np.float32 else 7)
    write_image(intended, meta, tmp_path / "o.tiff", derivation="brighter")
    back, meta2 = read_image(tmp_path / "o.tiff")
    top = None if dtype == np.float32 else np.iinfo(dtype).max  # integers are clipped to the type, never wrapped
    np.testing.assert_array_equal(back, intended.astype(np.float32) if top is None else np.clip(intended, 0, top))
    assert meta2.header["ImageDescription"] == "fundus, left eye\nDerivation: brighter"
    assert meta2.header["compression"] == ("tiff_lzw" if compression == "jpeg" else compression)
    with pytest.raises(ArgumentError, match="ending in .tif or .tiff"):
        write_image(arr, meta, tmp_path / "o.png")


def test_tiff_multipage_and_magic_bytes(tmp_path):
    from PIL import Image

    pages = [Image.fromarray(np.full((4, 5), v, np.uint8)) for v in (1, 2)]
    stack = tmp_path / "stack.tif"
    pages[0].save(stack, save_all=True, append_images=pages[1:])
    _assert_input_error(stack, "2 pages")
    nameless = tmp_path / "picture"  # no suffix: recognised by its magic bytes
    pages[0].save(nameless, format="TIFF")
    assert detect_format(nameless) == "tiff" and read_image(nameless)[0].shape == (4, 5)


@pytest.fixture
def drive_root() -> Path:
    """The real DRIVE copy (``$TRUST_MONAI_DRIVE`` or ``../shared/data/DRIVE``), or skip."""
    env = os.environ.get("TRUST_MONAI_DRIVE", "").strip()
    path = Path(env) if env else Path(__file__).resolve().parents[3] / "shared/data/DRIVE"
    if not (path / "training/images").is_dir():
        pytest.skip(f"no DRIVE copy at {path} (set $TRUST_MONAI_DRIVE)")
    return path


def test_drive_tiff_agrees_with_monai(drive_root):
    """The distributed DRIVE photograph (RGB, LZW TIFF) reads as MONAI's loader reads it, transposed to (H, W, C)."""
    from monai.transforms import LoadImage

    src = drive_root / "training" / "images" / "21_training.tif"
    arr, meta = read_image(src)
    assert meta.format == "tiff" and arr.shape == (584, 565, 3) and arr.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(LoadImage(image_only=True)(str(src))), arr.swapaxes(0, 1))


def test_single_dicom_file(tmp_path):
    arr, meta = read_image(CT_SMALL)
    assert arr.shape == (128, 128, 1) and meta.spacing[2] == pytest.approx(5.0)
    out = tmp_path / "one.dcm"
    write_image(arr - 5, meta, out)
    back, meta2 = read_image(out)
    np.testing.assert_array_equal(back, arr - 5)
    _assert_same_geometry(meta, meta2)


# ------------------------------------------------------------------------------------------------ MONAI agreement


@pytest.mark.parametrize("sample", ["nifti", "nrrd", "dicom"], indirect=True)
def test_affine_agrees_with_monai_loadimage(sample):
    from monai.transforms import LoadImage

    fmt, src = sample
    arr, meta = read_image(src)
    loader = LoadImage(image_only=True, reader="ITKReader") if fmt == "dicom" else LoadImage(image_only=True)
    mt = loader(str(src))
    assert tuple(mt.shape) == arr.shape
    monai_affine = np.asarray(mt.affine, dtype=np.float64)
    for voxel in ([0, 0, 0, 1], [1, 1, 1, 1], [3, 2, 1, 1]):
        np.testing.assert_allclose(meta.affine @ voxel, monai_affine @ voxel, atol=1e-4)
    np.testing.assert_allclose(np.asarray(mt), arr, atol=1e-3)

    wrapped = to_metatensor(arr, meta)
    np.testing.assert_allclose(np.asarray(wrapped.affine), meta.affine)
    assert wrapped.meta["filename_or_obj"] == str(src) and tuple(wrapped.shape) == arr.shape


# ------------------------------------------------------------------------------------------------ bad input


def _assert_input_error(path: Path, *fragments: str, probe: bool = True) -> None:
    checks = [read_image, probe_image] if probe else [read_image]
    for fn in checks:
        with pytest.raises(InputFileError) as exc:
            fn(path)
        msg = str(exc.value)
        assert "\n" not in msg
        assert str(path) in msg or exc.value.path.startswith(str(path)), msg
        for frag in fragments:
            assert frag in msg, msg


def test_truncated_nifti_gz(tmp_path):
    full = gzip.compress((NIB_DATA / "anatomical.nii").read_bytes())
    bad = tmp_path / "trunc.nii.gz"
    bad.write_bytes(full[: len(full) // 2])
    _assert_input_error(bad)


def test_truncated_plain_nifti(tmp_path):
    data = (NIB_DATA / "anatomical.nii").read_bytes()
    bad = tmp_path / "trunc.nii"
    bad.write_bytes(data[: len(data) - 1000])
    _assert_input_error(bad)


def test_garbage_nrrd(tmp_path):
    bad = tmp_path / "notes.nrrd"
    bad.write_text("this is a text file, not an image\n")
    _assert_input_error(bad, "nrrd")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.txt").write_text("nothing here")
    _assert_input_error(tmp_path / "empty", "no DICOM")


def test_mixed_series(tmp_path):
    folder = tmp_path / "mixed"
    make_series(folder / "a", n=2)
    make_series(folder / "b", n=2)
    for p in (folder / "b").iterdir():
        p.rename(folder / f"b_{p.name}")
    for p in (folder / "a").iterdir():
        p.rename(folder / f"a_{p.name}")
    _assert_input_error(folder, "mixed series: 2 SeriesInstanceUIDs")


def test_missing_slice(tmp_path):
    paths = make_series(tmp_path / "gap", n=5)
    paths[2].unlink()
    _assert_input_error(tmp_path / "gap", "non-uniform slice spacing", "missing slice")


def test_duplicate_slice(tmp_path):
    paths = make_series(tmp_path / "dup", n=3)
    ds = pydicom.dcmread(paths[1])
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "dup" / "copy.dcm", enforce_file_format=True)
    _assert_input_error(tmp_path / "dup", "duplicate slice position")


@pytest.mark.parametrize("name,sop", [("rtstruct.dcm", "RT Structure Set Storage"), ("test-SR.dcm", "SR Storage")])
def test_non_image_dicom(tmp_path, name, sop):
    src = Path(get_testdata_file(name, download=False))
    single = tmp_path / name
    shutil.copy(src, single)
    _assert_input_error(single, "no pixel data", sop)
    folder = tmp_path / "only_sr"
    folder.mkdir()
    shutil.copy(src, folder / name)
    with pytest.raises(InputFileError, match=sop):
        read_image(folder)


def test_image_header_without_pixel_data(tmp_path):
    ds = pydicom.dcmread(CT_SMALL)
    del ds.PixelData
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
    bad = tmp_path / "nopix.dcm"
    ds.save_as(bad, enforce_file_format=True)
    _assert_input_error(bad, "no pixel data", "Secondary Capture", probe=False)
    with pytest.raises(InputFileError, match="truncated"):  # the cheap probe sees the missing pixel bytes
        probe_image(bad)


def test_truncated_dicom_probe(tmp_path):
    data = Path(CT_SMALL).read_bytes()
    bad = tmp_path / "cut.dcm"
    bad.write_bytes(data[: len(data) - 5000])
    _assert_input_error(bad)


def test_missing_and_unsupported_paths(tmp_path):
    _assert_input_error(tmp_path / "nope.nii.gz", "does not exist")
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    _assert_input_error(tmp_path / "table.csv", "unsupported file type")


# ------------------------------------------------------------------------------------------------ output safety


def test_refuses_to_write_onto_input(nifti_path, dicom_dir):
    arr, meta = read_image(nifti_path)
    before = nifti_path.read_bytes()
    with pytest.raises(OutputExistsError):
        write_image(arr, meta, nifti_path)
    with pytest.raises(OutputExistsError):  # same file through a different spelling
        write_image(arr, meta, nifti_path.parent / ".." / nifti_path.parent.name / nifti_path.name)
    assert nifti_path.read_bytes() == before

    arr, meta = read_image(dicom_dir)
    names = sorted(p.name for p in dicom_dir.iterdir())
    for target in (dicom_dir, dicom_dir / "derived"):
        with pytest.raises(OutputExistsError):
            write_image(arr, meta, target)
    assert sorted(p.name for p in dicom_dir.iterdir()) == names


def test_refuses_non_empty_dicom_output_folder(dicom_dir, tmp_path):
    arr, meta = read_image(dicom_dir)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "other.dcm").write_bytes(b"x")
    with pytest.raises(OutputExistsError):
        write_image(arr, meta, tmp_path / "busy")
    (tmp_path / "empty").mkdir()
    write_image(arr, meta, tmp_path / "empty")  # an empty folder is fine
    assert len(list((tmp_path / "empty").iterdir())) == 4


def test_wrong_output_suffix(nifti_path, tmp_path):
    arr, meta = read_image(nifti_path)
    with pytest.raises(ValueError, match="nii"):
        write_image(arr, meta, tmp_path / "x.nrrd")


@pytest.mark.parametrize("sample", ["nifti", "nrrd", "dicom"], indirect=True)
def test_interrupted_write_leaves_nothing(sample, tmp_path, monkeypatch):
    fmt, src = sample
    arr, meta = read_image(src)
    out = _out_path(tmp_path, fmt)
    out.parent.mkdir()

    class Boom(RuntimeError):
        pass

    if fmt == "nifti":
        real = nib.Nifti1Image.to_filename

        def failing(self, filename, **kw):
            real(self, filename, **kw)  # the temp file is complete on disk when the failure hits
            raise Boom

        monkeypatch.setattr(nib.Nifti1Image, "to_filename", failing)
    elif fmt == "nrrd":

        def failing(filename, *a, **kw):
            Path(filename).write_bytes(b"NRRD0005\npartial")
            raise Boom

        monkeypatch.setattr(nrrd, "write", failing)
    else:
        real = tio_dicom._save_dicom
        calls = []

        def failing(ds, path):
            calls.append(path)
            if len(calls) == 3:  # fail half way through the series
                raise Boom
            real(ds, path)

        monkeypatch.setattr(tio_dicom, "_save_dicom", failing)

    with pytest.raises(Boom):
        write_image(arr, meta, out)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


def test_import_is_light():
    code = (
        "import sys, trust_monai.data.io; "
        "bad = [m for m in ('torch', 'monai', 'nibabel', 'pydicom', 'nrrd', 'itk') if m in sys.modules]; "
        "assert not bad, bad"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
