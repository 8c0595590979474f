"""``trust-monai certify --bundle DIR``: a tiny MONAI bundle in model-zoo layout (configs/inference.json with
network_def and preprocessing, models/model.pt) certified through the command line, and the bad inputs of issue 23
refused with one clear error before any sampling."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trust_monai.cli import main
from trust_monai.networks import SmallResNet

NET = {"_target_": "trust_monai.networks.SmallResNet", "spatial_dims": 2, "in_channels": 1, "num_classes": 3,
       "widths": [4, 8], "blocks": [1, 1]}
PRE = {"_target_": "Compose", "transforms": [
    {"_target_": "LoadImaged", "keys": "image", "image_only": True},
    {"_target_": "EnsureChannelFirstd", "keys": "image"},
    {"_target_": "ScaleIntensityd", "keys": "image"},
]}


def _bundle(root: Path, net: dict | None = NET, weights: bool = True, pre: dict | None = PRE,
            weights_channels: int | None = None) -> Path:
    """The bundle folder; its weights fit ``net`` unless ``weights_channels`` says otherwise."""
    b = root / "tiny_bundle"
    (b / "configs").mkdir(parents=True)
    cfg: dict = {}
    if net is not None:
        cfg["network_def"] = net
    if pre is not None:
        cfg["preprocessing"] = pre
    (b / "configs" / "inference.json").write_text(json.dumps(cfg))
    (b / "configs" / "metadata.json").write_text(json.dumps({"version": "0.1.0", "name": "tiny"}))
    if weights:
        (b / "models").mkdir()
        torch.manual_seed(0)
        ch = weights_channels or (net or NET)["in_channels"]
        torch.save(SmallResNet(2, ch, 3, widths=[4, 8], blocks=[1, 1]).state_dict(), b / "models" / "model.pt")
    return b


def _images(root: Path, n: int = 3) -> Path:
    d = root / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(d / f"img{i}.png")
    return d


def _rows(out: Path) -> list[dict]:
    with open(out / "certify.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_certify_bundle_fixed_and_decide(tmp_path):
    b, imgs = _bundle(tmp_path), _images(tmp_path)
    main(["certify", str(imgs), str(tmp_path / "fixed"), "--bundle", str(b), "--n0", "10", "--n", "100",
          "--batch_size", "50", "--sigma", "0.25"])
    rows = _rows(tmp_path / "fixed")
    assert [Path(r["image"]).name for r in rows] == ["img0.png", "img1.png", "img2.png"]
    assert all(r["mode"] == "fixed" and int(r["samples_used"]) == 110 for r in rows)
    assert all(int(r["prediction"]) in (-1, 0, 1, 2) for r in rows)
    main(["certify", str(imgs), str(tmp_path / "decide"), "--bundle", str(b), "--mode", "decide", "--radius", "0.1",
          "--n0", "10", "--n", "2000", "--batch_size", "100", "--sigma", "0.25"])
    rows = _rows(tmp_path / "decide")
    for r in rows:
        assert r["mode"] == "decide"
        assert 10 < int(r["samples_used"]) <= 2010
        assert float(r["radius"]) in (0.0, 0.1)
    summary = json.loads((tmp_path / "decide" / "summary.json").read_text())
    assert summary["task"] == "classification" and summary["num_classes"] == 3 and summary["images"] == 3


BAD = [
    ("no_network_def", dict(net=None), [], "no network_def"),
    ("no_weights", dict(weights=False), [], "no weights"),
    ("network_rejects_images", dict(net={**NET, "in_channels": 3}), [], "does not accept the images"),
    ("weights_do_not_fit", dict(weights_channels=2), [], "weights do not match"),
    ("radius_zero", {}, ["--mode", "decide", "--radius", "0"], "radius must be"),
    ("budget_too_small", {}, ["--mode", "decide", "--radius", "1.0", "--n", "50"], "max_samples >= "),
    ("unknown_option", {}, ["--nn", "5"], "--nn"),
]


@pytest.mark.parametrize("_,bundle_kw,extra,message", BAD)
def test_certify_bundle_bad_input(_, bundle_kw, extra, message, tmp_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "randn", lambda *a, **k: calls.append(1))  # any sampling would show here
    b, imgs = _bundle(tmp_path, **bundle_kw), _images(tmp_path, 1)
    with pytest.raises(SystemExit) as e:
        main(["certify", str(imgs), str(tmp_path / "out"), "--bundle", str(b), "--n0", "10", "--n", "100",
              "--batch_size", "50", *extra])
    assert e.value.code == 1
    assert message in capsys.readouterr().err
    assert calls == []
    assert not (tmp_path / "out" / "certify.csv").exists()


@pytest.mark.slow
def test_certify_bundle_console_script(tmp_path):
    """The installed entry point, as a user runs it (a separate process: imports included)."""
    b, imgs = _bundle(tmp_path), _images(tmp_path, 2)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "trust_monai", "certify", str(imgs), str(out), "--bundle", str(b),
                           "--mode", "adaptive", "--n0", "10", "--n", "500", "--batch_size", "100"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = _rows(out)
    assert len(rows) == 2 and all(r["mode"] == "adaptive" and int(r["samples_used"]) <= 510 for r in rows)


def test_certify_bundle_noise_finetune(tmp_path):
    """--noise_finetune_epochs fine-tunes a copy on --train's labelled training section, saves it in the output,
    certifies with it, and leaves the bundle's own weights untouched."""
    b, imgs = _bundle(tmp_path), _images(tmp_path, 4)
    before = (b / "models" / "model.pt").read_bytes()
    train = {"training": [{"image": f"imgs/img{i}.png", "label": i % 3} for i in range(4)],
             "test": [{"image": "imgs/img0.png", "label": 0}, {"image": "imgs/img1.png", "label": 1}]}
    (tmp_path / "data.json").write_text(json.dumps(train))
    out = tmp_path / "ft"
    main(["certify", str(tmp_path / "data.json"), str(out), "--bundle", str(b), "--noise_finetune_epochs", "1",
          "--train", str(tmp_path / "data.json"), "--n0", "10", "--n", "100", "--batch_size", "50"])
    assert (out / "model_noise_finetuned.pt").is_file()
    tuned = torch.load(out / "model_noise_finetuned.pt", weights_only=True)
    orig = torch.load(b / "models" / "model.pt", weights_only=True)
    assert any(not torch.equal(tuned[k], orig[k]) for k in orig if orig[k].is_floating_point())
    assert (b / "models" / "model.pt").read_bytes() == before
    rows = _rows(out)
    assert [int(r["label"]) for r in rows] == [0, 1]
    assert all(r["correct"] in ("True", "False") for r in rows)
    assert json.loads((out / "summary.json").read_text())["noise_finetune_epochs"] == 1
    with pytest.raises(SystemExit):
        main(["certify", str(imgs), str(tmp_path / "ft2"), "--bundle", str(b), "--noise_finetune_epochs", "1"])
