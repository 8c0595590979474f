"""Poisoning check before purifying (issue 24, item 3): real Fashion-MNIST images, clean against a package poison."""

from __future__ import annotations

import json

import pytest
import torch

from trust_monai.errors import DatalistError, OutputExistsError
from trust_monai.purify.check import PoisoningCheck, check_poisoning

N = 400  # a few hundred images: the check runs in seconds


@pytest.fixture(scope="module")
def fashion():
    from trust_monai.data import prepare
    from trust_monai.data.classification import ImageClassificationDataset

    return ImageClassificationDataset(prepare("fashion_mnist"), "training", N, 1, progress=False)


def _poisoned(ds, poison: str, **kw) -> torch.Tensor:
    from trust_monai.protect import make_poison

    p = make_poison(poison, 10, ds.image_shape, num_samples=len(ds), seed=0, **kw)
    with torch.no_grad():
        x = p.apply(ds.images.float() / 255, torch.arange(len(ds)), ds.labels)
    return (x * 255).round().to(torch.uint8)  # as the poison writer's 8-bit PNGs


# the block code at its default 8/255 and the issue-24 patch code (7x7 patches, +-0.15): held-out linear probe
# 0.934 and 0.995 at 400 images against 0.776 clean (threshold 0.88); clean residual 0.633 (0.76), texture 0.745
@pytest.mark.parametrize("poison, kw", [("blocks", {}), ("blocks", {"patch_size": 7, "eps": 0.15})])
def test_flags_poison_not_clean(fashion, poison, kw):
    clean = check_poisoning(fashion.images, fashion.labels)
    bad = check_poisoning(_poisoned(fashion, poison, **kw), fashion.labels)
    assert not clean.poisoned, clean.summary()
    assert bad.poisoned, bad.summary()
    assert bad.scores["linear"] > clean.scores["linear"] + 0.1
    assert clean.n == N and clean.num_classes == 10 and len(clean.curve) > 1


def test_single_class_is_an_error_before_any_probe(fashion):
    with pytest.raises(DatalistError, match="at least two classes"):
        check_poisoning(fashion.images[:50], torch.zeros(50, dtype=torch.long))


def test_single_class_stops_purifier_training_before_it_starts(tmp_path):
    from trust_monai.networks.dvae import DVAE
    from trust_monai.purify import TwoStagePurification

    items = [{"image": torch.rand(1, 8, 8), "label": torch.tensor(2), "path": f"img{i}.png"} for i in range(12)]
    factory = lambda: DVAE(2, 1, 3, channels=(4, 8))  # noqa: E731
    with pytest.raises(DatalistError, match="all 12 training cases have class 2"):
        TwoStagePurification(items, factory, tmp_path, progress=False).run()
    assert not list(tmp_path.iterdir())


def test_bundle_step_writes_picture_and_verdict(fashion, tmp_path, capsys):
    result = PoisoningCheck(fashion, tmp_path / "out", max_images=200).run()
    assert (tmp_path / "out" / "poisoning_check.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "out" / "poisoning_check.json").read_text())
    assert saved["poisoned"] is result.poisoned and saved["n"] == 200
    assert "poisoning check on 200 images" in capsys.readouterr().out
    assert PoisoningCheck(fashion, tmp_path / "skip", enabled=False).run() is None
    assert not (tmp_path / "skip").exists()
    with pytest.raises(OutputExistsError, match="inside the input folder"):
        PoisoningCheck(fashion, fashion.dataset_dir / "purified").run()


def test_bundle_step_rerun_leaves_files_alone(fashion, tmp_path):
    first = PoisoningCheck(fashion, tmp_path, max_images=200).run()
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    again = PoisoningCheck(fashion, tmp_path, max_images=200).run()
    assert {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamps
    assert again.scores == first.scores and again.poisoned is first.poisoned
    other = PoisoningCheck(fashion, tmp_path, max_images=100).run()  # other settings: checked anew
    assert other.n == 100 and json.loads((tmp_path / "poisoning_check.json").read_text())["n"] == 100
