"""D-VAE network, loss, two-stage training bookkeeping, ISS squeezes and defences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from parameterized import parameterized

from trust_monai.errors import DatalistError, TrustMonaiError
from trust_monai.networks.dvae import DVAE
from trust_monai.purify import DVAEPurifier, TwoStagePurification, dvae_loss, make_defence
from trust_monai.transforms.squeeze import (
    BitDepthReduce,
    BitDepthReduced,
    Grayscale,
    JPEGCompress,
    JPEGCompressd,
)

NET_CASES = [
    # spatial_dims, channels, image shape, labels: "class" (B,) or "map" (B, 1, *spatial)
    (2, (8, 16), (1, 28, 28), "class"),
    (2, (8, 16, 16), (3, 30, 26), "class"),  # odd sizes: padded inside, cropped back
    (2, (8, 16), (1, 32, 32), "map"),
    (3, (4, 8), (1, 15, 16, 17), "map"),
]


@parameterized.expand(NET_CASES)
def test_dvae_shapes(spatial_dims, channels, shape, labels):
    torch.manual_seed(0)
    net = DVAE(spatial_dims, shape[0], num_classes=4, channels=channels, latent_channels=4,
               latent_size=7 if labels == "class" and spatial_dims == 2 else None)
    x = torch.rand(2, *shape)
    y = torch.randint(0, 4, (2,)) if labels == "class" else torch.randint(0, 4, (2, 1, *shape[1:]))
    with torch.no_grad():
        rec, pert, mu, logvar = net.decompose(x, y)
    assert rec.shape == pert.shape == x.shape
    assert mu.shape == logvar.shape and mu.shape[1] == 4
    assert 0 <= float(rec.min()) and float(rec.max()) <= 1
    out = net(x)  # single-tensor inference form: deterministic reconstruction from the latent mean
    assert out.shape == x.shape and torch.equal(out, net(x))


def test_label_map_paints_class_vectors():
    """A one-class label map paints exactly that class's vector over the latent grid."""
    net = DVAE(2, 1, num_classes=3, channels=(4, 8), latent_channels=2)
    with torch.no_grad():
        net.class_embedding.copy_(torch.arange(3.0).view(3, 1, 1, 1).expand_as(net.class_embedding))
    lab = torch.full((1, 1, 8, 8), 2)
    e = net._embedding(lab, torch.Size([4, 4]))
    assert torch.allclose(e, torch.full_like(e, 2.0))
    lab[..., :4] = 0  # left half class 0
    e = net._embedding(lab, torch.Size([4, 4]))
    assert torch.allclose(e[..., :2], torch.zeros(1, 8, 4, 2)) and torch.allclose(e[..., 2:], torch.full((1, 8, 4, 2), 2.0))


def test_perturbation_branch_inputs():
    """What the perturbation branch may see: the class only, the encoder features, or only the rate-limited latent."""
    torch.manual_seed(0)
    x, y = torch.rand(2, 1, 16, 16), torch.tensor([3, 3])  # two different images of one class

    def perturbations(mode, silence_latent=False):
        net = DVAE(2, 1, 4, channels=(4, 8), latent_channels=2, latent_size=8, samplewise_perturbation=mode)
        if silence_latent:  # a latent that carries nothing about the image
            with torch.no_grad():
                net.to_mu.weight.zero_(), net.to_mu.bias.zero_()
        with torch.no_grad():
            return net.decompose(x, y, sample=False)[1]

    assert torch.equal(*perturbations(False))  # class-wise: one pattern per class
    assert not torch.allclose(*perturbations(True))  # sample-wise from the encoder features
    assert not torch.allclose(*perturbations("latent"))  # sample-wise from the latent ...
    assert torch.allclose(*perturbations("latent", silence_latent=True))  # ... and from nothing else
    assert not torch.allclose(*perturbations(True, silence_latent=True))
    with pytest.raises(ValueError, match="samplewise_perturbation"):
        DVAE(2, 1, 4, channels=(4, 8), samplewise_perturbation="features")


def test_plain_vae_has_no_perturbation():
    net = DVAE(2, 1, 10, channels=(4, 8), perturbation=False)
    rec, pert, _, _ = net.decompose(torch.rand(2, 1, 8, 8))
    assert pert is None and rec.shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="needs labels"):
        DVAE(2, 1, 10, channels=(4, 8)).decompose(torch.rand(1, 1, 8, 8))


def test_rate_constraint_is_a_hinge():
    """Below the target rate the KL term has no gradient; above it, it pulls the posterior back."""
    x = torch.rand(2, 1, 4, 4)
    rec = x.clone()
    for scale, has_grad in ((0.01, False), (3.0, True)):
        mu = torch.full((2, 3, 2, 2), scale, requires_grad=True)
        logvar = torch.zeros(2, 3, 2, 2, requires_grad=True)
        loss, parts = dvae_loss(x, rec, None, mu, logvar, rate_target=1.0, rate_weight=1.0)
        loss.backward()
        assert (mu.grad.abs().sum() > 0) == has_grad
        # rate in nats per latent position: 0.5 * sum_c mu^2 with unit variance
        assert parts["rate"] == pytest.approx(0.5 * 3 * scale**2, rel=1e-3)


def test_perturbation_floor():
    x = torch.rand(1, 1, 4, 4)
    mu, logvar = torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)
    small = torch.full_like(x, 0.01, requires_grad=True)  # energy 1e-4 < floor: no push towards zero
    loss, _ = dvae_loss(x, x, small, mu, logvar, 1.0, 0.0, perturbation_floor=0.002)
    big = torch.full_like(x, 0.2, requires_grad=True)
    loss_big, _ = dvae_loss(x, x, big, mu, logvar, 1.0, 0.0, perturbation_floor=0.002)
    assert float(loss_big) > float(loss)


def _tiny_dataset(n=24, size=8, labels=True, odd_one=False):
    items = []
    for i in range(n):
        s = size + 2 if odd_one and i == n - 1 else size
        item = {"image": torch.rand(1, s, s), "path": f"img{i}.png"}
        if labels:
            item["label"] = torch.tensor(i % 3)
        items.append(item)
    return items


def test_two_stage_training_resumes(tmp_path):
    factory = lambda: DVAE(2, 1, 3, channels=(4, 8), latent_channels=2, latent_size=4)  # noqa: E731
    kw = dict(ckpt_dir=tmp_path, max_epochs=1, stages=2, batch_size=8, progress=False)
    paths = TwoStagePurification(_tiny_dataset(), factory, **kw).run()
    assert [p.name for p in paths] == ["dvae_stage1.pt", "dvae_stage2.pt"]
    mtimes = [p.stat().st_mtime_ns for p in paths]
    TwoStagePurification(_tiny_dataset(), factory, **kw).run()  # same data and settings: reused
    assert [p.stat().st_mtime_ns for p in paths] == mtimes
    purifier = make_defence("dvae", factory, paths)
    x = torch.rand(4, 1, 8, 8)
    out = purifier.apply(x, None, torch.tensor([0, 1, 2, 0]))
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert isinstance(purifier, DVAEPurifier) and len(purifier.fingerprint()) == 33


def test_missing_labels_and_mixed_sizes_fail_before_training(tmp_path):
    factory = lambda: DVAE(2, 1, 3, channels=(4, 8))  # noqa: E731
    with pytest.raises(DatalistError, match="img0.png"):
        TwoStagePurification(_tiny_dataset(labels=False), factory, tmp_path, progress=False).run()
    with pytest.raises(DatalistError, match="img23.png"):
        TwoStagePurification(_tiny_dataset(odd_one=True), factory, tmp_path, progress=False).run()
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------ squeezes

SQUEEZE_CASES = [
    (JPEGCompress(10), (1, 28, 28)),
    (JPEGCompress(10), (3, 32, 32)),
    (JPEGCompress(10), (1, 16, 16, 5)),  # 3D: slice by slice
    (BitDepthReduce(2), (1, 28, 28)),
    (BitDepthReduce(2), (1, 8, 8, 8)),
    (Grayscale(), (3, 16, 16)),
]


@parameterized.expand(SQUEEZE_CASES)
def test_squeeze_shape_range_type(op, shape):
    rng = np.random.default_rng(0)
    x = rng.random(shape).astype(np.float32)
    for img in (x, torch.from_numpy(x)):
        out = op(img)
        assert type(out) is type(img) and tuple(out.shape) == shape
        o = np.asarray(out)
        assert o.min() >= 0 and o.max() <= 1 and not np.allclose(o, x)


def test_bit_depth_levels_and_grayscale_channels():
    x = torch.rand(1, 32, 32)
    assert len(torch.unique(BitDepthReduce(2)(x))) <= 4
    rgb = torch.rand(3, 8, 8)
    g = Grayscale()(rgb)
    assert torch.allclose(g[0], g[1]) and torch.allclose(g[1], g[2])
    grey = torch.rand(1, 8, 8)
    assert Grayscale()(grey) is grey


def test_jpeg_removes_high_frequency_noise_more_than_content():
    """JPEG-10 on a real image: the change it makes to a +-8/255 checkerboard is mostly the checkerboard."""
    from skimage.data import camera

    img = torch.from_numpy(camera()[::4, ::4].astype(np.float32) / 255.0)[None]
    yy, xx = torch.meshgrid(torch.arange(img.shape[1]), torch.arange(img.shape[2]), indexing="ij")
    noise = ((yy + xx) % 2 * 2 - 1).float()[None] * 8 / 255
    poisoned = (img + noise).clamp(0, 1)
    out = JPEGCompress(10)(poisoned)
    left = float(((out - img) * noise).sum() / noise.pow(2).sum())  # share of the noise still in the output
    assert left < 0.2


def test_dict_twins_and_bad_input():
    d = {"image": torch.rand(1, 8, 8), "label": 1}
    assert JPEGCompressd("image")(d)["image"].shape == (1, 8, 8)
    assert len(torch.unique(BitDepthReduced("image", bits=1)(d)["image"])) <= 2
    with pytest.raises(TrustMonaiError, match="NaN"):
        JPEGCompress()(torch.full((1, 4, 4), float("nan")))
    with pytest.raises(TrustMonaiError, match="channel-first"):
        BitDepthReduce()(torch.rand(4, 4))
    with pytest.raises(TrustMonaiError, match="quality"):
        JPEGCompress(0)
    with pytest.raises(TrustMonaiError, match="unknown defence"):
        make_defence("median")


# ------------------------------------------------------------------------------------------------ medical


def _med_purifier(spatial_dims, num_classes=3):
    torch.manual_seed(0)
    net = DVAE(spatial_dims, 1, num_classes, channels=(4, 8), latent_channels=2)
    p = DVAEPurifier(lambda: net, [], reconstruct=False)
    p.stages = torch.nn.ModuleList([net.eval()])
    p._loaded = True  # fresh weights stand in for trained ones: the processor's bookkeeping is what is tested
    return p


@parameterized.expand([(2, np.int16), (3, np.float32)])
def test_case_processor_keeps_dtype_shape_and_out_of_window_values(spatial_dims, dtype):
    from trust_monai.errors import CaseError
    from trust_monai.purify.medical import DVAECaseProcessor

    rng = np.random.default_rng(0)
    shape = (20, 18) if spatial_dims == 2 else (12, 10, 6)
    img = (rng.random(shape) * 1000).astype(dtype)
    img.flat[0] = 30000  # far outside the percentile window: purification must not clip it away
    lab = rng.integers(0, 3, shape)
    proc = DVAECaseProcessor(_med_purifier(spatial_dims), num_classes=3, spatial_dims=spatial_dims)
    out, metrics = proc.purify(img, lab)
    assert out.dtype == img.dtype and out.shape == img.shape
    # the change is bounded by the window width (~1000), so the value stays far above the window
    assert abs(float(out.flat[0]) - 30000) <= 1001 and "psnr" in metrics
    with pytest.raises(CaseError, match="outside 0..2"):
        proc.purify(img, lab + 1)
    bad = img.astype(np.float32)
    bad[1, 1] = np.nan
    with pytest.raises(CaseError, match="NaN"):
        proc.purify(bad, lab)
    with pytest.raises(CaseError, match="spatial_dims"):
        proc.purify(img[..., 0], lab[..., 0])


def test_segmentation_items_names_cases_without_labels():
    import json
    import tempfile
    from pathlib import Path

    import trust_monai.data as data
    from trust_monai.purify.medical import segmentation_items

    src = Path(data.prepare("synthetic_2d"))
    dl = json.loads((src / "dataset.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for e in dl["training"][:3]:
            for k in ("image", "label"):
                (tmp / e[k]).parent.mkdir(parents=True, exist_ok=True)
                (tmp / e[k]).write_bytes((src / e[k]).read_bytes())
        entries = [dict(e) for e in dl["training"][:3]]
        del entries[1]["label"]
        (tmp / "dataset.json").write_text(json.dumps({"training": entries}))
        with pytest.raises(DatalistError, match=entries[1]["image"].split("/")[-1]):
            segmentation_items(tmp, 2, progress=False)
        entries[1]["label"] = dl["training"][1]["label"]
        (tmp / "dataset.json").write_text(json.dumps({"training": entries}))
        items = segmentation_items(tmp, 2, progress=False)
        assert len(items) == 3 and len({tuple(i["image"].shape) for i in items}) == 1
        assert all(i["image"].shape[1] % 4 == 0 for i in items)


def test_purify_matrix_table_over_victim_seeds(tmp_path):
    """scripts/purify_matrix.py: several victim seeds per cell give mean ± sample std; rows from before seeds were
    recorded count as the grid's seed."""
    import csv
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "purify_matrix.py"
    spec = importlib.util.spec_from_file_location("purify_matrix", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    grid = {"attacks": {"none": {}, "lsp": {}}, "defences": {"none": {}, "dvae": {}}, "seed": 7}
    rows = [
        {"attack": "lsp", "defence": "none", "clean_test_acc": "0.5245"},  # an old row: no victim_seed
        {"attack": "lsp", "defence": "dvae", "clean_test_acc": "0.8000", "victim_seed": "7"},
        {"attack": "lsp", "defence": "dvae", "clean_test_acc": "0.8200", "victim_seed": "8"},
    ]
    mod._write(rows, tmp_path, grid)
    md = (tmp_path / "matrix.md").read_text()
    assert "| lsp | 52.45 | 81.00 ± 1.41 (n=2) |" in md and "standard deviation over victim seeds" in md
    assert not any(line.startswith("| none |") for line in md.splitlines())  # attacks with no measured cell: no row
    written = list(csv.DictReader((tmp_path / "matrix.csv").open()))
    assert [r["victim_seed"] for r in written] == ["7", "7", "8"]
    assert {(r["attack"], r["defence"], mod._seed(r, grid)) for r in written} == {
        ("lsp", "none", 7), ("lsp", "dvae", 7), ("lsp", "dvae", 8)}
    assert (tmp_path / "matrix.png").stat().st_size > 0


def test_purify_matrix_runs_sharing_a_work_folder_keep_each_others_rows(tmp_path):
    """Two runs side by side in one work folder: each records its cells by merging with what is on disk under a lock,
    so the second run's write keeps the row the first one wrote after the second had started, and a cell already on
    record is not duplicated."""
    import csv
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "purify_matrix.py"
    spec = importlib.util.spec_from_file_location("purify_matrix", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    grid = {"attacks": {"lsp": {}, "ar": {}}, "defences": {"none": {}, "dvae": {}}, "seed": 0}
    first = [{"attack": "lsp", "defence": "dvae", "clean_test_acc": "0.7679", "victim_seed": "0"}]
    second = [{"attack": "ar", "defence": "dvae", "clean_test_acc": "0.7567", "victim_seed": "0"}]
    mod._record(first, tmp_path, grid)  # run 1 finishes a cell; run 2 started before and never read it
    mod._record(second, tmp_path, grid)
    rows = mod._record(second, tmp_path, grid)  # recorded again (a retry): still one row
    written = list(csv.DictReader((tmp_path / "matrix.csv").open()))
    assert sorted((r["attack"], r["clean_test_acc"]) for r in written) == [("ar", "0.7567"), ("lsp", "0.7679")]
    assert len(rows) == 2
    md = (tmp_path / "matrix.md").read_text()
    assert "| lsp | 76.79 |" in md and "| ar | 75.67 |" in md


def test_purify_matrix_refuses_a_name_the_grid_lacks_and_takes_a_given_folder_as_an_attack(tmp_path):
    """A typo in --only_attacks used to run nothing and say nothing; a folder given with --attack_dir needs no grid
    entry."""
    import importlib.util
    import json
    from pathlib import Path

    import pytest

    path = Path(__file__).resolve().parents[2] / "scripts" / "purify_matrix.py"
    spec = importlib.util.spec_from_file_location("purify_matrix", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"attacks": {"lsp": {}}, "defences": {"none": {}, "dvae": {}}, "max_train": 10,
                                "victim_epochs": 1}))
    with pytest.raises(SystemExit, match=r"--only_attacks: lsp_p1 not in the grid's attacks .*: lsp"):
        mod.main(["--work", str(tmp_path / "w"), "--grid", str(grid), "--only_attacks", "lsp_p1"])
    with pytest.raises(SystemExit, match=r"--only_defences: dave not in the grid's defences: none, dvae"):
        mod.main(["--work", str(tmp_path / "w"), "--grid", str(grid), "--only_defences", "none,dave"])
    assert mod._subset("dvae,none", {"none": {}, "dvae": {}}, "--x", "defences") == ["dvae", "none"]
    assert mod._subset("", {"none": {}, "dvae": {}}, "--x", "defences") == ["none", "dvae"]


def test_purify_class_shift_recovers_a_classwise_pattern_on_fashion_mnist(tmp_path):
    """scripts/purify_class_shift.py on real Fashion-MNIST: a received set with one +-40/255 random pattern per class
    (about LSP at 4x, whose measured shifts are 17-22/255 RMS) gets shifts that match the patterns, and the shifted copy
    is closer to the clean images than the received one; a validation set missing a class stops with a message. With
    100 images per class on each side the estimate's own noise is about 90 * sqrt(2 / 100) = 13/255 per pixel (the
    images' spread is about 90/255), so the correlation would be about 40 / sqrt(40^2 + 13^2) = 0.95 without clipping;
    the black background clips the negative half of each pattern to 0, and the lowest class measures 0.86."""
    import importlib.util
    import json
    from pathlib import Path

    import numpy as np
    import pytest
    from PIL import Image

    import trust_monai.data as data

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("purify_class_shift", root / "scripts" / "purify_class_shift.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    clean = Path(data.prepare("fashion_mnist"))
    items = json.loads((clean / "dataset.json").read_text())["training"]
    rng = np.random.default_rng(0)
    pattern = rng.choice([-40, 40], size=(10, 28, 28))
    received, val = tmp_path / "received", tmp_path / "val"
    for folder, chunk, add in ((received, items[:1000], True), (val, items[1000:2000], False)):
        for it in chunk:
            x = np.asarray(Image.open(clean / it["image"]), dtype=np.int64)
            x = np.clip(x + pattern[int(it["label"])], 0, 255) if add else x
            (folder / it["image"]).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x.astype(np.uint8)).save(folder / it["image"])
        (folder / "dataset.json").write_text(json.dumps({"training": chunk}))
    assert mod.main(["--input", str(received), "--validation", str(val), "--output", str(tmp_path / "out")]) == 0
    x, y = mod._load(received, items[:1000])
    shift = mod.class_shift(x, y, *mod._load(val, items[1000:2000]))
    assert min(np.corrcoef(shift[c].ravel(), pattern[c].ravel())[0, 1] for c in range(10)) > 0.8
    cx, _ = mod._load(clean, items[:1000])
    out, _ = mod._load(tmp_path / "out", items[:1000])
    assert np.abs(out - cx).mean() < 0.5 * np.abs(x - cx).mean()
    (val / "dataset.json").write_text(json.dumps({"training": [i for i in items[1000:2000] if i["label"] != 3]}))
    with pytest.raises(SystemExit, match=r"class\(es\) \[3\]"):
        mod.main(["--input", str(received), "--validation", str(val), "--output", str(tmp_path / "out2")])


def test_purify_matrix_budget_sweep_rows_and_plot(tmp_path):
    """A budget-sweep grid (attacks labelled with family and strength): the table keeps one row per strength in the
    grid's order and sweep.png is drawn; a grid without labels draws no sweep picture."""
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("purify_matrix", root / "scripts" / "purify_matrix.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    grid = json.loads((root / "configs" / "grids" / "purify_sweep.json").read_text())
    assert {"blocks@4", "blocks@32", "em_classwise@16", "lsp@4x", "ar@2x"} <= set(grid["attacks"])
    assert grid["attacks"]["blocks@16"]["epsilon"] == round(16 / 255, 6)
    rows = [{"attack": a, "defence": d, "clean_test_acc": acc, "victim_seed": "0"} for a, d, acc in [
        ("none", "none", "0.85"), ("blocks@16", "none", "0.27"), ("blocks@8", "dvae", "0.80"),
        ("blocks@16", "dvae", "0.60"), ("blocks@8", "none", "0.40")]]
    mod._write(rows, tmp_path, grid)
    md = (tmp_path / "matrix.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in md[2:5]] == ["| none", "| blocks@8", "| blocks@16"]
    assert "| blocks@16 | 27.00 | 60.00 |" in md
    assert (tmp_path / "sweep.png").stat().st_size > 0
    mod._write(rows[:2], tmp_path / "plain", {"attacks": {"none": {}, "blocks@16": {}}, "defences": {"none": {}}})
    assert not (tmp_path / "plain" / "sweep.png").exists()


def test_purify_drive_colour_photograph_in_its_own_orientation(tmp_path):
    """A DRIVE photograph (RGB TIFF, 584 x 565) with its PNG mask through the D-VAE case processor: the purifier sees
    the grey luminance in MONAI's axis order, and its change comes back into R, G and B alike, on the mask's pixels in
    the file's own orientation (a transposed change would land off the vessels), input untouched."""
    from trust_monai.data.io import read_image
    from trust_monai.engines.case_writer import CaseWriter
    from trust_monai.purify.medical import DVAECaseProcessor
    from tests.unit.drive_case import photo_case

    ds, photo, mask = photo_case(tmp_path)
    before = photo.read_bytes()

    seen = []

    class BrightenLabel(torch.nn.Module):
        """Stands in for a trained purifier: a change only where the label is, so its placement can be checked."""

        def apply(self, x, index=None, y=None):
            seen.append(tuple(x.shape))
            return (x + 0.02 * (y > 0)).clamp(0, 1)

    CaseWriter(ds, tmp_path / "out", DVAECaseProcessor(BrightenLabel(), num_classes=2, spatial_dims=2),
               bundle="dvae", progress=False).run()
    assert photo.read_bytes() == before
    assert seen == [(1, 1, 565, 584)]  # one grey channel, (cols, rows) as MONAI's loader gives
    src, _ = read_image(photo)
    out, meta = read_image(tmp_path / "out" / "images" / "21_training.tif")
    assert meta.format == "tiff" and out.shape == src.shape == (584, 565, 3) and out.dtype == np.uint8
    diff = out.astype(int) - src
    free = ((src > 8) & (src < 247)).all(-1)
    assert (diff[free][:, 0] == diff[free][:, 1]).all() and (diff[free][:, 1] == diff[free][:, 2]).all()
    moved = (diff != 0).any(-1)
    assert moved[free & (mask > 0)].mean() > 0.95 and not moved[mask == 0].any()


def test_purify_matrix_validation_set_holds_images_no_victim_sees(tmp_path):
    """--validation N: the N clean training images after the victims' max_train, copied with their labels into a
    datalist the classification loader reads; asking for more than there are stops with a message."""
    import importlib.util
    import json
    from pathlib import Path


    from trust_monai.data.classification import ImageClassificationDataset

    path = Path(__file__).resolve().parents[2] / "scripts" / "purify_matrix.py"
    spec = importlib.util.spec_from_file_location("purify_matrix", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from PIL import Image

    clean = tmp_path / "clean"
    (clean / "train").mkdir(parents=True)
    entries = []
    for i in range(6):
        Image.fromarray(np.full((4, 4), 40 * i, np.uint8)).save(clean / "train" / f"{i}.png")
        entries.append({"image": f"train/{i}.png", "label": i % 3})
    (clean / "dataset.json").write_text(json.dumps({"training": entries, "test": []}))
    out = mod._validation_set(clean, tmp_path / "work", start=4, count=2)
    ds = ImageClassificationDataset(out, "training", 0, 1, False)
    assert len(ds) == 2 and ds.labels.tolist() == [1, 2]
    assert ds.images[:, 0, 0, 0].tolist() == [160, 200]
    with pytest.raises(SystemExit, match="only 2 training images"):
        mod._validation_set(clean, tmp_path / "work2", start=4, count=3)
