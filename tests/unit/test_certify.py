"""Certification statistics (against scipy's Beta / binomial distributions), radius formulas, Holm, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from parameterized import parameterized
from scipy import stats

from trust_monai.certify import (
    ABSTAIN,
    DualSegmentationSmooth,
    DualSmooth,
    SegmentationSmooth,
    Smooth,
    binom_sf_pvalue,
    certified_metrics,
    cp_lower,
    holm,
    phi_inv,
)
from trust_monai.errors import TrustMonaiError


class TestStatistics:
    @parameterized.expand([(0,), (1,), (2,)])
    def test_clopper_pearson_matches_beta_quantile(self, seed):
        rng = np.random.default_rng(seed)
        n = rng.integers(1, 5000, size=300)
        k = rng.integers(0, n + 1)
        alpha = float(rng.choice([1e-4, 1e-3, 0.01, 0.05, 0.25]))
        ours = cp_lower(k, n, alpha)
        # the independent form: the alpha quantile of Beta(k, n - k + 1)
        ref = np.where(k > 0, stats.beta.ppf(alpha, np.maximum(k, 1), n - k + 1), 0.0)
        np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)

    def test_clopper_pearson_edges(self):
        assert cp_lower(0, 10, 0.05) == 0.0
        # k = n: the bound is alpha ** (1 / n)
        assert math.isclose(float(cp_lower(100, 100, 0.001)), 0.001 ** (1 / 100), rel_tol=1e-12)

    def test_binomial_pvalue_matches_scipy(self):
        rng = np.random.default_rng(4)
        n = rng.integers(1, 2000, size=200)
        k = rng.integers(0, n + 1)
        tau = rng.uniform(0.5, 0.99, size=200)
        ours = np.array([binom_sf_pvalue(kk, nn, t) for kk, nn, t in zip(k, n, tau)])
        ref = stats.binom.sf(k - 1, n, tau)
        np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-300)

    @parameterized.expand([(0,), (1,), (2,), (3,)])
    def test_holm_matches_reference_loop(self, seed):
        rng = np.random.default_rng(seed)
        p = rng.uniform(0, 0.02, size=(7, 9)) ** rng.uniform(0.5, 3)
        alpha = 0.01
        flat = p.ravel()
        order = np.argsort(flat)
        ref = np.zeros(flat.size, bool)
        for i, j in enumerate(order):  # textbook step-down loop
            if flat[j] <= alpha / (flat.size - i):
                ref[j] = True
            else:
                break
        assert np.array_equal(holm(p, alpha), ref.reshape(p.shape))

    def test_holm_controls_family_wise_error(self):
        rng = np.random.default_rng(0)
        # all nulls true, p-values uniform: FWER of Holm <= alpha
        hits = sum(holm(rng.uniform(size=50), 0.1).any() for _ in range(2000))
        assert hits / 2000 <= 0.1 + 3 * math.sqrt(0.1 * 0.9 / 2000)

    def test_phi_inv(self):
        assert abs(float(phi_inv(0.975)) - 1.959963984540054) < 1e-12 and float(phi_inv(0.5)) == 0.0


class TestRadius:
    def test_equal_sigmas(self):
        a, b, s = 1.3, 0.4, 0.5
        assert math.isclose(float(DualSmooth.radius(a, b, s, s)), s / math.sqrt(2) * (a + b))

    def test_unequal_sigmas(self):
        a, b, sl, sr = 1.1, 0.7, 0.25, 0.5
        assert math.isclose(float(DualSmooth.radius(a, b, sl, sr)), (a + b) / math.sqrt(sl ** -2 + sr ** -2))

    @parameterized.expand([(0.25, 0.25), (0.25, 0.5), (0.5, 1.0)])
    def test_radius_is_tight_worst_case_of_the_proof(self, sl, sr):
        """Inside R every split of the perturbation keeps Phi(a - t_l) + Phi(b - t_r) > 1; at R the worst split hits 1."""
        a, b = 1.2, 0.8
        r = float(DualSmooth.radius(a, b, sl, sr))
        theta = np.linspace(0, np.pi / 2, 2001)
        for frac in (0.5, 0.99):
            t_l, t_r = frac * r * np.cos(theta) / sl, frac * r * np.sin(theta) / sr
            assert (stats.norm.cdf(a - t_l) + stats.norm.cdf(b - t_r) > 1).all()
        # the split ||d_h|| proportional to 1 / sigma_h is the Cauchy-Schwarz worst case
        w = np.array([1 / sl, 1 / sr]) / math.hypot(1 / sl, 1 / sr)
        t = r * w / np.array([sl, sr])
        assert math.isclose(stats.norm.cdf(a - t[0]) + stats.norm.cdf(b - t[1]), 1.0, abs_tol=1e-9)

    def test_rs_radius_on_a_constant_classifier(self):
        class Const(torch.nn.Module):
            def forward(self, x):
                out = torch.zeros(x.shape[0], 3)
                out[:, 2] = 1
                return out

        s = Smooth(Const(), 3, 0.5, seed=0)
        pred, radius = s.certify(torch.zeros(1, 4, 4), 10, 200, 0.001, 50, label=2)
        assert pred == 2 and math.isclose(radius, 0.5 * float(phi_inv(0.001 ** (1 / 200))))
        rec = s.last_record
        assert rec.counts == [200] and rec.correct is True and rec.n0 == 10 and rec.n == 200 and rec.time > 0
        d = DualSmooth(Const(), Const(), 3, 0.5, seed=0)
        pred, radius = d.certify(torch.zeros(1, 4, 4), 10, 200, 0.001, 50)
        a = float(phi_inv(0.0005 ** (1 / 200)))  # alpha / 2 for each half
        assert pred == 2 and math.isclose(radius, 0.5 / math.sqrt(2) * 2 * a)
        assert d.last_record.counts == [200, 200] and d.predict(torch.zeros(1, 4, 4), 100, 0.001, 50) == 2

    def test_on_samples_counts_every_forward_pass(self):
        """A progress bar hooked to ``on_samples`` sees n0 + n passes per image (and per half for DRS)."""
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        seen = []
        s = Smooth(net, 3, 0.5, seed=0)
        s.on_samples = seen.append
        s.certify(torch.zeros(1, 4, 4), 30, 170, 0.001, 64)
        assert sum(seen) == 200 and max(seen) == 64
        seen.clear()
        half = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 3))  # DRS halves: every other pixel
        d = DualSmooth(half, half, 3, 0.5, seed=0)
        d.on_samples = seen.append
        d.certify(torch.zeros(1, 4, 4), 30, 170, 0.001, 64)
        assert sum(seen) == 2 * 200

    def test_abstain_when_split(self):
        class Coin(torch.nn.Module):  # class decided by the sign of the noise at one pixel: p = 1/2 each
            def forward(self, x):
                return torch.stack([x[:, 0, 0, 0], -x[:, 0, 0, 0]], 1)

        s = Smooth(Coin(), 2, 1.0, seed=0)
        assert s.certify(torch.zeros(1, 2, 2), 20, 400, 0.001, 100) == (ABSTAIN, 0.0)
        assert s.predict(torch.zeros(1, 2, 2), 400, 0.001, 100) == ABSTAIN

    def test_seeded_generator_reproduces(self):
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4))
        torch.manual_seed(0)
        x = torch.randn(1, 4, 4)
        a = Smooth(net, 4, 0.3, seed=7)
        r1 = a.certify(x, 10, 100, 0.01, 25)
        c1 = a.last_record.counts
        a.manual_seed(7)
        assert a.certify(x, 10, 100, 0.01, 25) == r1 and a.last_record.counts == c1


class _Counting(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return torch.zeros(x.shape[0], 2, *x.shape[2:]) if x.ndim > 2 else torch.zeros(x.shape[0], 2)


BAD = [
    ("n0 >= n", dict(n0=100, n=100), "n0"),
    ("n0 > n", dict(n0=200, n=100), "n0"),
    ("alpha 0", dict(alpha=0.0), "alpha"),
    ("alpha 1", dict(alpha=1.0), "alpha"),
    ("alpha negative", dict(alpha=-0.1), "alpha"),
    ("batch > n", dict(batch_size=1000), "batch_size"),
    ("batch 0", dict(batch_size=0), "batch_size"),
]


class TestBadInput:
    @parameterized.expand(BAD)
    def test_rejected_before_sampling(self, _, change, match):
        args = {"n0": 10, "n": 100, "alpha": 0.001, "batch_size": 50, **change}
        base, base_r = _Counting(), _Counting()
        for smooth, x in (
            (Smooth(base, 2, 0.5), torch.zeros(1, 4, 4)),
            (DualSmooth(base, base_r, 2, 0.5), torch.zeros(1, 4, 4)),
            (SegmentationSmooth(base, 2, 0.5), torch.zeros(1, 4, 4)),
            (DualSegmentationSmooth(base, base_r, 2, 0.5), torch.zeros(1, 4, 4)),
        ):
            with pytest.raises(TrustMonaiError, match=match):
                smooth.certify(x, **args)
        assert base.calls == 0 and base_r.calls == 0
        if "n0" not in change:
            with pytest.raises(TrustMonaiError, match=match):
                Smooth(base, 2, 0.5).predict(torch.zeros(1, 4, 4), args["n"], args["alpha"], args["batch_size"])
            assert base.calls == 0

    @parameterized.expand([(0.0,), (-0.5,), (float("nan"),)])
    def test_bad_sigma(self, sigma):
        for make in (lambda: Smooth(_Counting(), 2, sigma), lambda: DualSmooth(_Counting(), _Counting(), 2, 0.5, sigma),
                     lambda: SegmentationSmooth(_Counting(), 2, sigma),
                     lambda: DualSegmentationSmooth(_Counting(), _Counting(), 2, sigma)):
            with pytest.raises(TrustMonaiError, match="sigma"):
                make()

    def test_bad_tau_and_classes(self):
        with pytest.raises(TrustMonaiError, match="tau"):
            SegmentationSmooth(_Counting(), 2, 0.5).certify(torch.zeros(1, 4, 4), 5, 10, 0.01, 5, tau=0.4)
        with pytest.raises(TrustMonaiError, match="num_classes"):
            Smooth(_Counting(), 1, 0.5)


class _Threshold(torch.nn.Module):
    """A fixed segmenter: class 1 where the intensity is above 0.5, pixel by pixel."""

    def forward(self, x):
        return torch.cat([0.5 - x[:, :1], x[:, :1] - 0.5], 1)


class TestSegmentation:
    @parameterized.expand([(2, (16, 16)), (3, (8, 8, 8))])
    def test_rs_certifies_clear_pixels_and_abstains_on_coin_flips(self, sd, shape):
        ref = torch.zeros(shape, dtype=torch.long)
        ref[tuple(slice(2, s // 2 + 2) for s in shape)] = 1
        x = ref[None].float()
        coin = torch.zeros(shape, dtype=torch.bool)
        coin.view(-1)[::7] = True  # intensity exactly at the threshold: each class has probability 1/2
        x[0][coin] = 0.5
        seg = SegmentationSmooth(_Threshold(), 2, 0.12, seed=0)
        labels, radius = seg.certify(x, 10, 100, 0.001, 50, tau=0.75)
        assert labels.shape == shape and math.isclose(radius, 0.12 * float(phi_inv(0.75)))
        assert (labels[coin] == ABSTAIN).all()
        assert torch.equal(labels[~coin], ref[~coin])  # 0.5 / 0.12 = 4.2 sigma from the threshold: all certified
        m = certified_metrics(labels, ref, 2)
        assert math.isclose(m["certified_fraction"], 1 - float(coin.float().mean()))
        assert m["dice_1"] is not None and m["dice_1"] < 1.0

    @parameterized.expand([(2, (16, 16)), (3, (8, 8, 8))])
    def test_drs_segmentation(self, sd, shape):
        from trust_monai.networks.half_input import HalfInput

        x = torch.zeros(1, *shape)
        x[(slice(None),) + tuple(slice(0, s // 2) for s in shape)] = 1.0
        seg = DualSegmentationSmooth(HalfInput(_Threshold(), sd, "l"), HalfInput(_Threshold(), sd, "r"), 2, 0.12)
        labels, radius = seg.certify(x, 10, 100, 0.001, 50, tau=0.75, tau_r=0.8)
        want = (float(phi_inv(0.75)) + float(phi_inv(0.8))) / math.sqrt(2 / 0.12 ** 2)
        assert labels.shape == shape and math.isclose(radius, want)
        assert (labels != ABSTAIN).float().mean() > 0.5
        assert seg.last_record["certified_fraction"] == float((labels != ABSTAIN).float().mean())

    def test_holm_family_spans_both_halves(self):
        """Two pixels, two halves: Holm over 4 equal p-values rejects them only when p <= alpha / 4."""
        class One(torch.nn.Module):
            def forward(self, x):
                out = torch.zeros(x.shape[0], 2, 1, 2)
                out[:, 1] = 1
                return out

        seg = DualSegmentationSmooth(One(), One(), 2, 0.5)
        # all n samples agree: p = tau ** n for each of the 4 hypotheses
        n, tau = 20, 0.75
        p = tau ** n
        labels, _ = seg.certify(torch.zeros(1, 1, 2), 2, n, 3.9 * p, 10, tau=tau)
        assert (labels == ABSTAIN).all()
        labels, _ = seg.certify(torch.zeros(1, 1, 2), 2, n, 4.01 * p, 10, tau=tau)
        assert (labels == 1).all()


@parameterized.expand([("classification",), ("segmentation",)])
def test_dataset_runners_refuse_bad_settings_when_configured(kind):
    """The bundle engines check the Monte Carlo settings in their constructor: no data, checkpoint or output touched."""
    from trust_monai.engines.certify import CertifyClassification, CertifySegmentation, SmoothingModels

    models = SmoothingModels(lambda: torch.nn.Identity(), 2)
    common = dict(dataset_dir="/nonexistent", output_dir="/nonexistent/out", models=models, checkpoint="/nonexistent.pt")
    make = (lambda **kw: CertifyClassification(num_classes=10, **common, **kw)) if kind == "classification" else (
        lambda **kw: CertifySegmentation(spatial_dims=2, num_classes=4, **common, **kw))
    for bad, match in ((dict(n0=100, n=100), "n0"), (dict(alpha=1.5), "alpha"), (dict(n=200, batch_size=201), "batch"),
                       (dict(sigma=-1.0), "sigma"), (dict(methods=["xyz"]), "method")):
        with pytest.raises(TrustMonaiError, match=match):
            make(**bad)
