"""Sequential (``decide``) and input-specific (``certify_adaptive``) certification: soundness against exact linear
classifiers, the cost of peeking without correction, early stopping, and bad input.

For a linear base classifier ``f(x) = [w.x + b > 0]`` with ``||w|| = 1``, ``P(f(x + e) = 1) = Phi((w.x + b) /
sigma)``, so the smoothed classifier's robust radius is exactly the distance to the hyperplane: a certificate larger
than that distance is a violation that can be counted. alpha is 0.1 here so that violations are measurable.
"""

from __future__ import annotations

import math
import unittest

import numpy as np
import torch
from parameterized import parameterized
from scipy.stats import norm
from torch import nn

from trust_monai.certify import DualSmooth, Smooth, sequential
from trust_monai.certify.stats import cp_bounds, cp_lower
from trust_monai.errors import TrustMonaiError

SIGMA, ALPHA = 0.5, 0.1
DRAWS = 300


class Linear(nn.Module):
    """Two-class logits ``[-z, z]``, ``z = w . x + b`` on the flattened input."""

    def __init__(self, w, b: float = 0.0):
        super().__init__()
        self.register_buffer("w", torch.as_tensor(w, dtype=torch.float32))
        self.b = float(b)

    def forward(self, x):
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([-z, z], 1)


def _point(distance: float) -> torch.Tensor:
    """A (1, 4) input at signed ``distance`` from the hyperplane ``x_0 = 0`` (unit normal)."""
    x = torch.zeros(1, 4)
    x[0, 0] = distance
    return x


class TestSchedule(unittest.TestCase):
    def test_looks_and_alpha_spending(self):
        s = sequential.Schedule.make(0.001, 100_000, 32, 2.0)
        self.assertEqual(s.looks[0], 32)
        self.assertEqual(s.looks[-1], 100_000)
        self.assertTrue(all(a < b for a, b in zip(s.looks, s.looks[1:])))
        self.assertAlmostEqual(sum(s.alphas), 0.001, places=15)

    def test_cp_bounds_match_bisection_and_beta(self):
        k, n = np.array([0, 1, 37, 99, 100]), 100
        lo, hi = cp_bounds(k, n, 0.01)
        np.testing.assert_allclose(lo, cp_lower(k, n, 0.01), atol=1e-12)
        # the upper bound is the lower bound of the failures, mirrored
        np.testing.assert_allclose(hi, 1 - cp_lower(n - k, n, 0.01), atol=1e-12)
        self.assertEqual(hi[-1], 1.0)
        self.assertEqual(lo[0], 0.0)


class TestSoundness(unittest.TestCase):
    """Violation rates over many independent draws, against classifiers whose smoothed radius is exact."""

    def test_decide_borderline_and_naive_peeking(self):
        """At distance == radius, ``p_A = Phi(radius / sigma)`` exactly, so every certificate is a violation.

        The corrected sequence keeps the rate <= alpha; the same stopping rule with a level-alpha Clopper-Pearson
        bound at every batch and no union bound (the naive rule) certifies far more often than alpha."""
        radius, max_n, batch = 0.25, 2000, 50
        smooth = Smooth(Linear([1.0, 0, 0, 0]), 2, SIGMA)
        x = _point(radius)
        naive = sequential.Schedule(tuple(range(batch, max_n + 1, batch)), (ALPHA,) * (max_n // batch))
        ours = naive_hits = 0
        for seed in range(DRAWS):
            smooth.manual_seed(seed)
            pred, _ = smooth.decide(x, radius, ALPHA, max_n, batch, n0=10, first=batch)
            ours += pred != -1
            smooth.manual_seed(seed)
            top = smooth._select(x, 10, batch)
            res = sequential.decide(smooth._drawer(x, top, batch), smooth._score, 1, radius, naive)
            naive_hits += res.certified
        self.assertLessEqual(ours / DRAWS, ALPHA)
        self.assertGreater(naive_hits / DRAWS, 2 * ALPHA)

    def test_adaptive_radius_never_beyond_hyperplane(self):
        """The adaptive radius exceeds the exact radius (distance to the hyperplane) in at most alpha of the draws,
        at distances that stop at different looks."""
        smooth = Smooth(Linear([0.6, 0.8, 0, 0]), 2, SIGMA)
        rng = np.random.default_rng(0)
        bad = 0
        for seed in range(DRAWS):
            d = float(rng.uniform(0.15, 1.0))
            x = torch.tensor([[0.6 * d, 0.8 * d, 0.0, 0.0]])  # distance d from w.x = 0 (||w|| = 1)
            smooth.manual_seed(seed)
            pred, r, used = smooth.certify_adaptive(x, ALPHA, 3000, 500, n0=10, pilot=100, first=50, tolerance=0.05)
            bad += (pred == 1 and r > d) or pred == 0
            self.assertLessEqual(used, 3100)
        self.assertLessEqual(bad / DRAWS, ALPHA)

    def test_adaptive_pilot_cannot_break_the_bound(self):
        """Whatever the pilot claims (here: every pilot sample a hit, so the largest sample size is chosen, and the
        opposite), the fresh estimate at the whole alpha exceeds the true radius in at most alpha of the draws."""
        d = 0.3
        p = norm.cdf(d / SIGMA)
        score = Smooth(Linear([1.0, 0, 0, 0]), 2, SIGMA)._score
        for claimed in (1000, 600):
            rng = np.random.default_rng(claimed)
            bad = 0
            for _ in range(2000):
                res = sequential.adaptive(np.array([claimed]), 1000, lambda m: np.array([rng.binomial(m, p)]), score,
                                          1, ALPHA, 3000, 50, 0.05)
                bad += res.certified and res.radius > d
            self.assertLessEqual(bad / 2000, ALPHA)

    def test_sample_size_follows_the_pilot(self):
        score = Smooth(Linear([1.0, 0, 0, 0]), 2, SIGMA)._score
        size = [sequential.sample_size(np.array([q]), score, 1, 0.001, 100_000, 100, 0.05) for q in (1.0, 0.885, 0.3)]
        self.assertGreater(size[0], 50_000)  # saturated: the radius keeps growing with every sample
        self.assertLess(size[1], 20_000)  # p = 0.885: the bound is tight long before 100k
        self.assertEqual(size[2], 0)  # nothing to certify

    def test_dual_decide_borderline(self):
        """DRS with a linear classifier on each half: at an input whose exact DRS score equals the radius, a
        certificate is a violation; the rate stays <= alpha."""
        radius = 0.5
        # each half reads (1, 2) of the (1, 4) input; both halves see x_0-like coordinates at margin m
        m = radius / math.sqrt(2)  # PhiInv(p_h) = m / sigma, score = (2 m / sigma) / sqrt(2 / sigma^2) = sqrt(2) m
        smooth = DualSmooth(Linear([1.0, 0.0]), Linear([1.0, 0.0]), 2, SIGMA)
        x = torch.tensor([[m, m, 0.0, 0.0]])
        p = norm.cdf(m / SIGMA)
        self.assertAlmostEqual(smooth._score(np.array([p, p])), radius, places=9)
        hits = 0
        for seed in range(DRAWS):
            smooth.manual_seed(seed)
            pred, _ = smooth.decide(x, radius, ALPHA, 2000, 500, n0=10, first=20)
            hits += pred != -1
        self.assertLessEqual(hits / DRAWS, ALPHA)


CLEAR_CASES = [("rs_certified", 1.5, 0.25, 1), ("rs_abstain", 0.05, 1.0, -1)]


class TestBehaviour(unittest.TestCase):
    @parameterized.expand(CLEAR_CASES)
    def test_decide_stops_early_on_clear_inputs(self, _, distance, radius, expected):
        smooth = Smooth(Linear([1.0, 0, 0, 0]), 2, SIGMA)
        pred, used = smooth.decide(_point(distance), radius, 0.001, 100_000, 1000)
        self.assertEqual(pred, expected)
        self.assertLess(used, 2000)
        rec = smooth.last_record
        self.assertEqual((rec.mode, rec.samples_used, rec.n0 + rec.n), ("decide", used, used))

    def test_adaptive_close_to_fixed_with_fewer_samples(self):
        smooth = Smooth(Linear([1.0, 0, 0, 0]), 2, SIGMA)
        x = _point(0.6)  # p_A = Phi(1.2) = 0.885: saturates long before 100k samples
        _, r_fixed = smooth.certify(x, 100, 100_000, 0.001, 10_000)
        self.assertEqual(smooth.last_record.samples_used, 100_100)
        pred, r, used = smooth.certify_adaptive(x, 0.001, 100_000, 10_000)
        self.assertEqual(pred, 1)
        self.assertLess(used, 100_100 / 3)
        self.assertGreater(r, r_fixed - 0.05)
        self.assertLess(r, 0.6)

    def test_dual_records_forward_passes(self):
        smooth = DualSmooth(Linear([1.0, 0.0]), Linear([1.0, 0.0]), 2, SIGMA)
        x = torch.tensor([[1.5, 1.5, 0.0, 0.0]])
        pred, used = smooth.decide(x, 0.5, 0.001, 10_000, 1000)
        self.assertEqual(pred, 1)
        self.assertEqual(used, 2 * (100 + smooth.last_record.n))
        pred, r, used = smooth.certify_adaptive(x, 0.001, 10_000, 1000)
        self.assertEqual(pred, 1)
        self.assertGreater(r, 0.5)
        self.assertEqual(smooth.last_record.samples_used, used)


BAD = [
    ("radius_zero", dict(radius=0.0), "radius"),
    ("radius_negative", dict(radius=-1.0), "radius"),
    ("radius_nan", dict(radius=float("nan")), "radius"),
    ("too_few_samples", dict(radius=1.0, max_samples=100), "max_samples >= "),
    ("alpha", dict(alpha=1.5), "alpha"),
]


class TestBadInput(unittest.TestCase):
    @parameterized.expand(BAD)
    def test_decide_refuses_before_sampling(self, _, kw, needle):
        model = Linear([1.0, 0, 0, 0])
        calls = []
        model.register_forward_hook(lambda *a: calls.append(1))
        smooth = Smooth(model, 2, SIGMA)
        args = dict(radius=0.5, alpha=0.001, max_samples=10_000, batch_size=100) | kw
        with self.assertRaisesRegex(TrustMonaiError, needle):
            smooth.decide(_point(1.0), **args)
        self.assertEqual(calls, [])

    def test_minimum_is_the_minimum(self):
        smooth = Smooth(Linear([1.0, 0, 0, 0]), 2, SIGMA)
        with self.assertRaisesRegex(TrustMonaiError, r"max_samples >= (\d+)") as ctx:
            smooth.decide(_point(5.0), 1.0, 0.001, 100, 100)
        least = int(ctx.exception.args[0].rsplit(">= ", 1)[1])
        pred, _ = smooth.decide(_point(5.0), 1.0, 0.001, least, 100)  # enough: a far point is certified
        self.assertEqual(pred, 1)
        with self.assertRaises(TrustMonaiError):
            smooth.decide(_point(5.0), 1.0, 0.001, least - 1, 100)

    def test_adaptive_refuses_tiny_budget(self):
        smooth = Smooth(Linear([1.0, 0, 0, 0]), 2, SIGMA)
        with self.assertRaisesRegex(TrustMonaiError, "max_samples >= "):
            smooth.certify_adaptive(_point(1.0), 0.001, 5, 5, n0=2, first=2)


if __name__ == "__main__":
    unittest.main()


class TestBenchReplay(unittest.TestCase):
    """``scripts/bench_sequential_certify.py`` replays one recorded stream per image for every mode: each mode must
    read it from the start, selection first, in order, and never past its end."""

    def test_modes_read_the_recorded_stream_in_order(self):
        import importlib.util
        from pathlib import Path

        path = Path(__file__).resolve().parents[2] / "scripts" / "bench_sequential_certify.py"
        spec = importlib.util.spec_from_file_location("bench_sequential_certify", path)
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        n0, n = 50, 2000
        x = _point(0.3)
        stream = bench._record(Linear([1.0, 0, 0, 0]), x, SIGMA, n0 + n, 300, 7)
        self.assertEqual(stream.shape, (n0 + n,))
        replay = bench._Replay(2)
        replay.preds = stream
        smooth = Smooth(replay, 2, SIGMA, channels_last=False)
        pred, radius = smooth.certify(x, n0, n, ALPHA, 300)
        top = int(torch.bincount(stream[:n0], minlength=2).argmax())
        k = int((stream[n0:] == top).sum())
        self.assertEqual(pred, top)
        self.assertAlmostEqual(radius, SIGMA * norm.ppf(float(cp_lower(k, n, ALPHA))), places=9)
        self.assertEqual(smooth.last_record.counts, [k])
        replay.pos = 0
        _, used = smooth.decide(x, 0.1, ALPHA, n, 300, n0=n0)
        self.assertEqual(replay.pos, used)  # every pass it counts came from the stream, in order
        replay.pos = 0
        with self.assertRaisesRegex(IndexError, "replay stream exhausted"):
            smooth.certify(x, n0, n + 1, ALPHA, 300)
