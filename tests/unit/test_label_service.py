"""trust_monai.label.service: the models the MONAI Label app serves, run without MONAI Label on real MNI152 data
(2D slices and a 3D crop), with checkpoints of the bundles' own networks (initial weights: these tests check the
serving code, the bundles' tests check training)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from parameterized import parameterized

from trust_monai.errors import CaseError, OutputExistsError, TrustMonaiError
from trust_monai.label.service import (
    CertifiedSegmenter,
    ModelNotTrained,
    StudyProtector,
    SyntheticScanScorer,
    bundle_config,
    parse_overrides,
)
from trust_monai.utils.checkpoint import save_state_dict

DETECT = {"img_size": 32, "patch_size": 8, "pretrained": None, "embed_dim": 32, "depth": 2, "num_heads": 2, "lora_ranks": [2, 4]}
FAST = {"n0": 2, "n": 16, "batch_size": 8}


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """A 2D slice and a 3D crop of the MNI152 template, each with its tissue label map."""
    from trust_monai.data import prepare

    root = tmp_path_factory.mktemp("scans")
    d2 = prepare("mni152_tissue_2d")
    entry = json.loads((d2 / "dataset.json").read_text())["test"][5]
    d3 = prepare("mni152_tissue")
    e3 = json.loads((d3 / "dataset.json").read_text())["training"][0]
    img3, lab3 = nib.load(d3 / e3["image"]), nib.load(d3 / e3["label"])
    c = [s // 2 for s in img3.shape]
    crop = tuple(slice(m - 12, m + 12) for m in c[:2]) + (slice(c[2] - 6, c[2] + 6),)
    for name, src in (("scan3d.nii.gz", img3), ("label3d.nii.gz", lab3)):
        nib.save(nib.Nifti1Image(np.asarray(src.dataobj)[crop], src.affine, src.header), root / name)
    return {2: (d2 / entry["image"], d2 / entry["label"]), 3: (root / "scan3d.nii.gz", root / "label3d.nii.gz")}


def _models(tmp_path, spatial_dims: int):
    """The three checkpoints, from the bundles' own network definitions."""
    torch.manual_seed(0)
    dims = {"spatial_dims": spatial_dims}
    drs = bundle_config("drs", {**dims, "num_classes": 4}).get_parsed_content("models")
    save_state_dict(drs.state_dict(), tmp_path / f"base_models_{spatial_dims}d.pt")
    gen = bundle_config("umed", {**dims, "num_classes": 4}).get_parsed_content("network_def")
    save_state_dict(gen.state_dict(), tmp_path / f"generator_{spatial_dims}d.pt")
    det = bundle_config("moe_ffd", DETECT).get_parsed_content("network_def")
    save_state_dict(det.state_dict(), tmp_path / "detector_all.pt")
    return tmp_path


class TestCertifiedSegmenter:
    @pytest.mark.parametrize("spatial_dims,method", [(2, "rs"), (2, "drs"), (3, "rs")])
    def test_segment_and_write(self, tmp_path, scans, spatial_dims, method):
        models = _models(tmp_path / "m", spatial_dims)
        seg = CertifiedSegmenter(models, method=method, overrides={**FAST, "spatial_dims": spatial_dims})
        image, _ = scans[spatial_dims]
        labels, meta, rec = seg.segment(image)
        ref = nib.load(image)
        assert labels.shape == ref.shape and labels.dtype == np.uint8 and labels.max() <= 4
        assert rec["abstain_label"] == 4 and rec["method"] == method
        assert rec["certified_fraction"] == pytest.approx(float(np.mean(labels != 4)))
        # n = 16 cannot beat Holm over thousands of pixels at alpha 0.001: everything abstains, as it must
        assert rec["certified_fraction"] == 0.0
        out = seg.write(labels, meta, tmp_path / "seg.nii.gz", rec)
        back = nib.load(out)
        assert np.allclose(back.affine, ref.affine) and back.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(np.asarray(back.dataobj), labels)
        again, _, _ = seg.segment(image)  # same seed, same answer
        np.testing.assert_array_equal(again, labels)

    def test_enough_samples_certify(self, tmp_path, scans):
        """With n large enough for Holm, a constant base model certifies every pixel with radius sigma PhiInv(tau)."""
        from scipy.stats import norm

        models = _models(tmp_path / "m", 2)
        seg = CertifiedSegmenter(models, overrides={"n0": 2, "n": 64, "batch_size": 32})
        seg.runner().models.nets["rs"] = _Constant(2, 4)  # a base model that always says class 2
        labels, _, rec = seg.segment(scans[2][0])
        # 0.75^64 = 1e-8 is below alpha / (pixels incl. padding) = 7e-8: every pixel passes Holm
        assert (labels == 2).all() and rec["certified_fraction"] == 1.0
        assert rec["radius"] == pytest.approx(0.25 * norm.ppf(0.75), rel=1e-9)

    def test_missing_checkpoint_names_the_train_command(self, tmp_path, scans):
        seg = CertifiedSegmenter(tmp_path, overrides=FAST)
        with pytest.raises(ModelNotTrained, match=r"base_models_2d\.pt.*bundles/drs/configs/train\.json"):
            seg.segment(scans[2][0])

    def test_wrong_dimension_is_refused(self, tmp_path, scans):
        seg = CertifiedSegmenter(_models(tmp_path, 2), overrides=FAST)
        with pytest.raises(TrustMonaiError, match="3D scan, but the served models are 2D"):
            seg.segment(scans[3][0])

    def test_unknown_method(self, tmp_path):
        with pytest.raises(TrustMonaiError, match="unknown certification method"):
            CertifiedSegmenter(tmp_path, method="mc")


class _Constant(torch.nn.Module):
    def __init__(self, cls: int, num_classes: int):
        super().__init__()
        self.cls, self.k = cls, num_classes

    def forward(self, x):
        out = torch.zeros((x.shape[0], self.k, *x.shape[2:]), dtype=x.dtype)
        out[:, self.cls] = 1.0
        return out


class TestSyntheticScanScorer:
    @pytest.mark.parametrize("spatial_dims", [2, 3])
    def test_score_is_a_probability(self, tmp_path, scans, spatial_dims):
        scorer = SyntheticScanScorer(_models(tmp_path, 2), DETECT)
        r = scorer.score(scans[spatial_dims][0])
        assert 0.0 <= r["score"] <= 1.0 and r["pred"] == ("fake" if r["score"] >= 0.5 else "real")
        depth = nib.load(scans[spatial_dims][0]).shape[-1] if spatial_dims == 3 else 1
        assert r["slices"] == depth and r["aggregate"] == ("topk" if spatial_dims == 3 else "none")

    def test_missing_checkpoint(self, tmp_path, scans):
        with pytest.raises(ModelNotTrained, match=r"detector_all\.pt.*bundles/moe_ffd/configs/train\.json"):
            SyntheticScanScorer(tmp_path, DETECT).score(scans[2][0])

    def test_checkpoint_of_other_sizes_is_refused_by_name(self, tmp_path, scans):
        from trust_monai.errors import InputFileError

        models = _models(tmp_path, 2)
        with pytest.raises(InputFileError, match="detector_all.pt"):
            SyntheticScanScorer(models, {**DETECT, "depth": 3}).score(scans[2][0])


class TestStudyProtector:
    @pytest.mark.parametrize("spatial_dims", [2, 3])
    def test_changes_only_the_region_and_never_the_studies(self, tmp_path, scans, spatial_dims):
        from trust_monai.transforms.roi import contour_band

        image, label = scans[spatial_dims]
        studies = image.parent
        before = image.read_bytes()
        prot = StudyProtector(_models(tmp_path / "m", spatial_dims), studies, tmp_path / "out",
                              overrides={"spatial_dims": spatial_dims})
        rec = prot.protect(image, label)
        dst = tmp_path / "out" / image.name
        assert rec["status"] == "done" and rec["output"] == image.name and dst.is_file()
        a, b = np.asarray(nib.load(image).dataobj, np.float64), np.asarray(nib.load(dst).dataobj, np.float64)
        lab = torch.as_tensor(np.asarray(nib.load(label).dataobj))[None, None]
        region = contour_band(lab, 2)[1][0, 0].numpy() > 0
        assert np.abs(a - b)[~region].max() == 0 and np.abs(a - b)[region].max() > 0
        lo, hi = rec["metrics"]["window"]
        eps = bundle_config("umed").get_parsed_content("epsilon")  # the bundle's default budget
        assert np.abs(a - b).max() <= eps * (hi - lo) + 1e-6
        assert np.allclose(nib.load(dst).affine, nib.load(image).affine)
        assert image.read_bytes() == before
        assert prot.protect(image, label)["status"] == "skipped"  # up to date: not redone
        manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
        assert manifest["bundle"] == "umed" and manifest["cases"][0]["output_sha256"] == rec["output_sha256"]

    @parameterized.expand([("same",), ("inside",)])
    def test_output_inside_the_studies_is_refused(self, where):
        with pytest.raises(OutputExistsError, match="inside the studies folder"):
            StudyProtector("/nonexistent", "/data/studies", "/data/studies" + ("" if where == "same" else "/x"))

    def test_missing_label_and_missing_generator(self, tmp_path, scans):
        image, _ = scans[2]
        prot = StudyProtector(_models(tmp_path / "m", 2), image.parent, tmp_path / "out")
        with pytest.raises(CaseError, match="needs a label mask"):
            prot.protect(image, None)
        with pytest.raises(ModelNotTrained, match=r"generator_2d\.pt.*bundles/umed/configs/train\.json"):
            StudyProtector(tmp_path / "empty", image.parent, tmp_path / "out2").protect(image, scans[2][1])
        assert not (tmp_path / "out2").exists()


@parameterized.expand([("", {}), (None, {}), ('{"n": 5}', {"n": 5}), ({"a": 1}, {"a": 1})])
def test_parse_overrides(value, expected):
    assert parse_overrides(value) == expected


@parameterized.expand([("[1, 2]",), ("{bad",)])
def test_parse_overrides_refuses(value):
    with pytest.raises(TrustMonaiError, match="JSON object"):
        parse_overrides(value)
