"""Protecting a dataset: same format out, budget in native units, zero change outside mask + band, bad cases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from trust_monai.data import load_datalist, prepare, read_image
from trust_monai.engines.case_writer import CaseWriter
from trust_monai.errors import CasesFailed
from trust_monai.networks.umed_generator import UMedGenerator
from trust_monai.protect.umed import UMedProtector
from trust_monai.transforms.roi import contour_band
from trust_monai.utils.fileio import sha256_file

EPS = 4 / 255


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    gen = UMedGenerator(2, num_classes=2, epsilon=EPS, band_width=2, channels=(4, 8), strides=(2,))
    with torch.no_grad():  # saturate tanh so the budget, not the weights, bounds the change
        for p in gen.parameters():
            p.mul_(40)
    return gen


def _dataset(tmp_path):
    src = prepare("synthetic_2d")
    dst = tmp_path / "ds"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".complete"))
    return dst


def _nifti_like(ref_path, data, out_path, affine=None):
    ref = nib.load(str(ref_path))
    nib.save(nib.Nifti1Image(data, ref.affine if affine is None else affine, ref.header), str(out_path))


def test_protect_dataset_keeps_format_budget_and_support(tmp_path, generator):
    ds = _dataset(tmp_path)
    before = {p: sha256_file(p) for p in ds.rglob("*.nii.gz")}
    out = tmp_path / "out"
    CaseWriter(ds, out, UMedProtector(generator, num_classes=2), bundle="umed", progress=False).run()
    assert {p: sha256_file(p) for p in ds.rglob("*.nii.gz")} == before  # inputs untouched
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["cases"]) == 12 and all(c["status"] in ("done", "copied") for c in manifest["cases"])
    for entry in load_datalist(ds, "training"):
        rel = entry["image"].split("/ds/")[1]
        a, ma = read_image(entry["image"])
        b, mb = read_image(out / rel)
        lab = read_image(entry["label"])[0]
        assert b.dtype == a.dtype and b.shape == a.shape and np.allclose(ma.affine, mb.affine)
        rec = next(c for c in manifest["cases"] if c["input"] == entry["image"])
        low, high = rec["metrics"]["window"]
        assert np.abs(b.astype(np.float64) - a).max() <= EPS * (high - low) + 1e-6
        region = contour_band(torch.as_tensor(lab)[None, None].float(), 2)[1][0, 0].numpy() > 0
        assert np.array_equal(a[~region], b[~region])
        assert (a[region] != b[region]).any()
        assert rec["metrics"]["psnr"] > 35 and rec["metrics"]["changed_outside_region"] == 0
    # test split copied byte for byte
    for entry in load_datalist(ds, "test"):
        assert sha256_file(entry["image"]) == sha256_file(out / entry["image"].split("/ds/")[1])


def test_bad_cases_fail_alone_and_empty_mask_is_copied(tmp_path, generator):
    ds = _dataset(tmp_path)
    dl = json.loads((ds / "dataset.json").read_text())
    tr = dl["training"]
    img0 = ds / tr[0]["image"]
    # 0: mask shape mismatch, 1: NaN voxels, 2: label outside classes, 3: empty mask, 4: geometry mismatch
    _nifti_like(ds / tr[0]["label"], np.zeros((10, 10), np.uint8), ds / tr[0]["label"])
    arr = nib.load(str(ds / tr[1]["image"])).get_fdata().astype(np.float32)
    arr[3, 3] = np.nan
    _nifti_like(ds / tr[1]["image"], arr, ds / tr[1]["image"])
    lab = np.asarray(nib.load(str(ds / tr[2]["label"])).dataobj).copy()
    lab[lab > 0] = 7
    _nifti_like(ds / tr[2]["label"], lab, ds / tr[2]["label"])
    _nifti_like(ds / tr[3]["label"], np.zeros_like(lab), ds / tr[3]["label"])
    shifted = nib.load(str(ds / tr[4]["label"])).affine.copy()
    shifted[0, 3] += 5
    _nifti_like(ds / tr[4]["label"], np.asarray(nib.load(str(ds / tr[4]["label"])).dataobj), ds / tr[4]["label"], shifted)
    out = tmp_path / "out"
    with pytest.raises(CasesFailed, match="4 of 12"):
        CaseWriter(ds, out, UMedProtector(generator, num_classes=2), bundle="umed", progress=False).run()
    cases = {c["input"].split("/ds/")[1]: c for c in json.loads((out / "manifest.json").read_text())["cases"]}
    errors = {k: c["error"] for k, c in cases.items() if c["status"] == "error"}
    assert set(errors) == {tr[i]["image"] for i in (0, 1, 2, 4)}
    assert "shape" in errors[tr[0]["image"]] and "NaN" in errors[tr[1]["image"]]
    assert "outside" in errors[tr[2]["image"]] and "geometry" in errors[tr[4]["image"]]
    assert cases[tr[3]["image"]]["status"] == "copied" and cases[tr[3]["image"]]["metrics"]["empty_mask"]
    assert sha256_file(out / tr[3]["image"]) == sha256_file(ds / tr[3]["image"])
    for i in (5, 6, 7):
        assert cases[tr[i]["image"]]["status"] == "done"
    for i in (0, 1, 2, 4):  # nothing half-written for failed cases
        assert not (out / tr[i]["image"]).exists()
    assert img0.exists()


def test_learning_skips_bad_cases_by_name_and_summarises_empty_masks(tmp_path, capsys):
    """Learning drops a broken case with one line naming it; empty masks (normal in slice data) get one summary line."""
    from trust_monai.protect.umed import usable_cases

    ds = _dataset(tmp_path)
    files = load_datalist(ds, "training")
    empty = np.zeros(read_image(files[0]["label"])[0].shape, np.uint8)
    for i in (1, 2, 3):
        _nifti_like(files[i]["label"], empty, files[i]["label"])
    _nifti_like(files[4]["label"], np.zeros((10, 10), np.uint8), files[4]["label"])
    kept = usable_cases(files, num_classes=2)
    assert [f["image"] for f in kept] == [f["image"] for i, f in enumerate(files) if i not in (1, 2, 3, 4)]
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("[umed] skipping") and Path(files[4]["label"]).name in lines[0]
    assert lines[1].startswith(f"[umed] 3 of {len(files)} training cases have an empty mask")


@pytest.mark.parametrize("scale", [1e-16, 1.0, 3000.0])
@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint8])
def test_budget_holds_after_storage_rounding(generator, scale, dtype):
    """The stored file, not just the float computation, stays within epsilon of the window (even a degenerate one)."""
    rng = np.random.default_rng(0)
    img = (rng.random((40, 36)) * scale)
    if np.issubdtype(dtype, np.integer):
        img = np.clip(np.rint(img * 50), 0, np.iinfo(dtype).max)
    img = img.astype(dtype)
    lab = np.zeros((40, 36), np.uint8)
    lab[10:25, 8:20] = 1
    prot = UMedProtector(generator, num_classes=2)
    out, metrics = prot.protect(img, lab)
    low, high = metrics["window"]
    assert out.dtype == img.dtype
    assert np.abs(out.astype(np.float64) - img).max() <= EPS * (high - low) * (1 + 1e-12)


def test_checkpoint_that_does_not_fit_stops_the_run(tmp_path, generator):
    """A global problem is not a per-case error: the run stops with one project error and writes no case."""
    from trust_monai.errors import InputFileError
    from trust_monai.utils.checkpoint import save_state_dict

    ckpt = save_state_dict(UMedGenerator(2, num_classes=4).state_dict(), tmp_path / "g.pt")
    out = tmp_path / "out"
    with pytest.raises(InputFileError, match="does not fit"):
        CaseWriter(_dataset(tmp_path), out, UMedProtector(UMedGenerator(2, num_classes=2), ckpt), bundle="umed",
                   progress=False).run()
    assert not list(out.rglob("*.nii.gz"))


def test_manifest_is_strict_json_for_unchanged_images(tmp_path):
    """An unchanged image has infinite PSNR; the manifest must still be strict JSON (null, not Infinity)."""
    from trust_monai.engines.manifest import Manifest

    src = tmp_path / "in.txt"
    src.write_text("x")
    m = Manifest(tmp_path / "out", "umed", "inference")
    m.record(src, None, status="copied", metrics={"psnr": float("inf"), "ssim": np.float64("nan"), "n": np.int64(3)})

    def strict(token):
        raise ValueError(f"non-standard JSON constant {token}")

    rec = json.loads((tmp_path / "out" / "manifest.json").read_text(), parse_constant=strict)["cases"][0]
    assert rec["metrics"] == {"psnr": None, "ssim": None, "n": 3}
