"""Writers are deterministic: the same result written twice gives the same bytes, in every format.

(Byte-identical reruns are what lets a resumed or repeated protection run be checked file by file.)
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from parameterized import parameterized

from tests.data.test_io import make_nrrd, make_series
from trust_monai.data.io import read_image, write_image


def _source(kind: str, folder: Path) -> Path:
    import nibabel as nib
    from PIL import Image

    arr = np.random.default_rng(0).integers(0, 200, (6, 5, 3)).astype(np.int16)
    if kind in ("nii", "nii.gz"):
        path = folder / f"src.{kind}"
        nib.save(nib.Nifti1Image(arr, np.diag([0.7, 0.7, 2.5, 1.0])), path)
    elif kind == "nrrd":
        path = make_nrrd(folder / "src.nrrd")
    elif kind == "nhdr":
        path = make_nrrd(folder / "src.nhdr", detached=True)
    elif kind == "png":
        path = folder / "src.png"
        Image.fromarray(arr[:, :, 0].astype(np.uint8)).save(path)
    else:
        make_series(folder / "series", n=3)
        path = folder / "series"
    return path


@parameterized.expand([("nii",), ("nii.gz",), ("nrrd",), ("nhdr",), ("png",), ("dicom",)])
def test_same_result_same_bytes(kind):
    import tempfile

    from trust_monai.utils.fileio import sha256_file

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        image, meta = read_image(_source(kind, tmp))
        changed = image + 1
        suffix = "" if kind == "dicom" else f".{kind}"
        # same name in two folders (an .nhdr names its data file), one second apart (a timestamp would show)
        write_image(changed, meta, tmp / "a" / f"out{suffix}", derivation="test")
        time.sleep(1.1)
        write_image(changed, meta, tmp / "b" / f"out{suffix}", derivation="test")
        assert sha256_file(tmp / "a") == sha256_file(tmp / "b"), f"{kind}: two writes of the same result differ"
        # and a different result is a different object (DICOM: new UIDs)
        write_image(changed + 1, meta, tmp / "c" / f"out{suffix}", derivation="test")
        assert sha256_file(tmp / "c") != sha256_file(tmp / "a")


def test_dicom_uids_unique_per_content_and_derivation(tmp_path):
    series = _source("dicom", tmp_path)
    image, meta = read_image(series)

    def uids(out):
        dss = [pydicom.dcmread(p) for p in sorted(out.iterdir())]
        return {d.SeriesInstanceUID for d in dss}, [d.SOPInstanceUID for d in dss]

    s1, sop1 = uids(write_image(image + 1, meta, tmp_path / "a", derivation="x"))
    s2, sop2 = uids(write_image(image + 1, meta, tmp_path / "b", derivation="y"))
    s3, sop3 = uids(write_image(image + 2, meta, tmp_path / "c", derivation="x"))
    src_sops = {pydicom.dcmread(p).SOPInstanceUID for p in series.iterdir()}
    assert len(s1) == len(s2) == len(s3) == 1 and len({*s1, *s2, *s3}) == 3
    assert len(set(sop1) | set(sop2) | set(sop3)) == 9, "a SOP instance UID was reused across different objects"
    assert not src_sops & set(sop1), "the derived series reuses an input UID"
    for uid in (*s1, *sop1):
        assert len(uid) <= 64 and all(part.isdigit() for part in uid.split("."))


@pytest.mark.parametrize("deidentify", [False, True])
def test_dicom_deidentified_write_is_deterministic(tmp_path, deidentify):
    from trust_monai.utils.fileio import sha256_file

    image, meta = read_image(_source("dicom", tmp_path))
    a = write_image(image, meta, tmp_path / "a", derivation="copy", deidentify=deidentify)
    b = write_image(image, meta, tmp_path / "b", derivation="copy", deidentify=deidentify)
    assert sha256_file(a) == sha256_file(b)
