"""A 4-class brain tissue label on the MNI152 2009a template shipped in the nilearn wheel, split by axial slab.

Label rule: 0 outside the brain mask; inside it, the class with the largest probability among
{1 other brain = 1 - GM - WM, 2 grey matter, 3 white matter} (ties go to the lower class).

There is only one volume, and neighbouring slices are nearly identical, so training and test are two axial slabs
separated by a gap: the test slab is the superior quarter of the brain's axial extent, then a gap of
max(5 slices, 10 mm), and everything below that is training.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from trust_monai.errors import TrustMonaiError

from ._common import (
    Builder,
    DatasetInfo,
    dist_version,
    import_source,
    progress,
    slice_affine,
    write_datalist,
    write_nifti,
)

__all__ = ["RESOLUTION_ENV", "LABELS", "mni152_resolution", "load_template", "tissue_label", "slab_split", "BUILDERS"]

RESOLUTION_ENV = "TRUST_MONAI_MNI152_RESOLUTION"
LABELS = {"0": "background", "1": "other_brain", "2": "grey_matter", "3": "white_matter"}
TEST_FRACTION = 0.25
MIN_GAP_SLICES = 5
MIN_GAP_MM = 10.0
_NIFTI_MNI152_CODE = 4  # NIfTI xform code "MNI152"


def mni152_resolution() -> int:
    """Template resolution in mm: ``$TRUST_MONAI_MNI152_RESOLUTION`` (1 or 2), default 2 (small and fast)."""
    raw = os.environ.get(RESOLUTION_ENV, "").strip() or "2"
    if raw not in ("1", "2"):
        raise TrustMonaiError(f"${RESOLUTION_ENV} must be 1 or 2, got {raw!r}")
    return int(raw)


def tissue_label(mask, gm, wm):
    """Integer tissue label from the brain mask and GM/WM probability maps (rule in the module docstring).

    Args:
        mask: brain mask, non-zero inside.
        gm: grey-matter probability in [0, 1].
        wm: white-matter probability in [0, 1].

    Returns:
        uint8 array with values in {0, 1, 2, 3}.
    """
    import numpy as np

    gm = np.asarray(gm, dtype=np.float32)
    wm = np.asarray(wm, dtype=np.float32)
    other = np.clip(1.0 - gm - wm, 0.0, 1.0)
    label = (1 + np.argmax(np.stack([other, gm, wm]), axis=0)).astype(np.uint8)
    label[np.asarray(mask) == 0] = 0
    return label


def slab_split(label, spacing_z: float) -> dict:
    """Axial slab split of a label volume (rule in the module docstring).

    Args:
        label: 3D label volume, axial = last axis.
        spacing_z: slice spacing in mm, used for the minimum gap.

    Returns:
        ``{"training": [start, stop], "gap": [start, stop], "test": [start, stop]}`` as half-open slice ranges.

    Raises:
        TrustMonaiError: the brain is too short to split, or a slab lacks one of the four classes.
    """
    import numpy as np

    nonempty = np.flatnonzero((label > 0).reshape(-1, label.shape[-1]).any(axis=0))
    if nonempty.size == 0:
        raise TrustMonaiError("MNI152 label is empty")
    z0, z1 = int(nonempty[0]), int(nonempty[-1]) + 1
    n_test = round(TEST_FRACTION * (z1 - z0))
    gap = max(MIN_GAP_SLICES, math.ceil(MIN_GAP_MM / spacing_z - 1e-6))
    test = [z1 - n_test, z1]
    gap_range = [test[0] - gap, test[0]]
    training = [z0, gap_range[0]]
    if training[1] - training[0] < n_test:
        raise TrustMonaiError(f"brain spans only {z1 - z0} slices, too few for a slab split with a {gap}-slice gap")
    for name, (a, b) in (("training", training), ("test", test)):
        present = set(np.unique(label[..., a:b]).tolist())
        if present != {0, 1, 2, 3}:
            raise TrustMonaiError(f"MNI152 {name} slab z[{a}:{b}] holds classes {sorted(present)}, not all of 0-3")
    return {"training": training, "gap": gap_range, "test": test}


def _locate() -> int:
    import_source("nilearn.datasets", "mni152_tissue", "pip install nilearn")
    return mni152_resolution()


def load_template(resolution: int):
    """nilearn's MNI152 2009a images on one grid: ``(affine, t1 float32, brain mask, GM map, WM map)`` as arrays."""
    import numpy as np
    from nilearn import datasets

    images = [
        load(resolution=resolution)
        for load in (
            datasets.load_mni152_template,
            datasets.load_mni152_brain_mask,
            datasets.load_mni152_gm_template,
            datasets.load_mni152_wm_template,
        )
    ]
    affine = np.asarray(images[0].affine, dtype=np.float64)
    for img in images[1:]:
        if img.shape != images[0].shape or not np.allclose(img.affine, affine):
            raise TrustMonaiError("nilearn's MNI152 template, mask and tissue maps are not on one grid")
    t1 = np.asarray(images[0].get_fdata(dtype=np.float32))
    return affine, t1, np.asarray(images[1].dataobj), images[2].get_fdata(), images[3].get_fdata()


def _build(out: Path, resolution: int, info: DatasetInfo, two_d: bool) -> None:
    import numpy as np

    affine, t1, brain, gm, wm = load_template(resolution)
    label = tissue_label(brain, gm, wm)
    spacing_z = float(np.linalg.norm(affine[:3, 2]))
    split = slab_split(label, spacing_z)

    lists: dict[str, list] = {"training": [], "test": []}
    for key, tr in (("training", "Tr"), ("test", "Ts")):
        a, b = split[key]
        if not two_d:
            stem = f"mni152_z{a:03d}-{b - 1:03d}"
            entry = {"image": f"images{tr}/{stem}.nii.gz", "label": f"labels{tr}/{stem}.nii.gz"}
            write_nifti(out / entry["image"], t1[..., a:b], slice_affine(affine, a), code=_NIFTI_MNI152_CODE)
            write_nifti(out / entry["label"], label[..., a:b], slice_affine(affine, a), code=_NIFTI_MNI152_CODE)
            entry.update(volume="mni152", z_range=[a, b], modality="MR T1")
            lists[key].append(entry)
            continue
        for z in progress(range(a, b), desc=f"{info.name} {key}", unit="slice"):
            if not label[..., z].any():  # the 2D view keeps only slices that contain brain
                continue
            entry = {"image": f"images{tr}/mni152_z{z:03d}.nii.gz", "label": f"labels{tr}/mni152_z{z:03d}.nii.gz"}
            write_nifti(out / entry["image"], t1[..., z], slice_affine(affine, z), code=_NIFTI_MNI152_CODE)
            write_nifti(out / entry["label"], label[..., z], slice_affine(affine, z), code=_NIFTI_MNI152_CODE)
            entry.update(volume="mni152", slice=z, modality="MR T1")
            lists[key].append(entry)

    (tr0, tr1), (g0, g1), (te0, te1) = split["training"], split["gap"], split["test"]
    rule = (
        f"One volume, split by axial slab (last voxel axis) with a gap: training z[{tr0}:{tr1}], "
        f"gap z[{g0}:{g1}] unused, test z[{te0}:{te1}] = superior {TEST_FRACTION:.0%} of the brain's axial extent; "
        f"gap = max({MIN_GAP_SLICES} slices, {MIN_GAP_MM:g} mm). Random slices would leak nearly identical neighbours."
    )
    label_rule = (
        "0 outside the nilearn brain mask; inside, argmax of {1: 1 - GM - WM, 2: GM, 3: WM} probabilities "
        "(ties to the lower class)"
    )
    write_datalist(
        out,
        info,
        lists["training"],
        lists["test"],
        split_rule=rule,
        split={k: list(v) for k, v in split.items()},
        label_rule=label_rule,
        resolution_mm=resolution,
        modality={"0": "MR T1 (MNI152 2009a template, intensities in [0, 1])"},
        labels=dict(LABELS),
    )


def _version(two_d: bool) -> str:
    return f"mni152_tissue{'_2d' if two_d else ''}-1-res{mni152_resolution()}-nilearn{dist_version('nilearn')}"


BUILDERS = {
    "mni152_tissue": Builder(
        version=lambda: _version(False),
        locate=_locate,
        build=lambda out, res, info: _build(out, res, info, two_d=False),
    ),
    "mni152_tissue_2d": Builder(
        version=lambda: _version(True),
        locate=_locate,
        build=lambda out, res, info: _build(out, res, info, two_d=True),
    ),
}
