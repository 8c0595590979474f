"""MONAI transform chains shared by the medical bundles: one function, ``spatial_dims`` 2 or 3."""

from __future__ import annotations

import logging

from typing import Sequence

__all__ = ["segmentation_transforms"]


def segmentation_transforms(
    spatial_dims: int = 2,
    patch_size: Sequence[int] | None = None,
    train: bool = True,
    num_samples: int = 4,
    pos: float = 1.0,
    neg: float = 1.0,
    ct_window: Sequence[float] = (-1000.0, 1000.0),
    augment: str = "flip",
):
    """Load image + label, channel first, window intensities to [0, 1], and (train) sample patches at native resolution.

    A colour image (RGB PNG / TIFF, channel last) becomes its luminance: the networks see one channel whatever the
    format, and UMed's change, added equally to every colour channel, moves the luminance by exactly that change.

    Training samples ``num_samples`` patches per case with foreground / background ratio ``pos:neg`` (lesions are
    small, so uniform crops would rarely see one). Evaluation keeps the whole image for sliding-window inference.

    Args:
        spatial_dims: 2 or 3; the patch size defaults to (128, 128) or (64, 64, 32).
        patch_size: training patch size.
        train: add patch sampling and augmentation.
        num_samples / pos / neg: ``RandCropByPosNegLabeld`` settings.
        ct_window: Hounsfield window for entries whose ``modality`` is CT.
        augment: ``flip`` (a random flip along the first axis) or ``standard``, the augmentation a careful trainer
            uses (after nnU-Net's defaults, on [0, 1] intensities): flips along every axis; a random rotation (in-plane,
            +-15 degrees) and scaling (+-15%) with bilinear resampling, probability 0.2; Gaussian noise (std up to
            0.03), probability 0.1; Gaussian blur (sigma 0.5-1 voxel), probability 0.2; brightness x0.75-1.25 and
            gamma 0.7-1.5, probability 0.15 each. Resampling and blur smooth a fine perturbation away, so a protection
            must be measured against this victim too.

    Returns:
        a ``monai.transforms.Compose``.
    """
    from monai.transforms import (
        Compose,
        EnsureTyped,
        LoadImaged,
        RandCropByPosNegLabeld,
        RandAdjustContrastd,
        RandAffined,
        RandFlipd,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandScaleIntensityd,
        SpatialPadd,
    )

    from ..transforms.intensity import GreyChannelFirstd, ScanNormalized

    # every new loader re-announces that no GPU DICOM codec exists; once per run is plenty (it is not an error)
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)

    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if augment not in ("flip", "standard"):
        raise ValueError(f"augment must be 'flip' or 'standard', got {augment!r}")
    if patch_size is None:
        patch_size = (128, 128) if spatial_dims == 2 else (64, 64, 32)
    keys = ["image", "label"]
    xs = [
        LoadImaged(keys, image_only=True),
        GreyChannelFirstd("image", spatial_dims, label_keys="label"),
        ScanNormalized("image", ct_window=ct_window),
        EnsureTyped(keys, dtype=None, track_meta=True),
    ]
    if train:
        xs += [
            SpatialPadd(keys, spatial_size=patch_size, mode="constant"),
            RandCropByPosNegLabeld(
                keys, label_key="label", spatial_size=patch_size, pos=pos, neg=neg, num_samples=num_samples
            ),
        ]
        if augment == "flip":
            xs.append(RandFlipd(keys, prob=0.5, spatial_axis=0))
        else:
            sigma = (0.5, 1.0)
            xs += [RandFlipd(keys, prob=0.5, spatial_axis=a) for a in range(spatial_dims)] + [
                # in-plane rotation only: 3D scans are often anisotropic along the last axis
                RandAffined(keys, prob=0.2, rotate_range=(0.26,) if spatial_dims == 2 else (0.0, 0.0, 0.26),
                            scale_range=(0.15,) * spatial_dims, mode=("bilinear", "nearest"), padding_mode="zeros"),
                RandGaussianNoised("image", prob=0.1, std=0.03),
                RandGaussianSmoothd("image", prob=0.2, **{f"sigma_{a}": sigma for a in "xyz"[:spatial_dims]}),
                RandScaleIntensityd("image", factors=0.25, prob=0.15),
                RandAdjustContrastd("image", prob=0.15, gamma=(0.7, 1.5)),
            ]
    return Compose(xs)
