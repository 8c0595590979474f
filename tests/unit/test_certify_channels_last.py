"""Channels-last sampling (the CPU default of Smooth / DualSmooth, a measured speed-up) certifies as the contiguous
layout does: same class counts, same predictions and radii, logits equal to float tolerance, for 2D and 3D inputs."""

from __future__ import annotations

import copy

import pytest
import torch
from parameterized import parameterized

from trust_monai.certify import DualSmooth, Smooth
from trust_monai.networks import HalfInput, SmallResNet

CASES = [("2d_1ch", 2, 1, (28, 28)), ("2d_3ch", 2, 3, (32, 32)), ("3d_1ch", 3, 1, (12, 12, 12))]


def _net(dims: int, chans: int) -> torch.nn.Module:
    torch.manual_seed(0)
    net = SmallResNet(dims, chans, 10, widths=[8, 16], blocks=[1, 1]).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so layout differences would show
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return net


@parameterized.expand(CASES)
def test_smooth_channels_last_equals_contiguous(_name, dims, chans, spatial):
    net = _net(dims, chans)
    x = torch.rand(chans, *spatial)
    ref, cl = Smooth(copy.deepcopy(net), 10, 0.5, seed=3, channels_last=False), Smooth(net, 10, 0.5, seed=3)
    for s in (ref, cl):
        assert s._counts(s.base_classifier, x, 0.5, 40, 20).sum() == 40
    ref.manual_seed(3)
    cl.manual_seed(3)
    for k in (40, 60):
        assert (ref._counts(ref.base_classifier, x, 0.5, k, 20) == cl._counts(cl.base_classifier, x, 0.5, k, 20)).all()
    fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
    assert net.stem[0].weight.is_contiguous(memory_format=fmt), "CPU default should run channels-last"
    ref.manual_seed(0)
    cl.manual_seed(0)
    assert ref.certify(x, 20, 100, 0.001, 50) == cl.certify(x, 20, 100, 0.001, 50)
    with torch.no_grad():
        xb = torch.rand(8, chans, *spatial)
        torch.testing.assert_close(ref.base_classifier(xb), net(xb.contiguous(memory_format=fmt)),
                                   rtol=1e-5, atol=1e-5)


def test_dual_smooth_channels_last_equals_contiguous():
    nets = [HalfInput(_net(2, 1), 2, w) for w in "lr"]
    x = torch.rand(1, 28, 28)
    ref = DualSmooth(*copy.deepcopy(nets), 10, 0.5, seed=1, channels_last=False)
    cl = DualSmooth(*nets, 10, 0.5, seed=1, channels_last=True)
    assert ref.certify(x, 20, 100, 0.001, 50) == cl.certify(x, 20, 100, 0.001, 50)
    assert ref.last_record.counts == cl.last_record.counts


@pytest.mark.slow  # torch.compile's warm-up (a C++ build) takes 10-30 s on 2 cores
def test_smooth_compile_option_certifies_alike():
    net = _net(2, 1)
    x = torch.rand(1, 28, 28)
    ref = Smooth(copy.deepcopy(net), 10, 0.5, seed=2, channels_last=False)
    comp = Smooth(net, 10, 0.5, seed=2, compile=True)
    assert ref.certify(x, 20, 100, 0.001, 50) == comp.certify(x, 20, 100, 0.001, 50)
    assert ref.last_record.counts == comp.last_record.counts
    with torch.no_grad():
        xb = torch.rand(50, 1, 28, 28)
        torch.testing.assert_close(ref.base_classifier(xb), comp._compiled[id(net)](xb), rtol=1e-5, atol=1e-5)


class _ViewNet(torch.nn.Module):
    """A classifier that flattens its conv features with ``.view``, which channels-last activations do not allow."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        f = self.conv(x)
        return self.fc(f.view(f.shape[0], -1))


def test_default_falls_back_to_plain_layout_for_view_models():
    torch.manual_seed(0)
    net, x = _ViewNet().eval(), torch.rand(3, 8, 8)
    ref = Smooth(copy.deepcopy(net), 10, 0.5, seed=4, channels_last=False)
    auto = Smooth(net, 10, 0.5, seed=4)
    assert ref.certify(x, 20, 100, 0.001, 30) == auto.certify(x, 20, 100, 0.001, 30)
    assert ref.last_record.counts == auto.last_record.counts  # the same noise stream despite the retried batch
    assert net.conv.weight.is_contiguous()
    with pytest.raises(RuntimeError):  # asked for explicitly: the error is not hidden
        Smooth(copy.deepcopy(net), 10, 0.5, channels_last=True).certify(x, 20, 100, 0.001, 30)
