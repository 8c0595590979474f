"""DRIVE retinal vessel segmentation from the user's own copy, converted to PNG with the standard 20/20 split.

DRIVE cannot ship with a package (research-use terms), so the builder reads a copy the user downloaded, in the layout
it is distributed in::

    DRIVE/training/images/21_training.tif      RGB fundus photograph, 565x584 (subjects 21-40)
    DRIVE/training/1st_manual/21_manual1.gif   manual vessel mask, 0/255
    DRIVE/training/mask/21_training_mask.gif   field-of-view mask, 0/255
    DRIVE/test/images/01_test.tif              (subjects 01-20; 1st_manual is the reference, 2nd_manual unused)
    DRIVE/test/1st_manual/01_manual1.gif
    DRIVE/test/mask/01_test_mask.gif

Output: ``images{Tr,Ts}/<subject>.png`` (RGB uint8), ``labels{Tr,Ts}/<subject>.png`` and ``fov{Tr,Ts}/<subject>.png``
(uint8 0/1). PNG is lossless, so the pixels are exactly DRIVE's.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from trust_monai.errors import DataSourceUnavailable, InputFileError

from ._common import Builder, DatasetInfo, import_source, progress, write_datalist

__all__ = ["DRIVE_ENV", "DRIVE_URL", "CITATION", "LABELS", "SPLITS", "locate_drive", "BUILDERS"]

logger = logging.getLogger(__name__)

DRIVE_ENV = "TRUST_MONAI_DRIVE"
DRIVE_URL = "https://drive.grand-challenge.org"
CITATION = (
    'J. Staal, M. D. Abramoff, M. Niemeijer, M. A. Viergever, B. van Ginneken, "Ridge-based vessel segmentation in '
    'color images of the retina", IEEE Transactions on Medical Imaging 23(4), 501-509, 2004'
)
TERMS = f"DRIVE is made available for research purposes only; obtain it from {DRIVE_URL} and cite {CITATION}."
LABELS = {"0": "background", "1": "vessel"}
# split -> (DRIVE folder, image name suffix, output suffix); DRIVE's own training / test folders are the split.
SPLITS = {"training": ("training", "training", "Tr"), "test": ("test", "test", "Ts")}
STANDARD_SUBJECTS = {"training": 20, "test": 20}
LAYOUT = (
    "training/{images/NN_training.tif, 1st_manual/NN_manual1.gif, mask/NN_training_mask.gif} for subjects 21-40 and "
    "test/{images/NN_test.tif, 1st_manual/NN_manual1.gif, mask/NN_test_mask.gif} for subjects 01-20"
)
_VERSION = "drive-1"


def _how_to_get() -> str:
    return (
        f"DRIVE cannot ship with this package: download it (research use) from {DRIVE_URL} (cite Staal et al., "
        f"'Ridge-based vessel segmentation in color images of the retina', IEEE TMI 2004) and pass its folder with "
        f"--source PATH, prepare('drive', source=PATH) or ${DRIVE_ENV}"
    )


def _files(root: Path, split: str, subject: str) -> dict[str, Path]:
    folder, tag, _ = SPLITS[split]
    base = root / folder
    return {
        "image": base / "images" / f"{subject}_{tag}.tif",
        "label": base / "1st_manual" / f"{subject}_manual1.gif",
        "fov": base / "mask" / f"{subject}_{tag}_mask.gif",
    }


def locate_drive(source: str | os.PathLike | None) -> dict[str, list[str]]:
    """Check a DRIVE copy's layout and list its subjects.

    Args:
        source: the DRIVE folder (holding ``training/`` and ``test/``), or None when none was given.

    Returns:
        ``{"root": Path, "training": [subject ids], "test": [...]}``, ids as in the file names ("21", "01").

    Raises:
        DataSourceUnavailable: no folder given, or it lacks a split folder, a sub-folder or any image; the message
            names the folder, the expected layout and where DRIVE comes from.
        InputFileError: an image has no manual mask or no field-of-view mask.
    """
    import_source("PIL.Image", "drive", "pip install pillow")
    if source is None:
        raise DataSourceUnavailable(f"drive needs a copy of DRIVE. {_how_to_get()}")
    root = Path(source).expanduser().resolve()
    if not root.is_dir():
        raise DataSourceUnavailable(f"DRIVE folder {root} does not exist; expected {LAYOUT} in it. {_how_to_get()}")
    found: dict = {"root": root}
    for split, (folder, tag, _) in SPLITS.items():
        for sub in ("images", "1st_manual", "mask"):
            if not (root / folder / sub).is_dir():
                raise DataSourceUnavailable(
                    f"{root} is not a DRIVE folder: {root / folder / sub} is missing; expected {LAYOUT}. "
                    f"{_how_to_get()}"
                )
        pattern = re.compile(rf"^(\d+)_{tag}\.tif$")
        subjects = sorted(m[1] for p in (root / folder / "images").iterdir() if (m := pattern.match(p.name)))
        if not subjects:
            raise DataSourceUnavailable(
                f"{root / folder / 'images'} holds no NN_{tag}.tif image; expected {LAYOUT}. {_how_to_get()}"
            )
        for subject in subjects:
            for path in _files(root, split, subject).values():
                if not path.is_file():
                    raise InputFileError(path, f"missing: DRIVE subject {subject} needs it ({split} split)")
        if len(subjects) != STANDARD_SUBJECTS[split]:
            logger.warning(
                "%s holds %d %s subjects, not DRIVE's %d", root, len(subjects), split, STANDARD_SUBJECTS[split]
            )
        found[split] = subjects
    return found


def _read_mask(path: Path, shape: tuple[int, int]):
    """A 0/255 (or 0/1) GIF mask as uint8 0/1; InputFileError when it is not binary or not the image's size."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as img:
            values = np.asarray(img.convert("L"))  # GIFs may be palette-coded: convert to the grey values shown
    except OSError as exc:
        raise InputFileError(path, f"cannot read the mask ({exc})") from exc
    if values.shape != shape:
        raise InputFileError(path, f"mask is {values.shape[1]}x{values.shape[0]}, its image {shape[1]}x{shape[0]}")
    present = set(np.unique(values).tolist())
    if not present <= {0, 255} and not present <= {0, 1}:
        raise InputFileError(path, f"mask is not binary: values {sorted(present)[:8]}")
    return (values > 0).astype(np.uint8)


def _read_image(path: Path):
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as img:
            mode = img.mode
            pixels = np.asarray(img)
    except OSError as exc:
        raise InputFileError(path, f"cannot read the image ({exc})") from exc
    if mode != "RGB" or pixels.dtype != np.uint8:
        raise InputFileError(path, f"expected an 8-bit RGB fundus photograph, got PIL mode {mode}")
    return pixels


def _build(out: Path, found: dict, info: DatasetInfo) -> None:
    from PIL import Image

    root = found["root"]
    lists: dict[str, list] = {"training": [], "test": []}
    for split, (_, _, tr) in SPLITS.items():
        for sub in ("images", "labels", "fov"):
            (out / f"{sub}{tr}").mkdir(parents=True, exist_ok=True)
        for subject in progress(found[split], desc=f"drive {split}", unit="image"):
            files = _files(root, split, subject)
            image = _read_image(files["image"])
            label = _read_mask(files["label"], image.shape[:2])
            fov = _read_mask(files["fov"], image.shape[:2])
            entry = {
                "image": f"images{tr}/{subject}.png",
                "label": f"labels{tr}/{subject}.png",
                "fov": f"fov{tr}/{subject}.png",
            }
            for key, pixels in (("image", image), ("label", label), ("fov", fov)):
                Image.fromarray(pixels).save(out / entry[key])
            entry.update(subject=subject, modality="fundus")
            lists[split].append(entry)
    write_datalist(
        out,
        info,
        lists["training"],
        lists["test"],
        split_rule=(
            "DRIVE's standard split as distributed: training/ (subjects 21-40) is training, test/ (subjects 01-20) "
            "is test, the label being the first observer's manual mask (1st_manual); the second observer's test "
            "masks (2nd_manual) are not used. Scores are usually computed inside the field of view ('fov')."
        ),
        modality={"0": "colour fundus photograph (RGB, 3 channels in one PNG)"},
        labels=dict(LABELS),
        citation=CITATION,
        terms=TERMS,
    )


def _version(source: str | os.PathLike | None) -> str:
    # The copy's resolved path is part of the marker: preparing from another copy rebuilds.
    prefix = f"{_VERSION}-src="
    return prefix if source is None else prefix + str(Path(source).expanduser().resolve())


BUILDERS = {"drive": Builder(version=_version, locate=locate_drive, build=_build, source_env=DRIVE_ENV)}
