"""ue_natural's default poison, the block code, through the bundle as a user runs it (train.json, inference.json).

The default is checked on the bundle's own config files (no smoke override), then one train + inference run writes a
poisoned copy of 20 Fashion-MNIST images whose change is, image by image, the class's +-8/255 block code (clipped).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.integration.bundle_harness import BUNDLES_DIR, resolve_id, run_bundle, tiny_copy

pytest.importorskip("monai")


def test_default_poison_is_blocks_in_every_config():
    for config in ("train", "inference", "evaluate"):
        raw = json.loads((BUNDLES_DIR / "ue_natural" / "configs" / f"{config}.json").read_text())
        assert raw["poison"] == "blocks", config


@pytest.mark.slow
def test_blocks_train_and_inference_write_the_class_code(tmp_path):
    src = Path(resolve_id("ue_natural", "train", "dataset_dir"))
    data = tiny_copy(src, tmp_path / "data", per_section=20)
    ckpt, out = tmp_path / "models", tmp_path / "out"
    for config, extra in (("train", {}), ("inference", {"output_dir": str(out)})):
        proc = run_bundle("ue_natural", config, poison="blocks", dataset_dir=str(data), ckpt_dir=str(ckpt),
                          max_train=0, max_test=0, **extra)
        assert proc.returncode == 0, f"{config} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    import torch

    noise = torch.load(ckpt / "noise_blocks.pt", weights_only=True)
    assert noise["poison"] == "blocks" and noise["config"]["patch_size"] == 14  # 2x2 grid at 28 px
    code = (noise["state_dict"]["delta"][:, 0] * 255).round().numpy()  # (10, 28, 28), values +-8
    assert set(np.unique(code)) == {-8.0, 8.0}
    datalist = json.loads((data / "dataset.json").read_text())
    for e in datalist["training"]:
        a = np.asarray(Image.open(data / e["image"]), dtype=np.int16)
        b = np.asarray(Image.open(out / e["image"]), dtype=np.int16)
        np.testing.assert_array_equal(b, np.clip(a + code[int(e["label"])], 0, 255))
    for e in datalist["test"]:  # the test split is copied byte for byte
        assert (out / e["image"]).read_bytes() == (data / e["image"]).read_bytes()


@pytest.mark.slow
def test_rgb_datalist_is_poisoned_in_colour_without_in_channels(tmp_path):
    """An RGB datalist needs no ``--in_channels``: the bundles read the channel count from the first image."""
    from trust_monai.data.classification import datalist_channels

    src = Path(resolve_id("ue_natural", "train", "dataset_dir"))
    data = tiny_copy(src, tmp_path / "data", per_section=20)
    assert datalist_channels(data) == 1
    datalist = json.loads((data / "dataset.json").read_text())
    for e in datalist["training"] + datalist["test"]:  # tint each garment: three different channels
        a = np.asarray(Image.open(data / e["image"]), dtype=np.uint8)
        Image.fromarray(np.stack([a, a // 2, 255 - a], -1)).save(data / e["image"])
    assert datalist_channels(data) == 3
    ckpt, out = tmp_path / "models", tmp_path / "out"
    for config, extra in (("train", {}), ("inference", {"output_dir": str(out)})):
        proc = run_bundle("ue_natural", config, poison="blocks", dataset_dir=str(data), ckpt_dir=str(ckpt), **extra)
        assert proc.returncode == 0, f"{config} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    for e in datalist["training"]:
        a = np.asarray(Image.open(data / e["image"]), dtype=np.int16)
        b = np.asarray(Image.open(out / e["image"]), dtype=np.int16)
        assert b.shape == a.shape == (28, 28, 3)
        change = np.abs(b - a)
        assert change.max() == 8 and all(change[..., c].any() for c in range(3))
