"""The statistics of randomized-smoothing certificates, vectorised over samples or pixels.

- :func:`cp_lower`: one-sided Clopper-Pearson lower confidence bound of a binomial proportion, found by bisection on
  the exact binomial tail (``P(Bin(n, p) >= k) = alpha``), so it does not share code with the Beta-quantile form the
  tests compare it against.
- :func:`binom_sf_pvalue`: one-sided p-value of ``H0: p <= tau`` after ``k`` successes in ``n`` trials.
- :func:`holm`: Holm's step-down correction ("A Simple Sequentially Rejective Multiple Test Procedure", 1979): rejects
  with family-wise error at most ``alpha`` under any dependence between the tests.
- :func:`phi_inv`: the standard normal quantile.
- :func:`cp_bounds`: one-sided Clopper-Pearson lower and upper bounds from ``scipy.stats.beta`` quantiles (the
  sequential rules of :mod:`trust_monai.certify.sequential` use it).
"""

from __future__ import annotations

import numpy as np
from scipy.special import bdtrc, ndtri
from scipy.stats import beta as _beta

__all__ = ["cp_bounds", "cp_lower", "binom_sf_pvalue", "binom_test_two_sided_half", "holm", "phi_inv"]


def phi_inv(p):
    """Standard normal quantile, elementwise (``-inf`` at 0, ``inf`` at 1)."""
    return ndtri(np.asarray(p, dtype=np.float64))


def _upper_tail(k: np.ndarray, n: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``P(Bin(n, p) >= k)`` for integer ``k >= 1`` (``bdtrc(k - 1, n, p)`` is ``P(X > k - 1)``)."""
    return bdtrc(k - 1, n, p)


def cp_lower(k, n, alpha: float, iters: int = 60) -> np.ndarray:
    """One-sided ``(1 - alpha)`` Clopper-Pearson lower bound on ``p`` after ``k`` successes in ``n`` trials.

    The bound is the ``p`` where ``P(Bin(n, p) >= k) = alpha`` (0 when ``k == 0``); the tail grows with ``p``, so
    bisection finds it. 60 halvings bring the interval below 1e-18, past double precision.

    Args:
        k: successes, integer array (any shape) with ``0 <= k <= n``.
        n: trials, broadcastable to ``k``.
        alpha: one-sided error level in (0, 1).
    """
    k = np.asarray(k, dtype=np.float64)
    n = np.broadcast_to(np.asarray(n, dtype=np.float64), k.shape)
    lo, hi = np.zeros_like(k), np.ones_like(k)
    pos = k > 0
    kk, nn = np.where(pos, k, 1.0), np.where(pos, n, 1.0)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        below = _upper_tail(kk, nn, mid) < alpha  # tail too small: the bound lies above mid
        lo = np.where(below, mid, lo)
        hi = np.where(below, hi, mid)
    return np.where(pos, lo, 0.0)


def cp_bounds(k, n, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided ``(1 - alpha)`` Clopper-Pearson lower and upper bounds on ``p`` after ``k`` successes in ``n``.

    ``lower = Beta(alpha; k, n - k + 1)`` quantile (0 when ``k == 0``), ``upper = Beta(1 - alpha; k + 1, n - k)``
    quantile (1 when ``k == n``): ``P(lower > p) <= alpha`` and ``P(upper < p) <= alpha`` for every ``p``.
    """
    k = np.asarray(k, dtype=np.float64)
    n = np.broadcast_to(np.asarray(n, dtype=np.float64), k.shape)
    lo = np.where(k > 0, _beta.ppf(alpha, np.maximum(k, 1.0), n - k + 1.0), 0.0)
    hi = np.where(k < n, _beta.ppf(1.0 - alpha, k + 1.0, np.maximum(n - k, 1.0)), 1.0)
    return lo, hi


def binom_sf_pvalue(k, n, tau: float) -> np.ndarray:
    """One-sided p-value ``P(Bin(n, tau) >= k)`` of ``H0: p <= tau`` (1 when ``k == 0``)."""
    k = np.asarray(k, dtype=np.float64)
    n = np.broadcast_to(np.asarray(n, dtype=np.float64), k.shape)
    return np.where(k > 0, _upper_tail(np.maximum(k, 1.0), n, tau), 1.0)


def binom_test_two_sided_half(k_a, k_b) -> np.ndarray:
    """Two-sided binomial test p-value of ``k_a`` vs ``k_b`` under ``p = 1/2`` (Cohen et al.'s PREDICT), for
    ``k_a >= k_b``: ``min(1, 2 P(Bin(k_a + k_b, 1/2) >= k_a))``."""
    k_a, k_b = np.asarray(k_a, dtype=np.float64), np.asarray(k_b, dtype=np.float64)
    return np.minimum(1.0, 2.0 * binom_sf_pvalue(k_a, k_a + k_b, 0.5))


def holm(pvalues, alpha: float) -> np.ndarray:
    """Holm step-down: boolean array (shape of ``pvalues``) of the hypotheses rejected at family-wise ``alpha``.

    Sort the ``m`` p-values ascending; reject ``p_(1) .. p_(j)`` for the largest prefix with
    ``p_(i) <= alpha / (m - i + 1)`` for every ``i <= j``; stop at the first failure.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    flat = p.ravel()
    m = flat.size
    if m == 0:
        return np.zeros_like(p, dtype=bool)
    order = np.argsort(flat, kind="stable")
    thresholds = alpha / (m - np.arange(m))
    ok = flat[order] <= thresholds
    first_fail = int(np.argmin(ok)) if not ok.all() else m
    reject = np.zeros(m, dtype=bool)
    reject[order[:first_fail]] = True
    return reject.reshape(p.shape)
