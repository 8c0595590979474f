"""One real DRIVE photograph as a one-case segmentation dataset, for tests of the picture paths (protect, purify).

``photo_case(tmp_path)`` copies training photograph 21 as distributed (RGB, LZW TIFF) and its first manual vessel
mask (as a grey PNG) into a datalist folder; it skips the test when no DRIVE copy is found (``$TRUST_MONAI_DRIVE``
or ``../shared/data/DRIVE``). The shared copy is never written to.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def photo_case(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """``(dataset_dir, photograph, mask)``: the folder with its ``dataset.json``, the copied TIFF, the 0/1 mask."""
    env = os.environ.get("TRUST_MONAI_DRIVE", "").strip()
    drive = Path(env) if env else Path(__file__).resolve().parents[3] / "shared/data/DRIVE"
    if not (drive / "training/images").is_dir():
        pytest.skip(f"no DRIVE copy at {drive} (set $TRUST_MONAI_DRIVE)")
    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    (ds / "labels").mkdir()
    photo = ds / "images" / "21_training.tif"
    photo.write_bytes((drive / "training/images/21_training.tif").read_bytes())
    mask = (np.array(Image.open(drive / "training/1st_manual/21_manual1.gif")) > 0).astype(np.uint8)
    Image.fromarray(mask).save(ds / "labels" / "21.png")
    doc = {"labels": {"0": "background", "1": "vessel"},
           "training": [{"image": "images/21_training.tif", "label": "labels/21.png"}], "test": []}
    (ds / "dataset.json").write_text(json.dumps(doc))
    return ds, photo, mask
