"""Ideal experiment (issue 24): take the class-wise part of an additive poison out with a defender's clean images.

For each class ``y`` the shift ``p_y = mean(received | y) - mean(clean validation | y)`` estimates a poison that adds
one pattern per class (LSP, class-wise EM, the block code); every received training image of class ``y`` is written
as ``clip(x - p_y)``. The estimate is also sampling noise, itself a small class-wise code (RMS 3-7/255 per class on
clean Fashion-MNIST with 500 / 200 images per class), so the shifted copy is meant to be purified afterwards
(``bundles/dvae_natural``), never trained on as it is; ``bundles/dvae_natural/docs/README.md`` has the measurements.

    python scripts/purify_class_shift.py --input POISONED --validation CLEAN_VAL --output SHIFTED [--max_train 5000]

Both folders are classification datalists (``dataset.json`` with ``training`` items ``{"image", "label"}``, 8-bit
PNGs). The test split, if any, is copied unchanged; ``dataset.json`` is written last, so a stopped run leaves no
folder that reads as a data set.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def _load(root: Path, items: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    x = np.stack([np.asarray(Image.open(root / it["image"]), dtype=np.float64) / 255 for it in items])
    return x, np.array([int(it["label"]) for it in items])


def class_shift(x: np.ndarray, y: np.ndarray, vx: np.ndarray, vy: np.ndarray) -> dict[int, np.ndarray]:
    """Per class present in ``y``: mean received image minus mean clean image of that class."""
    missing = sorted(set(y.tolist()) - set(vy.tolist()))
    if missing:
        raise SystemExit(f"the validation images have no example of class(es) {missing}: the shift needs every class")
    return {c: x[y == c].mean(0) - vx[vy == c].mean(0) for c in sorted(set(y.tolist()))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, type=Path, help="received (possibly poisoned) datalist folder")
    p.add_argument("--validation", required=True, type=Path, help="clean labelled datalist folder of the defender")
    p.add_argument("--output", required=True, type=Path, help="new folder for the shifted copy")
    p.add_argument("--max_train", type=int, default=0, help="first N training images only (0: all)")
    args = p.parse_args(argv)
    from trust_monai.utils.fileio import atomic_write_text

    if (args.output / "dataset.json").exists():
        raise SystemExit(f"{args.output} already holds a data set; give a new --output folder")
    datalist = json.loads((args.input / "dataset.json").read_text())
    items = datalist["training"][: args.max_train or None]
    x, y = _load(args.input, items)
    vx, vy = _load(args.validation, json.loads((args.validation / "dataset.json").read_text())["training"])
    shift = class_shift(x, y, vx, vy)
    rms = {c: round(float(np.sqrt((s ** 2).mean())) * 255, 1) for c, s in shift.items()}
    print("class-wise shift RMS (1/255):", rms)
    out = np.clip(x - np.stack([shift[int(c)] for c in y]), 0, 1)
    for img, it in zip(out, items):
        (args.output / it["image"]).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(img * 255).astype(np.uint8)).save(args.output / it["image"])
    if (args.input / "test").is_dir() and not (args.output / "test").exists():
        shutil.copytree(args.input / "test", args.output / "test")
    atomic_write_text(args.output / "dataset.json", json.dumps({**datalist, "training": items}, indent=1) + "\n")
    print(f"wrote {len(items)} shifted training images to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
