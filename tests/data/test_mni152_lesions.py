"""Synthetic lesions in the MNI152 template: counts, labels inside the brain, changes only at lesions, slabs, seeds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trust_monai.data.cache import COMPLETE_MARKER
from trust_monai.data.sources import _mni152_lesions as lesions_mod
from trust_monai.data.sources import prepare
from trust_monai.errors import TrustMonaiError

pytest.importorskip("nilearn")


@pytest.fixture(autouse=True)
def _default_settings(monkeypatch):
    monkeypatch.delenv(lesions_mod.CONTRAST_ENV, raising=False)
    monkeypatch.delenv("TRUST_MONAI_MNI152_RESOLUTION", raising=False)


SMALL = {"training": 6, "test": 3}  # subjects built here; the rule is the same for the default 48 / 16


@pytest.fixture(scope="module", autouse=True)
def _few_subjects():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lesions_mod, "N_CASES", dict(SMALL))
        yield


@pytest.fixture(scope="module")
def built(tmp_path_factory, _few_subjects):
    """Both datasets at the default settings (fewer subjects), built once for this module."""
    root = tmp_path_factory.mktemp("lesions")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(lesions_mod.CONTRAST_ENV, raising=False)
        mp.delenv("TRUST_MONAI_MNI152_RESOLUTION", raising=False)
        return {name: prepare(name, root=root) for name in ("mni152_lesions", "mni152_lesions_2d")}


def load(folder: Path) -> dict:
    return json.loads((folder / "dataset.json").read_text())


def array(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj)


def affine(path: Path) -> np.ndarray:
    import nibabel as nib

    return nib.load(str(path)).affine


def test_volumes(built):
    from scipy import ndimage

    folder = built["mni152_lesions"]
    doc = load(folder)
    tpl = lesions_mod.template(2)
    sigma = lesions_mod.NOISE_FRACTION * tpl["brain_range"]
    step = lesions_mod.DEFAULT_CONTRAST * tpl["brain_range"]
    assert (doc["numTraining"], doc["numTest"]) == (SMALL["training"], SMALL["test"])
    assert doc["synthetic_lesions"] is True and "SYNTHETIC" in doc["lesion_rule"] and "SYNTHETIC" in doc["description"]
    assert doc["contrast"] == lesions_mod.DEFAULT_CONTRAST == 0.12 and doc["labels"] == {"0": "background", "1": "lesion"}
    split = doc["split"]
    assert split == {k: list(v) for k, v in tpl["split"].items()}
    assert split["training"][1] <= split["gap"][0] and split["gap"][1] <= split["test"][0]
    assert split["gap"][1] - split["gap"][0] >= 5  # slabs disjoint, with a gap
    signs = set()
    for key, tr in (("training", "Tr"), ("test", "Ts")):
        for i, entry in enumerate(doc[key]):
            assert set(entry) == {"image", "label", "case", "z_range", "modality", "lesions", "lesion_voxels"}
            # split by subject: every case is the training slab of the template, warped into its own anatomy
            assert entry["z_range"] == split["training"] and entry["image"] == f"images{tr}/{entry['case']}.nii.gz"
            a, b = entry["z_range"]
            image, label = array(folder / entry["image"]), array(folder / entry["label"])
            assert image.dtype == np.float32 and label.dtype == np.uint8 and image.shape == label.shape
            assert image.shape == tpl["t1"][..., a:b].shape
            np.testing.assert_allclose(affine(folder / entry["image"]), affine(folder / entry["label"]))
            np.testing.assert_allclose(affine(folder / entry["image"])[:3, 3], (tpl["affine"] @ [0, 0, a, 1])[:3])
            assert set(np.unique(label).tolist()) == {0, 1} and int(label.sum()) == entry["lesion_voxels"]
            index = int(entry["case"][4:])
            anatomy, mask = lesions_mod.case_anatomy(tpl["t1"][..., a:b], tpl["mask"][..., a:b], index)
            assert not (label.astype(bool) & ~mask).any(), "lesions lie inside the brain"
            table = doc["lesion_table"][entry["case"]]
            assert 1 <= entry["lesions"] == len(table) <= 4
            assert ndimage.label(label)[1] == entry["lesions"]  # separate blobs
            assert sum(lesion["voxels"] for lesion in table) == entry["lesion_voxels"]
            signs |= {lesion["sign"] for lesion in table}
            diff = image - anatomy
            near = ndimage.binary_dilation(label.astype(bool), iterations=2)
            # away from the lesions only the noise: sigma 1% of the range, never near the lesion step
            assert abs(diff[~near].std() / sigma - 1) < 0.05 and np.abs(diff[~near]).max() < 6 * sigma
            core = ndimage.binary_erosion(label.astype(bool))
            assert abs(np.abs(diff[core]).mean() / step - 1) < 0.1
    assert signs == {1}  # hyperintense lesions only


def test_slices_are_the_volumes(built):
    vol_folder, folder = built["mni152_lesions"], built["mni152_lesions_2d"]
    volumes, doc = load(vol_folder), load(folder)
    tpl = lesions_mod.template(2)
    assert doc["contrast"] == volumes["contrast"] and doc["lesion_table"] == volumes["lesion_table"]
    for key in ("training", "test"):
        by_case: dict[str, list] = {}
        for entry in doc[key]:
            assert set(entry) == {"image", "label", "case", "slice", "modality", "lesion_voxels"}
            assert entry["modality"] == "MR T1"
            by_case.setdefault(entry["case"], []).append(entry)
        assert [e["case"] for e in volumes[key]] == sorted(by_case)
        for vol in volumes[key]:
            a, b = vol["z_range"]
            image, label = array(vol_folder / vol["image"]), array(vol_folder / vol["label"])
            kept = {e["slice"]: e for e in by_case[vol["case"]]}
            lesion_z = [z for z in range(a, b) if label[..., z - a].any()]
            _, mask = lesions_mod.case_anatomy(tpl["t1"][..., a:b], tpl["mask"][..., a:b], int(vol["case"][4:]))
            free_z = [z for z in range(a, b) if not label[..., z - a].any() and mask[..., z - a].any()]
            assert sorted(kept) == sorted(lesion_z + free_z[::4])
            for z, entry in kept.items():
                sl, lab = array(folder / entry["image"]), array(folder / entry["label"])
                assert sl.ndim == 2 and lab.dtype == np.uint8
                np.testing.assert_array_equal(sl, image[..., z - a])
                np.testing.assert_array_equal(lab, label[..., z - a])
                assert int(lab.sum()) == entry["lesion_voxels"]
                np.testing.assert_allclose(affine(folder / entry["image"])[:3, 3], (tpl["affine"] @ [0, 0, z, 1])[:3])
    # new subjects of the same region: test slices lie within the training slices' z range, but no subject repeats
    train_z = {e["slice"] for e in doc["training"]}
    test_z = {e["slice"] for e in doc["test"]}
    assert min(train_z) <= min(test_z) and max(test_z) <= max(train_z)
    assert not {e["case"] for e in doc["training"]} & {e["case"] for e in doc["test"]}


def test_build_is_reproducible(built, tmp_path):
    again = prepare("mni152_lesions", root=tmp_path)
    first = built["mni152_lesions"]
    doc = load(again)
    assert doc == load(first)
    for entry in doc["training"] + doc["test"]:
        for key in ("image", "label"):
            np.testing.assert_array_equal(array(again / entry[key]), array(first / entry[key]))
    images = [array(first / e["image"]) for e in doc["training"][:2]]
    assert not np.array_equal(images[0], images[1]), "cases differ"


def test_every_case_is_its_own_subject():
    """Cases differ in anatomy, not only in lesions; the warp stays in-plane, so no slab borrows another's voxels."""
    tpl = lesions_mod.template(2)
    a, b = tpl["split"]["training"]
    t1, mask = tpl["t1"][..., a:b], tpl["mask"][..., a:b]
    first, first_mask = lesions_mod.case_anatomy(t1, mask, 0)
    again, _ = lesions_mod.case_anatomy(t1, mask, 0)
    other, other_mask = lesions_mod.case_anatomy(t1, mask, 1)
    np.testing.assert_array_equal(first, again)  # reproducible
    assert first.shape == t1.shape and first.dtype == np.float32 and first_mask.dtype == bool
    # the warp moves anatomy by whole voxels somewhere (brain masks of two cases disagree on >2% of brain voxels)
    for warped in (first_mask, other_mask):
        assert (warped ^ mask).sum() > 0.02 * mask.sum()
        assert abs(int(warped.sum()) / int(mask.sum()) - 1) < 0.25  # scaled by 0.9-1.1 per axis, not mangled
    assert (first_mask ^ other_mask).sum() > 0.02 * mask.sum()
    # one marked slice stays that slice: nothing moves along z
    k = t1.shape[2] // 2
    only = np.zeros_like(mask)
    only[..., k] = mask[..., k]
    _, moved = lesions_mod.case_anatomy(t1, only, 3)
    assert moved[..., k].any() and not np.delete(moved, k, axis=2).any()
    # intensities stay those of the template up to the bias field (1 +- 5%) and interpolation
    assert 0.9 < first[first_mask].mean() / t1[mask].mean() < 1.1


def test_contrast_setting(monkeypatch, built):
    tpl = lesions_mod.template(2)
    a, b = tpl["split"]["test"]
    args = (tpl["t1"][..., a:b], tpl["mask"][..., a:b], tpl["brain_range"], 20)
    base, label, table = lesions_mod.lesion_case(*args, 0.1, 2)
    strong, label3, table3 = lesions_mod.lesion_case(*args, 0.3, 2)
    assert table == table3 and np.array_equal(label, label3)  # same draws, only the step changes
    from scipy import ndimage

    # same noise: the difference is the extra step alone, full inside the blob, ramped at its 1-voxel edge
    extra = np.abs(strong - base)[label > 0] / ((0.3 - 0.1) * tpl["brain_range"])
    assert extra.min() >= 0.5 - 1e-4 and extra.max() <= 1 + 1e-4 and np.median(extra) > 0.99
    changed = strong != base
    assert not (changed & ~ndimage.binary_dilation(label > 0, structure=np.ones((3, 3, 3)))).any()

    marker = (built["mni152_lesions"] / COMPLETE_MARKER).read_text().strip()
    assert "-contrast0.12-" in marker
    monkeypatch.setenv(lesions_mod.CONTRAST_ENV, "0.3")
    assert lesions_mod.lesion_contrast() == 0.3 and "-contrast0.3-" in lesions_mod.BUILDERS["mni152_lesions"].version()
    for bad in ("0", "-0.1", "1.5", "nan", "strong"):
        monkeypatch.setenv(lesions_mod.CONTRAST_ENV, bad)
        with pytest.raises(TrustMonaiError, match="TRUST_MONAI_LESION_CONTRAST"):
            prepare("mni152_lesions", root="/nonexistent-root")


@pytest.mark.parametrize("name,patch", [("mni152_lesions_2d", (32, 32)), ("mni152_lesions", (32, 32, 16))])
def test_standard_victim_augmentation_keeps_labels_and_changes_images(built, name, patch):
    """The careful trainer's augmentation (rotation / scaling, noise, blur, intensity) on real lesion cases: label
    patches stay binary and keep their lesions (nearest resampling), images change beyond a flip, and the same seed
    gives the same patches."""
    import torch

    from trust_monai.data.datalist import load_datalist
    from trust_monai.data.pipelines import segmentation_transforms

    spatial_dims = len(patch)
    files = load_datalist(built[name], "training", keys=("image", "label"))
    case = next(f for f in files if array(Path(f["label"])).sum() > 50)  # a case with a lesion

    def patches(augment, seed):
        xform = segmentation_transforms(spatial_dims, patch, train=True, num_samples=8, augment=augment)
        xform.set_random_state(seed)
        return xform(dict(case))

    std, again, flip = patches("standard", 3), patches("standard", 3), patches("flip", 3)
    for p in std:
        assert tuple(p["image"].shape) == (1, *patch) and tuple(p["label"].shape) == (1, *patch)
        assert set(torch.unique(p["label"]).tolist()) <= {0.0, 1.0}
    assert sum(float(p["label"].sum()) > 0 for p in std) >= 4  # pos:neg 1:1 crops still hold lesion voxels
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(std, again))
    assert any(not torch.allclose(a["image"], b["image"]) for a, b in zip(std, flip))
    with pytest.raises(ValueError, match="augment"):
        segmentation_transforms(spatial_dims, patch, augment="heavy")
