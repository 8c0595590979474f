"""UMed's class code, the learnability-driven trainer, colour images and the reliance / field-of-view scoring."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.losses import DiceCELoss
from parameterized import parameterized
from PIL import Image

from trust_monai.engines.segmentation import VictimStudy, score_segmenter, victim_network
from trust_monai.errors import TrustMonaiError
from trust_monai.networks.umed_generator import UMedGenerator
from trust_monai.protect.umed import UMedProtector, UMedTrainer
from trust_monai.transforms.intensity import GreyChannelFirstd, to_luminance
from trust_monai.transforms.roi import contour_band

EPS = 4 / 255
SHAPES = [(2, (48, 40)), (3, (24, 20, 16))]


def _blob(spatial_dims, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = 0.3 + 0.4 * torch.rand((1, 1) + shape, generator=g)
    label = torch.zeros((1, 1) + shape)
    label[(0, 0) + tuple(slice(s // 4, s // 2) for s in shape)] = 1
    return image, label


@parameterized.expand(SHAPES)
def test_untrained_generator_is_a_class_code_using_the_whole_budget(spatial_dims, shape):
    torch.manual_seed(0)
    gen = UMedGenerator(spatial_dims, num_classes=2, channels=(4, 8), strides=(2,))
    image, label = _blob(spatial_dims, shape)
    with torch.no_grad():
        delta = gen(image, label)
    band, region = contour_band(label, gen.band_width)
    assert delta.abs().max() <= EPS + 1e-7
    assert (delta[region == 0] == 0).all()
    # the default texture code: background (its band part included) untouched, the foreground a checkerboard at
    # tanh(1.5) of the whole budget (texture_floor=1: flat voxels get it all, not a quarter)
    fg = label > 0
    assert (delta[(region > 0) & ~fg] == 0).all()
    assert delta[fg].abs().min() > 0.9 * EPS
    code = gen.class_pattern(torch.cat([1 - label, label], 1))
    assert (torch.sign(delta) == torch.sign(code))[fg].all()
    grid = torch.stack(torch.meshgrid(*[torch.arange(s) for s in shape], indexing="ij")).sum(0)
    assert (torch.sign(delta[0, 0])[fg[0, 0]] == (1 - 2 * (grid % 2))[fg[0, 0]]).all()


@parameterized.expand([("antipodal",), ("random",)])
def test_random_codes_are_fixed_sign_tiles(code):
    a = UMedGenerator.initial_code(code, 3, 1, 4, 2)
    assert a.abs().eq(1).all() and torch.equal(a, UMedGenerator.initial_code(code, 3, 1, 4, 2))
    assert torch.equal(a[0], -a[1]) == (code == "antipodal")


def test_code_free_generator_and_texture_scaling_keep_the_budget():
    gen = UMedGenerator(2, num_classes=2, channels=(4, 8), strides=(2,), pattern_size=0, texture_floor=0.25)
    image, label = _blob(2, (32, 32))
    with torch.no_grad():
        delta = gen(image, label)
    assert not hasattr(gen, "class_patterns")
    assert delta.abs().max() <= EPS + 1e-7
    assert (delta[contour_band(label, 2)[1] == 0] == 0).all()


def _loader(n=4, shape=(32, 32)):
    items = []
    for i in range(n):
        image, label = _blob(2, shape, seed=i)
        items.append({"image": image[0], "label": label[0]})
    return torch.utils.data.DataLoader(items, batch_size=2)


def _trainer(tmp_path, target_ratio, epochs=3):
    torch.manual_seed(0)
    gen = UMedGenerator(2, num_classes=2, channels=(4, 8), strides=(2,))
    nets = [victim_network(a, 2, 1, 2) for a in ("unet", "segresnet")]
    return UMedTrainer(
        device=torch.device("cpu"), max_epochs=epochs, train_data_loader=_loader(), network=nets[0],
        optimizer=torch.optim.Adam(nets[0].parameters(), 1e-3), loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        generator=gen, g_optimizer=torch.optim.Adam(gen.parameters(), 1e-3), extra_surrogates=[nets[1]],
        reinit_every=2, target_ratio=target_ratio, history_file=str(tmp_path / "history.json"),
    )


def test_trainer_stops_when_protected_loss_is_far_below_clean(tmp_path):
    trainer = _trainer(tmp_path, target_ratio=10.0)  # any first cycle satisfies it
    trainer.run()
    assert trainer.state.iteration == 2 and len(trainer.state.learnability) == 1
    rec = json.loads((tmp_path / "history.json").read_text())["cycles"][0]
    assert rec["ratio"] == pytest.approx(rec["protected_loss"] / rec["clean_loss"])
    assert rec["clean_loss"] > 0


def test_trainer_runs_to_max_epochs_and_reinitialises_surrogates(tmp_path):
    trainer = _trainer(tmp_path, target_ratio=0.0, epochs=2)
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(
        next(e.surrogates[1].parameters()).detach().clone()))
    trainer.run()
    assert trainer.state.iteration == 4 and len(trainer.state.learnability) == 2
    assert len(trainer.surrogates) == 2
    # iteration 2 ends a cycle: the surrogate after it is a fresh draw, not the one trained for two steps
    first_after_reset = seen[2]
    assert not torch.allclose(first_after_reset, seen[1])


def test_colour_images_become_luminance_and_colour_masks_are_refused():
    rgb = torch.rand(6, 5, 3)
    out = GreyChannelFirstd("image", 2, label_keys="label")({"image": rgb, "label": torch.zeros(6, 5)})
    assert out["image"].shape == (1, 6, 5) and out["label"].shape == (1, 6, 5)
    assert torch.allclose(out["image"][0], to_luminance(rgb))
    with pytest.raises(TrustMonaiError, match="RGB mask"):
        GreyChannelFirstd("image", 2, label_keys="label")({"image": rgb, "label": torch.zeros(6, 5, 3)})


def test_protect_colour_image_changes_every_channel_alike():
    torch.manual_seed(0)
    gen = UMedGenerator(2, num_classes=2, channels=(4, 8), strides=(2,))
    rng = np.random.default_rng(0)
    image = rng.integers(30, 220, (40, 36, 3)).astype(np.uint8)
    label = np.zeros((40, 36), np.uint8)
    label[10:25, 8:20] = 1
    out, metrics = UMedProtector(gen, num_classes=2).protect(image, label)
    diff = out.astype(int) - image
    assert (diff[..., 0] == diff[..., 1]).all() and (diff[..., 1] == diff[..., 2]).all()
    assert np.abs(diff).max() <= np.floor(metrics["epsilon_native"]) and np.abs(diff).max() > 0
    assert metrics["changed_outside_region"] == 0


def _png_dataset(root, n_train=3, n_test=2, with_fov=True):
    rng = np.random.default_rng(0)
    doc = {"labels": {"0": "background", "1": "vessel"}, "training": [], "test": []}
    for section, n in (("training", n_train), ("test", n_test)):
        for i in range(n):
            img = rng.integers(40, 200, (32, 32, 3)).astype(np.uint8)
            lab = np.zeros((32, 32), np.uint8)
            lab[8:20, 10:14] = 1
            img[lab > 0] = 30  # a dark vessel: learnable in one epoch
            fov = np.zeros((32, 32), np.uint8)
            fov[2:30, 2:30] = 1
            e = {}
            for key, arr in (("image", img), ("label", lab), ("fov", fov)):
                if key == "fov" and not with_fov:
                    continue
                (root / key).mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(root / key / f"{section}{i}.png")
                e[key] = f"{key}/{section}{i}.png"
            doc[section].append(e)
    (root / "dataset.json").write_text(json.dumps(doc))
    return root


def test_fov_limits_scoring_to_the_field_of_view(tmp_path):
    ds = _png_dataset(tmp_path / "ds")

    class Everywhere(torch.nn.Module):  # predicts foreground on every pixel
        def forward(self, x):
            return torch.cat([torch.zeros_like(x), torch.ones_like(x)], 1)

    from trust_monai.data import load_datalist

    files = load_datalist(ds, "test", keys=("image", "label", "fov"))
    inside = score_segmenter(Everywhere(), files, 2, 2, (32, 32))[0]["dice"]
    outside = score_segmenter(Everywhere(), [{k: v for k, v in f.items() if k != "fov"} for f in files], 2, 2,
                              (32, 32))[0]["dice"]
    vessel, fov = 12 * 4, 28 * 28
    assert inside == pytest.approx(2 * vessel / (vessel + fov), abs=1e-4)
    assert outside == pytest.approx(2 * vessel / (vessel + 32 * 32), abs=1e-4)


def test_subject_dice_pools_the_slices_of_one_subject(tmp_path):
    """Two slices of one volume are scored as the volume: a missed 2-pixel cap slice does not halve the subject's
    Dice; a file without a ``case`` is its own subject, and a subject without foreground is nan (left out of means)."""
    import nibabel as nib

    from trust_monai.engines.segmentation import subject_dice

    root = tmp_path / "slices"
    root.mkdir()
    label = np.zeros((3, 16, 16), np.uint8)
    label[0, 4:12, 4:12] = 1  # the lesion's centre slice: 64 pixels
    label[1, 13:14, 13:15] = 1  # its cap: 2 pixels, off the square
    files = []
    for k in range(3):
        for key, arr in (("image", label[k].astype(np.float32)), ("label", label[k])):
            nib.save(nib.Nifti1Image(arr, np.eye(4)), root / f"{key}{k}.nii.gz")
        files.append({"image": str(root / f"image{k}.nii.gz"), "label": str(root / f"label{k}.nii.gz"),
                      "case": "case00" if k < 2 else ""})

    class Centre(torch.nn.Module):  # predicts the centre slice's 8x8 square on every slice
        def forward(self, x):
            fg = torch.zeros_like(x)
            fg[..., 4:12, 4:12] = 1.0
            return torch.cat([1 - fg, fg], 1)

    rows = score_segmenter(Centre(), files, 2, 2, (16, 16))
    assert [r["dice"] for r in rows[:2]] == [pytest.approx(1.0), pytest.approx(0.0)]  # slice means would say 0.5
    dice = subject_dice(rows)
    assert set(dice) == {"case00", "image2.nii.gz"}
    # the square is predicted on both slices: 64 true positives, 128 predicted, 66 in the reference
    assert dice["case00"] == pytest.approx(2 * 64 / (128 + 66))
    assert np.isnan(dice["image2.nii.gz"])


def test_run_setup_hides_monais_expected_sparse_label_warnings_only(tmp_path):
    """Scoring a slice without a lesion makes MONAI warn that HD95 meets an empty class; after ``setup_run`` a user's
    console no longer shows that (expected) line, while any other warning still reaches them."""
    import warnings

    import nibabel as nib

    from trust_monai.bundle import setup_run

    for key in ("image", "label"):
        nib.save(nib.Nifti1Image(np.zeros((16, 16), np.float32 if key == "image" else np.uint8), np.eye(4)),
                 tmp_path / f"{key}.nii.gz")
    files = [{"image": str(tmp_path / "image.nii.gz"), "label": str(tmp_path / "label.nii.gz")}]
    net = torch.nn.Conv2d(1, 2, 1)
    with warnings.catch_warnings(record=True) as raw:
        warnings.simplefilter("always")
        score_segmenter(net, files, 2, 2, (16, 16))
    assert any("is all 0" in str(w.message) for w in raw)  # MONAI does warn: the filter below is not vacuous
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        setup_run(0)
        score_segmenter(net, files, 2, 2, (16, 16))
        warnings.warn("a real problem")
    assert [str(w.message) for w in seen] == ["a real problem"]


def test_victim_study_writes_reliance_and_curves(tmp_path):
    ds = _png_dataset(tmp_path / "ds")
    study = VictimStudy(ds, ds, tmp_path / "out", 2, 2, archs=["unet"], epochs=2, patch_size=(32, 32),
                        batch_size=4, seeds=[0, 1], eval_every=1, progress=False)
    rows = study.run()
    assert len(rows) == 4 and {r["seed"] for r in rows} == {0, 1}
    # the "changed" set is the clean set here: a victim cannot rely on a change that is not there
    assert all(r["reliance"] == pytest.approx(0.0, abs=1e-9) for r in rows)
    for name in ("metrics.csv", "metrics.md", "summary.md", "curves.csv", "curves.png", "dice.png", "per_case.csv"):
        assert (tmp_path / "out" / name).is_file()
    assert (tmp_path / "out" / "per_case.csv").read_text().count("\n") == 1 + 4 * 2  # 4 victims x 2 test cases
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "dice_std" in summary and summary.count("\n") == 4


def test_protect_drive_tiff_photograph_through_case_writer(tmp_path):
    """A DRIVE photograph as distributed (RGB LZW TIFF) with its manual mask as PNG: the protected copy is a TIFF of the
    same shape and type, every channel moved alike within eps, nothing outside mask + band, and it trains as before."""
    from trust_monai.data.io import read_image
    from trust_monai.engines.case_writer import CaseWriter
    from tests.unit.drive_case import photo_case

    ds, photo, mask = photo_case(tmp_path)
    before = photo.read_bytes()

    torch.manual_seed(0)
    gen = UMedGenerator(2, num_classes=2, channels=(4, 8), strides=(2,), epsilon=4 / 255)
    CaseWriter(ds, tmp_path / "out", UMedProtector(gen, num_classes=2), bundle="umed", progress=False).run()
    assert photo.read_bytes() == before  # input untouched
    src, _ = read_image(photo)
    out, meta = read_image(tmp_path / "out" / "images" / "21_training.tif")
    assert meta.format == "tiff" and out.shape == src.shape and out.dtype == np.uint8
    diff = out.astype(int) - src
    # one change for R, G and B, except where a channel is at the end of its range (a fundus red channel often is)
    free = ((src > 4) & (src < 251)).all(-1)
    assert free.mean() > 0.5
    assert (diff[free][:, 0] == diff[free][:, 1]).all() and (diff[free][:, 1] == diff[free][:, 2]).all()
    assert 0 < np.abs(diff).max() <= 4  # 4/255 of the photograph's window, rounded down to whole grey levels
    band, region = contour_band(torch.as_tensor(mask)[None, None].float(), gen.band_width)
    assert (diff[~(region[0, 0].numpy() > 0)] == 0).all()
    assert (diff[mask > 0] != 0).mean() > 0.5  # the class code reaches most vessel pixels
