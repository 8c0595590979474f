"""Contour band, texture map and the UMed generator's budget, in 2D and 3D."""

from __future__ import annotations

import torch
from parameterized import parameterized

from trust_monai.networks.umed_generator import UMedGenerator
from trust_monai.transforms.roi import ContourBandd, TextureMapd, budget_map, contour_band, texture_map

CASES = [(2, (24, 30), 1), (2, (33, 17), 2), (3, (12, 14, 10), 1), (3, (14, 16, 13), 2)]


def _box(shape, lo=4, hi=9, classes=1):
    m = torch.zeros((1, 1) + shape)
    m[(slice(None), slice(None)) + tuple(slice(lo, hi) for _ in shape)] = classes
    return m


class TestContourBand:
    @parameterized.expand(CASES)
    def test_band_is_dilation_minus_erosion(self, sd, shape, width):
        m = _box(shape)
        band, region = contour_band(m, width)
        side = 5
        # box of side 5: dilation side 5 + 2w, erosion side 5 - 2w
        assert band.sum().item() == (side + 2 * width) ** sd - max(side - 2 * width, 0) ** sd
        assert region.sum().item() == (side + 2 * width) ** sd
        assert torch.equal(region, torch.maximum(band, (m > 0).float()))

    @parameterized.expand(CASES)
    def test_multiclass_labels_count_as_foreground(self, sd, shape, width):
        m = _box(shape, classes=3)
        assert torch.equal(contour_band(m, width)[1], contour_band((m > 0).float(), width)[1])

    def test_empty_mask_gives_empty_band(self):
        band, region = contour_band(torch.zeros(1, 1, 16, 16), 2)
        assert band.sum() == 0 and region.sum() == 0

    def test_dict_transform(self):
        d = ContourBandd("label", width=1)({"label": _box((20, 20))[0]})
        assert d["band"].shape == (1, 20, 20) and d["region"].sum() == 49


class TestTexture:
    @parameterized.expand(CASES)
    def test_range_and_support(self, sd, shape, width):
        img = torch.rand((1, 1) + shape)
        m = _box(shape)
        _, region = contour_band(m, width)
        w = texture_map(img, region, floor=0.25)
        assert (w[region == 0] == 0).all()
        assert w[region > 0].min() >= 0.25 - 1e-6 and w.max() <= 1 + 1e-6

    def test_textured_area_gets_more_budget(self):
        img = torch.zeros(1, 1, 32, 32)
        img[..., :, 16:] = torch.rand(32, 16)  # right half textured, left half flat
        region = torch.ones(1, 1, 32, 32)
        w = texture_map(img, region)
        assert w[..., 2:30, 20:30].mean() > w[..., 2:30, 2:12].mean() + 0.2

    def test_dict_transform(self):
        d = TextureMapd("image")({"image": torch.rand(1, 12, 12), "region": torch.ones(1, 12, 12)})
        assert d["texture"].shape == (1, 12, 12)


class TestUMedGenerator:
    @parameterized.expand(CASES)
    def test_budget_respected_and_zero_outside(self, sd, shape, width):
        torch.manual_seed(0)
        eps = 4 / 255
        gen = UMedGenerator(sd, epsilon=eps, band_width=width, channels=(4, 8), strides=(2,))
        with torch.no_grad():  # push the generators hard so the bound, not the weights, limits delta
            for p in gen.parameters():
                p.mul_(50)
        img = torch.rand((2, 1) + shape)
        lab = _box(shape).repeat(2, 1, *([1] * sd))
        delta = gen(img, lab)
        eps_map, band, region = budget_map(img, lab, eps, width, gen.texture_floor)
        assert delta.shape == img.shape
        assert (delta.abs() <= eps + 1e-7).all()
        assert (delta.abs() <= eps_map + 1e-7).all()
        assert (delta[region.expand_as(delta) == 0] == 0).all()
        assert ((img + delta) >= 0).all() and ((img + delta) <= 1).all()
        assert delta.abs().max() > eps / 2  # it does perturb inside the region

    def test_single_tensor_form(self):
        gen = UMedGenerator(2, channels=(4, 8), strides=(2,))
        img, lab = torch.rand(1, 1, 16, 16), _box((16, 16))
        assert torch.equal(gen(img, lab), gen(torch.cat([img, lab], 1)))
