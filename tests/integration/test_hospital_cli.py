"""The hospital command line (``trust-monai protect | purify | certify | detect``) on folders of NIfTI scans and DICOM
series: outputs in the input's format, report.html, the DICOM round trip read back with pydicom and ITK, bad inputs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.integration.bundle_harness import ROOT, run_bundle, smoke_overrides

pytestmark = pytest.mark.xdist_group("hospital_cli")


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "trust_monai", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def tree_digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def case_files(out: Path) -> list[Path]:
    """What a run wrote besides its own workflow folder."""
    return [p for p in out.rglob("*") if p.is_file() and ".trust_monai" not in p.parts] if out.exists() else []


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """Tiny trained models of every verb's bundle, each trained on its bundle's smoke data."""
    ckpt = tmp_path_factory.mktemp("models")
    for name in ("umed", "dvae", "drs", "moe_ffd"):
        proc = run_bundle(name, "train", epochs=1, ckpt_dir=str(ckpt),
                          output_dir=str(tmp_path_factory.mktemp(f"train_{name}")))
        assert proc.returncode == 0, f"{name} train failed:\n{proc.stderr[-3000:]}"
    return ckpt


def _flat_folder(dataset: str, dest: Path, n: int = 2, start: int = 0) -> Path:
    """A hospital-style folder: <case>.nii.gz with <case>_label.nii.gz beside it (no datalist)."""
    from trust_monai.data import load_datalist, prepare

    dest.mkdir(parents=True)
    for e in load_datalist(prepare(dataset), "training")[start:start + n]:
        name = Path(e["image"]).name.replace(".nii.gz", "")
        shutil.copy(e["image"], dest / f"{name}.nii.gz")
        shutil.copy(e["label"], dest / f"{name}_label.nii.gz")
    return dest


def _dicom_study(dest: Path, n_slices: int = 1) -> tuple[Path, Path]:
    """``dest/series1/`` (a CT series from pydicom's test data) and its mask ``dest/series1_label.nii.gz``."""
    from tests.data.test_io import make_series
    from trust_monai.data.io import read_image

    make_series(dest / "series1", n=n_slices)
    arr, meta = read_image(dest / "series1")
    mask = np.zeros(arr.shape, np.uint8)
    mask[40:90, 30:100] = 1
    import nibabel as nib

    nib.save(nib.Nifti1Image(mask, meta.affine), dest / "series1_label.nii.gz")
    return dest / "series1", dest / "series1_label.nii.gz"


def test_protect_folder_of_nifti_scans(models, tmp_path):
    from scipy.ndimage import binary_dilation

    from trust_monai.data.io import read_image

    scans = _flat_folder("synthetic_2d", tmp_path / "scans")
    before = tree_digest(scans)
    out = tmp_path / "shared"
    proc = cli("protect", "--input", str(scans), "--output", str(out), "--ckpt_dir", str(models))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert tree_digest(scans) == before, "the input folder is never written to"
    manifest = json.loads((out / "manifest.json").read_text())
    assert [c["status"] for c in manifest["cases"]] == ["done", "done"]
    for c in manifest["cases"]:
        src = scans / c["output"]
        assert c["output"] in before and (out / c["output"]).is_file()
        a, _ = read_image(src)
        b, _ = read_image(out / c["output"])
        mask, _ = read_image(scans / c["output"].replace(".nii.gz", "_label.nii.gz"))
        diff = np.abs(b.astype(np.float64) - a)
        assert 0 < diff.max() <= c["metrics"]["epsilon_native"] + 1e-6
        # zero change outside mask + contour band (a (2 * band_width + 1)-cube dilation, band_width 2)
        assert not diff[~binary_dilation(mask > 0, structure=np.ones((5,) * mask.ndim))].any()
        assert (out / c["output"].replace(".nii.gz", "_label.nii.gz")).read_bytes() == (
            scans / c["output"].replace(".nii.gz", "_label.nii.gz")).read_bytes()
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "psnr" in html and "case000.nii.gz" in html
    stamps = {p: p.stat().st_mtime_ns for p in case_files(out) if p.name not in ("report.html", "manifest.json")}
    assert cli("protect", "--input", str(scans), "--output", str(out), "--ckpt_dir", str(models)).returncode == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps, "a rerun resumes: finished cases are not rewritten"


@pytest.mark.parametrize("deidentify", [False, True])
def test_dicom_round_trip(models, tmp_path, deidentify):
    """Protected DICOM keeps identity (unless de-identified) and geometry, gets new UIDs and a derivation note, and
    its pixels are the input plus exactly the change the protector intends (read back with pydicom and ITK)."""
    import pydicom

    from trust_monai.data.io import read_image
    from trust_monai.networks.umed_generator import UMedGenerator
    from trust_monai.protect.umed import UMedProtector

    series, mask_path = _dicom_study(tmp_path / "pacs_export")
    before = tree_digest(series.parent)
    out = tmp_path / "shared"
    args = ["protect", "--input", str(series.parent), "--output", str(out), "--ckpt_dir", str(models)]
    proc = cli(*args, *(["--deidentify"] if deidentify else []))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert tree_digest(series.parent) == before

    src = sorted((pydicom.dcmread(p) for p in series.iterdir()), key=lambda d: d.InstanceNumber)
    new = sorted((pydicom.dcmread(p) for p in (out / "series1").iterdir()), key=lambda d: d.InstanceNumber)
    assert len(new) == len(src)
    assert {d.SeriesInstanceUID for d in new} == {new[0].SeriesInstanceUID} != {src[0].SeriesInstanceUID}
    assert not {d.SOPInstanceUID for d in new} & {d.SOPInstanceUID for d in src}
    for s, d in zip(src, new):
        assert list(d.ImageType)[:2] == ["DERIVED", "SECONDARY"] and "UMed" in d.DerivationDescription
        for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope",
                    "RescaleIntercept", "WindowCenter", "WindowWidth", "Rows", "Columns", "Modality"):
            assert d.get(key) == s.get(key), key
        if deidentify:
            assert str(d.PatientName).startswith("ANON-") and d.PatientID == str(d.PatientName) != s.PatientID
            assert d.PatientIdentityRemoved == "YES" and "PatientBirthDate" not in d and "StudyDate" not in d
            assert d.StudyInstanceUID != s.StudyInstanceUID and "SourceImageSequence" not in d
            assert not any(e.tag.is_private for e in d)
        else:
            assert (d.PatientName, d.PatientID, d.StudyInstanceUID) == (s.PatientName, s.PatientID, s.StudyInstanceUID)
            assert d.SourceImageSequence[0].ReferencedSOPInstanceUID == s.SOPInstanceUID
    if deidentify:
        assert len({d.StudyInstanceUID for d in new}) == 1

    # the intended change, computed here with the same generator on the same arrays
    arr, meta = read_image(series)
    mask, _ = read_image(mask_path)
    from trust_monai.data import num_classes, prepare

    from trust_monai.label.service import bundle_config

    eps = bundle_config("umed").get_parsed_content("epsilon")  # the budget protect ran with: the bundle's default
    gen = UMedGenerator(spatial_dims=2, in_channels=1, num_classes=num_classes(prepare("synthetic_2d")), epsilon=eps)
    expected, metrics = UMedProtector(gen, checkpoint=str(models / "generator_2d.pt"), num_classes=2).protect(
        arr, mask, "CT", step=meta.value_step)
    assert meta.value_step == 1.0  # CT_small: RescaleSlope 1, so the change is in whole HU
    got, meta_out = read_image(out / "series1")
    assert metrics["changed_outside_region"] == 0 and (got != arr).any()
    change = got.astype(np.float64) - arr
    assert np.abs(change).max() <= metrics["epsilon_native"], "the budget holds in the stored DICOM values"
    # the same change up to a float32 generator's rounding across processes (a voxel at a .5 boundary)
    assert np.abs(got.astype(np.float64) - expected).max() <= 1 and (got != expected).mean() < 0.01
    np.testing.assert_allclose(meta_out.affine, meta.affine, atol=1e-4)

    itk = pytest.importorskip("itk")

    def itk_geometry(folder: Path):
        names = itk.GDCMSeriesFileNames.New(Directory=str(folder)).GetInputFileNames()
        img = itk.imread([str(n) for n in names])
        return np.array(img.GetSpacing()), np.array(img.GetOrigin()), itk.array_from_matrix(img.GetDirection()), \
            itk.array_from_image(img)

    sp_in, org_in, dir_in, px_in = itk_geometry(series)
    sp_out, org_out, dir_out, px_out = itk_geometry(out / "series1")
    np.testing.assert_allclose(sp_out, sp_in, atol=1e-5)
    np.testing.assert_allclose(org_out, org_in, atol=1e-4)
    np.testing.assert_allclose(dir_out, dir_in, atol=1e-6)
    # ITK applies the rescale too: its pixel change is ours (ITK's (z, y, x) order is our (x, y, z) transposed)
    np.testing.assert_allclose(px_out.astype(np.float64) - px_in, (got.astype(np.float64) - arr).T, atol=1e-3)


@pytest.mark.parametrize("verb", ["purify", "certify", "detect"])
def test_other_verbs_on_a_folder(models, tmp_path, verb):
    """Each verb runs its bundle on a plain folder and writes its outputs plus report.html with a picture."""
    dataset = {"purify": "synthetic_2d", "certify": "mni152_tissue_2d", "detect": "mni152_tissue_2d"}[verb]
    scans = _flat_folder(dataset, tmp_path / "scans", n=2, start=20 if dataset == "mni152_tissue_2d" else 0)
    before = tree_digest(scans)
    out = tmp_path / "out"
    extra: list[str] = []
    if verb == "certify":
        extra = ["--n0", "2", "--n", "8", "--batch_size", "4"]
    if verb == "detect":
        for k, v in smoke_overrides("moe_ffd", "inference").items():
            if k not in ("data_size", "vae_epochs", "max_per_volume"):
                extra += [f"--{k}", json.dumps(v)]
    proc = cli(verb, "--input", str(scans), "--output", str(out), "--ckpt_dir", str(models), *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert tree_digest(scans) == before
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html
    if verb == "purify":
        assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(before)
    elif verb == "certify":
        maps = sorted(p.relative_to(out).as_posix() for p in (out / "rs").rglob("*.nii.gz"))
        assert maps == sorted(f"rs/{n}" for n in before if "_label" not in n)
        assert "certified_fraction" in html
    else:
        report = json.loads((out / "report.json").read_text())
        assert len(report["images"]) == 2 and all(0.0 <= r["score"] <= 1.0 for r in report["images"])
        assert "_label" not in json.dumps(report["images"]), "masks are not scored as scans"


def _bad_mixed(root: Path) -> tuple[Path, str]:
    from tests.data.test_io import make_series

    folder = root / "study"
    make_series(folder / "a", n=2)
    make_series(folder / "b", n=2)
    for sub in ("a", "b"):
        for p in (folder / sub).iterdir():
            p.rename(folder / f"{sub}_{p.name}")
        (folder / sub).rmdir()
    shutil.copy(root.parent / "m.nii.gz", root / "study_label.nii.gz")
    return root, "mixed series"


def _bad_missing_slice(root: Path) -> tuple[Path, str]:
    from tests.data.test_io import make_series

    paths = make_series(root / "study", n=5)
    paths[2].unlink()
    shutil.copy(root.parent / "m.nii.gz", root / "study_label.nii.gz")
    return root, "missing slice"


def _bad_structured_report(root: Path) -> tuple[Path, str]:
    from pydicom.data import get_testdata_file

    (root / "study").mkdir()
    shutil.copy(get_testdata_file("test-SR.dcm", download=False), root / "study" / "report.dcm")
    shutil.copy(root.parent / "m.nii.gz", root / "study_label.nii.gz")
    return root, "SR Storage"


def _bad_outside_path(root: Path) -> tuple[Path, str]:
    (root / "data").mkdir()
    shutil.copy(root.parent / "m.nii.gz", root / "outside.nii.gz")
    (root / "data" / "dataset.json").write_text(json.dumps(
        {"labels": {"0": "background", "1": "fg"},
         "training": [{"image": "../outside.nii.gz", "label": "../outside.nii.gz"}]}))
    return root / "data" / "dataset.json", "outside"


def _bad_no_masks(root: Path) -> tuple[Path, str]:
    (root / "scans").mkdir()
    shutil.copy(root.parent / "m.nii.gz", root / "scans" / "scan.nii.gz")
    return root / "scans", "needs a segmentation mask"


@pytest.mark.parametrize("make", [_bad_mixed, _bad_missing_slice, _bad_structured_report, _bad_outside_path,
                                  _bad_no_masks], ids=lambda f: f.__name__[5:])
def test_bad_input_is_one_clear_error_and_writes_nothing(models, tmp_path, make):
    import nibabel as nib

    root = tmp_path / "in"
    root.mkdir()
    nib.save(nib.Nifti1Image(np.ones((128, 128, 2), np.uint8), np.eye(4)), root.parent / "m.nii.gz")
    src, message = make(root)
    before = tree_digest(root)
    out = tmp_path / "out"
    proc = cli("protect", "--input", str(src), "--output", str(out), "--ckpt_dir", str(models))
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "error:" in last and message in last, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert tree_digest(root) == before, "the input is never modified"
    assert case_files(out) == [], "nothing written on bad input"


def _photo_folder(dest: Path, n: int = 4) -> Path:
    """Colour photographs with grey masks beside them (``case_label.png``), as a fundus archive would hold them."""
    from PIL import Image

    rng = np.random.default_rng(0)
    dest.mkdir(parents=True)
    for i in range(n):
        img = rng.integers(60, 200, (48, 40, 3)).astype(np.uint8)
        lab = np.zeros((48, 40), np.uint8)
        lab[10 + i:30, 12:20 + i] = 1
        img[lab > 0] //= 2
        Image.fromarray(img).save(dest / f"eye{i}.png")
        Image.fromarray(lab).save(dest / f"eye{i}_label.png")
    return dest


def test_protect_learns_on_the_input_then_protects_in_one_command(tmp_path):
    """No --ckpt_dir: protect learns the generators on the user's photographs, writes colour PNGs whose three
    channels carry the same bounded change inside mask + band, and a rerun reuses what it learned; an RGB mask is
    refused by name while the other cases complete."""
    from PIL import Image

    photos = _photo_folder(tmp_path / "photos")
    Image.fromarray(np.zeros((48, 40, 3), np.uint8)).save(photos / "eye3_label.png")  # an RGB mask
    before = tree_digest(photos)
    out = tmp_path / "shared"
    tiny = ["--epochs", "1", "--reinit_every", "1", "--patch_size", "[32,32]", "--batch_size", "4"]
    proc = cli("protect", "--input", str(photos), "--output", str(out), *tiny)
    assert "1/2 learning the protection" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (out / ".trust_monai" / "models" / "generator_2d.pt").is_file()
    assert tree_digest(photos) == before
    cases = {c["output"] or c["input"]: c for c in json.loads((out / "manifest.json").read_text())["cases"]}
    bad = next(c for k, c in cases.items() if "eye3" in k)
    assert bad["status"] == "error" and "RGB mask" in bad["error"] and "eye3_label.png" in bad["error"]
    assert not (out / "eye3.png").exists()
    for i in range(3):
        a = np.asarray(Image.open(photos / f"eye{i}.png")).astype(int)
        b = np.asarray(Image.open(out / f"eye{i}.png")).astype(int)
        d = b - a
        assert b.shape == a.shape and (d[..., 0] == d[..., 1]).all() and (d[..., 0] == d[..., 2]).all()
        assert 0 < np.abs(d).max() <= np.floor(cases[f"eye{i}.png"]["metrics"]["epsilon_native"])
        lab = np.asarray(Image.open(photos / f"eye{i}_label.png")) > 0
        from scipy.ndimage import binary_dilation

        assert not d[~binary_dilation(lab, structure=np.ones((5, 5)))].any()
    assert proc.returncode != 0  # one case failed, and the run says so
    rerun = cli("protect", "--input", str(photos), "--output", str(out), *tiny)
    assert "using the generators in" in rerun.stdout and "1/2 learning" not in rerun.stdout
