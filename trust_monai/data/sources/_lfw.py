"""Face / non-face patches from ``skimage.data.lfw_subset()`` (ships in the scikit-image wheel), as PNGs."""

from __future__ import annotations

from pathlib import Path

from trust_monai.errors import InputFileError

from ._common import Builder, DatasetInfo, dist_version, import_source, write_datalist

__all__ = ["LFW_CLASSES", "BUILDERS"]

LFW_CLASSES = ("non_face", "face")
N_PER_CLASS = 100  # rows 0-99 are faces, 100-199 non-faces (skimage docs)
N_TEST_PER_CLASS = 20


def _locate():
    data = import_source("skimage.data", "lfw_faces", "pip install scikit-image")
    return data.lfw_subset


def _build(out: Path, lfw_subset, info: DatasetInfo) -> None:
    import numpy as np
    from PIL import Image

    faces = np.asarray(lfw_subset())
    if faces.shape[0] != 2 * N_PER_CLASS or faces.ndim != 3:
        raise InputFileError("skimage lfw_subset.npy", f"expected {2 * N_PER_CLASS} 2D patches, got {faces.shape}")
    pixels = np.clip(np.rint(faces * 255.0), 0, 255).astype(np.uint8)  # float in [0, 1] -> 8-bit PNG
    lists: dict[str, list] = {"training": [], "test": []}
    for row in range(faces.shape[0]):
        label = 1 if row < N_PER_CLASS else 0
        # The last 20 rows of each class are test: a contiguous block, fixed, and balanced between classes.
        split, folder = (
            ("test", "test") if row % N_PER_CLASS >= N_PER_CLASS - N_TEST_PER_CLASS else ("training", "train")
        )
        rel = f"{folder}/{row:03d}.png"
        (out / folder).mkdir(exist_ok=True)
        Image.fromarray(pixels[row]).save(out / rel)
        lists[split].append({"image": rel, "label": label, "index": row})
    write_datalist(
        out,
        info,
        lists["training"],
        lists["test"],
        split_rule=(
            f"Per class, the first {N_PER_CLASS - N_TEST_PER_CLASS} rows of lfw_subset() are training and the last "
            f"{N_TEST_PER_CLASS} are test (80/20, class-balanced, deterministic); 'index' is the row in lfw_subset()."
        ),
        modality={"0": "grayscale photograph, 25x25"},
        classes=list(LFW_CLASSES),
    )


BUILDERS = {
    "lfw_faces": Builder(
        version=lambda: f"lfw_faces-1-skimage{dist_version('scikit-image')}", locate=_locate, build=_build
    )
}
