"""Certify with fewer samples: stop as soon as an anytime-valid bound answers (``decide``), or choose each input's
sample size from a pilot (``adaptive``).

Two rules, shared by :class:`~trust_monai.certify.Smooth` (one smoothed input, ``halves = 1``) and
:class:`~trust_monai.certify.DualSmooth` (two, ``halves = 2``); the classes add the class-selection step and the
records. :func:`decide` rests on one confidence sequence for the selected class's probability ``p`` (per half);
:func:`adaptive` needs none (see its entry below):

**The confidence sequence (union-bound Clopper-Pearson over a fixed geometric grid of looks).** The look times
``n_1 < n_2 < ... < n_K = max_samples`` (:func:`look_times`) and the levels ``alpha_1 .. alpha_K`` with
``sum_k alpha_k = alpha`` (:class:`Schedule`) are fixed before any sample is drawn; they depend only on
``max_samples``, ``first``, ``growth`` and ``alpha``. Let ``S_k`` be the number of the first ``n_k`` estimation
samples whose prediction is the selected class ``A``. Given ``A``, the estimation samples are i.i.d. Bernoulli(p), so
for every fixed ``k`` the one-sided Clopper-Pearson bound ``L_k = CP_lower(S_k, n_k, alpha_k / H)`` satisfies
``P(L_k > p) <= alpha_k / H`` (``H`` = halves; likewise ``U_k = CP_upper`` from above). By the union bound over the
``K`` looks and the ``H`` halves, ``P(exists k, h: L_k,h > p_h) <= sum_k alpha_k = alpha``: with probability at least
``1 - alpha`` *every* lower bound of the sequence holds simultaneously. Whatever data-dependent rule picks the
stopping look ``T`` (including "stop as soon as the bound is good enough"), ``{L_T > p} ⊆ {exists k: L_k > p}``, so
the bound reported at ``T`` holds with probability at least ``1 - alpha``. The naive rule that checks a level-``alpha``
bound after every batch has no such guarantee: each look spends ``alpha`` again, and its error grows with the number
of looks (``tests/unit/test_certify_sequential.py`` measures it above ``alpha``).

**The class-selection step.** ``A`` is the top class of ``n0`` separate selection samples (as Cohen et al.'s
CERTIFY), independent of the estimation samples, so conditional on ``A`` the argument above holds, and integrating
over ``A`` keeps it unconditional. A poorly chosen ``A`` only makes the bound small (abstention), never wrong.

**From bounds to certificates.** ``score(L)`` maps the per-half lower bounds to a certified radius and is increasing
in each bound (RS: ``sigma PhiInv(L)``, Cohen et al.'s Theorem 1; DRS: ``(PhiInv(L_l) + PhiInv(L_r)) /
sqrt(sigma_l^-2 + sigma_r^-2)``, :class:`~trust_monai.certify.DualSmooth`); when every bound holds, the true
probabilities give at least ``score(L)``, which is therefore a valid radius.

- :func:`decide` (fixed radius ``r``; "Treatment of Statistical Estimation Problems in Randomized Smoothing for
  Adversarial Robustness", Voracek and Hein, 2024, decide robustness with a confidence sequence): at each look,
  certified as soon as ``score(L_k) > r``; abstain as soon as ``score(U_k) <= r`` (the upper bounds at the same
  levels; abstaining is never unsound, the upper side only saves samples and, by the same union bound, abstains on
  an input whose true score exceeds ``r`` with probability at most ``alpha``); abstain at ``max_samples`` when
  neither happened. A wrong certificate needs ``score(L_T) > r >= true score``, i.e. some failed lower bound:
  probability at most ``alpha``.
- :func:`adaptive` (input-specific sample size, "Input-Specific Robustness Certification for Randomized Smoothing",
  Chen et al., AAAI 2022): not sequential but **two-stage**, so it needs no union bound over looks. The ``pilot``
  samples (which also select ``A``) give the plug-in frequency ``q = S_pilot / pilot``; the radius the full budget
  ``N`` would give is predicted as ``R_hat = score(CP_lower(round(q N), N, alpha / H))``, and the sample size is the
  smallest ``m`` of a fixed geometric grid (``first`` .. ``N``, steps of about 5%) whose predicted radius
  ``score(CP_lower(round(q m), m, alpha / H))`` is within ``tolerance`` of ``R_hat``. Then ``m`` *fresh* estimation
  samples are drawn and the radius is ``score(CP_lower(S_m, m, alpha / H))``. Validity: ``A`` and ``m`` are
  functions of the pilot samples only, which are independent of the estimation samples, so given ``(A, m)`` the
  estimation count is Binomial(``m``, ``p``) per half and each lower bound fails with probability at most
  ``alpha / H``; the union over halves and integrating over ``(A, m)`` give ``1 - alpha``, whatever the pilot said.
  The tolerance is a plug-in prediction that governs how much radius is traded for samples, never the guarantee.
  (An earlier version stopped sequentially at doubling looks with a union bound. On the same 22 images of the
  drs_natural benchmark, n = 100,000, tolerance 0.05, it saved 2.75x at an average radius loss of 0.026 where this
  saves 3.8x at 0.041; simulated at equal loss, about 3x against 4x: every look cost alpha and the doubling grid
  stopped late. BENCHMARKS.md.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import TrustMonaiError
from .stats import cp_bounds

__all__ = ["Schedule", "look_times", "decide", "adaptive", "sample_size", "min_samples_decide",
           "min_samples_adaptive"]


def look_times(first: int, max_samples: int, growth: float = 2.0) -> list[int]:
    """The fixed look grid ``first, ceil(first * growth), ...`` capped at ``max_samples``, which is always the last."""
    if not (isinstance(growth, (int, float)) and growth > 1.0):
        raise TrustMonaiError(f"growth must be a number > 1, got {growth!r}")
    looks, n = [], min(int(first), int(max_samples))
    while n < max_samples:
        looks.append(n)
        n = max(n + 1, math.ceil(n * growth))
    looks.append(int(max_samples))
    return looks


@dataclass(frozen=True)
class Schedule:
    """Look times and the alpha spent at each (split evenly, ``sum(alphas) == alpha``), fixed before sampling."""

    looks: tuple[int, ...]
    alphas: tuple[float, ...]

    @classmethod
    def make(cls, alpha: float, max_samples: int, first: int, growth: float = 2.0) -> "Schedule":
        looks = look_times(first, max_samples, growth)
        alphas = [alpha / len(looks)] * len(looks)
        return cls(tuple(looks), tuple(alphas))


Score = Callable[[np.ndarray], float]  # per-half probability bounds -> certified radius (<= 0: nothing certified)
Draw = Callable[[int], np.ndarray]  # m -> per-half counts of the selected class among m new samples


def _all_success_score(score: Score, halves: int, n: int, level: float) -> float:
    return score(np.full(halves, level ** (1.0 / n)))  # CP_lower(n, n, a) = a^(1/n)


def _minimum(feasible: Callable[[int], bool], start: int = 1, cap: int = 10 ** 12) -> int:
    hi = max(1, start)
    while not feasible(hi):
        hi *= 2
        if hi > cap:
            return cap
    lo = hi // 2
    while hi - lo > 1:  # the smallest feasible value (the schedule's K grows slowly with n: near-monotone)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if feasible(mid) else (mid, hi)
    return hi


def min_samples_decide(score: Score, halves: int, radius: float, alpha: float, first: int,
                       growth: float = 2.0) -> int:
    """The smallest ``max_samples`` with which :func:`decide` can certify ``radius`` at all (every sample a hit)."""
    def feasible(n: int) -> bool:
        s = Schedule.make(alpha, n, first, growth)
        return _all_success_score(score, halves, n, s.alphas[-1] / halves) > radius

    return _minimum(feasible)


def min_samples_adaptive(score: Score, halves: int, alpha: float) -> int:
    """The smallest ``max_samples`` with which :func:`adaptive` can certify any radius > 0."""
    return _minimum(lambda n: _all_success_score(score, halves, n, alpha / halves) > 0)


@dataclass
class SequentialResult:
    """What a sequential rule found: ``certified`` (decide), the certified ``radius`` (adaptive; decide: the lower
    bounds' radius at the stop), the estimation samples ``n`` per half, the per-half ``counts`` and ``lower``."""

    certified: bool
    radius: float
    n: int
    counts: np.ndarray
    lower: np.ndarray
    looks: int


def decide(draw: Draw, score: Score, halves: int, radius: float, schedule: Schedule) -> SequentialResult:
    """Is ``score(p) > radius``? Stop at the first look where the lower (certified) or upper (abstain) bounds answer;
    the validity argument is the module docstring."""
    counts = np.zeros(halves, dtype=np.int64)
    prev = 0
    for k, (n, a) in enumerate(zip(schedule.looks, schedule.alphas)):
        counts += draw(n - prev)
        prev = n
        lo, hi = cp_bounds(counts, n, a / halves)
        r_lo = score(lo)
        if r_lo > radius:
            return SequentialResult(True, r_lo, n, counts.copy(), lo, k + 1)
        if score(hi) <= radius or k == len(schedule.looks) - 1:
            return SequentialResult(False, max(r_lo, 0.0), n, counts.copy(), lo, k + 1)
    raise AssertionError("unreachable: the last look always returns")


def sample_size(freq: np.ndarray, score: Score, halves: int, alpha: float, max_samples: int, first: int,
                tolerance: float) -> int:
    """The smallest grid size ``m`` whose plug-in radius at the per-half frequencies ``freq`` is within ``tolerance``
    of the full budget's (0: the full budget is predicted to certify nothing)."""
    level = alpha / halves
    full = score(cp_bounds(np.round(freq * max_samples), max_samples, level)[0])
    if full <= 0:
        return 0
    lo = min(max(int(first), 1), int(max_samples))
    steps = max(2, int(np.ceil(np.log(max_samples / lo) / np.log(1.05))) + 1)  # about 5% apart
    grid = np.unique(np.append(np.geomspace(lo, max_samples, steps).astype(np.int64), int(max_samples)))
    for m in grid:
        if score(cp_bounds(np.round(freq * m), int(m), level)[0]) >= full - tolerance:
            return int(m)
    return int(max_samples)


def adaptive(pilot_counts: np.ndarray, pilot: int, draw: Draw, score: Score, halves: int, alpha: float,
             max_samples: int, first: int, tolerance: float) -> SequentialResult:
    """Two-stage input-specific certification: the sample size from the pilot counts, then a fresh estimate at the
    whole alpha; the rule and its guarantee are in the module docstring."""
    m = sample_size(np.asarray(pilot_counts, dtype=np.float64) / pilot, score, halves, alpha, max_samples, first,
                    tolerance)
    if m == 0:  # abstaining is always sound, and the pilot says the budget cannot certify
        return SequentialResult(False, 0.0, 0, np.zeros(halves, dtype=np.int64), np.zeros(halves), 0)
    counts = np.asarray(draw(m), dtype=np.int64)
    lo = cp_bounds(counts, m, alpha / halves)[0]
    r = score(lo)
    return SequentialResult(r > 0.0, max(r, 0.0), m, counts, lo, 1)
