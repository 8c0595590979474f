"""Image classification datasets read from a datalist: PNGs (any image PIL reads) with integer labels.

- :func:`read_datalist`: one section of ``dataset.json`` with absolute paths (checked, cached per file version).
- :class:`ImageClassificationDataset`: a datalist section decoded once into memory (a corrupt file raises
  :class:`~trust_monai.errors.InputFileError` naming it, before anything is written).
- :func:`load_sections`: several sections as one ``ConcatDataset`` (what the poison / purify writers iterate).
- :func:`datalist_channels`: 1 or 3, read from the first image (the bundles' default ``in_channels``).

The natural-image bundles (``ue_natural``, ``dvae_natural``, ``drs_natural``) read their data with these.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.utils import CommonKeys as Keys

from ..errors import DatalistError, InputFileError

__all__ = ["read_datalist", "ImageClassificationDataset", "load_sections", "datalist_channels"]


_DATALISTS: dict[tuple, tuple] = {}


def read_datalist(dataset_dir: str | os.PathLike, section: str) -> tuple[list[dict], dict]:
    """Entries of ``section`` of ``dataset_dir/dataset.json`` with ``image`` made absolute, and the whole datalist.

    Uses :func:`trust_monai.data.load_datalist` (schema check, paths kept inside the folder, files exist); results
    are cached per file version, since a 70k-entry datalist takes seconds to check.
    """
    dataset_dir = Path(dataset_dir).resolve()
    path = dataset_dir / "dataset.json"
    try:
        key = (str(path), os.stat(path).st_mtime_ns, section)
    except OSError:
        key = None
    if key is not None and key in _DATALISTS:
        entries, datalist = _DATALISTS[key]
        return [dict(e) for e in entries], datalist
    entries, datalist = _read_datalist(dataset_dir, path, section)
    if key is not None:
        _DATALISTS[key] = (entries, datalist)
    return [dict(e) for e in entries], datalist


def _read_datalist(dataset_dir: Path, path: Path, section: str) -> tuple[list[dict], dict]:
    from .datalist import load_datalist

    entries = [dict(e) for e in load_datalist(dataset_dir, section, keys=("image",))]
    return entries, json.loads(path.read_text())


_CACHE: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_CACHE_SIZE = 8  # decoded sections kept in memory (clean train, test, poisoned train ...): 47 MB each for 60k x 28x28


_GREY_MODES = ("L", "I", "I;16", "1", "P", "LA")


def _raw_datalist(dataset_dir) -> tuple[Path, dict]:
    """``(path, parsed dataset.json)`` without the schema check; a missing or broken file names itself."""
    path = Path(dataset_dir) / "dataset.json"
    try:
        return path, json.loads(path.read_text())
    except FileNotFoundError:
        raise InputFileError(
            path, "datalist not found; pass --dataset_dir pointing at a folder with dataset.json"
        ) from None
    except (OSError, ValueError) as e:
        raise InputFileError(path, f"unreadable datalist ({e})") from None


def datalist_channels(dataset_dir: str | os.PathLike) -> int:
    """Channels a network needs for ``dataset_dir``: 1 when its first image is grey, else 3 (RGB).

    The first image of the ``training`` section, or of ``test`` for a datalist that has only a test section (a set
    to certify).

    Raises:
        InputFileError / DatalistError: the datalist has no image, or its first image is unreadable.
    """
    from PIL import Image

    path, present = _raw_datalist(dataset_dir)
    section = "training" if present.get("training") or not present.get("test") else "test"
    entries, _ = read_datalist(dataset_dir, section)
    if not entries:
        raise InputFileError(path, f"the {section} section is empty")
    try:
        with Image.open(entries[0]["image"]) as im:
            return 1 if im.mode in _GREY_MODES else 3
    except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
        raise InputFileError(entries[0]["image"], f"not a readable image ({type(e).__name__}: {e})") from None


def _decode(path: str, channels: int | None) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if channels == 1 or (channels is None and im.mode in _GREY_MODES):
                arr = np.asarray(im.convert("L"))[None]
            else:
                arr = np.asarray(im.convert("RGB")).transpose(2, 0, 1)
    except FileNotFoundError:
        raise InputFileError(path, "file listed in the datalist does not exist") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
        raise InputFileError(path, f"not a readable image ({type(e).__name__}: {e})") from None
    return np.ascontiguousarray(arr)


class ImageClassificationDataset(torch.utils.data.Dataset):
    """One datalist section of 2D images with integer labels, decoded once into a ``uint8`` array.

    Items are dicts: ``image`` (float tensor ``(C, H, W)`` in [0, 1]), ``label`` (int64), ``index`` (position in the
    datalist section, the key of sample-wise noise), ``path`` (absolute input path), ``rel`` (path relative to the
    dataset folder) and ``section``.

    Args:
        dataset_dir: folder with ``dataset.json``.
        section: datalist section (``training`` / ``test``).
        max_samples: keep the first ``max_samples`` entries (``None`` or <= 0: all).
        in_channels: 1 (grey) or 3 (RGB); ``None`` keeps the file's own.
        progress: show a progress bar while decoding.
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike,
        section: str = "training",
        max_samples: int | None = None,
        in_channels: int | None = None,
        progress: bool = True,
    ):
        self.dataset_dir = Path(dataset_dir).resolve()
        self.section = section
        entries, datalist = read_datalist(self.dataset_dir, section)
        if max_samples is not None and int(max_samples) > 0:
            entries = entries[: int(max_samples)]
        if not entries:
            raise DatalistError(f"{self.dataset_dir / 'dataset.json'}: section '{section}' is empty")
        self.classes = list(datalist.get("classes", []))
        self.paths = [e["image"] for e in entries]
        self.rel = [Path(p).relative_to(self.dataset_dir).as_posix() for p in self.paths]
        try:
            self.labels = torch.tensor([int(e["label"]) for e in entries], dtype=torch.long)
        except (KeyError, TypeError, ValueError) as e:
            raise DatalistError(f"{self.dataset_dir / 'dataset.json'}: '{section}' needs integer labels ({e})") from None
        key = (str(self.dataset_dir), os.stat(self.dataset_dir / "dataset.json").st_mtime_ns, section, len(entries),
               in_channels)
        if key not in _CACHE:
            _CACHE[key] = self._load(in_channels, progress)
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        _CACHE.move_to_end(key)
        self.images = _CACHE[key]

    def _load(self, in_channels, progress) -> torch.Tensor:
        from tqdm.auto import tqdm

        first = _decode(self.paths[0], in_channels)
        out = np.empty((len(self.paths), *first.shape), dtype=np.uint8)
        it = tqdm(self.paths, desc=f"read {self.section}", disable=not progress or len(self.paths) < 2000, leave=False)
        for i, p in enumerate(it):
            a = first if i == 0 else _decode(p, in_channels)
            if a.shape != first.shape:
                raise InputFileError(p, f"shape {a.shape} differs from {first.shape} of {self.paths[0]}")
            out[i] = a
        return torch.from_numpy(out)

    @property
    def image_shape(self) -> list[int]:
        """``[C, H, W]`` of every image."""
        return list(self.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else int(self.labels.max()) + 1

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        return {
            Keys.IMAGE: self.images[i].float().div_(255.0),
            Keys.LABEL: self.labels[i],
            "index": i,
            "path": self.paths[i],
            "rel": self.rel[i],
            "section": self.section,
        }


def load_sections(
    dataset_dir: str | os.PathLike,
    sections: Sequence[str] = ("training", "test"),
    max_samples: int | Mapping[str, int | None] | None = None,
    in_channels: int | None = None,
    progress: bool = True,
) -> torch.utils.data.ConcatDataset:
    """The datalist sections of ``dataset_dir`` as one dataset (``training`` is required, other sections are used
    when the datalist has them); ``max_samples`` is one limit for all or ``{section: limit}``."""
    _, present = _raw_datalist(dataset_dir)
    parts = []
    for s in sections:
        if s != "training" and not present.get(s):
            continue
        limit = max_samples.get(s) if isinstance(max_samples, Mapping) else max_samples
        parts.append(ImageClassificationDataset(dataset_dir, s, limit, in_channels, progress))
    return torch.utils.data.ConcatDataset(parts)
