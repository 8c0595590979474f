"""Detection: metrics, tampering transforms (2D and 3D), forgery data sets, checkpoint checks, scoring and evaluation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from parameterized import parameterized

from trust_monai.detect.metrics import (
    accuracy,
    aggregate_scores,
    auc_by_strength,
    average_precision,
    detection_metrics,
    equal_error_rate,
    roc_auc,
    roc_curve,
)
from trust_monai.errors import InputFileError
from trust_monai.transforms.forgery import (
    CopyMoveForgery,
    CopyMoveForgeryd,
    FaceSwap,
    FaceSwapd,
    SelfBlend,
    SelfBlendd,
)

TINY_NET = dict(embed_dim=32, depth=2, num_heads=2, img_size=32, patch_size=8, lora_ranks=(2, 4))


class TestMetrics:
    @parameterized.expand([
        ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 1.0, 1.0, 0.0),
        ([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1], 0.0, 5 / 12, 1.0),
        ([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5], 0.5, 0.5, 0.5),
        ([0, 1, 0, 1], [0.1, 0.3, 0.35, 0.8], 0.75, 5 / 6, 0.5),
    ])
    def test_known_values(self, y, s, auc, ap, eer):
        assert roc_auc(y, s) == pytest.approx(auc)
        assert average_precision(y, s) == pytest.approx(ap)
        assert equal_error_rate(y, s) == pytest.approx(eer)

    def test_auc_equals_pairwise_probability(self):
        rng = np.random.RandomState(0)
        y = rng.randint(0, 2, 200)
        s = np.round(rng.rand(200) + 0.3 * y, 2)  # rounding makes ties
        pos, neg = s[y == 1], s[y == 0]
        pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
        assert roc_auc(y, s) == pytest.approx(pairwise)
        fpr, tpr, _ = roc_curve(y, s)
        assert np.trapezoid(tpr, fpr) == pytest.approx(pairwise)

    def test_accuracy_and_degenerate(self):
        assert accuracy([0, 1, 1], [0.2, 0.5, 0.4]) == pytest.approx(2 / 3)
        m = detection_metrics([1, 1], [0.3, 0.9])
        assert np.isnan(m["auc"]) and m["n_real"] == 0 and m["n_fake"] == 2

    def test_auc_by_strength(self):
        """Fakes split into equal bins by alteration strength, each bin against all reals: a detector that sees only
        strong tampering rises from bin to bin; one that ignores strength stays flat."""
        rng = np.random.RandomState(0)
        y = np.r_[np.zeros(100, int), np.ones(200, int)]
        strength = np.r_[np.full(100, np.nan), rng.rand(200)]
        sees_strong = np.r_[rng.rand(100) * 0.5, np.where(strength[100:] > 0.5, 0.6, 0.0) + rng.rand(200) * 0.5]
        rows = auc_by_strength(y, sees_strong, strength, bins=4)
        assert [r["n_fake"] for r in rows] == [50, 50, 50, 50]
        assert all(a["high"] <= b["low"] for a, b in zip(rows, rows[1:]))
        assert rows[0]["auc"] < 0.65 and rows[-1]["auc"] == pytest.approx(1.0)
        blind = np.r_[rng.rand(100), rng.rand(200) + 0.3]
        aucs = [r["auc"] for r in auc_by_strength(y, blind, strength, bins=4)]
        assert max(aucs) - min(aucs) < 0.2 and min(aucs) > 0.6
        assert auc_by_strength([0, 0], [0.1, 0.2], [0.0, 0.0]) == []
        with pytest.raises(ValueError, match="strengths"):
            auc_by_strength([0, 1], [0.1, 0.2], [0.0])

    @parameterized.expand([("max", 0.9), ("mean", 0.4), ("topk", 0.7)])
    def test_aggregate(self, how, expected):
        assert aggregate_scores([0.1, 0.2, 0.5, 0.9, 0.3], how, k=2) == pytest.approx(expected)


def _phantom(shape, seed=0):
    """A bright disc / ball of tissue with texture on a dark background, values in [0, 1]."""
    rng = np.random.RandomState(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    r = np.sqrt(sum(g**2 for g in grids))
    img = (r < 0.8) * (0.5 + 0.3 * np.sin(6 * grids[0]) * np.cos(5 * grids[1])) + 0.05 * rng.rand(*shape)
    return np.clip(img, 0, 1).astype(np.float32)[None]


SHAPES = [((40, 36),), ((20, 22, 18),)]


class TestForgeryTransforms:
    @parameterized.expand(SHAPES)
    def test_copy_move_inject_and_remove(self, shape):
        img = _phantom(shape)
        for mode in ("inject", "remove"):
            t = CopyMoveForgery(mode).set_random_state(3)
            out = t(img)
            assert out.shape == img.shape and out.dtype == img.dtype and out.min() >= 0 and out.max() <= 1
            alpha = t.last_mask
            assert np.abs(out - img).max() > 0.05  # something was moved
            assert np.allclose(out[0][alpha == 0], img[0][alpha == 0])  # only inside the blending mask
            assert np.array_equal(CopyMoveForgery(mode).set_random_state(3)(img), out)  # seeded

    def test_copy_move_uses_lesion_mask(self):
        img = _phantom((48, 48))
        lesion = np.zeros((48, 48), bool)
        lesion[10:16, 30:36] = True
        img[0][lesion] = 1.0
        t = CopyMoveForgery("remove", sigma=(1.0, 1.0)).set_random_state(0)
        out = t(img, lesion[None])
        assert t.last_mask[lesion].min() > 0.5  # the lesion is covered
        assert out[0][lesion].mean() < 0.9

    @parameterized.expand(SHAPES)
    def test_self_blend(self, shape):
        img = _phantom(shape)
        t = SelfBlend().set_random_state(1)
        out = t(torch.as_tensor(img))
        assert isinstance(out, torch.Tensor) and tuple(out.shape) == img.shape
        diff = (out.numpy() - img)[0]
        assert np.abs(diff).max() > 0.01 and np.allclose(diff[t.last_mask == 0], 0, atol=1e-6)

    @parameterized.expand(SHAPES)
    def test_face_swap_matches_statistics(self, shape):
        img, donor = _phantom(shape, 0), np.clip(_phantom(shape, 1) * 0.5 + 0.4, 0, 1)
        t = FaceSwap(sigma=(0.01, 0.01)).set_random_state(2)
        out = t(img, donor)
        inside = t.last_mask > 0.99
        assert abs(out[0][inside].mean() - img[0][inside].mean()) < 0.03  # colour transfer to the target's statistics
        assert not np.allclose(out[0][inside], img[0][inside])

    def test_dict_versions(self):
        img = _phantom((32, 32))
        d = {"image": img, "lesion": np.zeros_like(img), "donor": _phantom((32, 32), 5)}
        for t in (CopyMoveForgeryd("image", lesion_key="lesion"), SelfBlendd("image"), FaceSwapd("image")):
            out = t.set_random_state(0)(dict(d))
            assert out["image"].shape == img.shape and out["forgery_mask"].shape == img.shape
            assert not np.array_equal(out["image"], img)
        assert np.array_equal(SelfBlendd("image", prob=0.0)(dict(d))["image"], img)


def _tiny_forgery_set(root: Path, three_d: bool = False, synthesis: bool = False) -> Path:
    """A hand-made real / fake set: NIfTI slices (or volumes with slice labels) and a dataset.json; with
    ``synthesis``, also copy-move fakes with a lesion mask and the sources / synthesis section ``resynthesize`` reads."""
    from trust_monai.data.sources._common import write_nifti
    from trust_monai.detect.data import SCAN_SYNTHESIS

    entries = {"training": [], "test": []}
    shape = (32, 32, 4) if three_d else (32, 32)  # depth 4: not to be taken for RGBA
    lesion = np.zeros(shape, np.uint8)
    lesion[8:13, 18:24] = 1
    for split, n in (("training", 6), ("test", 4)):
        for i in range(n):
            img = _phantom(shape, seed=i)[0]
            fakes = [(1, SelfBlend().set_random_state(i)(img[None])[0], "self_blend")]
            if synthesis:
                write_nifti(root / f"{split}/lesion_{i}.nii.gz", lesion, np.eye(4))
                fakes.append((1, CopyMoveForgery("remove").set_random_state(i)(img[None], lesion[None])[0],
                              "copy_move_remove"))
            for label, a, kind in [(0, img, "real")] + fakes:
                rel = f"{split}/{kind}_{i}.nii.gz"
                write_nifti(root / rel, a, np.eye(4))
                group = f"v{i}" if three_d else f"v{i // 2}"  # slices: two per volume; volumes: their own group
                e = {"image": rel, "label": label, "kind": kind, "volume": group + (f":{kind}" if label else "")}
                if three_d:
                    e["slice_labels"] = [0, label, label, 0]
                if synthesis and label:
                    e["source"] = f"{split}/real_{i}.nii.gz"
                if synthesis and kind == "copy_move_remove":
                    e["lesion"] = f"{split}/lesion_{i}.nii.gz"
                entries[split].append(e)
    extra = {"synthesis": {k: SCAN_SYNTHESIS[k] for k in ("self_blend", "copy_move_remove")}} if synthesis else {}
    (root / "dataset.json").write_text(json.dumps({"classes": ["real", "fake"], **extra, **entries}))
    return root


class TestDetectionEngine:
    def _net(self):
        from trust_monai.networks.moe_vit import MoEViT

        torch.manual_seed(0)
        return MoEViT(**TINY_NET)

    @parameterized.expand([(False,), (True,)])
    def test_evaluation_writes_metrics_report_and_pictures(self, three_d, tmp_path=None):
        import tempfile

        from trust_monai.detect.data import ForgeryDataset
        from trust_monai.detect.engine import DetectionEvaluation
        from trust_monai.utils.checkpoint import save_state_dict

        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            data = _tiny_forgery_set(tmp / "data", three_d)
            net = self._net()
            save_state_dict(net.state_dict(), tmp / "m.pt")
            ds = ForgeryDataset(data, "test")
            rows = DetectionEvaluation(net, tmp / "m.pt", ds, tmp / "out", heatmaps=2, train_kinds=["copy_move"]).run()
            assert {"metrics.csv", "metrics.md", "roc.png", "report.json", "heatmaps.png", "scores.csv",
                    "volumes.csv"} <= {p.name for p in (tmp / "out").iterdir()}
            levels = {r["level"] for r in rows}
            # volumes: slice level also per held-out volume (its real slices against its copies' tampered slices)
            held_out = {f"slice:v{i}" for i in range(4)}
            assert levels == ({"image", "slice"} | held_out if three_d else {"image", "volume"})
            if three_d:
                v0 = next(r for r in rows if r["level"] == "slice:v0")
                assert (v0["n_real"], v0["n_fake"]) == (4, 2)
            with open(tmp / "out" / "scores.csv") as f:
                scores = list(csv.DictReader(f))
            with open(tmp / "out" / "volumes.csv") as f:
                volumes = list(csv.DictReader(f))
            assert list(scores[0]) == ["image", "slice", "score"] and list(volumes[0]) == ["image", "score"]
            assert len(scores) == (8 * 4 if three_d else 8) and len(volumes) == (8 if three_d else 4)
            if three_d:
                assert [int(r["slice"]) for r in scores[:4]] == [0, 1, 2, 3] and volumes[0]["image"].endswith(".nii.gz")
            assert all(r["seen_in_training"] == "no" for r in rows)  # self_blend was not in train_kinds
            assert {r["fakes"] for r in rows} == {"self_blend"}
            report = json.loads((tmp / "out" / "report.json").read_text())
            assert len(report["images"]) == 8 and all(0 <= r["score"] <= 1 for r in report["images"])
            if three_d:
                r = report["images"][0]
                assert len(r["slice_scores"]) == 4 and r["score"] == pytest.approx(
                    aggregate_scores(r["slice_scores"], "topk", 3), abs=1e-5)
            with open(tmp / "out" / "metrics.csv") as f:
                assert len(list(csv.DictReader(f))) == len(rows)

    def test_unrolled_volumes_give_slice_labels(self):
        import tempfile

        from trust_monai.detect.data import ForgeryDataset

        with tempfile.TemporaryDirectory() as tmp:
            ds = ForgeryDataset(_tiny_forgery_set(Path(tmp), True), "training", unroll=True)
            assert len(ds) == 12 * 4 and ds[0]["image"].shape == (1, 32, 32)
            # tampered volumes mark slices 1 and 2 fake: 12 fake slices of 48
            assert ds.labels.count(1) == 12 and [it["slice"] for it in ds.items if it["label"]] == [1, 2] * 6
            assert ds.class_weights().tolist() == pytest.approx([48 / 72, 48 / 24])

    @parameterized.expand([(False,), (True,)])
    def test_resynthesize_draws_fresh_fakes_from_the_source(self, three_d):
        import tempfile

        from trust_monai.detect.data import ForgeryDataset
        from trust_monai.errors import DatalistError

        with tempfile.TemporaryDirectory() as tmp:
            data = _tiny_forgery_set(Path(tmp), three_d, synthesis=True)
            stored = ForgeryDataset(data, "training", unroll=three_d)
            ds = ForgeryDataset(data, "training", unroll=three_d, resynthesize=True)
            assert ds.labels == stored.labels
            torch.manual_seed(0)
            for i, item in enumerate(ds.items):
                first = ds[i]["image"]
                blend = ds.synthesis[item["kind"]].last_mask if item["label"] else None
                second = ds[i]["image"]
                assert first.shape == stored[i]["image"].shape
                if item["label"] == 0:  # reals (and the untouched slices of a tampered volume) as stored
                    assert torch.equal(first, stored.items[i]["image"]) and torch.equal(first, second)
                    continue
                source = ds._array(item["source"])
                source = torch.from_numpy(source[..., item["slice"]] if three_d else source)[None]
                changed = (first - source).abs() > 1e-6
                # a forgery of this image's own source, only inside its blending mask ...
                assert changed.any() and not changed[0][torch.from_numpy(blend) == 0].any()
                assert not torch.equal(first, second) and not torch.equal(first, stored.items[i]["image"])  # ... new
                if item["kind"] == "copy_move_remove":  # the lesion it names is what gets covered
                    lesion = torch.zeros(32, 32, dtype=torch.bool)
                    lesion[8:13, 18:24] = True
                    assert changed[0][lesion].float().mean() > 0.5
            with pytest.raises(DatalistError, match="synthesis"):
                ForgeryDataset(_tiny_forgery_set(Path(tmp) / "plain"), "training", resynthesize=True)
            if three_d:
                with pytest.raises(DatalistError, match="unroll"):
                    ForgeryDataset(data, "training", resynthesize=True)

    def test_mismatched_checkpoint_names_keys(self, tmp_path):
        from trust_monai.detect.engine import load_detector
        from trust_monai.networks.moe_vit import MoEViT
        from trust_monai.utils.checkpoint import save_state_dict

        save_state_dict(MoEViT(**{**TINY_NET, "lora_ranks": (2, 4, 8)}).state_dict(), tmp_path / "m.pt")
        with pytest.raises(InputFileError, match=r"unexpected .*lora_a\.2") as e:
            load_detector(self._net(), tmp_path / "m.pt")
        assert "m.pt" in str(e.value) and "experts" in str(e.value)
        with pytest.raises(InputFileError, match="not found"):
            load_detector(self._net(), tmp_path / "none.pt")

    def test_corrupt_file_fails_before_anything(self, tmp_path):
        from trust_monai.detect.data import ForgeryDataset

        data = _tiny_forgery_set(tmp_path / "data")
        bad = data / "test" / "real_2.nii.gz"
        bad.write_bytes(b"\x00corrupt")
        with pytest.raises(InputFileError, match="real_2.nii.gz"):
            ForgeryDataset(data, ["training", "test"])

    def test_moe_loss_adds_balance_term(self):
        from trust_monai.detect.engine import MoELoss

        net = self._net().train()
        logits = net(torch.rand(4, 1, 32, 32))
        y = torch.tensor([0, 1, 0, 1])
        plain = torch.nn.functional.cross_entropy(logits, y)
        assert MoELoss(net, 0.5)(logits, y).item() == pytest.approx((plain + 0.5 * net.balance_loss()).item(), rel=1e-5)


def test_face_forgery_set(tmp_path):
    from trust_monai.detect.data import ForgeryDataset, prepare_face_forgery

    root = prepare_face_forgery(fakes_per_image=1, max_per_split=3, root=tmp_path)
    doc = json.loads((root / "dataset.json").read_text())
    kinds = [e["kind"] for e in doc["training"]]
    assert kinds.count("real") == 3 and kinds.count("self_blend") == 3 and kinds.count("face_swap") == 3
    ds = ForgeryDataset(root, "test", kinds=["face_swap"])
    assert len(ds) == 6 and ds[0]["image"].shape == (1, 25, 25) and 0 <= float(ds[0]["image"].min())
    fresh = ForgeryDataset(root, "test", kinds=["face_swap"], resynthesize=True)
    fake = next(i for i, it in enumerate(fresh.items) if it["label"] == 1)
    torch.manual_seed(0)
    a, b = fresh[fake]["image"], fresh[fake]["image"]
    assert a.shape == (1, 25, 25) and not torch.equal(a, b) and not torch.equal(a, ds[fake]["image"])


def test_cross_manipulation_rows():
    from trust_monai.detect.engine import DetectionEvaluation

    rng = np.random.RandomState(0)
    records = [{"image": f"{k}{i}", "volume": f"{k}{i}", "label": int(k != "real"), "kind": k,
                "score": float(rng.rand() * 0.5 + (0.5 if k == "a" else 0.0))}
               for k in ("real", "a", "b") for i in range(10)]
    rows, curves = DetectionEvaluation(None, None, None, "unused", train_kinds=["a"]).rows(records)
    by = {r["fakes"]: r for r in rows}
    assert [r["fakes"] for r in rows] == ["all", "seen", "a", "b"] and set(curves) == set(by)
    assert by["seen"]["seen_in_training"] == "yes" and by["b"]["seen_in_training"] == "no"
    assert by["all"]["seen_in_training"] == "mixed"
    assert by["seen"]["auc"] == by["a"]["auc"] == 1.0 and by["seen"]["n_fake"] == 10 and by["all"]["n_fake"] == 20


@pytest.mark.parametrize("model", ["moe", "resnet18"])
def test_detect_ablation_script_runs(model):
    """scripts/detect_ablation.py, at the bundle's smoke data size: a per-kind AUC row after two steps."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "detect_ablation.py"
    spec = importlib.util.spec_from_file_location("detect_ablation", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    row = mod.main(["--model", model, "--steps", "2", "--every", "2", "--batch", "8", "--size", "32",
                    "--max-per-volume", "4", "--vae-epochs", "2", "--depth", "1"])
    assert row["step"] == 2 and 0 <= row["train_acc"] <= 1
    kinds = {"copy_move_inject", "copy_move_remove", "self_blend", "generated"}
    assert {f"auc_{k}" for k in kinds | {"all"}} <= set(row) and all(0 <= row[f"auc_{k}"] <= 1 for k in kinds)


def test_detect_by_strength_script(tmp_path):
    """scripts/detect_by_strength.py on a scored tiny set: every fake with a source gets its mean |fake - source| and
    lands in one bin; a report from another data set is refused by name."""
    import importlib.util

    from trust_monai.detect.data import ForgeryDataset
    from trust_monai.detect.engine import DetectionEvaluation
    from trust_monai.errors import InputFileError
    from trust_monai.networks.moe_vit import MoEViT
    from trust_monai.utils.checkpoint import save_state_dict

    path = Path(__file__).resolve().parents[2] / "scripts" / "detect_by_strength.py"
    spec = importlib.util.spec_from_file_location("detect_by_strength", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    data = _tiny_forgery_set(tmp_path / "data", synthesis=True)
    torch.manual_seed(0)
    net = MoEViT(**TINY_NET)
    save_state_dict(net.state_dict(), tmp_path / "m.pt")
    DetectionEvaluation(net, tmp_path / "m.pt", ForgeryDataset(data, "test"), tmp_path / "out", heatmaps=0).run()
    rows = mod.main(["--report", str(tmp_path / "out" / "report.json"), "--dataset_dir", str(data), "--bins", "2"])
    assert [r["n_fake"] for r in rows] == [4, 4] and rows[0]["high"] <= rows[1]["low"]
    doc = json.loads((data / "dataset.json").read_text())
    read = {e["image"]: nib.load(data / e["image"]).get_fdata() for e in doc["test"]}
    changes = sorted(float(np.abs(read[e["image"]] - read[e["source"]]).mean()) for e in doc["test"] if e["label"])
    assert rows[0]["low"] == pytest.approx(changes[0], rel=1e-4) and rows[1]["high"] == pytest.approx(changes[-1], rel=1e-4)
    assert changes[0] > 0 and all(0 <= r["auc"] <= 1 for r in rows)
    other = _tiny_forgery_set(tmp_path / "other")
    with pytest.raises(InputFileError, match="--dataset_dir"):
        mod.main(["--report", str(tmp_path / "out" / "report.json"), "--dataset_dir", str(other)])
