"""Certified L2 robustness by randomized smoothing (RS) and dual randomized smoothing (DRS), for classifiers.

:class:`Smooth` follows "Certified Adversarial Robustness via Randomized Smoothing" (Cohen, Rosenfeld and Kolter,
ICML 2019) and keeps its call convention; :class:`DualSmooth` is "Dual Randomized Smoothing: Breaking the Curse of
Dimensionality in Randomized Smoothing" (ICLR 2024) with a radius that is proved below (the public reference code
reports a larger one and spends the full alpha on each half). Both draw Monte Carlo noise in batches from a seedable
``torch.Generator`` and keep a :class:`CertifyRecord` of the last certification.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from ..errors import TrustMonaiError
from ..transforms.dual_split import dual_split
from . import sequential as seq
from .stats import binom_test_two_sided_half, cp_lower, phi_inv

__all__ = ["ABSTAIN", "CertifyRecord", "Smooth", "DualSmooth", "check_sampling_args", "check_sigma"]

ABSTAIN = -1


@dataclass
class CertifyRecord:
    """What one certification did and found.

    ``counts`` holds the top-class count of the estimation samples (one entry for RS, ``[left, right]`` for DRS),
    ``p_lower`` the matching Clopper-Pearson lower bounds; ``n0`` / ``n`` are samples per smoothed input (per half
    for DRS; for ``decide`` / ``adaptive``, ``n`` is the number of estimation samples used, and for ``adaptive``
    ``n0`` is the pilot, which also selected the class); ``correct`` is None when
    no label was given. ``samples_used`` counts every forward pass of the base classifier(s), selection included
    (``n0 + n`` for RS, ``2 (n0 + n)`` for DRS); ``mode`` is ``fixed``, ``decide`` or ``adaptive``.
    """

    method: str
    prediction: int
    radius: float
    n0: int
    n: int
    counts: list[int] = field(default_factory=list)
    p_lower: list[float] = field(default_factory=list)
    label: int | None = None
    correct: bool | None = None
    time: float = 0.0
    samples_used: int = 0
    mode: str = "fixed"

    def as_row(self) -> dict:
        """Flat dict for a CSV row (``count_l`` / ``count_r`` for DRS, ``count`` for RS)."""
        row = asdict(self)
        counts, lows = row.pop("counts"), row.pop("p_lower")
        names = ("count",) if len(counts) == 1 else ("count_l", "count_r")
        for name, c, p in zip(names, counts, lows):
            row[name], row["p_lower" + name[5:]] = c, p
        return row


def check_sigma(*sigmas: float) -> None:
    for s in sigmas:
        if not (isinstance(s, (int, float)) and math.isfinite(s) and s > 0):
            raise TrustMonaiError(f"sigma must be a finite number > 0, got {s!r}")


def check_sampling_args(n0: int | None, n: int, alpha: float, batch_size: int) -> None:
    """Refuse bad sampling settings before any sample is drawn (``n0`` None: PREDICT, which has no selection step)."""
    if not (isinstance(n, (int, np.integer)) and n >= 1):
        raise TrustMonaiError(f"n must be an integer >= 1, got {n!r}")
    if n0 is not None:
        if not (isinstance(n0, (int, np.integer)) and n0 >= 1):
            raise TrustMonaiError(f"n0 must be an integer >= 1, got {n0!r}")
        if n0 >= n:
            raise TrustMonaiError(f"n0 ({n0}) must be smaller than n ({n}): n0 selects the class, n estimates it")
    if not (isinstance(alpha, (int, float)) and 0.0 < alpha < 1.0):
        raise TrustMonaiError(f"alpha must lie in (0, 1), got {alpha!r}")
    if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
        raise TrustMonaiError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if batch_size > n:
        raise TrustMonaiError(f"batch_size ({batch_size}) is larger than n ({n}); use batch_size <= n")


class _Sampler:
    """Shared Monte Carlo machinery: a seedable generator on the input's device and batched class counts."""

    def __init__(self, num_classes: int, seed: int | None = 0, channels_last: bool | None = None,
                 compile: bool = False):
        if not (isinstance(num_classes, (int, np.integer)) and num_classes >= 2):
            raise TrustMonaiError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.seed = seed
        self.channels_last, self.compile = channels_last, bool(compile)
        self._compiled: dict[int, nn.Module] = {}
        self._plain: set[int] = set()  # models that failed channels-last (see _forward)
        self._generator: torch.Generator | None = None
        self.last_record: CertifyRecord | None = None
        # called with the size of every noisy batch: a progress bar can count forward passes, not images
        self.on_samples: Callable[[int], None] | None = None

    def manual_seed(self, seed: int) -> None:
        """Restart the noise stream (the same seed gives the same certificates)."""
        self.seed, self._generator = seed, None

    def _gen(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device)
            if self.seed is None:
                self._generator.seed()
            else:
                self._generator.manual_seed(int(self.seed))
        return self._generator

    def _memory_format(self, model: nn.Module, x: torch.Tensor) -> torch.memory_format:
        """Channels-last for image / volume inputs when enabled (``None``: on the CPU only, where it was measured to
        pay, median 1.22x for the drs_natural ResNet, BENCHMARKS.md; no GPU was measured); the model's conv weights
        are converted to match, in place (values unchanged): channels-last weights alone switch the convolutions,
        and their outputs, to that layout (converting the input as well measured no faster)."""
        on = self.channels_last if self.channels_last is not None else x.device.type == "cpu"
        if not on or x.ndim not in (3, 4) or id(model) in self._plain:
            return torch.contiguous_format
        fmt = torch.channels_last if x.ndim == 3 else torch.channels_last_3d
        model.to(memory_format=fmt)  # a no-op for weights already in that layout
        return fmt

    def _forward(self, model: nn.Module, run: nn.Module, batch: torch.Tensor, fmt: torch.memory_format):
        """``run(batch)``; ``run`` is ``model`` or its compiled wrapper."""
        try:
            return run(batch)
        except RuntimeError:
            if fmt == torch.contiguous_format or self.channels_last is not None:
                raise
            # by default only: a classifier that reshapes its activations with .view cannot run channels-last;
            # it goes back to the plain layout and gets the same batch, so the noise stream is unchanged
            model.to(memory_format=torch.contiguous_format)
            self._plain.add(id(model))
            return run(batch)

    # ------------------------------------------------------------------ sequential certification (RS and DRS alike)
    # A subclass supplies: _method, _halves, _pilot(x, num, bs) -> (top class of num samples, its counts per half),
    # _drawer(x, cls, bs) -> (m -> counts per half), and _score(per-half probabilities) -> radius (increasing in every
    # probability; <= 0: none).

    def _select(self, x, n0, batch_size) -> int:
        return self._pilot(x, n0, batch_size)[0]

    def decide(self, x: torch.Tensor, radius: float, alpha: float, max_samples: int, batch_size: int, n0: int = 100,
               first: int = 32, growth: float = 2.0, label: int | None = None) -> tuple[int, int]:
        """Is the smoothed classifier certifiably robust at ``radius`` around ``x`` ``(C, *spatial)``? Returns
        ``(prediction, samples_used)``: the smoothed prediction when it is certified at ``radius`` with confidence
        ``1 - alpha``, else ``-1``; ``samples_used`` counts every forward pass (selection included).

        Class selection: the top class ``A`` of ``n0`` separate samples (per half for DRS), as CERTIFY. Estimation:
        up to ``max_samples`` further samples (per half), examined at the fixed looks ``first, first * growth, ...,
        max_samples``; at look ``k`` the Clopper-Pearson bounds of ``p_A`` at level ``alpha_k = alpha / K`` (DRS:
        ``alpha_k / 2`` per half) certify as soon as the radius of the lower bounds exceeds ``radius`` (RS: lower bound
        above ``Phi(radius / sigma)``) and abstain as soon as the upper bounds show that it cannot. Every bound of the
        sequence holds at once with probability ``1 - alpha`` (union bound over looks and halves; selection samples
        independent of the estimation samples), so the decision at the data-dependent stopping look is wrong with
        probability at most ``alpha``: the full derivation is :mod:`trust_monai.certify.sequential`.

        Raises:
            TrustMonaiError: ``radius <= 0``, bad sampling settings, or ``max_samples`` below the smallest budget that
                could certify ``radius`` at ``alpha`` (the message gives that minimum), all before any sampling.
        """
        schedule = self.check_decide(radius, alpha, max_samples, batch_size, n0, first, growth)
        t0 = time.perf_counter()
        top = self._select(x, n0, batch_size)
        res = seq.decide(self._drawer(x, top, batch_size), self._score, self._halves, float(radius), schedule)
        pred = top if res.certified else ABSTAIN
        used = self._halves * (n0 + res.n)
        self._record("decide", pred, float(radius) if res.certified else 0.0, n0, res, label, used, t0)
        return pred, used

    def certify_adaptive(self, x: torch.Tensor, alpha: float, max_samples: int, batch_size: int, n0: int = 100,
                         tolerance: float = 0.05, pilot: int | None = None, first: int = 100,
                         label: int | None = None) -> tuple[int, float, int]:
        """CERTIFY with an input-specific sample size: ``(prediction, radius, samples_used)``, ``(-1, 0.0, used)`` on
        abstention.

        Two stages ("Input-Specific Robustness Certification for Randomized Smoothing", Chen et al., AAAI 2022):
        ``max(n0, pilot)`` pilot samples (per half for DRS; ``pilot`` None: 1% of ``max_samples``, so at most 1% more
        passes than fixed n on an input that needs the whole budget) select the class ``A`` and estimate how often it
        wins; the sample size is the smallest ``m`` (of a grid from ``first`` to ``max_samples``, about 5% apart)
        whose predicted radius is within ``tolerance`` of what ``max_samples`` would give; then ``m`` fresh samples
        give the radius at the whole ``alpha`` (DRS: halved between the halves). Guarantee: ``A`` and ``m`` depend on
        the pilot only, which is independent of the estimation samples, so the radius holds with probability at least
        ``1 - alpha`` whatever the pilot said; the tolerance is a plug-in prediction and affects only how much radius
        is traded, never the guarantee (:mod:`trust_monai.certify.sequential`).
        """
        pilot = int(max_samples) // 100 if pilot is None else pilot
        self.check_adaptive(alpha, max_samples, batch_size, n0, tolerance, pilot, first)
        t0 = time.perf_counter()
        n_pilot = max(int(n0), int(pilot))
        top, hits = self._pilot(x, n_pilot, batch_size)
        res = seq.adaptive(hits, n_pilot, self._drawer(x, top, batch_size), self._score, self._halves, float(alpha),
                           int(max_samples), int(first), float(tolerance))
        pred, radius = (top, res.radius) if res.certified else (ABSTAIN, 0.0)
        used = self._halves * (n_pilot + res.n)
        self._record("adaptive", pred, radius, n_pilot, res, label, used, t0)
        return pred, radius, used

    def check_decide(self, radius, alpha, max_samples, batch_size, n0=100, first=32, growth=2.0) -> seq.Schedule:
        """Refuse bad :meth:`decide` settings (no sampling): ``radius <= 0``, bad sampling arguments, or a
        ``max_samples`` too small to certify ``radius`` at ``alpha`` even if every sample agreed (the message names
        the minimum). Returns the look schedule."""
        if not (isinstance(radius, (int, float)) and math.isfinite(radius) and radius > 0):
            raise TrustMonaiError(f"radius must be a finite number > 0, got {radius!r}")
        self._check_sequential(n0, max_samples, alpha, batch_size, first)
        schedule = seq.Schedule.make(alpha, int(max_samples), first, growth)
        if self._score(np.full(self._halves, (schedule.alphas[-1] / self._halves) ** (1.0 / max_samples))) <= radius:
            least = seq.min_samples_decide(self._score, self._halves, radius, alpha, first, growth)
            raise TrustMonaiError(
                f"max_samples={max_samples} cannot certify radius {radius:g} at alpha {alpha:g} even if every sample "
                f"agreed; use max_samples >= {least}")
        return schedule

    def check_adaptive(self, alpha, max_samples, batch_size, n0=100, tolerance=0.05, pilot=0, first=100) -> None:
        """Refuse bad :meth:`certify_adaptive` settings (no sampling), as :meth:`check_decide`."""
        if not (isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance >= 0):
            raise TrustMonaiError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
        if not (isinstance(pilot, (int, np.integer)) and pilot >= 0):
            raise TrustMonaiError(f"pilot must be an integer >= 0 (0: the n0 selection samples only), got {pilot!r}")
        self._check_sequential(n0, max_samples, alpha, batch_size, first)
        if self._score(np.full(self._halves, (alpha / self._halves) ** (1.0 / max_samples))) <= 0:
            least = seq.min_samples_adaptive(self._score, self._halves, alpha)
            raise TrustMonaiError(f"max_samples={max_samples} cannot certify any radius at alpha {alpha:g}; "
                                  f"use max_samples >= {least}")

    @staticmethod
    def _check_sequential(n0, max_samples, alpha, batch_size, first) -> None:
        if not (isinstance(max_samples, (int, np.integer)) and max_samples >= 1):
            raise TrustMonaiError(f"max_samples must be an integer >= 1, got {max_samples!r}")
        if not (isinstance(first, (int, np.integer)) and first >= 1):
            raise TrustMonaiError(f"first must be an integer >= 1, got {first!r}")
        check_sampling_args(n0, max(int(max_samples), int(n0) + 1), alpha, 1)
        if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
            raise TrustMonaiError(f"batch_size must be an integer >= 1, got {batch_size!r}")

    def _record(self, mode, pred, radius, n0, res, label, used, t0) -> None:
        self.last_record = CertifyRecord(
            self._method, pred, radius, n0, res.n, [int(c) for c in res.counts], [float(v) for v in res.lower], label,
            None if label is None else pred == int(label), time.perf_counter() - t0, used, mode)

    @torch.no_grad()
    def _counts(self, model: nn.Module, x: torch.Tensor, sigma: float, num: int, batch_size: int) -> np.ndarray:
        """Class counts of ``model(x + N(0, sigma^2 I))`` over ``num`` draws; ``x`` is one input without batch axis."""
        gen = self._gen(x.device)
        fmt = self._memory_format(model, x)
        run = model
        if self.compile:  # one compiled wrapper per base model, made after its weights took their final layout
            run = self._compiled.setdefault(id(model), torch.compile(model, dynamic=False))
        counts = torch.zeros(self.num_classes, dtype=torch.long, device=x.device)
        remaining = num
        while remaining > 0:
            b = min(batch_size, remaining)
            remaining -= b
            batch = x.unsqueeze(0).expand(b, *x.shape)
            noise = torch.randn(batch.shape, generator=gen, device=x.device, dtype=x.dtype)
            pred = self._forward(model, run, batch + sigma * noise, fmt).argmax(1)
            counts += torch.bincount(pred, minlength=self.num_classes)
            if self.on_samples is not None:
                self.on_samples(b)
        return counts.cpu().numpy()


class Smooth(_Sampler):
    """Randomized smoothing of a classifier: ``g(x) = argmax_c P(f(x + e) = c)``, ``e ~ N(0, sigma^2 I)``.

    Certificate (Cohen et al., Theorem 1): if ``p_A`` is a lower bound on ``P(f(x + e) = A)`` with ``p_A > 1/2``,
    then ``g(x + delta) = A`` for every ``||delta||_2 < sigma * PhiInv(p_A)``. CERTIFY picks ``A`` from ``n0`` samples,
    then bounds ``p_A`` from ``n`` fresh samples with the one-sided ``(1 - alpha)`` Clopper-Pearson bound, and abstains
    when the bound is not above 1/2; the certificate then holds with probability at least ``1 - alpha``.

    Args:
        base_classifier: maps a batch ``(B, C, *spatial)`` to logits ``(B, num_classes)``; put in eval mode here.
        num_classes: number of classes.
        sigma: noise level (in input units).
        seed: seed of the noise generator (None: random).
        channels_last: run the noisy batches channels-last (and convert the classifier's conv weights to it);
            ``None``: on CPU inputs only. The certificates are the same up to float rounding of the logits.
        compile: run the classifier through ``torch.compile`` (needs a C++ compiler on the CPU). Its warm-up (tens
            of seconds, once per process and batch size) pays only on long runs; off by default.
    """

    def __init__(self, base_classifier: nn.Module, num_classes: int, sigma: float, seed: int | None = 0,
                 channels_last: bool | None = None, compile: bool = False):
        check_sigma(sigma)
        super().__init__(num_classes, seed, channels_last, compile)
        self.base_classifier = base_classifier.eval()
        self.sigma = float(sigma)

    _method, _halves = "rs", 1

    def _drawer(self, x, top, batch_size):
        return lambda m: self._counts(self.base_classifier, x, self.sigma, m, batch_size)[top:top + 1]

    def _pilot(self, x, num, batch_size) -> tuple[int, np.ndarray]:
        counts = self._counts(self.base_classifier, x, self.sigma, num, batch_size)
        top = int(counts.argmax())
        return top, counts[top:top + 1]

    def _score(self, p) -> float:
        """``sigma PhiInv(p)`` (Cohen et al.'s radius for a lower bound ``p`` on ``p_A``)."""
        return self.sigma * float(phi_inv(min(float(np.asarray(p).ravel()[0]), 1.0 - 1e-15)))

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int, label: int | None = None):
        """Cohen et al.'s CERTIFY for one input ``x`` ``(C, *spatial)``: returns ``(prediction, radius)``, ``(-1, 0.0)``
        on abstention; the full record is ``self.last_record``."""
        check_sampling_args(n0, n, alpha, batch_size)
        t0 = time.perf_counter()
        top = int(self._counts(self.base_classifier, x, self.sigma, n0, batch_size).argmax())
        k = int(self._counts(self.base_classifier, x, self.sigma, n, batch_size)[top])
        p_a = float(cp_lower(k, n, alpha))
        if p_a > 0.5:
            pred, radius = top, self.sigma * float(phi_inv(p_a))
        else:
            pred, radius = ABSTAIN, 0.0
        self.last_record = CertifyRecord(
            "rs", pred, radius, n0, n, [k], [p_a], label, None if label is None else pred == int(label),
            time.perf_counter() - t0, n0 + n,
        )
        return pred, radius

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int) -> int:
        """Cohen et al.'s PREDICT: the top class of ``n`` samples unless a two-sided binomial test of the top two counts
        fails at ``alpha`` (then -1); the answer differs from ``g(x)`` with probability at most ``alpha``."""
        check_sampling_args(None, n, alpha, batch_size)
        counts = self._counts(self.base_classifier, x, self.sigma, n, batch_size)
        a, b = np.argsort(counts)[::-1][:2]
        return int(a) if float(binom_test_two_sided_half(counts[a], counts[b])) <= alpha else ABSTAIN


class DualSmooth(_Sampler):
    """Dual randomized smoothing: two half-resolution sub-images, each smoothed by its own classifier.

    ``x`` is split by coordinate parity (:func:`~trust_monai.transforms.dual_split`) into ``x_l`` and ``x_r``; the
    smoothed probabilities are ``p_c,h(x_h) = P(f_h(x_h + e_h) = c)``, ``e_h ~ N(0, sigma_h^2 I)``, and the prediction
    is ``G(x) = argmax_c (p_c,l(x_l) + p_c,r(x_r))``.

    Certificate (proved here; this is the sound form of the DRS bound):

    1. The halves partition the coordinates, so a perturbation ``delta`` splits as ``||delta||^2 = ||delta_l||^2 +
       ||delta_r||^2``.
    2. For each half, ``PhiInv(p_c,h(x_h + delta_h))`` is ``(1 / sigma_h)``-Lipschitz in ``delta_h`` (Salman et al.,
       "Provably Robust Deep Learning via Adversarially Trained Smoothed Classifiers", 2019; Cohen et al.), so with
       lower bounds ``a = PhiInv(pA_l)`` and ``b = PhiInv(pA_r)``:
       ``p_A,l(x_l + delta_l) >= Phi(a - t_l)`` and ``p_A,r(x_r + delta_r) >= Phi(b - t_r)``, ``t_h = ||delta_h|| /
       sigma_h``.
    3. ``A`` stays the argmax whenever ``p_A,l + p_A,r > 1``: each half's probabilities sum to 1, so any other class
       has ``p_c,l + p_c,r <= 2 - (p_A,l + p_A,r) < p_A,l + p_A,r``.
    4. ``Phi(a - t_l) + Phi(b - t_r) > 1  <=>  Phi(a - t_l) > Phi(t_r - b)  <=>  t_l + t_r < a + b``.
    5. Over ``||delta|| <= R``, the largest ``t_l + t_r = ||delta_l|| / sigma_l + ||delta_r|| / sigma_r`` is
       ``R * sqrt(sigma_l^-2 + sigma_r^-2)`` (Cauchy-Schwarz, with equality for a suitable split of the norm).

    Hence ``G(x + delta) = A`` for every ``||delta|| < R = (a + b) / sqrt(sigma_l^-2 + sigma_r^-2)``, which is
    ``sigma / sqrt(2) * (a + b)`` for equal noise levels; abstain when ``a + b <= 0``. Both lower bounds must hold
    at once, so each is a one-sided Clopper-Pearson bound at ``alpha / 2`` (Bonferroni): the certificate holds with
    probability at least ``1 - alpha``. (``sqrt(R_l^2 + R_r^2)`` with the full alpha per half, as the public code
    reports, is not implied by 1-5.)

    ``n0`` and ``n`` count samples per half, so one certification costs ``2 (n0 + n)`` forward passes: compare with
    :class:`Smooth` at twice the ``n0`` / ``n`` for an equal budget.

    Args:
        base_classifier_l / base_classifier_r: classifiers of the even / odd half, each reading a batch
            ``(B, C, *spatial[:-1], W/2)`` (e.g. :class:`~trust_monai.networks.HalfInput`); put in eval mode here.
        num_classes: number of classes.
        sigma_l / sigma_r: noise level of each half (``sigma_r`` None: same as ``sigma_l``).
        seed: seed of the noise generator.
        channels_last, compile: as in :class:`Smooth`.
    """

    def __init__(
        self,
        base_classifier_l: nn.Module,
        base_classifier_r: nn.Module,
        num_classes: int,
        sigma_l: float,
        sigma_r: float | None = None,
        seed: int | None = 0,
        channels_last: bool | None = None,
        compile: bool = False,
    ):
        sigma_r = sigma_l if sigma_r is None else sigma_r
        check_sigma(sigma_l, sigma_r)
        super().__init__(num_classes, seed, channels_last, compile)
        self.base_classifier_l, self.base_classifier_r = base_classifier_l.eval(), base_classifier_r.eval()
        self.sigma_l, self.sigma_r = float(sigma_l), float(sigma_r)

    _method, _halves = "drs", 2

    def _pilot(self, x, num, batch_size) -> tuple[int, np.ndarray]:
        c_l, c_r = self._both(x, num, batch_size)
        top = int((c_l + c_r).argmax())
        return top, np.array([c_l[top], c_r[top]])

    def _drawer(self, x, top, batch_size):
        x_l, x_r = dual_split(x, x.ndim - 1)

        def draw(m: int) -> np.ndarray:
            return np.array([self._counts(self.base_classifier_l, x_l, self.sigma_l, m, batch_size)[top],
                             self._counts(self.base_classifier_r, x_r, self.sigma_r, m, batch_size)[top]])

        return draw

    def _score(self, p) -> float:
        """The DRS radius ``(PhiInv(p_l) + PhiInv(p_r)) / sqrt(sigma_l^-2 + sigma_r^-2)`` of per-half bounds."""
        a, b = (float(phi_inv(min(float(v), 1.0 - 1e-15))) for v in np.asarray(p).ravel()[:2])
        return float(self.radius(a, b, self.sigma_l, self.sigma_r))

    @staticmethod
    def radius(a, b, sigma_l: float, sigma_r: float):
        """``(a + b) / sqrt(sigma_l^-2 + sigma_r^-2)`` for ``a = PhiInv(pA_l)``, ``b = PhiInv(pA_r)``."""
        return (np.asarray(a) + np.asarray(b)) / math.sqrt(sigma_l ** -2 + sigma_r ** -2)

    def _both(self, x: torch.Tensor, num: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        x_l, x_r = dual_split(x, x.ndim - 1)
        return (
            self._counts(self.base_classifier_l, x_l, self.sigma_l, num, batch_size),
            self._counts(self.base_classifier_r, x_r, self.sigma_r, num, batch_size),
        )

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int, label: int | None = None):
        """CERTIFY for one full image ``x`` ``(C, *spatial)`` (last axis even): ``(prediction, radius)`` or
        ``(-1, 0.0)``; ``n0`` / ``n`` samples per half. The record is ``self.last_record``."""
        check_sampling_args(n0, n, alpha, batch_size)
        t0 = time.perf_counter()
        c_l, c_r = self._both(x, n0, batch_size)
        top = int((c_l + c_r).argmax())
        c_l, c_r = self._both(x, n, batch_size)
        k_l, k_r = int(c_l[top]), int(c_r[top])
        p_l, p_r = (float(v) for v in cp_lower(np.array([k_l, k_r]), n, alpha / 2))
        a, b = float(phi_inv(p_l)), float(phi_inv(p_r))
        if a + b > 0:
            pred, radius = top, float(self.radius(a, b, self.sigma_l, self.sigma_r))
        else:
            pred, radius = ABSTAIN, 0.0
        self.last_record = CertifyRecord(
            "drs", pred, radius, n0, n, [k_l, k_r], [p_l, p_r], label,
            None if label is None else pred == int(label), time.perf_counter() - t0, 2 * (n0 + n),
        )
        return pred, radius

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int) -> int:
        """The class ``A`` with the largest summed count over ``n`` samples per half, returned only when lower bounds
        show ``p_A,l + p_A,r > 1`` (so ``A`` is ``G(x)``), else -1.

        ``A`` is chosen from the same samples, so the bounds take a union over all classes (level
        ``alpha / (2 * num_classes)`` each): answering a class other than ``G(x)`` needs some class's bound to fail,
        which happens with probability at most ``alpha``.
        """
        check_sampling_args(None, n, alpha, batch_size)
        c_l, c_r = self._both(x, n, batch_size)
        top = int((c_l + c_r).argmax())
        p = cp_lower(np.array([c_l[top], c_r[top]]), n, alpha / (2 * self.num_classes))
        return top if float(phi_inv(p[0]) + phi_inv(p[1])) > 0 else ABSTAIN
