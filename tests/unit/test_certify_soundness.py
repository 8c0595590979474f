"""Soundness of the RS and DRS certificates against an attacker, on real images (sklearn's 8x8 digits).

Small base classifiers are trained with Gaussian noise; images are certified; then an L2 PGD attack on the smoothed
classifier (Monte Carlo expectation of the softmax, as in Salman et al.) searches the certified ball. The smoothed
prediction at the attacked point, estimated by PREDICT (which abstains when unsure and answers a wrong class with
probability at most alpha), must never be a class other than the certified one, and the Monte Carlo top-class
probability there must stay above the bound the proof gives. A control attack well outside the radius must flip at
least one prediction, so the attack is known to bite and the test cannot pass by accident.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from trust_monai.certify import ABSTAIN, DualSmooth, Smooth
from trust_monai.transforms import dual_split

SIGMA = 0.5
ALPHA = 0.001


def _mlp(d_in: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(d_in, 64), nn.ReLU(), nn.Linear(64, 10))


@pytest.fixture(scope="module")
def setup():
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8) in [0, 1]
    y = torch.tensor(digits.target)
    x_tr, y_tr, x_te, y_te = x[:1500], y[:1500], x[1500:], y[1500:]
    full, left, right = _mlp(64), _mlp(32), _mlp(32)
    params = [*full.parameters(), *left.parameters(), *right.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        idx = torch.randint(0, len(x_tr), (128,), generator=g)
        xb, yb = x_tr[idx], y_tr[idx]
        xl, xr = dual_split(xb, 2)
        loss = sum(
            nn.functional.cross_entropy(m(v + SIGMA * torch.randn(v.shape, generator=g)), yb)
            for m, v in ((full, xb), (left, xl), (right, xr))
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m in (full, left, right):
        m.eval()
    return full, left, right, x_te[:12], y_te[:12]


def _smoothed_prob(models, x, target, m: int, gen, halves: bool) -> torch.Tensor:
    """Monte Carlo soft smoothed probability of ``target`` at ``x`` (differentiable in ``x``)."""
    if not halves:
        (f,) = models
        xs = x[None].expand(m, *x.shape)
        return torch.softmax(f(xs + SIGMA * torch.randn(xs.shape, generator=gen)), 1)[:, target].mean()
    f_l, f_r = models
    x_l, x_r = dual_split(x, 2)
    p = 0.0
    for f, h in ((f_l, x_l), (f_r, x_r)):
        hs = h[None].expand(m, *h.shape)
        p = p + torch.softmax(f(hs + SIGMA * torch.randn(hs.shape, generator=gen)), 1)[:, target].mean()
    return p / 2


def _pgd(models, x, target, eps: float, halves: bool, steps: int = 40, m: int = 64, seed: int = 0) -> torch.Tensor:
    """L2 PGD that lowers the smoothed probability of ``target`` within ``||delta|| <= eps``."""
    gen = torch.Generator().manual_seed(seed)
    delta = torch.zeros_like(x)
    step = 2.5 * eps / steps
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = -torch.log(_smoothed_prob(models, x + delta, target, m, gen, halves) + 1e-12)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = delta + step * grad / (grad.norm() + 1e-12)
            norm = delta.norm()
            if norm > eps:
                delta = delta * (eps / norm)
    return delta.detach()


def _top_freq_rs(f, x, cls, n, gen):
    xs = x[None].expand(n, *x.shape)
    with torch.no_grad():
        return float((f(xs + SIGMA * torch.randn(xs.shape, generator=gen)).argmax(1) == cls).float().mean())


def test_rs_certificate_survives_attack(setup):
    full, _, _, xs, ys = setup
    smooth = Smooth(full, 10, SIGMA, seed=0)
    gen = torch.Generator().manual_seed(1)
    certified, flipped_outside = 0, 0
    for i, (x, y) in enumerate(zip(xs, ys)):
        pred, radius = smooth.certify(x, 50, 2000, ALPHA, 1000, label=int(y))
        if pred == ABSTAIN or radius < 0.05:
            continue
        certified += 1
        p_low = smooth.last_record.p_lower[0]
        delta = _pgd([full], x, pred, 0.98 * radius, halves=False, seed=i)
        assert delta.norm() <= radius
        smooth.manual_seed(100 + i)
        assert smooth.predict(x + delta, 4000, ALPHA, 1000) in (pred, ABSTAIN)
        # Cohen et al.'s bound at the attacked point, with 5 standard errors of Monte Carlo slack
        bound = stats.norm.cdf(stats.norm.ppf(p_low) - float(delta.norm()) / SIGMA)
        assert _top_freq_rs(full, x + delta, pred, 4000, gen) >= bound - 5 * math.sqrt(0.25 / 4000)
        # control: far outside the radius the same attack does change the smoothed prediction
        far = _pgd([full], x, pred, radius + 3.0, halves=False, seed=i)
        smooth.manual_seed(200 + i)
        flipped_outside += smooth.predict(x + far, 1000, ALPHA, 500) not in (pred, ABSTAIN)
    assert certified >= 6, "the base classifier should certify most digits"
    assert flipped_outside >= 1, "the control attack never changed a prediction: the attack is too weak to test"


def test_drs_certificate_survives_attack(setup):
    _, left, right, xs, ys = setup
    smooth = DualSmooth(left, right, 10, SIGMA, seed=0)
    gen = torch.Generator().manual_seed(2)
    certified, flipped_outside = 0, 0
    for i, (x, y) in enumerate(zip(xs, ys)):
        pred, radius = smooth.certify(x, 50, 2000, ALPHA, 1000, label=int(y))
        if pred == ABSTAIN or radius < 0.05:
            continue
        certified += 1
        p_l, p_r = smooth.last_record.p_lower
        delta = _pgd([left, right], x, pred, 0.98 * radius, halves=True, seed=i)
        assert delta.norm() <= radius
        smooth.manual_seed(100 + i)
        assert smooth.predict(x + delta, 4000, ALPHA, 1000) in (pred, ABSTAIN)
        # the proof's bound at the attacked point: Phi(a - t_l) + Phi(b - t_r) <= p_l(x_l + d_l) + p_r(x_r + d_r)
        d_l, d_r = dual_split(delta, 2)
        bound = stats.norm.cdf(stats.norm.ppf(p_l) - float(d_l.norm()) / SIGMA) + stats.norm.cdf(
            stats.norm.ppf(p_r) - float(d_r.norm()) / SIGMA
        )
        assert bound > 1.0  # inside the radius the summed bound keeps the class on top
        h_l, h_r = dual_split(x + delta, 2)
        est = _top_freq_rs(left, h_l, pred, 4000, gen) + _top_freq_rs(right, h_r, pred, 4000, gen)
        assert est >= bound - 5 * math.sqrt(2 * 0.25 / 4000)
        far = _pgd([left, right], x, pred, radius + 3.0, halves=True, seed=i)
        smooth.manual_seed(200 + i)
        flipped_outside += smooth.predict(x + far, 1000, ALPHA, 500) not in (pred, ABSTAIN)
    assert certified >= 6
    assert flipped_outside >= 1


def test_drs_radius_is_not_the_overstated_one(setup):
    """With unequal half margins, the sound radius is below sqrt(R_l^2 + R_r^2) (the reference code's number)."""
    _, left, right, xs, _ = setup
    smooth = DualSmooth(left, right, 10, SIGMA, seed=0)
    for x in xs:
        pred, radius = smooth.certify(x, 50, 2000, ALPHA, 1000)
        if pred == ABSTAIN:
            continue
        a, b = (stats.norm.ppf(p) for p in smooth.last_record.p_lower)
        assert math.isclose(radius, SIGMA / math.sqrt(2) * (a + b), rel_tol=1e-9)
        if a > 0 and b > 0:
            assert radius <= math.hypot(SIGMA * a, SIGMA * b) + 1e-12
