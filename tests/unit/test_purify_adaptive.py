"""D-VAE whose perturbation floor the poisoning check chooses (issue 24, item 2)."""

from __future__ import annotations

import json
import logging

import torch

from trust_monai.networks.dvae import DVAE
from trust_monai.purify import AdaptivePurification, PoisoningCheck, dvae_loss
from trust_monai.purify import adaptive as adaptive_module
from trust_monai.purify.check import PoisonCheckResult


def _best_perturbation(poison: torch.Tensor, floor: float) -> torch.Tensor:
    """The perturbation the D-VAE objective prefers when the image branch draws the clean image exactly."""
    clean = torch.full_like(poison, 0.5)
    p = torch.zeros_like(poison, requires_grad=True)
    mu = logvar = torch.zeros(1, 1, 2, 2)
    opt = torch.optim.Adam([p], lr=0.01)
    for _ in range(1500):
        opt.zero_grad()
        # rec = clean: the image branch left the poison out; dvae_loss's rec term then holds the poison's energy
        loss, _ = dvae_loss(clean + poison, clean, p, mu, logvar, 1.0, 0.0, perturbation_floor=floor)
        loss.backward()
        opt.step()
    return p.detach()


def test_floor_below_the_poison_energy_halves_what_the_branch_carries():
    """Why the floor must follow the poison: above it, the perturbation branch carries only half of a poison."""
    poison = 0.15 * torch.sign(torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)))  # energy 0.0225
    tuned = _best_perturbation(poison, floor=0.0005)
    assert torch.allclose(tuned, poison / 2, atol=0.01)
    raised = _best_perturbation(poison, floor=0.05)
    assert torch.allclose(raised, poison, atol=0.01)


def _items(n=24, size=8):
    return [{"image": torch.rand(1, size, size), "label": torch.tensor(i % 3), "path": f"img{i}.png"} for i in range(n)]


def _factory():
    return DVAE(2, 1, 3, channels=(4, 8), latent_channels=2, latent_size=4)


def _fake_checks(monkeypatch, scores):
    """Replace the check by a scripted one (its real behaviour is tested in test_poisoning_check.py); the images it
    receives are recorded, so the test sees what the rule judged."""
    seen, queue = [], list(scores)

    def fake(images, labels, **kw):
        seen.append((images, labels, kw))
        s = queue.pop(0)
        # n as the check probes a real set (3000 images): two binomial standard errors at 0.9 are 0.0155
        return PoisonCheckResult(scores={"linear": 0.9 + s}, thresholds={"linear": 0.9}, poisoned=s >= 0, score=s,
                                 n=3000, num_classes=3, chance=0.34)

    monkeypatch.setattr(adaptive_module, "check_poisoning", fake)
    return seen


def test_stops_at_the_first_floor_whose_output_passes(tmp_path, monkeypatch):
    seen = _fake_checks(monkeypatch, [0.1, 0.1, -0.05, 0.0])  # the first floor, its second pass, the second floor
    kw = dict(max_epochs=1, batch_size=8, progress=False, check_kwargs={"seed": 3})
    paths = AdaptivePurification(_items(), _factory, tmp_path, floors=(0.0005, 0.005, 0.05), min_images=0, **kw).run()
    assert [p.name for p in paths] == ["dvae_stage1.pt", "dvae_stage2.pt"]
    assert len(seen) == 3 and not (tmp_path / "floor_0.05").exists()  # the third floor was never trained
    for k in (1, 2):  # the kept purifier is the second candidate's
        assert (tmp_path / f"dvae_stage{k}.pt").read_bytes() == (tmp_path / "floor_0.005" / f"dvae_stage{k}.pt").read_bytes()
    images, labels, ckw = seen[0]
    assert images.dtype == torch.uint8 and images.shape == (24, 1, 8, 8) and labels.tolist()[:4] == [0, 1, 2, 0]
    assert ckw == {"seed": 3}
    record = json.loads((tmp_path / "dvae_adaptive.json").read_text())
    assert record["kept_floor"] == 0.005 and record["still_poisoned"] is False
    assert [c["floor"] for c in record["candidates"]] == [0.0005, 0.0005, 0.005]
    assert record["candidates"][1]["second_pass"] is True and record["passes"] == 1
    # the second pass trained on the first pass's 8-bit copy, which is what the check had judged
    assert (tmp_path / "floor_0.0005_pass2" / "dvae_stage2.pt").is_file()
    assert seen[1][0].shape == seen[0][0].shape and not (tmp_path / "dvae_pass2_stage1.pt").exists()


def test_a_second_pass_that_passes_is_kept_and_inference_chains_it(tmp_path, monkeypatch):
    """A first copy clearly flagged, its second pass not: the kept purifier is the two passes in a row, and the
    bundle's defence built from ``purifier_checkpoints`` writes what the check judged."""
    from trust_monai.purify import make_defence, purifier_checkpoints

    seen = _fake_checks(monkeypatch, [0.1, -0.05])
    items = _items()
    paths = AdaptivePurification(items, _factory, tmp_path, floors=(0.0005, 0.005), min_images=0, max_epochs=1,
                                 batch_size=8, progress=False).run()
    assert [p.name for p in paths] == ["dvae_stage1.pt", "dvae_stage2.pt", "dvae_pass2_stage1.pt",
                                       "dvae_pass2_stage2.pt"]
    assert purifier_checkpoints(tmp_path) == paths and purifier_checkpoints(tmp_path, "dvae_stage1") == paths[:1]
    record = json.loads((tmp_path / "dvae_adaptive.json").read_text())
    assert record["passes"] == 2 and record["kept"] == "perturbation floor 0.0005, second pass on that copy"
    assert not (tmp_path / "floor_0.005").exists()
    x = torch.stack([it["image"] for it in items])
    y = torch.stack([it["label"] for it in items])
    chained = make_defence("dvae", _factory, purifier_checkpoints(tmp_path)).apply(x, y=y)
    written = chained.mul(255).round()
    assert (written - seen[1][0].float()).abs().max() <= 1  # float order of batched sums may flip a rounding
    one_pass = make_defence("dvae", _factory, paths[:2]).apply(x, y=y).mul(255).round()
    assert (one_pass - seen[0][0].float()).abs().max() <= 1 and not torch.equal(one_pass, written)
    # a later run that keeps one pass (here: a plain D-VAE) removes the second, so inference cannot chain a stale one
    AdaptivePurification(items, _factory, tmp_path, floors=(0.0005,), max_epochs=1, batch_size=8, progress=False).run()
    assert purifier_checkpoints(tmp_path) == paths[:2] and not (tmp_path / "dvae_pass2_stage1.pt").exists()
    assert not (tmp_path / "dvae_adaptive.json").exists()  # the record of the two-pass choice went with it


def test_odd_checkpoint_lists_are_refused():
    import pytest

    from trust_monai.errors import BundleError
    from trust_monai.purify import make_defence

    with pytest.raises(BundleError, match="3 checkpoints do not make whole passes of 2"):
        make_defence("dvae", _factory, ["a.pt", "b.pt", "c.pt"])


def test_every_floor_flagged_keeps_the_largest_and_says_so(tmp_path, monkeypatch, caplog):
    _fake_checks(monkeypatch, [0.2, 0.2, 0.05, 0.1])  # the scores do not rank failing candidates
    with caplog.at_level(logging.WARNING, logger="trust_monai.purify"):
        AdaptivePurification(_items(), _factory, tmp_path, floors=(0.0005, 0.005, 0.05), min_images=0, max_epochs=1, batch_size=8,
                             progress=False).run()
    record = json.loads((tmp_path / "dvae_adaptive.json").read_text())
    assert record["kept_floor"] == 0.05 and record["still_poisoned"] is True and len(record["candidates"]) == 4
    assert "stronger than the purifier removes" in caplog.text
    assert (tmp_path / "dvae_stage1.pt").read_bytes() == (tmp_path / "floor_0.05" / "dvae_stage1.pt").read_bytes()


def test_one_floor_and_the_ablations_train_a_single_purifier(tmp_path, monkeypatch):
    seen = _fake_checks(monkeypatch, [])
    paths = AdaptivePurification(_items(), _factory, tmp_path / "plain", floors=(0.0005,), max_epochs=1, batch_size=8,
                                 progress=False).run()
    assert paths == [tmp_path / "plain" / "dvae_stage1.pt", tmp_path / "plain" / "dvae_stage2.pt"]
    paths = AdaptivePurification(_items(), _factory, tmp_path / "s1", stages=1, max_epochs=1, batch_size=8,
                                 progress=False).run()
    assert paths == [tmp_path / "s1" / "dvae_stage1.pt"] and not seen
    assert not (tmp_path / "plain" / "dvae_adaptive.json").exists()
    # fewer images than the check was calibrated on (default min_images 2000): the first floor, no check
    paths = AdaptivePurification(_items(), _factory, tmp_path / "small", max_epochs=1, batch_size=8, progress=False).run()
    assert paths == [tmp_path / "small" / "dvae_stage1.pt", tmp_path / "small" / "dvae_stage2.pt"] and not seen


def test_check_of_the_purified_copy_reports_a_surviving_poison(tmp_path, capsys):
    """The purify report's second check: a copy that still carries a block code is called out, in its own files."""
    from trust_monai.data import prepare
    from trust_monai.data.classification import ImageClassificationDataset
    from trust_monai.protect import make_poison

    ds = ImageClassificationDataset(prepare("fashion_mnist"), "training", 400, 1, progress=False)
    p = make_poison("blocks", 10, ds.image_shape, num_samples=len(ds), seed=0, patch_size=7, eps=0.15)
    with torch.no_grad():
        ds.images = (p.apply(ds.images.float() / 255, torch.arange(len(ds)), ds.labels) * 255).round().to(torch.uint8)
    result = PoisoningCheck(ds, tmp_path, after=True, max_images=400).run()
    assert result.poisoned
    assert "STILL LOOKS POISONED after purification" in capsys.readouterr().out
    assert (tmp_path / "poisoning_check_after.png").is_file() and not (tmp_path / "poisoning_check.png").exists()


def test_a_copy_flagged_only_within_the_checks_noise_gets_a_second_pass_and_no_larger_floor(tmp_path, monkeypatch,
                                                                                               caplog):
    """Flagged by 0.01 (under two standard errors, 0.0155): the first floor's second pass is trained and kept, and no
    larger floor is trained (on the 16/255 block code they did worse); a second pass that is clearly flagged leaves
    the first copy kept."""
    seen = _fake_checks(monkeypatch, [0.01, -0.1, -0.1])
    AdaptivePurification(_items(), _factory, tmp_path, floors=(0.0005, 0.005, 0.05), min_images=0, max_epochs=1,
                         batch_size=8, progress=False).run()
    record = json.loads((tmp_path / "dvae_adaptive.json").read_text())
    assert len(seen) == 2 and record["passes"] == 2 and not (tmp_path / "floor_0.005").exists()
    assert record["candidates"][0]["poisoned"] is True and record["candidates"][0]["clearly_poisoned"] is False
    seen = _fake_checks(monkeypatch, [0.01, 0.1, -0.1])
    with caplog.at_level(logging.WARNING, logger="trust_monai.purify"):
        paths = AdaptivePurification(_items(), _factory, tmp_path / "b", floors=(0.0005, 0.005, 0.05), min_images=0,
                                     max_epochs=1, batch_size=8, progress=False).run()
    record = json.loads((tmp_path / "b" / "dvae_adaptive.json").read_text())
    assert len(seen) == 2 and record["passes"] == 1 and record["kept"] == "perturbation floor 0.0005"
    assert len(paths) == 2 and not (tmp_path / "b" / "floor_0.005").exists()
    assert "within the check's own noise" in caplog.text


def test_with_validation_images_every_flagged_candidate_is_judged_by_a_small_network(tmp_path, monkeypatch, caplog):
    """The floors and then the variants are trained; the copy whose small network scores best on the validation
    images is kept, and a kept sample-wise branch runs sample-wise wherever its checkpoint is loaded."""
    _fake_checks(monkeypatch, [0.2, 0.2, 0.1, 0.3, 0.2, 0.2])
    # floor 0.0005, its second pass, floor 0.005, the two variants, then the second pass of the best first pass
    accuracies = iter([0.50, 0.45, 0.40, 0.75, 0.60, 0.80])
    judged = []

    def fake_probe(x, y, vx, vy, **kw):
        judged.append((x.shape, vx.shape))
        return next(accuracies)

    monkeypatch.setattr(adaptive_module, "probe_accuracy", fake_probe)
    validation = _items(n=6)
    variants = ({"samplewise_perturbation": True}, {"rate_targets": (0.5, 3.0)})
    with caplog.at_level(logging.WARNING, logger="trust_monai.purify"):
        AdaptivePurification(_items(), _factory, tmp_path, floors=(0.0005, 0.005), min_images=0, max_epochs=1,
                             batch_size=8, progress=False, validation=validation, variants=variants).run()
    record = json.loads((tmp_path / "dvae_adaptive.json").read_text())
    assert [c["validation_accuracy"] for c in record["candidates"]] == [0.50, 0.45, 0.40, 0.75, 0.60, 0.80]
    assert record["kept"] == "perturbation floor 0.0005, samplewise_perturbation True, second pass on that copy"
    assert record["samplewise_perturbation"] is True and record["still_poisoned"] is True and record["passes"] == 2
    assert judged[0] == (torch.Size([24, 1, 8, 8]), torch.Size([6, 1, 8, 8]))
    for folder in ("floor_0.0005", "floor_0.0005_pass2", "floor_0.005", "floor_0.0005_source_true",
                   "floor_0.0005_rate_0.5_3", "floor_0.0005_source_true_pass2"):
        assert (tmp_path / folder / "dvae_stage2.pt").is_file()
    assert json.loads((tmp_path / "floor_0.0005_rate_0.5_3" / "dvae_train.json").read_text())["1"]["rate_target"] == 0.5
    assert "validation images" in caplog.text
    # the kept checkpoint carries its branch input: a class-wise configured network runs it sample-wise
    from trust_monai.utils.checkpoint import load_state_dict

    net2 = DVAE(2, 1, 3, channels=(4, 8), latent_channels=2, latent_size=4, samplewise_perturbation=False)
    for name in ("dvae_stage1.pt", "dvae_pass2_stage1.pt"):
        load_state_dict(net2, tmp_path / name)
        assert net2.samplewise_perturbation is True


def test_variant_settings_are_checked():
    import pytest

    with pytest.raises(ValueError, match="unknown setting"):
        AdaptivePurification(_items(), _factory, "unused", variants=({"rate": 0.5},))


def test_checkpoint_keeps_the_perturbation_source_and_old_checkpoints_keep_the_configured_one():
    def net(source):
        return DVAE(2, 1, 3, channels=(4, 8), latent_channels=2, latent_size=4, samplewise_perturbation=source)

    trained = net("latent")
    loaded = net(False)
    loaded.load_state_dict(trained.state_dict())
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
    assert loaded.samplewise_perturbation == "latent"
    assert torch.equal(loaded.decompose(x, y, sample=False)[1], trained.decompose(x, y, sample=False)[1])
    old = {k: v for k, v in trained.state_dict().items() if k != "perturbation_source"}  # written before the buffer
    configured = net(True)
    configured.load_state_dict(old)
    assert configured.samplewise_perturbation is True


def test_probe_accuracy_learns_real_images_and_not_shuffled_labels():
    """The validation judge on real Fashion-MNIST: 1500 training images give a usable classifier; the same images
    with shuffled labels give about chance."""
    from trust_monai.data import prepare
    from trust_monai.data.classification import ImageClassificationDataset

    ds = ImageClassificationDataset(prepare("fashion_mnist"), "training", 2000, 1, progress=False)
    x, y = ds.images.float() / 255, ds.labels.long()
    acc = adaptive_module.probe_accuracy(x[:1500], y[:1500], x[1500:], y[1500:], epochs=3, batch_size=64)
    shuffled = y[:1500][torch.randperm(1500, generator=torch.Generator().manual_seed(0))]
    chance = adaptive_module.probe_accuracy(x[:1500], shuffled, x[1500:], y[1500:], epochs=3, batch_size=64)
    assert acc > 0.6 and chance < 0.3, (acc, chance)


def test_validation_images_of_another_size_stop_before_training(tmp_path):
    import pytest

    from trust_monai.errors import DatalistError

    with pytest.raises(DatalistError, match=r"validation images are \(1, 6, 6\).*same size"):
        AdaptivePurification(_items(), _factory, tmp_path, min_images=0, max_epochs=1, batch_size=8, progress=False,
                             validation=_items(n=4, size=6)).run()
    assert not any(tmp_path.iterdir())


def test_inference_config_chains_a_kept_second_pass(tmp_path):
    """``dvae_natural`` inference reads the checkpoints the rule kept: two stages, or four when a second pass was."""
    from pathlib import Path

    from monai.bundle import ConfigParser

    def purifier(defence="dvae"):
        parser = ConfigParser()
        parser.read_config(str(Path(__file__).resolve().parents[2] / "bundles/dvae_natural/configs/inference.json"))
        parser.update({"ckpt_dir": str(tmp_path), "defence": defence, "in_channels": 1})
        return parser.get_parsed_content("purifier")

    one = purifier()
    assert [p.name for p in one.checkpoints] == ["dvae_stage1.pt", "dvae_stage2.pt"] and one.per_pass == 2
    for k in (1, 2):
        (tmp_path / f"dvae_pass2_stage{k}.pt").write_bytes(b"")
    two = purifier()
    assert [p.name for p in two.checkpoints][2:] == ["dvae_pass2_stage1.pt", "dvae_pass2_stage2.pt"]
    assert len(two.stages) == 4 and two.per_pass == 2
    assert [p.name for p in purifier("dvae_stage1").checkpoints] == ["dvae_stage1.pt"]


def test_a_purified_copy_flagged_within_noise_is_reported_as_such():
    """The check after purification tells a flag its own noise explains (LSP 4x after the second pass: 0.887 against
    0.88 on 1500 held-out images, two standard errors 0.017) from a clear one."""
    def result(linear):
        return PoisonCheckResult(scores={"linear": linear}, thresholds={"linear": 0.88}, poisoned=linear >= 0.88,
                                 score=linear - 0.88, n=3000, num_classes=10, chance=0.111)

    near, clear = result(0.887), result(0.953)
    assert not near.clearly_poisoned and clear.clearly_poisoned
    assert "FLAGGED ONLY WITHIN THE CHECK'S NOISE after purification (by 0.007" in near.summary(after=True)
    assert "STILL LOOKS POISONED after purification" in clear.summary(after=True)
    assert near.summary().split(";")[0].endswith("LOOKS POISONED: purify before training")  # before: always purify


def test_with_validation_images_a_first_copy_within_noise_is_not_judged_by_the_network(tmp_path, monkeypatch):
    """Validation images rank only clearly flagged copies: a first copy within noise, whose second pass is clearly
    flagged, is kept without training the variants."""
    seen = _fake_checks(monkeypatch, [0.01, 0.1])
    monkeypatch.setattr(adaptive_module, "probe_accuracy", lambda *a, **k: 0.9)
    AdaptivePurification(_items(), _factory, tmp_path, floors=(0.0005, 0.005), min_images=0, max_epochs=1,
                         batch_size=8, progress=False, validation=_items(n=6)).run()
    record = json.loads((tmp_path / "dvae_adaptive.json").read_text())
    assert len(seen) == 2 and record["kept"] == "perturbation floor 0.0005" and record["passes"] == 1
    assert not (tmp_path / "floor_0.0005_source_true").exists()
