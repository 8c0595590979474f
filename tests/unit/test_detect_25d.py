"""2.5D scans (slice + neighbours as channels), paired fresh fakes, 3D-consistent lesion tampering, per-slice CSVs."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.unit.test_detect import TINY_NET, _phantom, _tiny_forgery_set
from trust_monai.detect.dataset import ForgeryDataset, paired_collate, slices_with_context
from trust_monai.errors import ArgumentError, DatalistError
from trust_monai.transforms.forgery import Lesion3D


def _volume(depth=12, size=40, seed=0):
    rs = np.random.RandomState(seed)
    vol = np.stack([_phantom((size, size), seed + z % 3)[0] for z in range(depth)], -1)
    return np.clip(vol + 0.02 * rs.rand(*vol.shape), 0, 1).astype(np.float32)[None]


class TestContext:
    def test_slices_with_context_orders_neighbours_and_repeats_ends(self):
        vol = torch.arange(5.0).reshape(1, 1, 1, 5).expand(1, 4, 4, 5)
        out = slices_with_context(vol, 1)
        assert out.shape == (5, 3, 4, 4)
        assert out[:, :, 0, 0].tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 4]]
        assert torch.equal(slices_with_context(vol, 0), vol.permute(3, 0, 1, 2))

    def test_short_volume_repeats_neighbours_and_says_so(self, caplog):
        vol = torch.rand(1, 4, 4, 2)
        with caplog.at_level(logging.WARNING, logger="trust_monai.detect"):
            out = slices_with_context(vol, 1, "two_slices.nii.gz")
        assert out.shape == (2, 3, 4, 4) and torch.equal(out[0, 0], out[0, 1])
        assert "two_slices.nii.gz: 2 slice(s), fewer than 3" in caplog.text

    def test_unrolled_slices_carry_neighbours_and_fresh_fakes_keep_them_real(self, tmp_path):
        data = _tiny_forgery_set(tmp_path, three_d=True, synthesis=True)
        plain = ForgeryDataset(data, "training", unroll=True)
        ds = ForgeryDataset(data, "training", unroll=True, context=1, resynthesize=True)
        assert len(ds) == len(plain) and ds[0]["image"].shape == (3, 32, 32)
        for it, p in zip(ds.items, plain.items):
            assert torch.equal(it["image"][1], p["image"][0])  # the middle channel is the slice itself
        fake = next(i for i, it in enumerate(ds.items) if it["label"] == 1 and it["slice"] == 1)
        src = ds._array(ds.items[fake]["source"])
        torch.manual_seed(0)
        x = ds[fake]["image"].numpy()
        assert np.array_equal(x[0], src[..., 0]) and np.array_equal(x[2], src[..., 2])  # real neighbours
        assert not np.array_equal(x[1], src[..., 1])  # only the middle slice is tampered


class TestPaired:
    def test_each_real_beside_a_fresh_fake_of_itself(self, tmp_path):
        data = _tiny_forgery_set(tmp_path, three_d=True, synthesis=True)
        ds = ForgeryDataset(data, "training", unroll=True, context=1, paired=True)
        assert all(it["label"] == 0 for it in ds.items) and len(ds) == 6 * 4  # real slices only
        torch.manual_seed(1)
        item = ds[5]
        assert item["image"].shape == (2, 3, 32, 32) and item["label"].tolist() == [0, 1]
        real, fake = item["image"]
        assert torch.equal(real, ds.items[5]["image"])
        assert torch.equal(real[0], fake[0]) and torch.equal(real[2], fake[2]) and not torch.equal(real[1], fake[1])
        torch.manual_seed(2)
        assert not torch.equal(ds[5]["image"][1], fake)  # a new fake at every draw
        loader = torch.utils.data.DataLoader(ds, batch_size=4, sampler=ds.balanced_sampler(8, seed=0),
                                             collate_fn=paired_collate)
        batch = next(iter(loader))
        assert batch["image"].shape == (8, 3, 32, 32) and batch["label"].tolist() == [0, 1] * 4

    def test_paired_needs_a_procedural_kind(self, tmp_path):
        data = _tiny_forgery_set(tmp_path, three_d=True, synthesis=True)
        with pytest.raises(DatalistError, match="paired"):
            ForgeryDataset(data, "training", unroll=True, paired=True, kinds=["generated"])


class TestLesion3D:
    @pytest.mark.parametrize("mode", ["inject", "remove"])
    def test_change_spans_slices_with_a_smooth_profile(self, mode):
        vol = _volume()
        t = Lesion3D(mode, depth=(3.0, 3.0)).set_random_state(4)
        out = t(vol)
        assert out.shape == vol.shape and out.min() >= 0 and out.max() <= 1
        change = np.abs(out - vol)[0].max((0, 1))
        touched = np.flatnonzero(change > 0.02)
        assert len(touched) >= 4 and np.all(np.diff(touched) == 1)  # several contiguous slices
        peak = int(np.argmax(change))
        # fades in and out: the change grows towards the peak slice and falls after it
        assert np.all(np.diff(change[touched[0] : peak + 1]) >= -1e-3) and change[touched[0]] < 0.6 * change[peak]
        assert np.allclose(out[0][t.last_mask == 0], vol[0][t.last_mask == 0])
        assert np.array_equal(Lesion3D(mode, depth=(3.0, 3.0)).set_random_state(4)(vol), out)

    def test_injects_a_real_lesion_with_one_in_plane_offset(self):
        vol = _volume(depth=8) * 0.5
        lesion = np.zeros(vol.shape, bool)
        lesion[0, 10:16, 10:16, 2:6] = True
        vol[lesion] = 1.0
        t = Lesion3D("inject", sigma=(0.5, 0.5)).set_random_state(0)
        out = t(vol, lesion)
        assert np.allclose(out[lesion], vol[lesion], atol=0.05)  # the source lesion stays
        gain = (out[0] - vol[0] > 0.2) & ~lesion[0]
        assert gain[..., 2:6].sum() > 4 * 20 and gain[..., [0, 7]].sum() == 0  # copied into the same slices only
        rows, cols = np.nonzero(gain[..., 3])
        offset = (rows.mean() - 12.5, cols.mean() - 12.5)
        for z in (2, 4, 5):  # the same in-plane offset in every slice it reaches
            r, c = np.nonzero(gain[..., z])
            assert abs(r.mean() - 12.5 - offset[0]) < 1.5 and abs(c.mean() - 12.5 - offset[1]) < 1.5

    def test_refuses_a_2d_image(self):
        with pytest.raises(ArgumentError, match="volume"):
            Lesion3D()(np.zeros((1, 16, 16), np.float32))


def test_inference_with_context_writes_scores_csv_and_notes_short_volumes(tmp_path):
    from trust_monai.data.sources._common import write_nifti
    from trust_monai.detect.engine import DetectionInference
    from trust_monai.networks.moe_vit import MoEViT
    from trust_monai.utils.checkpoint import save_state_dict

    for name, depth in (("a", 5), ("b", 2)):
        write_nifti(tmp_path / f"{name}.nii.gz", _volume(depth, 32)[0], np.eye(4))
    (tmp_path / "dataset.json").write_text(json.dumps({"test": [{"image": "a.nii.gz"}, {"image": "b.nii.gz"}]}))
    torch.manual_seed(0)
    net = MoEViT(**{**TINY_NET, "in_chans": 3})
    save_state_dict(net.state_dict(), tmp_path / "m.pt")
    out = tmp_path / "out"
    DetectionInference(net, tmp_path / "m.pt", ForgeryDataset(tmp_path, "test"), out, heatmaps=2, context=1).run()
    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["image"], int(r["slice"])) for r in rows] == [("a.nii.gz", z) for z in range(5)] + [
        ("b.nii.gz", 0), ("b.nii.gz", 1)]
    with open(out / "volumes.csv") as f:
        assert [r["image"] for r in csv.DictReader(f)] == ["a.nii.gz", "b.nii.gz"]
    report = json.loads((out / "report.json").read_text())
    assert "note" not in report["images"][0] and "neighbour channels repeated" in report["images"][1]["note"]


def test_volume_set_with_3d_consistent_kinds(tmp_path):
    from trust_monai.detect.data import prepare_scan_forgery

    with pytest.raises(DatalistError, match="spatial_dims=3"):
        prepare_scan_forgery(spatial_dims=2, kinds=("lesion3d_inject",), root=tmp_path)
    root = prepare_scan_forgery(spatial_dims=3, size=32, kinds=("self_blend", "lesion3d_inject", "lesion3d_remove"),
                                max_per_volume=6, root=tmp_path)
    doc = json.loads((root / "dataset.json").read_text())
    assert set(doc["synthesis"]) == {"self_blend"}  # 3D-consistent fakes are stored, never made per slice
    for split in ("training", "test"):
        made = [e for e in doc[split] if e["kind"].startswith("lesion3d")]
        assert made and all(0 < sum(e["slice_labels"]) <= len(e["slice_labels"]) for e in made)
        assert {e["volume"].split(":")[0] for e in made} == {e["volume"] for e in doc[split] if e["kind"] == "real"}
