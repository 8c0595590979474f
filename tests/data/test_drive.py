"""DRIVE from a user's copy: the real data when this machine has it, a tiny fake tree in DRIVE's layout otherwise.

The real copy is looked for at ``$TRUST_MONAI_DRIVE`` or ``../shared/data/DRIVE`` from the project root (developer and
CI data, never committed); its tests skip when neither exists.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trust_monai.data.cache import COMPLETE_MARKER
from trust_monai.data.sources import _drive, dataset_info, prepare
from trust_monai.errors import DataSourceUnavailable, InputFileError, TrustMonaiError

ENTRY_KEYS = ["image", "label", "fov", "subject", "modality"]


@pytest.fixture(scope="module")
def drive_dir() -> Path:
    """The real DRIVE copy, or skip."""
    env = os.environ.get(_drive.DRIVE_ENV, "").strip()
    path = Path(env) if env else Path(__file__).resolve().parents[3] / "shared/data/DRIVE"
    if not (path / "training/images").is_dir():
        pytest.skip(f"no DRIVE copy at {path} (set ${_drive.DRIVE_ENV})")
    return path


@pytest.fixture(autouse=True)
def _no_drive_env(monkeypatch):
    monkeypatch.delenv(_drive.DRIVE_ENV, raising=False)  # each test names its source itself


def load(folder: Path) -> dict:
    return json.loads((folder / "dataset.json").read_text())


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


# ---------------------------------------------------------------- real data


def test_real_drive(drive_dir, tmp_path):
    folder = prepare("drive", root=tmp_path, source=drive_dir)
    doc = load(folder)
    assert (doc["numTraining"], doc["numTest"]) == (20, 20)
    assert [e["subject"] for e in doc["training"]] == [str(i) for i in range(21, 41)]
    assert [e["subject"] for e in doc["test"]] == [f"{i:02d}" for i in range(1, 21)]
    assert doc["labels"] == {"0": "background", "1": "vessel"} and "Staal" in doc["citation"]
    for key, tr in (("training", "Tr"), ("test", "Ts")):
        fractions, vessel, inside = [], 0, 0
        for entry in doc[key]:
            assert list(entry) == ENTRY_KEYS and entry["modality"] == "fundus"
            assert entry["image"] == f"images{tr}/{entry['subject']}.png"
            with Image.open(folder / entry["image"]) as img:
                assert img.mode == "RGB" and img.size == (565, 584)
            label, fov = pixels(folder / entry["label"]), pixels(folder / entry["fov"])
            assert label.shape == fov.shape == (584, 565) and label.dtype == np.uint8
            assert set(np.unique(label).tolist()) == {0, 1} and set(np.unique(fov).tolist()) == {0, 1}
            fractions.append(label[fov > 0].mean())
            vessel, inside = vessel + int(label[fov > 0].sum()), inside + int(fov.sum())
        # measured: 12.5% (training) and 12.7% (test) of FOV pixels; single images 8.7-16.8%
        assert 0.06 <= vessel / inside <= 0.15, (key, vessel / inside)
        assert all(0.05 <= f <= 0.20 for f in fractions), (key, min(fractions), max(fractions))
    # lossless: the PNGs hold DRIVE's pixels exactly
    np.testing.assert_array_equal(
        pixels(folder / "imagesTs/01.png"), pixels(drive_dir / "test/images/01_test.tif")
    )
    np.testing.assert_array_equal(
        pixels(folder / "labelsTr/21.png") * 255, pixels(drive_dir / "training/1st_manual/21_manual1.gif")
    )
    assert (folder / COMPLETE_MARKER).read_text().strip() == f"drive-1-src={drive_dir.resolve()}"


# ---------------------------------------------------------------- fake tree in DRIVE's layout

H, W = 10, 12


def fake_drive(root: Path, subjects=(("training", "21"), ("training", "22"), ("test", "01"))) -> dict:
    """Write a tiny DRIVE tree (TIFF images, GIF masks 0/255) and return the arrays written, by subject."""
    rng = np.random.RandomState(0)
    written = {}
    for split, subject in subjects:
        base = root / split
        for sub in ("images", "1st_manual", "mask"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        image = rng.randint(0, 256, size=(H, W, 3)).astype(np.uint8)
        vessel = (rng.rand(H, W) < 0.2).astype(np.uint8) * 255
        fov = np.zeros((H, W), np.uint8)
        fov[1:-1, 1:-1] = 255
        Image.fromarray(image).save(base / "images" / f"{subject}_{split}.tif")
        Image.fromarray(vessel).save(base / "1st_manual" / f"{subject}_manual1.gif")
        Image.fromarray(fov).save(base / "mask" / f"{subject}_{split}_mask.gif")
        written[subject] = (image, vessel // 255, fov // 255)
    (root / "test/2nd_manual").mkdir()  # present in DRIVE, not used
    return written


def test_fake_drive_converted_exactly(tmp_path):
    written = fake_drive(tmp_path / "DRIVE")
    folder = prepare("drive", root=tmp_path / "out", source=tmp_path / "DRIVE")
    doc = load(folder)
    assert [e["subject"] for e in doc["training"]] == ["21", "22"] and [e["subject"] for e in doc["test"]] == ["01"]
    assert doc["training"][0] == {
        "image": "imagesTr/21.png",
        "label": "labelsTr/21.png",
        "fov": "fovTr/21.png",
        "subject": "21",
        "modality": "fundus",
    }
    assert doc["test"][0]["fov"] == "fovTs/01.png"
    assert doc["labels"] == _drive.LABELS and doc["tensorImageSize"] == "2D" and "1st_manual" in doc["split_rule"]
    assert "research" in doc["terms"] and doc["licence"] == dataset_info("drive").licence
    for entry in doc["training"] + doc["test"]:
        image, label, fov = written[entry["subject"]]
        np.testing.assert_array_equal(pixels(folder / entry["image"]), image)
        np.testing.assert_array_equal(pixels(folder / entry["label"]), label)
        np.testing.assert_array_equal(pixels(folder / entry["fov"]), fov)


def test_source_env_reuse_and_version(monkeypatch, tmp_path):
    fake_drive(tmp_path / "a")
    out = tmp_path / "out"
    monkeypatch.setenv(_drive.DRIVE_ENV, str(tmp_path / "a"))
    folder = prepare("drive", root=out)
    marker = folder / COMPLETE_MARKER
    assert marker.read_text().strip() == f"drive-1-src={(tmp_path / 'a').resolve()}"
    first = marker.stat().st_mtime_ns
    monkeypatch.delenv(_drive.DRIVE_ENV)
    assert prepare("drive", root=out) == folder and marker.stat().st_mtime_ns == first  # no source: reuse the build
    assert prepare("drive", root=out, source=tmp_path / "a") == folder and marker.stat().st_mtime_ns == first
    # another copy is another source: rebuilt, and the marker names the new folder
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    prepare("drive", root=out, source=tmp_path / "b")
    assert marker.read_text().strip() == f"drive-1-src={(tmp_path / 'b').resolve()}"
    with pytest.raises(TrustMonaiError, match="takes no source"):
        prepare("synthetic_2d", root=out, source=tmp_path / "a")


def test_wrong_or_missing_folder_is_clear(tmp_path):
    with pytest.raises(DataSourceUnavailable, match="Staal.*--source") as err:
        prepare("drive", root=tmp_path / "out")
    assert "research" in str(err.value)
    (tmp_path / "notdrive/training").mkdir(parents=True)
    with pytest.raises(DataSourceUnavailable) as err:
        prepare("drive", root=tmp_path / "out", source=tmp_path / "notdrive")
    msg = str(err.value)
    assert str(tmp_path / "notdrive/training/images") in msg and "1st_manual/NN_manual1.gif" in msg
    assert "Ridge-based vessel segmentation" in msg and _drive.DRIVE_URL in msg and "\n" not in msg
    with pytest.raises(DataSourceUnavailable, match="does not exist"):
        prepare("drive", root=tmp_path / "out", source=tmp_path / "nowhere")
    assert not (tmp_path / "out/drive").exists()


def test_bad_masks_name_the_file(tmp_path):
    src = tmp_path / "DRIVE"
    fake_drive(src)
    gif = src / "training/1st_manual/22_manual1.gif"
    Image.fromarray(np.full((H, W), 128, np.uint8)).save(gif)
    with pytest.raises(InputFileError, match="not binary") as err:
        prepare("drive", root=tmp_path / "out", source=src)
    assert err.value.path == str(gif)
    Image.fromarray(np.zeros((H, W + 1), np.uint8)).save(gif)
    with pytest.raises(InputFileError, match="mask is 13x10, its image 12x10"):
        prepare("drive", root=tmp_path / "out", source=src)
    gif.unlink()
    with pytest.raises(InputFileError, match="22_manual1.gif: missing"):
        prepare("drive", root=tmp_path / "out", source=src)
    assert not (tmp_path / "out/drive").exists()


def test_cli_source(tmp_path):
    fake_drive(tmp_path / "DRIVE")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(_drive.DRIVE_ENV, None)
    cmd = [sys.executable, "-m", "trust_monai", "data", "prepare", "drive", "--root", str(tmp_path / "out")]
    run = subprocess.run(cmd + ["--source", str(tmp_path / "DRIVE")], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(tmp_path / "out/drive") and load(tmp_path / "out/drive")["numTraining"] == 2
    run = subprocess.run(cmd[:-2] + ["--source", str(tmp_path)], capture_output=True, text=True, env=env)
    assert run.returncode == 1 and "is not a DRIVE folder" in run.stderr
