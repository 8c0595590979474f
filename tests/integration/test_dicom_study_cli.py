"""``trust-monai protect`` on a real CT study with its RTSTRUCT (a copy of the GTV-1 slices of LUNG1-001).

The generator is the UMed architecture with fixed random weights (learning it takes CPU-hours on a 3D study; what
is checked here is the DICOM round trip, which does not depend on the weights): the run must write every slice as a
protected slice plus one RTSTRUCT that refers to them; read back, that RTSTRUCT gives the input's GTV-1 mask voxel
for voxel on the new series; the change stays within epsilon of the CT window and is zero outside the mask and its
contour band; the input is untouched. About 70 s on 2 CPU cores, so marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.integration.test_hospital_cli import cli, tree_digest
from tests.unit import lung1_subset

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not lung1_subset.available(), reason="LUNG1-001 not in ../shared/data")]


def _grid(folder: Path):
    from trust_monai.data.dicom_rt import series_grid
    from trust_monai.data.io_dicom import _series_headers

    return series_grid(_series_headers(folder), folder)


def test_protect_lung1_with_rtstruct(tmp_path):
    import pydicom
    import torch

    from trust_monai.data.dicom_rt import rasterise_rtstruct
    from trust_monai.data.io import read_image
    from trust_monai.networks.umed_generator import UMedGenerator
    from trust_monai.transforms.roi import contour_band
    from trust_monai.utils.checkpoint import save_state_dict

    study = lung1_subset.subset(tmp_path / "LUNG1-001", margin=1)
    models = tmp_path / "models"
    models.mkdir()
    torch.manual_seed(0)
    gen = UMedGenerator(spatial_dims=3, in_channels=1, num_classes=2)
    save_state_dict(gen.state_dict(), models / "generator_3d.pt")
    before = tree_digest(study)

    out = tmp_path / "shared"
    proc = cli("protect", "--input", str(study), "--output", str(out), "--roi", "GTV-1", "--ckpt_dir", str(models),
               "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert tree_digest(study) == before, "the input is never written to"
    n_in = len(list((study / "image").iterdir()))
    slices = sorted((out / "image").iterdir())
    assert len(slices) == n_in and (out / "mask_rtstruct" / "1-1.dcm").is_file()
    assert [p.name for p in (out / "mask_rtstruct").iterdir()] == ["1-1.dcm"], "one RTSTRUCT"

    new_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in slices}
    rt = pydicom.dcmread(out / "mask_rtstruct" / "1-1.dcm")
    se = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    refs = {str(c.ReferencedSOPInstanceUID) for c in se.ContourImageSequence}
    assert len(refs) == n_in and refs <= new_uids, "a viewer finds every contour's image in the new series"

    gtv_in, _ = rasterise_rtstruct(study / "mask_rtstruct" / "1-1.dcm", _grid(study / "image"), ["GTV-1"])
    gtv_out, _ = rasterise_rtstruct(out / "mask_rtstruct" / "1-1.dcm", _grid(out / "image"), ["GTV-1"])
    assert np.array_equal(gtv_in, gtv_out) and gtv_in.sum() > 1000

    a, _ = read_image(study / "image")
    b, _ = read_image(out / "image")
    change = b.astype(np.float64) - a
    # the verb protects at the umed bundle's budget, not the network class's default
    from monai.bundle import ConfigParser

    from trust_monai.bundle import bundle_root

    cfg = ConfigParser()
    cfg.read_config(Path(bundle_root("umed")) / "configs" / "inference.json")
    eps = float(cfg.get_parsed_content("epsilon"))
    eps_hu = np.floor(eps * 2000.0)  # CT window -1000..1000 HU, stored in whole HU
    assert 0 < np.abs(change).max() <= eps_hu
    region = contour_band(torch.as_tensor(gtv_in, dtype=torch.float32)[None, None], gen.band_width)[1][0, 0]
    assert not change[region.numpy() == 0].any(), "nothing changes outside the mask and its contour band"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cases"][0]["status"] == "done"
