"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (idx gz files), written as PNGs plus a datalist."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

from trust_monai.errors import DataSourceUnavailable, InputFileError

from ._common import Builder, DatasetInfo, write_png_classification

__all__ = ["FASHION_MNIST_CLASSES", "FASHION_MNIST_ENV", "fashion_mnist_dir", "load_fashion_mnist_arrays", "BUILDERS"]

FASHION_MNIST_ENV = "TRUST_MONAI_FASHION_MNIST_DIR"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = "apt-get update && apt-get install -y dataset-fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# split name -> file prefix used by the original distribution
_PREFIX = {"train": "train", "test": "t10k"}
_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension


def _files(folder: Path) -> dict[str, Path]:
    return {
        f"{split}-{part}": folder / f"{prefix}-{part}-ubyte.gz"
        for split, prefix in _PREFIX.items()
        for part in ("images-idx3", "labels-idx1")
    }


def fashion_mnist_dir() -> Path:
    """Folder holding the four idx gz files.

    Returns:
        ``$TRUST_MONAI_FASHION_MNIST_DIR`` when set, else ``/usr/share/datasets/fashion-mnist``.

    Raises:
        DataSourceUnavailable: a file is missing; the message gives the apt command.
    """
    env = os.environ.get(FASHION_MNIST_ENV, "").strip()
    folder = Path(env).expanduser() if env else SYSTEM_DIR
    missing = [p.name for p in _files(folder).values() if not p.is_file()]
    if missing:
        via = f" (from ${FASHION_MNIST_ENV})" if env else ""
        raise DataSourceUnavailable(
            f"Fashion-MNIST files missing in {folder}{via}: {', '.join(missing)}; install with: {INSTALL_HINT}"
        )
    return folder


def _read_idx(path: Path, magic: int, ndim: int):
    """Parse one idx gz file into a numpy array, checking magic number and declared sizes."""
    import numpy as np

    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise InputFileError(path, f"cannot read gzip idx file ({exc})") from exc
    header_len = 4 * (1 + ndim)  # magic word, then one size per dimension
    if len(raw) < header_len:
        raise InputFileError(path, "truncated idx header")
    header = np.frombuffer(raw, dtype=">u4", count=1 + ndim)
    if int(header[0]) != magic:
        raise InputFileError(path, f"idx magic {int(header[0]):#010x}, expected {magic:#010x}")
    shape = tuple(int(v) for v in header[1:])
    data = np.frombuffer(raw, dtype=np.uint8, offset=header_len)
    if data.size != int(np.prod(shape)):
        raise InputFileError(path, f"holds {data.size} bytes of data, header declares shape {shape}")
    return data.reshape(shape)


def load_fashion_mnist_arrays(split: str = "train"):
    """Read a Fashion-MNIST split straight from the idx gz files (no PNGs, about 0.3 s for the training split).

    Args:
        split: ``"train"`` (60000) or ``"test"`` (10000, the ``t10k`` files).

    Returns:
        ``(images, labels)``: uint8 array N x 28 x 28 and int64 array N with class indices 0-9
        (names in ``FASHION_MNIST_CLASSES``).

    Raises:
        ValueError: unknown split.
        DataSourceUnavailable: the files are not installed.
        InputFileError: a file is corrupt.
    """
    if split not in _PREFIX:
        raise ValueError(f"split must be one of {sorted(_PREFIX)}, got {split!r}")
    return _load(fashion_mnist_dir(), split)


def _load(folder: Path, split: str):
    import numpy as np

    files = _files(folder)
    images = _read_idx(files[f"{split}-images-idx3"], _IMAGES_MAGIC, 3)
    labels = _read_idx(files[f"{split}-labels-idx1"], _LABELS_MAGIC, 1).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise InputFileError(files[f"{split}-labels-idx1"], f"{labels.shape[0]} labels for {images.shape[0]} images")
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise InputFileError(files[f"{split}-labels-idx1"], f"label {labels.max()} out of range 0-9")
    return images, labels


def _version() -> str:
    return "fashion_mnist-1"


def _build(out: Path, source: Path, info: DatasetInfo) -> None:
    write_png_classification(
        out,
        info,
        {split: _load(source, split) for split in ("train", "test")},
        split_rule="The official Fashion-MNIST split: 60000 'train' images for training, 10000 't10k' for test.",
        modality={"0": "grayscale photograph"},
        classes=list(FASHION_MNIST_CLASSES),
        source_dir=str(source),
    )


BUILDERS = {"fashion_mnist": Builder(version=_version, locate=fashion_mnist_dir, build=_build)}
