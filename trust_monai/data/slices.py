"""Slice classification from a segmentation datalist: each 2D slice is labelled by whether its mask holds a finding.

The offline lesion slices (``pyradiomics_lesions_2d``) become a "lesion present / absent" task this way, the slice
triage step that comes before segmentation in a reading workflow. The label comes from the mask on disk, never from
extra datalist fields, so any 2D segmentation datalist works.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.utils import CommonKeys as Keys

from ..errors import DatalistError, InputFileError
from .datalist import load_datalist
from .io import read_image

__all__ = ["SliceClassificationDataset", "normalise_slice"]


def normalise_slice(a: np.ndarray, lower: float = 0.5, upper: float = 99.5) -> np.ndarray:
    """Robust intensity window to [0, 1]: percentiles ``lower`` / ``upper`` of the slice map to 0 / 1.

    MR has no absolute scale and CT slices differ in HU range, so a per-slice window is what puts scans from different
    scanners on the noise scale ``sigma`` is stated in. A constant slice maps to zeros.
    """
    a = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = np.percentile(a, [lower, upper])
    if hi <= lo:
        return np.zeros_like(a)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


class SliceClassificationDataset(torch.utils.data.Dataset):
    """2D slices of a segmentation datalist as an image classification set (label 1: at least ``min_voxels`` mask
    voxels above 0; label 0: none).

    Items match :class:`trust_monai.data.classification.ImageClassificationDataset`: ``image`` (float ``(1, H, W)`` in
    [0, 1], windowed by :func:`normalise_slice` and resized to ``spatial_size`` with area averaging), ``label``
    (int64), ``index``, ``path``, ``rel`` and ``section``. Slices are read once, at construction.

    Args:
        dataset_dir: folder with ``dataset.json`` whose entries have ``image`` and ``label`` (2D files, any format
            :func:`trust_monai.data.read_image` reads).
        section: datalist section.
        spatial_size: size every slice is resized to.
        min_voxels: mask voxels (at native resolution) that make a slice positive.
        max_samples: keep the first ``max_samples`` entries (<= 0: all).
        augment: random flips and 90-degree rotations per item (training).
        seed: seed of the augmentation.

    Raises:
        DatalistError: empty section; InputFileError: a file that is not 2D or whose mask shape differs from its image.
    """

    classes = ("no finding", "finding")

    def __init__(self, dataset_dir: str | os.PathLike, section: str = "training",
                 spatial_size: Sequence[int] = (64, 64), min_voxels: int = 1, max_samples: int = 0,
                 augment: bool = False, seed: int = 0):
        self.dataset_dir = Path(dataset_dir).resolve()
        self.section = section
        entries = load_datalist(self.dataset_dir, section)
        if max_samples and int(max_samples) > 0:
            entries = entries[: int(max_samples)]
        if not entries:
            raise DatalistError(f"{self.dataset_dir / 'dataset.json'}: section '{section}' is empty")
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.augment, self._gen = bool(augment), torch.Generator().manual_seed(int(seed))
        self.paths = [e["image"] for e in entries]
        self.rel = [Path(p).relative_to(self.dataset_dir).as_posix() for p in self.paths]
        images, labels = [], []
        for e in entries:
            img, _ = read_image(e["image"])
            if "label" not in e:
                raise DatalistError(f"{self.dataset_dir / 'dataset.json'}: entry {e['image']} has no 'label' mask")
            mask, _ = read_image(e["label"])
            img, mask = np.squeeze(img), np.squeeze(mask)
            if img.ndim != 2:
                raise InputFileError(e["image"], f"slice classification needs 2D slices, got shape {img.shape}")
            if mask.shape != img.shape:
                raise InputFileError(e["label"], f"mask shape {mask.shape} differs from image shape {img.shape}")
            t = torch.from_numpy(normalise_slice(img))[None, None]
            images.append(F.interpolate(t, size=self.spatial_size, mode="area")[0])
            labels.append(int((mask > 0).sum() >= int(min_voxels)))
        self.images = torch.stack(images)
        self.labels = torch.tensor(labels, dtype=torch.long)

    @property
    def num_classes(self) -> int:
        return 2

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=2).tolist()

    def balanced_weights(self) -> torch.Tensor:
        """Cross-entropy class weights inversely proportional to the class counts (findings are the rare class)."""
        counts = torch.bincount(self.labels, minlength=2).clamp_min(1).float()
        return counts.sum() / (2 * counts)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        x = self.images[i]
        if self.augment:
            k = int(torch.randint(0, 4, (1,), generator=self._gen))
            x = torch.rot90(x, k, dims=(-2, -1))
            if torch.rand(1, generator=self._gen) < 0.5:
                x = torch.flip(x, dims=(-1,))
        return {Keys.IMAGE: x.clone(), Keys.LABEL: self.labels[i], "index": i, "path": self.paths[i],
                "rel": self.rel[i], "section": self.section}
