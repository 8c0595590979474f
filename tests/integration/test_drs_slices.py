"""Slice classification certification in bundles/drs (the ``slices.json`` fragment) on the real lesion slices."""

from __future__ import annotations

import csv

import numpy as np
import torch
import pytest

from tests.integration.bundle_harness import run_bundle


@pytest.fixture(scope="module")
def lesions_2d():
    from trust_monai.data import prepare

    return prepare("pyradiomics_lesions_2d")


def test_slice_dataset_labels_come_from_the_masks(lesions_2d):
    import json

    from trust_monai.data.slices import SliceClassificationDataset

    ds = SliceClassificationDataset(lesions_2d, "test", spatial_size=(32, 32))
    listed = json.loads((lesions_2d / "dataset.json").read_text())["test"]
    assert [int(e["lesion_voxels"] > 0) for e in listed] == ds.labels.tolist()
    assert ds.class_counts() == [20, 3]
    x = ds[0]["image"]
    assert x.dtype == torch.float32 and x.shape == (1, 32, 32) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    w = ds.balanced_weights()
    counts = torch.tensor(ds.class_counts(), dtype=torch.float32)
    assert w[1] > w[0] and float((w * counts).sum()) == pytest.approx(len(ds))
    # a stricter finding size can only remove positives
    strict = SliceClassificationDataset(lesions_2d, "test", spatial_size=(32, 32), min_voxels=50)
    assert ((strict.labels == 1) <= (ds.labels == 1)).all() and strict.labels.sum() < ds.labels.sum()


def test_slice_dataset_refuses_volumes(tmp_path):
    import json

    import nibabel as nib

    from trust_monai.data.slices import SliceClassificationDataset
    from trust_monai.errors import InputFileError

    for name in ("img", "seg"):
        nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), np.eye(4)), tmp_path / f"{name}.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps({"test": [{"image": "img.nii.gz", "label": "seg.nii.gz"}]}))
    with pytest.raises(InputFileError, match="img.nii.gz.*2D slices"):
        SliceClassificationDataset(tmp_path, "test")


def test_train_and_certify_slices(tmp_path, lesions_2d):
    """Noisy training of the three classifiers, then RS and DRS certificates per test slice, resumable."""
    common = {"ckpt_dir": str(tmp_path / "models"), "dataset_dir": str(lesions_2d)}
    proc = run_bundle("drs", "train", extra_configs=("slices",), epochs=1, max_cases=12, spatial_size=[32, 32],
                      output_dir=str(tmp_path / "train"), **common)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "models" / "base_models_slices.pt").is_file()
    out = tmp_path / "certify"
    args = dict(extra_configs=("slices",), spatial_size=[32, 32], max_samples=4, n0=4, n=40, output_dir=str(out),
                **common)
    proc = run_bundle("drs", "inference", **args)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(out / "certify.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["method"] for r in rows) == ["drs"] * 4 + ["rs"] * 4
    for r in rows:
        assert r["path"].startswith("imagesTs/brain2_z00") and r["label"] == "0"
        assert float(r["radius"]) >= 0.0 and (int(r["prediction"]) == -1) == (float(r["radius"]) == 0.0)
        assert int(r["n"]) == (40 if r["method"] == "rs" else 20)
    assert (out / "certified_accuracy.png").stat().st_size > 0
    stamp = (out / "certify.csv").stat().st_mtime_ns
    assert run_bundle("drs", "inference", **args).returncode == 0
    assert (out / "certify.csv").stat().st_mtime_ns == stamp, "a rerun with the same settings changes nothing"
