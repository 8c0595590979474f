"""Seeded MONAI phantoms (circles / spheres with a binary mask) for fast unit tests."""

from __future__ import annotations

from pathlib import Path

from ._common import Builder, DatasetInfo, dist_version, import_source, write_datalist, write_nifti

__all__ = ["N_TRAINING", "N_TEST", "PHANTOM_PARAMS", "BUILDERS"]

N_TRAINING = 8
N_TEST = 4
# Arguments of monai.data.synthetic.create_test_image_{2,3}d; num_seg_classes=1 gives a {0, 1} mask.
PHANTOM_PARAMS = {
    2: dict(shape=(64, 64), num_objs=6, rad_max=12, rad_min=4, noise_max=0.1, num_seg_classes=1),
    3: dict(shape=(32, 32, 32), num_objs=4, rad_max=8, rad_min=3, noise_max=0.1, num_seg_classes=1),
}


def _locate():
    return import_source("monai.data.synthetic", "synthetic phantoms", "pip install monai")


def _build(out: Path, synthetic, info: DatasetInfo, dims: int) -> None:
    import numpy as np

    params = dict(PHANTOM_PARAMS[dims])
    shape = params.pop("shape")
    make = synthetic.create_test_image_2d if dims == 2 else synthetic.create_test_image_3d
    lists: dict[str, list] = {"training": [], "test": []}
    for seed in range(N_TRAINING + N_TEST):
        # One RandomState per case: each case is reproducible on its own and independent of the others.
        image, label = make(*shape, **params, random_state=np.random.RandomState(seed))
        split, tr = ("training", "Tr") if seed < N_TRAINING else ("test", "Ts")
        entry = {"image": f"images{tr}/case{seed:03d}.nii.gz", "label": f"labels{tr}/case{seed:03d}.nii.gz"}
        write_nifti(out / entry["image"], image.astype(np.float32), np.eye(4))
        write_nifti(out / entry["label"], (label > 0).astype(np.uint8), np.eye(4))
        entry["seed"] = seed
        lists[split].append(entry)
    write_datalist(
        out,
        info,
        lists["training"],
        lists["test"],
        split_rule=(
            f"Independent phantoms, one numpy RandomState(seed) each: seeds 0-{N_TRAINING - 1} training, "
            f"{N_TRAINING}-{N_TRAINING + N_TEST - 1} test."
        ),
        generator={"shape": list(shape), **params},
        modality={"0": "synthetic"},
        labels={"0": "background", "1": "foreground"},
    )


BUILDERS = {
    f"synthetic_{d}d": Builder(
        version=lambda d=d: f"synthetic_{d}d-1-monai{dist_version('monai')}",
        locate=_locate,
        build=lambda out, synthetic, info, d=d: _build(out, synthetic, info, dims=d),
    )
    for d in (2, 3)
}
