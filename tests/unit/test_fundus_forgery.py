"""Fundus forgery set from DRIVE: RGB views, copy-move and self-blend fakes, split by subject, fresh paired fakes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

DRIVE = Path(__file__).resolve().parents[3] / "shared" / "data" / "DRIVE"


@pytest.mark.skipif(not (DRIVE / "training" / "images").is_dir(), reason=f"no DRIVE copy at {DRIVE}")
def test_fundus_forgery_set_split_by_subject(tmp_path):
    from PIL import Image

    from trust_monai.detect.dataset import ForgeryDataset
    from trust_monai.detect.fundus import FUNDUS_KINDS, prepare_fundus_forgery

    root = prepare_fundus_forgery(size=48, crops=1, max_subjects=2, source=DRIVE, root=tmp_path)
    doc = json.loads((root / "dataset.json").read_text())
    subjects = {s: {e["volume"].split(":")[0] for e in doc[s]} for s in ("training", "test")}
    assert subjects["training"] == {"21", "22"} and subjects["test"] == {"01", "02"}  # DRIVE's split, by subject
    for split in ("training", "test"):
        reals = [e for e in doc[split] if e["label"] == 0]
        assert len(reals) == 2 * 2 and len(doc[split]) == len(reals) * (1 + len(FUNDUS_KINDS))
        for e in doc[split]:
            img = np.asarray(Image.open(root / e["image"]))
            assert img.shape == (48, 48, 3)
            if e["label"]:
                src = np.asarray(Image.open(root / e["source"])).astype(int)
                changed = np.abs(img.astype(int) - src).max(-1) > 2
                assert 0 < changed.mean() < 0.9  # a local change, not a new picture
    ds = ForgeryDataset(root, "training", paired=True)
    torch.manual_seed(0)
    item = ds[0]
    assert item["image"].shape == (2, 3, 48, 48) and item["label"].tolist() == [0, 1]
    assert not torch.equal(item["image"][0], item["image"][1])
