"""A checkpoint carrying code is refused by every public loader, by name, and its code never runs."""

from __future__ import annotations

import ast
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from parameterized import parameterized
from torch import nn

from trust_monai.errors import InputFileError, TrustMonaiError

ROOT = Path(__file__).resolve().parents[2]


class _Payload:
    """Unpickling this calls ``os.system`` (the classic malicious checkpoint); it creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def _plant(kind: str, folder: Path) -> tuple[Path, Path]:
    """A malicious checkpoint as one arrives: a torch.save'd zip, a raw pickle, a state dict with a payload entry."""
    marker = folder / f"PWNED_{kind}"
    path = folder / f"evil_{kind}.pt"
    if kind == "torch_zip":
        torch.save({"weight": _Payload(marker)}, path)
    elif kind == "raw_pickle":
        with open(path, "wb") as f:
            pickle.dump(_Payload(marker), f, protocol=2)
    elif kind == "state_dict_plus_code":  # real weights, plus one entry that runs code
        torch.save({**nn.Linear(2, 2).state_dict(), "extra": _Payload(marker)}, path)
    else:
        raise ValueError(kind)
    assert not marker.exists()
    return path, marker


def _sanity_payload_works(tmp_path):
    """The payload really runs code when unpickled the unsafe way (or the test could not fail)."""
    path, marker = _plant("raw_pickle", tmp_path)
    with open(path, "rb") as f:
        pickle.load(f)  # noqa: S301 - on purpose: proves the planted file is live
    assert marker.exists()
    marker.unlink()


def test_planted_pickle_is_live(tmp_path):
    _sanity_payload_works(tmp_path)


def _load_state_dict(path):
    from trust_monai.utils.checkpoint import load_state_dict

    load_state_dict(nn.Linear(2, 2), path)


def _load_poison(path):
    from trust_monai.protect import load_poison

    load_poison(path)


def _load_detector(path):
    from trust_monai.detect.engine import load_detector

    load_detector(nn.Linear(2, 2), path)


def _dvae_purifier(path):
    from trust_monai.purify.dvae import DVAEPurifier

    DVAEPurifier(lambda: nn.Linear(2, 2), [path]).load()


def _umed_protector(path):
    import numpy as np

    from trust_monai.networks.umed_generator import UMedGenerator
    from trust_monai.protect.umed import UMedProtector

    protector = UMedProtector(UMedGenerator(spatial_dims=2, in_channels=1, num_classes=2), checkpoint=path)
    image = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    label = np.zeros((16, 16), np.uint8)
    label[4:8, 4:8] = 1
    protector.protect(image, label)


def _smoothing_models(path):
    from trust_monai.engines.certify import SmoothingModels
    from trust_monai.utils.checkpoint import load_state_dict

    load_state_dict(SmoothingModels(lambda: nn.Linear(2, 2), spatial_dims=2), path)


def _vit_backbone(path):
    from trust_monai.networks.moe_vit import build_vit

    build_vit("vit_tiny_patch16_224", pretrained_file=str(path), img_size=32, patch_size=16, embed_dim=32, depth=1,
              num_heads=2, num_classes=0)


LOADERS = [
    ("utils.checkpoint.load_state_dict", _load_state_dict),
    ("protect.load_poison", _load_poison),
    ("detect.engine.load_detector", _load_detector),
    ("purify.dvae.DVAEPurifier", _dvae_purifier),
    ("protect.umed.UMedProtector", _umed_protector),
    ("engines.certify.SmoothingModels", _smoothing_models),
    ("networks.moe_vit.build_vit", _vit_backbone),
]
CASES = [(f"{name}-{kind}", fn, kind) for name, fn in LOADERS
         for kind in ("torch_zip", "raw_pickle", "state_dict_plus_code")]


@parameterized.expand(CASES)
def test_code_carrying_checkpoint_refused(_name, loader, kind):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path, marker = _plant(kind, Path(tmp))
        with pytest.raises(InputFileError) as exc:
            loader(path)
        assert not marker.exists(), "the checkpoint's code ran"
        msg = str(exc.value)
        assert str(path) in msg, f"message does not name the file: {msg}"
        assert "\n" not in msg and len(msg) < 600


def test_certify_cifar_batches_refuse_code(tmp_path):
    """The CIFAR-10 reader (a pickle format) uses a restricted unpickler."""
    from trust_monai.engines.certify import load_cifar10

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "PWNED_cifar"
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": _Payload(marker), "labels": [0]}, f, protocol=2)
    with pytest.raises(TrustMonaiError) as exc:
        load_cifar10(tmp_path)
    assert not marker.exists()
    assert "test_batch" in str(exc.value)


def test_every_torch_load_is_weights_only():
    """Static check: every ``torch.load`` call in the library passes ``weights_only=True``; no pickle.load at all."""
    offenders = []
    for path in sorted((ROOT / "trust_monai").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            if re.fullmatch(r"(torch\.)?load", name) and name.endswith("load") and "torch" in name:
                kw = {k.arg: k.value for k in node.keywords}
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name} without weights_only=True")
            if name in ("pickle.load", "pickle.loads", "torch.serialization.load", "dill.load", "joblib.load"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert not offenders, "\n".join(offenders)
