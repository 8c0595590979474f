"""MoE-ViT: expert mixtures on a frozen timm ViT, gating, pixel-difference convolutions, input adaptation, peft baseline."""

from __future__ import annotations

import pytest
import torch
from parameterized import parameterized

from trust_monai.errors import TrustMonaiError
from trust_monai.networks.moe_vit import (
    PDC_KINDS,
    MoELoRALinear,
    MoEViT,
    NoisyTopKGate,
    PixelDifferenceConv2d,
    count_parameters,
    single_lora_vit,
)

TINY = dict(embed_dim=64, depth=2, num_heads=2, img_size=32, patch_size=8)
# (lora ranks, lora top-k, adapter kinds, adapter top-k, in_chans)
CONFIGS = [
    ((4, 8), 1, PDC_KINDS, 1, 1),
    ((2, 4, 8, 16), 2, ("central", "radial"), 1, 1),
    ((8,), 1, ("angular",), 1, 3),
    ((4, 8, 16), 3, PDC_KINDS, 4, 1),
]
RING = [(0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0)]


def _tiny(ranks=(4, 8), lk=1, kinds=PDC_KINDS, ak=1, in_chans=1, **kw):
    torch.manual_seed(0)
    return MoEViT(lora_ranks=ranks, lora_top_k=lk, adapter_kinds=kinds, adapter_top_k=ak, in_chans=in_chans,
                  **{**TINY, **kw})


def _explicit_pdc(kind, w, p, r0, c0):
    """The pixel-difference definitions written out, at output pixel (r0, c0) of image ``p``."""
    if kind == "vanilla":
        return sum(w[r, c] * p[r0 + r - 1, c0 + c - 1] for r in range(3) for c in range(3))
    if kind == "central":
        return sum(w[r, c] * (p[r0 + r - 1, c0 + c - 1] - p[r0, c0]) for r in range(3) for c in range(3))
    if kind == "angular":
        return sum(
            w[r, c] * (p[r0 + r - 1, c0 + c - 1] - p[r0 + RING[j - 1][0] - 1, c0 + RING[j - 1][1] - 1])
            for j, (r, c) in enumerate(RING)
        )
    return sum(w[r, c] * (p[r0 + 2 * (r - 1), c0 + 2 * (c - 1)] - p[r0 + r - 1, c0 + c - 1]) for r, c in RING)


class TestPixelDifferenceConv:
    @parameterized.expand([(k,) for k in PDC_KINDS])
    def test_equivalent_kernel_matches_definition(self, kind):
        torch.manual_seed(1)
        conv = PixelDifferenceConv2d(1, kind)
        x = torch.rand(1, 1, 9, 9)
        y = conv(x)[0, 0] - conv.bias[0]
        w, p = conv.weight[0, 0].detach(), x[0, 0]
        for r0, c0 in [(4, 4), (3, 5), (2, 6)]:
            assert y[r0, c0].item() == pytest.approx(_explicit_pdc(kind, w, p, r0, c0).item(), abs=1e-5)

    @parameterized.expand([("central",), ("angular",), ("radial",)])
    def test_difference_kinds_ignore_constant_images(self, kind):
        conv = PixelDifferenceConv2d(3, kind)
        x = torch.full((2, 3, 12, 12), 0.7)
        y = conv(x) - conv.bias.view(1, -1, 1, 1)
        assert y[..., 2:-2, 2:-2].abs().max() < 1e-5  # differences of a constant are zero (away from the padding)

    def test_unknown_kind_refused(self):
        with pytest.raises(TrustMonaiError, match="pixel-difference"):
            PixelDifferenceConv2d(4, "sobel")


class TestGate:
    def test_top_k_gates_and_balance_loss(self):
        gate = NoisyTopKGate(16, 5, top_k=2).train()
        torch.nn.init.normal_(gate.w_gate.weight)
        gates, index = gate(torch.randn(40, 16))
        assert gates.shape == (40, 5) and index.shape == (40, 2)
        assert ((gates > 0).sum(-1) == 2).all() and (gates.sum(-1) <= 1 + 1e-6).all()
        assert gate.balance_loss.requires_grad and gate.balance_loss.item() >= 0
        gate.balance_loss.backward()  # the smooth load estimate and importance are differentiable
        assert gate.w_gate.weight.grad.abs().sum() > 0 and gate.w_noise.weight.grad.abs().sum() > 0

    def test_balanced_routing_has_zero_loss(self):
        gate = NoisyTopKGate(4, 4, top_k=1, noisy=False).eval()
        gate.w_gate.weight.data = torch.eye(4) * 10
        gate(torch.eye(4))  # each input picks a different expert with the same probability
        assert gate.balance_loss.item() == pytest.approx(0.0, abs=1e-6)

    def test_top_k_out_of_range_refused(self):
        with pytest.raises(TrustMonaiError, match="top_k"):
            NoisyTopKGate(8, 3, top_k=4)


class TestMoEViT:
    @parameterized.expand(CONFIGS)
    def test_forward_backward_and_frozen_backbone(self, ranks, lk, kinds, ak, in_chans):
        net = _tiny(ranks, lk, kinds, ak, in_chans).train()
        x = torch.rand(6, in_chans, 32, 32)
        logits = net(x)
        assert logits.shape == (6, 2)
        bal = net.balance_loss()
        assert torch.isfinite(bal) and bal.item() >= 0
        (torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1] * 3)) + 0.01 * bal).backward()
        for name, p in net.named_parameters():
            expert = any(t in name for t in ("lora_", "adapters", ".gate.", "head"))
            assert p.requires_grad == expert, name
        assert len(net.gates()) == 2 * TINY["depth"]

    @parameterized.expand([c for c in CONFIGS if len(c[0]) > 1 and len(c[2]) > 1])
    def test_task_loss_trains_routers(self, ranks, lk, kinds, ak, in_chans):
        net = _tiny(ranks, lk, kinds, ak, in_chans).train()
        for name, p in net.named_parameters():  # trained experts (fresh ones add zero, so no router gradient)
            if p.requires_grad and "gate" not in name:
                torch.nn.init.normal_(p, std=0.05)
        logits = net(torch.rand(6, in_chans, 32, 32))
        torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1] * 3)).backward()  # no balance term
        # outputs are weighted by gate values, so even top-1 routing passes the task gradient to both routers
        for gate in (net.vit.blocks[-1].attn.qkv.gate, net.vit.blocks[-1].mlp.adapters.gate):
            assert gate.w_gate.weight.grad is not None and gate.w_gate.weight.grad.abs().sum() > 0

    @parameterized.expand(CONFIGS)
    def test_sparse_equals_dense(self, ranks, lk, kinds, ak, in_chans):
        net = _tiny(ranks, lk, kinds, ak, in_chans).eval()
        for p in net.parameters():  # non-zero experts, else both paths are trivially the backbone
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.05)
        x = torch.rand(5, in_chans, 32, 32)
        with torch.no_grad():
            sparse = net(x)
            net.set_dense(True)
            dense = net(x)
        torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-4)

    def test_starts_as_the_backbone(self):
        net = _tiny().eval()
        x = torch.rand(3, 1, 32, 32)
        qkv = net.vit.blocks[0].attn.qkv
        tokens = torch.randn(2, 17, 64)
        torch.testing.assert_close(qkv(tokens), qkv.base(tokens))  # zero-initialised LoRA B and adapter up-projections
        assert net(x).shape == (3, 2)

    def test_lora_ranks_and_expert_count(self):
        net = _tiny(ranks=(2, 4, 8))
        qkv = net.vit.blocks[0].attn.qkv
        assert isinstance(qkv, MoELoRALinear) and [a.shape[0] for a in qkv.lora_a] == [2, 4, 8]
        assert net.vit.blocks[0].mlp.adapters.kinds == list(PDC_KINDS)

    @parameterized.expand([((3, 32, 32),), ((1, 48, 40),), ((3, 20, 20),)])
    def test_input_adapted(self, shape):
        net = _tiny().eval()
        with torch.no_grad():
            assert net(torch.rand(2, *shape)).shape == (2, 2)

    @parameterized.expand([((2, 32, 32),), ((4, 32, 32),)])
    def test_wrong_channels_refused(self, shape):
        with pytest.raises(TrustMonaiError, match="channels"):
            _tiny()(torch.rand(1, *shape))

    def test_vit_b16_trainable_parameters(self):
        net = MoEViT(backbone="vit_base_patch16_224", img_size=224, patch_size=16, in_chans=3)
        n = count_parameters(net)
        print(f"MoE-ViT on ViT-B/16: {n} trainable of {count_parameters(net, False)} parameters")
        assert 10e6 < n <= 16e6
        with torch.no_grad():
            assert net.eval()(torch.rand(1, 3, 224, 224)).shape == (1, 2)

    def test_vit_s14_dinov2_trainable_parameters(self):
        # the shipped backbone's architecture (random weights here: the count does not depend on them)
        net = MoEViT(backbone="vit_small_patch14_dinov2", img_size=224, patch_size=14, in_chans=3)
        n = count_parameters(net)
        print(f"MoE-ViT on DINOv2 ViT-S/14 (224): {n} trainable of {count_parameters(net, False)} parameters")
        assert tuple(net.vit.patch_embed.grid_size) == (16, 16) and 4e6 < n < 8e6
        with torch.no_grad():
            assert net.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 2)  # any size is resized to 224


def test_single_lora_baseline():
    net = single_lora_vit(rank=4, **TINY)
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "head" in n for n in trainable)
    assert any("qkv.lora_A" in n for n in trainable)
    assert net(torch.rand(2, 1, 32, 32)).shape == (2, 2)
