"""Per-pixel / per-voxel certified segmentation by randomized smoothing, plain and dual, in 2D and 3D.

Follows "Scalable Certified Segmentation via Randomized Smoothing" (Fischer, Baader and Vechev, ICML 2021): each
pixel's majority class comes from ``n0`` noisy segmentations; ``n`` fresh ones give its count ``k``; the one-sided
binomial test of ``H0: p_pixel <= tau`` (p-value ``P(Bin(n, tau) >= k)``) runs for every pixel, and Holm's correction
over all pixels keeps the family-wise error at ``alpha``. Pixels whose test is rejected are certified with radius
``sigma * PhiInv(tau)`` (Cohen et al.'s bound with ``p_A >= tau``); all other pixels abstain.

The dual version smooths the two dual-split halves, each with a base segmenter that reads its half and returns a
full-resolution map, and certifies a pixel when both halves' tests reject (``p_l > tau_l`` and ``p_r > tau_r``) in one
Holm family holding both halves' hypotheses; :class:`~trust_monai.certify.smooth.DualSmooth`'s proof, applied to each
pixel, gives the radius ``(PhiInv(tau_l) + PhiInv(tau_r)) / sqrt(sigma_l^-2 + sigma_r^-2)`` (needs
``tau_l + tau_r > 1``).

No sequential (``decide`` / ``adaptive``) form here, on purpose. One would be sound: run Holm over all pixels at
level ``alpha_k`` at each fixed look ``k`` (``sum_k alpha_k = alpha``) and keep a pixel certified once rejected; the
family-wise error over all looks is at most ``alpha`` by the union bound. But a map's samples are shared by all its
pixels, so sampling can stop only when *every* pixel is decided, and a segmentation almost always has pixels on class
boundaries whose probability sits at ``tau``: the map runs to ``max_samples`` anyway, and the per-look Holm level
``alpha / K`` then certifies fewer pixels than the fixed-``n`` rule at the same ``n``. Fixed ``n`` (Fischer et al.)
stays the rule for maps; the per-input rules live in :mod:`trust_monai.certify.sequential`.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import nn

from ..errors import TrustMonaiError
from ..transforms.dual_split import dual_split
from .smooth import ABSTAIN, check_sampling_args, check_sigma
from .stats import binom_sf_pvalue, holm, phi_inv

__all__ = ["SegmentationSmooth", "DualSegmentationSmooth", "certified_metrics"]


def _check_tau(*taus: float) -> None:
    for t in taus:
        if not (isinstance(t, (int, float)) and 0.5 <= t < 1.0):
            raise TrustMonaiError(f"tau must lie in [0.5, 1), got {t!r}")


class _SegSampler:
    def __init__(self, num_classes: int, seed: int | None):
        if not (isinstance(num_classes, (int, np.integer)) and num_classes >= 2):
            raise TrustMonaiError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self.num_classes, self.seed = int(num_classes), seed
        self._generator: torch.Generator | None = None
        self.last_record: dict | None = None

    def manual_seed(self, seed: int) -> None:
        self.seed, self._generator = seed, None

    def _gen(self, device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device)
            self._generator.manual_seed(int(self.seed)) if self.seed is not None else self._generator.seed()
        return self._generator

    @torch.no_grad()
    def _counts(self, model: nn.Module, x: torch.Tensor, sigma: float, num: int, batch_size: int) -> torch.Tensor:
        """Per-pixel class counts ``(K, *spatial_out)`` of ``model(x + noise).argmax(1)`` over ``num`` draws."""
        gen = self._gen(x.device)
        counts = None
        remaining = num
        while remaining > 0:
            b = min(batch_size, remaining)
            remaining -= b
            batch = x.unsqueeze(0).expand(b, *x.shape)
            noise = torch.randn(batch.shape, generator=gen, device=x.device, dtype=x.dtype)
            pred = model(batch + sigma * noise).argmax(1)  # (b, *spatial)
            if counts is None:
                counts = torch.zeros((self.num_classes, *pred.shape[1:]), dtype=torch.int32, device=x.device)
            counts.scatter_add_(0, pred, torch.ones_like(pred, dtype=torch.int32))
        return counts


class SegmentationSmooth(_SegSampler):
    """Certified segmentation by randomized smoothing of one base segmenter (Fischer et al. 2021).

    Args:
        base_segmenter: maps ``(B, C, *spatial)`` to logits ``(B, num_classes, *spatial)``; put in eval mode here.
        num_classes: number of classes.
        sigma: noise level.
        seed: noise generator seed.
    """

    def __init__(self, base_segmenter: nn.Module, num_classes: int, sigma: float, seed: int | None = 0):
        check_sigma(sigma)
        super().__init__(num_classes, seed)
        self.base_segmenter, self.sigma = base_segmenter.eval(), float(sigma)

    def radius(self, tau: float) -> float:
        return self.sigma * float(phi_inv(tau))

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int, tau: float = 0.75):
        """Certify every pixel of ``x`` ``(C, *spatial)``.

        Returns:
            ``(labels, radius)``: int64 ``labels`` of shape ``spatial`` with -1 where the pixel abstains, and the one
            radius that holds for every certified pixel (jointly, with probability at least ``1 - alpha``).
        """
        check_sampling_args(n0, n, alpha, batch_size)
        _check_tau(tau)
        t0 = time.perf_counter()
        top = self._counts(self.base_segmenter, x, self.sigma, n0, batch_size).argmax(0)
        k = self._counts(self.base_segmenter, x, self.sigma, n, batch_size).gather(0, top[None])[0]
        reject = holm(binom_sf_pvalue(k.cpu().numpy(), n, tau), alpha)
        labels = torch.where(torch.from_numpy(reject).to(top.device), top, torch.full_like(top, ABSTAIN))
        radius = self.radius(tau)
        self.last_record = {"method": "rs", "n0": n0, "n": n, "tau": tau, "radius": radius,
                            "certified_fraction": float(reject.mean()), "time": time.perf_counter() - t0}
        return labels, radius


class DualSegmentationSmooth(_SegSampler):
    """Certified segmentation by dual randomized smoothing: per pixel, both halves' tests must reject.

    ``n0`` / ``n`` count samples per half (``2 (n0 + n)`` forward passes in all).

    Args:
        base_segmenter_l / base_segmenter_r: read one half ``(B, C, *spatial[:-1], W/2)`` and return full-resolution
            logits ``(B, num_classes, *spatial)`` (e.g. :class:`~trust_monai.networks.HalfInput` around a U-Net).
        num_classes: number of classes.
        sigma_l / sigma_r: noise of each half (``sigma_r`` None: ``sigma_l``).
        seed: noise generator seed.
    """

    def __init__(
        self,
        base_segmenter_l: nn.Module,
        base_segmenter_r: nn.Module,
        num_classes: int,
        sigma_l: float,
        sigma_r: float | None = None,
        seed: int | None = 0,
    ):
        sigma_r = sigma_l if sigma_r is None else sigma_r
        check_sigma(sigma_l, sigma_r)
        super().__init__(num_classes, seed)
        self.base_segmenter_l, self.base_segmenter_r = base_segmenter_l.eval(), base_segmenter_r.eval()
        self.sigma_l, self.sigma_r = float(sigma_l), float(sigma_r)

    def radius(self, tau_l: float, tau_r: float | None = None) -> float:
        tau_r = tau_l if tau_r is None else tau_r
        return float(phi_inv(tau_l) + phi_inv(tau_r)) / math.sqrt(self.sigma_l ** -2 + self.sigma_r ** -2)

    def certify(
        self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int, tau: float = 0.75,
        tau_r: float | None = None,
    ):
        """Certify every pixel of the full image ``x`` ``(C, *spatial)`` (last axis even); ``tau`` is ``tau_l`` and
        ``tau_r`` defaults to it. Returns ``(labels, radius)`` as :meth:`SegmentationSmooth.certify`."""
        check_sampling_args(n0, n, alpha, batch_size)
        tau_l, tau_r = tau, tau if tau_r is None else tau_r
        _check_tau(tau_l, tau_r)
        t0 = time.perf_counter()
        x_l, x_r = dual_split(x, x.ndim - 1)
        c0 = self._counts(self.base_segmenter_l, x_l, self.sigma_l, n0, batch_size)
        c0 += self._counts(self.base_segmenter_r, x_r, self.sigma_r, n0, batch_size)
        top = c0.argmax(0)
        k_l = self._counts(self.base_segmenter_l, x_l, self.sigma_l, n, batch_size).gather(0, top[None])[0]
        k_r = self._counts(self.base_segmenter_r, x_r, self.sigma_r, n, batch_size).gather(0, top[None])[0]
        p = np.stack([binom_sf_pvalue(k_l.cpu().numpy(), n, tau_l), binom_sf_pvalue(k_r.cpu().numpy(), n, tau_r)])
        reject = holm(p, alpha)  # one family: both halves of every pixel
        both = reject[0] & reject[1]
        labels = torch.where(torch.from_numpy(both).to(top.device), top, torch.full_like(top, ABSTAIN))
        radius = self.radius(tau_l, tau_r)
        self.last_record = {"method": "drs", "n0": n0, "n": n, "tau": tau_l, "tau_r": tau_r, "radius": radius,
                            "certified_fraction": float(both.mean()), "time": time.perf_counter() - t0}
        return labels, radius


def certified_metrics(labels: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray, num_classes: int) -> dict:
    """Certified fraction, certified accuracy and certified Dice of a certified label map against the reference.

    An abstaining pixel (-1) counts as certified for no class, so it lowers the Dice of its true class.
    ``dice_mean`` is the mean over the foreground classes (1..K-1) present in the reference.
    """
    lab = np.asarray(labels.cpu() if torch.is_tensor(labels) else labels).astype(np.int64)
    ref = np.asarray(reference.cpu() if torch.is_tensor(reference) else reference).astype(np.int64).reshape(lab.shape)
    out = {"certified_fraction": float((lab != ABSTAIN).mean()), "certified_accuracy": float((lab == ref).mean())}
    dices = []
    for c in range(1, num_classes):
        p, r = lab == c, ref == c
        if r.sum() == 0:
            out[f"dice_{c}"] = None
            continue
        d = 2.0 * float((p & r).sum()) / float(p.sum() + r.sum())
        out[f"dice_{c}"] = d
        dices.append(d)
    out["dice_mean"] = float(np.mean(dices)) if dices else None
    return out
