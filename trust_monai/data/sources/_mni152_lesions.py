"""SYNTHETIC lesions painted into the real MNI152 2009a T1 template (nilearn wheel), with their exact masks.

The anatomy is real, the lesions are not: each case is the same axial slab of the template (the training slab of
``mni152_tissue``, see ``_mni152.slab_split``), warped into its own subject, with 1-4 blobs added inside the brain
mask. A blob is an ellipsoid
with random orientation and semi-axes of 3-10 voxels at 2 mm (6-20 mm, so the size in mm is kept at 1 mm), its radius
in each direction scaled by 1 +- 0.3 x smoothed random noise so that no two are alike, put at a random place where it
fits (shrunk by steps of 0.8 only where it fits nowhere, as a large blob may not near the slab's ends). Its
intensity change is ``contrast`` x the brain's intensity range (max - min of the T1 inside the brain mask), brighter
(hyperintense, as lesions appear on FLAIR or contrast-enhanced T1; a darker blob reads as CSF and was not learnable
by a clean victim in 1850 iterations), ramped linearly over a 1-voxel edge; the label is 1 where the voxel centre lies inside the
blob's surface (weight > 0.5). Blobs never touch each other, the brain's edge or the slab's ends. Every case also
gets Gaussian noise of sigma 1% of the brain range over the whole volume, so cases differ outside the lesions too.

Every case is also its own *subject*: before the lesions go in, the slab is warped in-plane by a random rotation
(+-10 degrees), scaling (0.9-1.1 per axis) and a smooth elastic field (up to 3 voxels), and multiplied by a smooth
bias field (+-5%), see :func:`case_anatomy`; without it all cases would share one anatomy voxel for voxel. The
warp never moves voxels along z. Training and test cases are different subjects of the same brain region, split by
subject as a multi-subject study would be (48 training, 16 test). An earlier build held out the superior slab
instead, a brain region no training case showed: a clean UNet then scored a mean slice Dice of 0.24 after 40
epochs, against 0.41 (0.55 per subject) on new subjects of the training region, with 16 training subjects.

The default contrast, 0.12, is 12 x the noise and about 3.5 x the spread of the template inside white matter, but
under half of the grey / white matter difference (0.28 of the range at 2 mm): a visible yet subtle lesion.
``$TRUST_MONAI_LESION_CONTRAST`` changes it, to sweep how faint a lesion a model still finds. Case ``i`` draws
everything from ``numpy.random.default_rng([SEED, i])``, so a build is reproducible, and the 2D dataset holds axial
slices of exactly the 3D cases.
"""

from __future__ import annotations

import functools
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
from ._mni152 import (
    _NIFTI_MNI152_CODE,
    load_template,
    mni152_resolution,
    slab_split,
    tissue_label,
)

__all__ = [
    "CONTRAST_ENV",
    "case_anatomy",
    "DEFAULT_CONTRAST",
    "LABELS",
    "N_CASES",
    "lesion_contrast",
    "brain_room",
    "lesion_case",
    "template",
    "BUILDERS",
]

CONTRAST_ENV = "TRUST_MONAI_LESION_CONTRAST"
DEFAULT_CONTRAST = 0.12  # intensity change as a fraction of the brain's intensity range (see module docstring)
LABELS = {"0": "background", "1": "lesion"}
N_CASES = {"training": 48, "test": 16}
SEED = 152
MAX_LESIONS = 4
RADIUS_MM = (6.0, 20.0)  # semi-axes: 3-10 voxels at 2 mm
SHAPE_JITTER = 0.3  # radius per direction scaled by 1 + SHAPE_JITTER * noise, noise in [-1, 1]
EDGE_VOXELS = 1.0  # width of the linear intensity ramp across the lesion surface
NOISE_FRACTION = 0.01  # sigma of the per-case Gaussian noise, as a fraction of the brain's intensity range
KEEP_EVERY = 4  # 2D: every lesion slice, and one lesion-free brain slice in KEEP_EVERY
ROTATION_DEG = 10.0  # per-case anatomy (case_anatomy): in-plane rotation, uniform in +-ROTATION_DEG
SCALE = (0.9, 1.1)  # in-plane scaling per axis
ELASTIC_VOXELS = 3.0  # largest elastic displacement
ELASTIC_SIGMA = 8.0  # smoothness of the elastic field, voxels
BIAS = 0.05  # multiplicative bias field within 1 +- BIAS


def lesion_contrast() -> float:
    """Lesion contrast: ``$TRUST_MONAI_LESION_CONTRAST`` (a number in (0, 1]), default ``DEFAULT_CONTRAST``."""
    raw = os.environ.get(CONTRAST_ENV, "").strip()
    if not raw:
        return DEFAULT_CONTRAST
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0.0 < value <= 1.0:  # also rejects nan
        raise TrustMonaiError(f"${CONTRAST_ENV} must be a number in (0, 1], got {raw!r}")
    return value


def _rotation(rng):
    """A uniformly random 3D rotation (QR of a Gaussian matrix with the sign fixed)."""
    import numpy as np

    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _blob(radii, rot, rng):
    """Intensity weight (float32 in [0, 1]) and label (bool) of one blob in a cube centred on it."""
    import numpy as np
    from scipy import ndimage

    half = math.ceil(radii.max() * (1 + SHAPE_JITTER) + EDGE_VOXELS)
    offsets = np.stack(np.meshgrid(*[np.arange(-half, half + 1)] * 3, indexing="ij"), axis=-1).astype(np.float64)
    jitter = ndimage.gaussian_filter(rng.normal(size=offsets.shape[:3]), sigma=max(1.0, radii.mean() / 2))
    jitter /= np.abs(jitter).max()
    r = np.linalg.norm(offsets, axis=-1)
    # surface radius along each voxel's direction: the ellipsoid's, scaled by the smooth jitter
    local = np.linalg.norm(offsets @ rot / radii, axis=-1)  # ellipsoid frame, in semi-axis units
    with np.errstate(invalid="ignore", divide="ignore"):
        surface = np.where(r > 0, r / local, radii.min()) * (1 + SHAPE_JITTER * jitter)
    distance = r - surface  # radial distance to the surface in voxels, negative inside
    weight = np.clip(0.5 - distance / EDGE_VOXELS, 0.0, 1.0).astype(np.float32)
    return weight, distance < 0


def brain_room(mask):
    """Distance from each slab voxel to the nearest voxel outside the brain, the slab's ends counting as outside."""
    import numpy as np
    from scipy import ndimage

    return ndimage.distance_transform_edt(np.pad(np.asarray(mask, bool), 1))[1:-1, 1:-1, 1:-1]


def _fit(support, blocked, room, p: int, rng):
    """Box (in the padded arrays) of a random position where ``support`` overlaps no blocked voxel, or None.

    Uniform over all such positions: slab voxels are visited in random order, skipping those closer to the brain's
    edge than the support's inscribed radius (they cannot fit), and the first fit wins.
    """
    import numpy as np

    h = support.shape[0] // 2
    outside = np.argwhere(~support) - h
    inscribed = float(np.linalg.norm(outside, axis=1).min()) if len(outside) else h + 1.0
    candidates = np.argwhere(room >= inscribed)
    for i in rng.permutation(len(candidates)):
        box = tuple(slice(int(c) + p - h, int(c) + p + h + 1) for c in candidates[i])
        if not blocked[box][support].any():
            return box
    return None


def case_anatomy(t1, mask, index: int):
    """Case ``index``'s own anatomy: the slab warped in-plane and bias-modulated (rule in the module docstring).

    Args:
        t1: T1 slab, float, axial = last axis.
        mask: brain mask of the slab, bool.
        index: case number; the draws come from ``numpy.random.default_rng([SEED, index, 1])``, apart from the lesions'.

    Returns:
        ``(t1 float32, mask bool)`` of the warped slab, same shape.
    """
    import numpy as np
    from scipy import ndimage

    rng = np.random.default_rng([SEED, index, 1])
    shape = t1.shape
    grid = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    centre = [float(np.mean(np.nonzero(mask)[k])) if mask.any() else (shape[k] - 1) / 2 for k in (0, 1)]
    theta = np.deg2rad(rng.uniform(-ROTATION_DEG, ROTATION_DEG))
    scale = rng.uniform(*SCALE, size=2)
    # output voxel -> input voxel: inverse rotation and scaling about the brain's centre
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]) / scale[:, None]
    u, v = grid[0] - centre[0], grid[1] - centre[1]
    coords = [rot[0, 0] * u + rot[0, 1] * v + centre[0], rot[1, 0] * u + rot[1, 1] * v + centre[1], grid[2]]
    for k in (0, 1):
        field = ndimage.gaussian_filter(rng.normal(size=shape), ELASTIC_SIGMA)
        coords[k] = coords[k] + ELASTIC_VOXELS * field / max(np.abs(field).max(), 1e-12)
    warped = ndimage.map_coordinates(np.asarray(t1, np.float64), coords, order=1, mode="nearest")
    inside = ndimage.map_coordinates(np.asarray(mask, np.float64), coords, order=1, mode="constant") > 0.5
    bias = ndimage.gaussian_filter(rng.normal(size=shape), 2 * ELASTIC_SIGMA)
    warped = warped * (1.0 + BIAS * bias / max(np.abs(bias).max(), 1e-12))
    return warped.astype(np.float32), inside


def lesion_case(t1, mask, brain_range: float, index: int, contrast: float, resolution: int, room=None):
    """Paint the synthetic lesions of case ``index`` into one slab (rule in the module docstring).

    Args:
        t1: T1 slab, float, axial = last axis.
        mask: brain mask of the slab, bool.
        brain_range: max - min of the T1 inside the whole template's brain mask.
        index: case number, the seed of everything drawn.
        contrast: intensity change as a fraction of ``brain_range``.
        resolution: voxel size in mm (lesion sizes are given in mm).
        room: ``brain_room(mask)``, when already computed for this slab.

    Returns:
        ``(image float32, label uint8, lesions)``; ``lesions`` lists per blob its centre (slab voxel), semi-axes in
        voxels, sign (+1 brighter, -1 darker) and voxel count.
    """
    import numpy as np
    from scipy import ndimage

    rng = np.random.default_rng([SEED, index])
    shape = t1.shape
    # Work on arrays padded by the largest blob's half-box, so a box centred on any slab voxel stays inside them.
    p = math.ceil(RADIUS_MM[1] / resolution * (1 + SHAPE_JITTER) + EDGE_VOXELS) + 2
    delta = np.zeros([n + 2 * p for n in shape], np.float32)
    label = np.zeros(delta.shape, bool)
    # where no changed voxel may go: outside the brain (the slab's ends included), then also the blobs so far
    blocked = np.pad(~np.asarray(mask, bool), p, constant_values=True)
    room = brain_room(mask) if room is None else room
    lesions = []
    for _ in range(int(rng.integers(1, MAX_LESIONS + 1))):
        radii = rng.uniform(*RADIUS_MM, size=3) / resolution
        rot = _rotation(rng)
        sign = 1  # hyperintense, as lesions are on FLAIR or contrast-enhanced T1 (a dark one reads as CSF)
        while True:  # shrunk by 0.8 only when this blob fits nowhere (a large one in the thin superior slab)
            weight, inside = _blob(radii, rot, rng)
            # changed voxels plus a 1-voxel margin
            support = ndimage.binary_dilation(np.pad(weight > 0, 1), structure=np.ones((3, 3, 3), bool))
            h = support.shape[0] // 2
            box = _fit(support, blocked, room, p, rng)
            if box is not None:
                break
            radii = radii * 0.8
            if radii.max() < 1.0:
                raise TrustMonaiError(f"no room for a lesion in the brain slab of case {index}")
        pad = (slice(1, -1),) * 3
        delta[box][pad] += sign * contrast * brain_range * weight
        label[box][pad] |= inside
        blocked[box] |= support
        lesions.append(
            {
                "centre": [int(b.start) - p + h for b in box],
                "semi_axes_voxels": [round(float(a), 2) for a in radii],
                "sign": sign,
                "voxels": int(inside.sum()),
            }
        )
    crop = tuple(slice(p, p + n) for n in shape)
    delta, label = delta[crop], label[crop]
    noise = rng.normal(0.0, NOISE_FRACTION * brain_range, size=shape)
    image = (np.asarray(t1, np.float32) + delta + noise.astype(np.float32)).astype(np.float32)
    return image, label.astype(np.uint8), lesions


def _locate() -> int:
    import_source("nilearn.datasets", "mni152_lesions", "pip install nilearn")
    import_source("scipy.ndimage", "mni152_lesions", "pip install scipy")
    return mni152_resolution()


@functools.lru_cache(maxsize=2)
def template(resolution: int) -> dict:
    """The template the lesions go into, loaded once per process (nilearn resamples it on every load).

    Returns:
        ``{"affine", "t1" (float32), "mask" (bool), "split" (slab_split of the tissue label, as mni152_tissue),
        "brain_range" (max - min of the T1 inside the mask)}``; the arrays are read-only.
    """
    import numpy as np

    affine, t1, brain, gm, wm = load_template(resolution)
    mask = brain > 0
    # the tissue label only serves to find the same slabs as mni152_tissue
    tissue = tissue_label(mask, gm, wm)
    split = slab_split(tissue, float(np.linalg.norm(affine[:3, 2])))
    for array in (affine, t1, mask):
        array.flags.writeable = False
    return {
        "affine": affine,
        "t1": t1,
        "mask": mask,
        "split": split,
        "brain_range": float(t1[mask].max() - t1[mask].min()),
    }


def _cases(tpl: dict, resolution: int, contrast: float, info: DatasetInfo):
    """Yield ``(split, index, z0, image, label, lesions, mask)`` for every case, training first."""
    index = 0
    a, b = tpl["split"]["training"]  # every subject covers the same region; they differ in anatomy and lesions
    for key in ("training", "test"):
        for _ in progress(range(N_CASES[key]), desc=f"{info.name} {key}", unit="case"):
            t1, mask = case_anatomy(tpl["t1"][..., a:b], tpl["mask"][..., a:b], index)
            image, label, lesions = lesion_case(t1, mask, tpl["brain_range"], index, contrast, resolution)
            yield key, index, a, image, label, lesions, mask
            index += 1


def _build(out: Path, resolution: int, info: DatasetInfo, two_d: bool) -> None:
    contrast = lesion_contrast()
    tpl = template(resolution)
    affine, split, brain_range = tpl["affine"], tpl["split"], tpl["brain_range"]
    cases = _cases(tpl, resolution, contrast, info)
    lists: dict[str, list] = {"training": [], "test": []}
    table = {}
    for key, index, z0, image, label, lesions, mask in cases:
        tr = "Tr" if key == "training" else "Ts"
        case = f"case{index:02d}"
        table[case] = lesions
        if not two_d:
            entry = {"image": f"images{tr}/{case}.nii.gz", "label": f"labels{tr}/{case}.nii.gz"}
            write_nifti(out / entry["image"], image, slice_affine(affine, z0), code=_NIFTI_MNI152_CODE)
            write_nifti(out / entry["label"], label, slice_affine(affine, z0), code=_NIFTI_MNI152_CODE)
            entry.update(case=case, z_range=[z0, z0 + image.shape[2]], modality="MR T1")
            entry.update(lesions=len(lesions), lesion_voxels=int(label.sum()))
            lists[key].append(entry)
            continue
        free_rank = 0
        for k in range(image.shape[2]):
            has_lesion = bool(label[..., k].any())
            if not has_lesion:
                if not mask[..., k].any():
                    continue
                free_rank += 1
                if (free_rank - 1) % KEEP_EVERY:
                    continue
            z = z0 + k
            stem = f"{case}_z{z:03d}"
            entry = {"image": f"images{tr}/{stem}.nii.gz", "label": f"labels{tr}/{stem}.nii.gz"}
            write_nifti(out / entry["image"], image[..., k], slice_affine(affine, z), code=_NIFTI_MNI152_CODE)
            write_nifti(out / entry["label"], label[..., k], slice_affine(affine, z), code=_NIFTI_MNI152_CODE)
            entry.update(case=case, slice=z, modality="MR T1", lesion_voxels=int(label[..., k].sum()))
            lists[key].append(entry)

    tr0, tr1 = split["training"]
    rule = (
        f"By subject: training cases case00-case{N_CASES['training'] - 1:02d}, test cases "
        f"case{N_CASES['training']:02d}-case{N_CASES['training'] + N_CASES['test'] - 1:02d}; every case is the slab "
        f"z[{tr0}:{tr1}] of the template (mni152_tissue's training slab) warped into its own anatomy, with its own "
        "lesions, so no test subject's anatomy or lesions appear in training."
    )
    if two_d:
        rule += (
            f" 2D: axial slices of those volumes, every slice with a lesion plus one lesion-free brain slice in "
            f"{KEEP_EVERY}; 'slice' is the template's z index."
        )
    lesion_rule = (
        f"SYNTHETIC lesions: 1-{MAX_LESIONS} per case, ellipsoids with random orientation and semi-axes "
        f"{RADIUS_MM[0]:g}-{RADIUS_MM[1]:g} mm, radius per direction scaled by 1 +- {SHAPE_JITTER} x smoothed noise, "
        f"inside the brain mask; intensity change contrast x brain range, brighter, {EDGE_VOXELS:g}-voxel linear "
        f"edge; label 1 where the voxel centre is inside the blob (weight > 0.5). Gaussian noise sigma "
        f"{NOISE_FRACTION} x brain range over every volume. Case i is drawn from numpy default_rng([{SEED}, i]). "
        f"Each case's anatomy is the slab warped in-plane first (rotation +-{ROTATION_DEG:g} deg, scale "
        f"{SCALE[0]:g}-{SCALE[1]:g} per axis, smooth elastic field up to {ELASTIC_VOXELS:g} voxels, bias field "
        f"1 +- {BIAS:g}; default_rng([{SEED}, i, 1])), so no two cases share anatomy."
    )
    write_datalist(
        out,
        info,
        lists["training"],
        lists["test"],
        split_rule=rule,
        synthetic_lesions=True,
        lesion_rule=lesion_rule,
        contrast=contrast,
        brain_intensity_range=round(brain_range, 6),
        noise_sigma=round(NOISE_FRACTION * brain_range, 6),
        split={k: list(v) for k, v in split.items()},
        resolution_mm=resolution,
        modality={"0": "MR T1 (MNI152 2009a template, intensities about [0, 1]) with synthetic lesions"},
        labels=dict(LABELS),
        lesion_table=table,
    )


def _version(two_d: bool) -> str:
    return (
        f"mni152_lesions{'_2d' if two_d else ''}-4-res{mni152_resolution()}-contrast{lesion_contrast()!r}"
        f"-nilearn{dist_version('nilearn')}-scipy{dist_version('scipy')}-numpy{dist_version('numpy')}"
    )


BUILDERS = {
    "mni152_lesions": Builder(
        version=lambda: _version(False),
        locate=_locate,
        build=lambda out, res, info: _build(out, res, info, two_d=False),
    ),
    "mni152_lesions_2d": Builder(
        version=lambda: _version(True),
        locate=_locate,
        build=lambda out, res, info: _build(out, res, info, two_d=True),
    ),
}
