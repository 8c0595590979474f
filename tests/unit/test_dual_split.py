"""Dual split by coordinate parity: exact inverse, the parity rule, 2D and 3D, and the half-reading network wrapper."""

from __future__ import annotations

import itertools

import pytest
import torch
from parameterized import parameterized

from trust_monai.errors import TrustMonaiError
from trust_monai.networks.half_input import HalfInput, fill_half
from trust_monai.transforms import DualMerge, DualMerged, DualSplit, DualSplitd, dual_merge, dual_split

SHAPES = [((1, 4, 6), 2), ((3, 5, 8), 2), ((2, 7, 2), 2), ((1, 3, 4, 6), 3), ((2, 5, 3, 4), 3), ((1, 2, 2, 2), 3)]


class TestDualSplit:
    @parameterized.expand(SHAPES)
    def test_merge_is_exact_inverse(self, shape, sd):
        x = torch.randn(shape)
        x_l, x_r = dual_split(x, sd)
        assert x_l.shape == x_r.shape == (*shape[:-1], shape[-1] // 2)
        assert torch.equal(dual_merge(x_l, x_r, sd), x)
        # and the other way round: split(merge(a, b)) == (a, b)
        a, b = torch.randn_like(x_l), torch.randn_like(x_r)
        a2, b2 = dual_split(dual_merge(a, b, sd), sd)
        assert torch.equal(a, a2) and torch.equal(b, b2)

    @parameterized.expand(SHAPES)
    def test_halves_are_the_parity_classes_in_row_order(self, shape, sd):
        spatial = shape[-sd:]
        coords = torch.zeros(spatial, dtype=torch.long)
        for i, n in enumerate(spatial):
            view = [1] * sd
            view[i] = n
            coords = coords + torch.arange(n).view(view)
        ids = torch.arange(coords.numel()).reshape(spatial).float()  # row-major position of every element
        x_l, x_r = dual_split(ids, sd)
        even, odd = ids[coords % 2 == 0], ids[coords % 2 == 1]
        assert torch.equal(x_l.flatten(), even) and torch.equal(x_r.flatten(), odd)
        # kept elements of every row stay in order
        assert (x_l.diff(dim=-1) > 0).all() and (x_r.diff(dim=-1) > 0).all()

    def test_2d_diagonals_of_2x2_blocks(self):
        x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
        x_l, x_r = dual_split(x, 2)
        assert x_l.flatten().tolist() == [1.0, 4.0] and x_r.flatten().tolist() == [2.0, 3.0]

    def test_norm_partition(self):
        e = torch.randn(2, 3, 10, 12)
        e_l, e_r = dual_split(e, 2)
        assert torch.allclose(e.pow(2).sum(), e_l.pow(2).sum() + e_r.pow(2).sum())

    @parameterized.expand([((1, 4, 5), 2), ((1, 3, 4, 7), 3)])
    def test_odd_last_axis_is_refused(self, shape, sd):
        with pytest.raises(TrustMonaiError, match="even last spatial axis"):
            dual_split(torch.zeros(shape), sd)

    def test_array_and_dict_transforms(self):
        img = torch.randn(2, 6, 8)
        x_l, x_r = DualSplit()(img)
        assert torch.equal(DualMerge()(x_l, x_r), img)
        d = DualSplitd("image")({"image": img, "label": 3})
        assert torch.equal(d["image_l"], x_l) and torch.equal(d["image_r"], x_r) and d["label"] == 3
        d2 = DualMerged("merged", suffixes=("_l", "_r"))({"merged_l": x_l, "merged_r": x_r})
        assert torch.equal(d2["merged"], img)
        vol = torch.randn(1, 4, 4, 6)
        d3 = DualSplitd("image", remove_source=True)({"image": vol})
        assert "image" not in d3 and d3["image_l"].shape == (1, 4, 4, 3)


class TestHalfInput:
    @parameterized.expand([((2, 1, 6, 8), 2, "l"), ((2, 1, 6, 8), 2, "r"), ((1, 2, 4, 4, 6), 3, "l"),
                           ((1, 2, 4, 4, 6), 3, "r")])
    def test_reads_only_its_half(self, shape, sd, which):
        x = torch.randn(shape)
        other = torch.randn(shape)
        x_l, x_r = dual_split(x, sd)
        o_l, o_r = dual_split(other, sd)
        mine = x_l if which == "l" else x_r
        full = fill_half(mine, sd, which)
        assert full.shape == x.shape
        # own positions are exact; the output does not change when the other half changes
        got_l, got_r = dual_split(full, sd)
        assert torch.equal(got_l if which == "l" else got_r, mine)
        mixed = dual_merge(x_l, o_r, sd) if which == "l" else dual_merge(o_l, x_r, sd)
        assert torch.equal(fill_half(dual_split(mixed, sd)[0 if which == "l" else 1], sd, which), full)

    def test_fill_is_neighbour_mean(self):
        x = torch.arange(16.0).reshape(1, 1, 4, 4)
        x_l, _ = dual_split(x, 2)
        full = fill_half(x_l, 2, "l")
        # (1, 1) has even parity; (1, 2) odd: neighbours (0,2)=2, (2,2)=10, (1,1)=5, (1,3)=7 -> 6
        assert full[0, 0, 1, 2] == 6.0 and full[0, 0, 1, 1] == 5.0
        # corner (0, 1): neighbours (0,0)=0, (0,2)=2, (1,1)=5 -> 7/3
        assert torch.isclose(full[0, 0, 0, 1], torch.tensor(7.0 / 3))

    def test_wrapper_runs_network_at_full_resolution(self):
        seen = []

        class Probe(torch.nn.Module):
            def forward(self, x):
                seen.append(tuple(x.shape))
                return x.mean((2, 3))

        net = HalfInput(Probe(), 2, "r")
        out = net(torch.randn(3, 1, 6, 4))
        assert seen == [(3, 1, 6, 8)] and out.shape == (3, 1)
        with pytest.raises(ValueError):
            HalfInput(Probe(), 2, "x")


def test_every_parity_class_has_half_of_each_row():
    for h, w in itertools.product((1, 2, 3), (2, 4)):
        x_l, x_r = dual_split(torch.zeros(h, w), 2)
        assert x_l.shape[-1] == x_r.shape[-1] == w // 2
