"""D-VAE purification of segmentation datasets (2D slices or 3D volumes, NIfTI / NRRD / DICOM).

Segmentation data has no image-level class, so the D-VAE's class-wise embedding is painted by the label map at latent
resolution (one learnable vector per segmentation class, see :class:`~trust_monai.networks.DVAE`). Intensities are
windowed to [0, 1] exactly as the protect bundle does, and only the change the purifier makes is mapped back to the
scan's own units, so voxels outside the intensity window keep their values.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CaseError, DatalistError

__all__ = ["segmentation_items", "DVAECaseProcessor"]


def segmentation_items(
    dataset_dir: str | os.PathLike,
    spatial_dims: int,
    section: str = "training",
    max_cases: int | None = None,
    multiple: int = 4,
    progress: bool = True,
) -> list[dict]:
    """Windowed training cases for the purifier: ``{"image", "label", "path"}``, zero-padded to one shape.

    Every case needs a label map (the class embedding is painted by it); cases without one are named in the error,
    before training. Medical cases differ in size as a rule, so sizes are padded (up to ``multiple``), but a case
    whose image is not single-channel stops the run with its name.
    """
    from tqdm.auto import tqdm

    from ..data.datalist import load_datalist
    from ..data.pipelines import segmentation_transforms

    entries = load_datalist(dataset_dir, section, keys=("image", "label"))
    if max_cases:
        entries = entries[: int(max_cases)]
    missing = [e["image"] for e in entries if not isinstance(e.get("label"), str)]
    if missing:
        raise DatalistError(
            f"the D-VAE's class embedding is painted by the label map, but these cases have none: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )
    load = segmentation_transforms(spatial_dims, train=False)
    cases = []
    for e in tqdm(entries, desc="read cases", disable=not progress or len(entries) < 20, leave=False):
        c = load({"image": e["image"], "label": e["label"], "modality": e.get("modality", "MR")})
        img = torch.as_tensor(c["image"]).float()
        if img.ndim != spatial_dims + 1 or img.shape[0] != 1:
            raise DatalistError(f"{e['image']}: expected a single-channel {spatial_dims}D image, got shape "
                                f"{tuple(img.shape)} (set --spatial_dims, or split channels into separate cases)")
        cases.append((img, torch.as_tensor(c["label"]).long(), e["image"]))
    shape = [max(c[0].shape[1 + a] for c in cases) for a in range(spatial_dims)]
    shape = [-(-s // multiple) * multiple for s in shape]

    def pad(t):
        widths: list[int] = []
        for a in reversed(range(spatial_dims)):
            widths += [0, shape[a] - t.shape[1 + a]]
        return F.pad(t, widths)

    return [{"image": pad(i), "label": pad(lab), "path": p} for i, lab, p in cases]


class DVAECaseProcessor:
    """Purify one case with trained stages (a :class:`~trust_monai.engines.case_writer.CaseWriter` processor).

    Args:
        purifier: a :class:`~trust_monai.purify.DVAEPurifier` (or any ``apply(x, index, y)`` defence).
        num_classes: label values must lie in ``[0, num_classes)``.
        spatial_dims: of the data.
        ct_window / percentiles: the intensity window (see :mod:`trust_monai.transforms.intensity`).
        device: where the purifier runs.

    Returns (per call): ``(purified_array, metrics)`` in the input's dtype and shape.
    """

    def __init__(self, purifier, num_classes: int, spatial_dims: int, ct_window: Sequence[float] = (-1000.0, 1000.0),
                 percentiles: Sequence[float] = (0.5, 99.5), device="cpu") -> None:
        self.purifier, self.num_classes, self.spatial_dims = purifier, int(num_classes), int(spatial_dims)
        self.ct_window, self.percentiles, self.device = ct_window, percentiles, torch.device(device)
        self.purifier.to(self.device)

    def __call__(self, image, meta, entry: dict):
        """CaseWriter processor: read and check the case's mask, then :meth:`purify`."""
        from ..engines.case_writer import in_monai_axes, read_case_label

        label, label_path = read_case_label(entry, image, meta, "the D-VAE")
        modality = entry.get("modality") or meta.modality or "MR"  # a CT series gets the CT window
        return in_monai_axes(meta, self.purify, image, label, modality=modality, name=entry["image"],
                             label_name=label_path)

    def purify(self, image, label, modality: str = "MR", name: str = "image", label_name: str = "label"):
        """Purify in-memory arrays (same shape and voxel order): ``(purified, metrics)``.

        A colour picture (channel last, RGB or RGBA) is purified through its luminance, as the protect bundle changes
        it: the purifier's change goes into each colour channel alike.
        """
        from ..metrics.image import image_change_metrics
        from ..transforms.intensity import ScanNormalize, is_colour, to_channels, to_luminance

        img = np.asarray(image)
        if not np.isfinite(img).all():
            raise CaseError(f"{name}: image has NaN or Inf voxels")
        lab = np.asarray(label)
        if lab.min() < 0 or lab.max() >= self.num_classes:
            raise CaseError(f"{label_name}: label values {int(lab.min())}..{int(lab.max())} outside "
                            f"0..{self.num_classes - 1}")
        colour = is_colour(img, self.spatial_dims) and lab.ndim == self.spatial_dims
        work = to_luminance(img) if colour else img
        if work.ndim != self.spatial_dims:
            raise CaseError(f"{name}: {img.ndim}D image but the purifier is {self.spatial_dims}D (set --spatial_dims)")
        x, (low, high) = ScanNormalize(self.ct_window, self.percentiles)(work, modality)
        with torch.inference_mode():
            xt = torch.as_tensor(x)[None, None].float().to(self.device)
            yt = torch.as_tensor(lab.astype(np.int64))[None, None].to(self.device)
            change = (self.purifier.apply(xt, None, yt) - xt)[0, 0].double().cpu().numpy() * (high - low)
        if colour:
            change = to_channels(change, img.shape[-1])
        if np.issubdtype(img.dtype, np.integer):
            info = np.iinfo(img.dtype)
            out = np.clip(np.rint(img.astype(np.float64) + change), info.min, info.max).astype(img.dtype)
        else:
            out = (img.astype(np.float64) + change).astype(img.dtype)
        metrics = image_change_metrics(img, out, low, high)
        metrics["window"] = [float(low), float(high)]
        return out, metrics
