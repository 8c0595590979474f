"""CertifyClassification's modes (fixed | decide | adaptive): per-image ``mode`` / ``samples_used`` in certify.csv,
forward passes in the summary, and settings refused when the run is configured (issue 23)."""

from __future__ import annotations

import csv

import pytest
import torch

from trust_monai.engines.certify import CertifyClassification, SmoothingModels
from trust_monai.errors import TrustMonaiError


def _net():
    """Two classes by the sign of the image mean, with a wide margin (16 pixels, logit gap 20 * mean)."""
    lin = torch.nn.Linear(16, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([-torch.ones(16), torch.ones(16)]) * 10 / 16)
        lin.bias.zero_()
    return torch.nn.Sequential(torch.nn.Flatten(), lin)


def _run(tmp_path, **kw):
    models = SmoothingModels(_net, 2, members=["rs"])
    ckpt = tmp_path / "m.pt"
    torch.save(models.state_dict(), ckpt)
    data = [{"image": torch.full((1, 4, 4), 1.0 if i % 2 else -1.0), "label": i % 2, "rel": f"{i}.png"}
            for i in range(4)]
    out = tmp_path / "out"
    runner = CertifyClassification(tmp_path, out, SmoothingModels(_net, 2, members=["rs"]), ckpt, 2, n0=20,
                                   n=2000, alpha=0.001, batch_size=500, max_samples=4, methods=["rs"], dataset=data,
                                   progress=False, **kw)
    runner.run()
    with open(out / "certify.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(out / "certified_accuracy.csv", newline="") as f:
        table = list(csv.DictReader(f))
    return rows, table


MODES = [("fixed", {}, 2020), ("decide", {"radius": 0.5}, 400), ("adaptive", {}, 2020)]


@pytest.mark.parametrize("mode,kw,most", MODES)
def test_modes_record_samples_used(mode, kw, most, tmp_path):
    rows, table = _run(tmp_path, mode=mode, **kw)
    assert len(rows) == 4
    for r in rows:
        assert r["mode"] == mode
        used = int(r["samples_used"])
        assert used == int(r["n0"]) + int(r["n"])
        assert used <= most
        assert r["correct"] == "True"
        if mode == "decide":
            assert float(r["radius"]) == 0.5  # certified at the asked radius
    assert float(table[0]["forward_passes"]) == pytest.approx(sum(int(r["samples_used"]) for r in rows) / 4)
    assert table[0]["mode"] == mode


BAD = [
    ("unknown_mode", dict(mode="sometimes"), "mode"),
    ("decide_without_radius", dict(mode="decide"), "radius"),
    ("decide_negative_radius", dict(mode="decide", radius=-0.5), "radius"),
    ("decide_budget_too_small", dict(mode="decide", radius=3.0, n=200, n0=10, batch_size=100), "max_samples >= "),
    ("adaptive_negative_tolerance", dict(mode="adaptive", tolerance=-1.0), "tolerance"),
]


@pytest.mark.parametrize("_,kw,match", BAD)
def test_modes_refused_when_configured(_, kw, match):
    models = SmoothingModels(lambda: torch.nn.Identity(), 2)
    with pytest.raises(TrustMonaiError, match=match):
        CertifyClassification("/nonexistent", "/nonexistent/out", models, "/nonexistent.pt", 10, **kw)
