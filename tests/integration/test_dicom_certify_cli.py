"""``trust-monai certify`` on a real CT study with its RTSTRUCT: the certified label map comes out as NIfTI and as a
DICOM SEG that highdicom reads back into the same map, voxel for voxel, referencing the input series.

The study is the GTV-1 slab of LUNG1-001 with every 8th row and column (:func:`tests.unit.lung1_subset.subset`,
64 x 64 slices), the classes are Lung-Left and Lung-Right from its RTSTRUCT, and the model is the drs bundle's U-Net
trio with fixed random weights (what is checked is the DICOM output, which does not depend on what the weights learnt).
``n = 140`` is the smallest round budget at which this grid's voxels can pass Holm's test at ``alpha = 0.001`` (RS:
``0.75^n <= alpha / m``, DRS: ``0.75^(n/2)`` with twice the hypotheses), so the map holds certified voxels as well as
abstentions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.integration.test_hospital_cli import cli, tree_digest
from tests.unit import lung1_subset

pytestmark = pytest.mark.skipif(not lung1_subset.available(), reason="LUNG1-001 not in ../shared/data")

CLASSES = ["Lung-Left", "Lung-Right"]
CHANNELS = [4, 8, 16]


def _random_models(folder: Path) -> None:
    """``base_models_3d.pt`` of the drs bundle's architecture (3 classes) with seeded random weights."""
    import torch
    from monai.networks.nets import UNet

    from trust_monai.engines.certify import SmoothingModels
    from trust_monai.utils.checkpoint import save_state_dict

    torch.manual_seed(0)
    models = SmoothingModels(lambda: UNet(3, 1, len(CLASSES) + 1, CHANNELS, [2, 2], num_res_units=1), spatial_dims=3)
    folder.mkdir()
    save_state_dict(models.state_dict(), folder / "base_models_3d.pt")


def _slices_by_position(series: Path) -> list:
    """The series' headers in slice order (along the slice normal), read with pydicom alone."""
    import pydicom

    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in series.iterdir()]
    normal = np.cross(*np.reshape(np.asarray(headers[0].ImageOrientationPatient, float), (2, 3)))
    return sorted(headers, key=lambda h: float(np.dot(normal, np.asarray(h.ImagePositionPatient, float))))


def test_certify_lung1_writes_a_seg_equal_to_the_nifti_map(tmp_path):
    import highdicom as hd
    import nibabel as nib
    import pydicom
    from pydicom.uid import SegmentationStorage

    study = lung1_subset.subset(tmp_path / "LUNG1-001", margin=0, step=8)
    models = tmp_path / "models"
    _random_models(models)
    before = tree_digest(study)
    out = tmp_path / "out"
    proc = cli("certify", "--input", str(study), "--output", str(out), "--roi", ",".join(CLASSES),
               "--ckpt_dir", str(models), "--device", "cpu", "--channels", str(CHANNELS), "--n0", "4", "--n", "140",
               "--batch_size", "10", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert tree_digest(study) == before, "the input is never written to"

    headers = _slices_by_position(study / "image")
    input_uids = [str(h.SOPInstanceUID) for h in headers]
    abstain = len(CLASSES) + 1
    for method in ("rs", "drs"):
        nifti = np.asarray(nib.load(str(out / method / "image.nii.gz")).dataobj)
        assert nifti.shape == (64, 64, len(headers))
        values = set(np.unique(nifti).tolist())
        assert abstain in values and len(values) > 1, f"{method}: a map with certified voxels and abstentions"

        path = out / method / "image_seg.dcm"
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == SegmentationStorage
        assert [s.SegmentLabel for s in ds.SegmentSequence] == [*CLASSES, "abstain"]
        assert [int(s.SegmentNumber) for s in ds.SegmentSequence] == [1, 2, abstain]
        ref = ds.ReferencedSeriesSequence
        assert len(ref) == 1 and ref[0].SeriesInstanceUID == headers[0].SeriesInstanceUID
        assert sorted(str(i.ReferencedSOPInstanceUID) for i in ref[0].ReferencedInstanceSequence) == sorted(
            input_uids), "the SEG references every slice of the input series"
        assert ds.StudyInstanceUID == headers[0].StudyInstanceUID
        assert ds.FrameOfReferenceUID == headers[0].FrameOfReferenceUID

        seg = hd.seg.segread(str(path))
        # (slices, rows, columns), value = segment number, 0 = no segment; frames placed by their source images
        back = seg.get_pixels_by_source_instance(input_uids, combine_segments=True,
                                                 assert_missing_frames_are_empty=True)  # empty frames are omitted
        assert np.array_equal(np.asarray(back).transpose(2, 1, 0), nifti), f"{method}: SEG == NIfTI, voxel for voxel"
