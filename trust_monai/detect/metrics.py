"""Detection metrics from scores (higher = more likely fake) and binary labels (1 = fake), in plain numpy.

AUC is the Mann-Whitney probability that a random fake outscores a random real (ties count half); AP is the mean of
the precision at each fake's rank; EER is the error rate where false-positive and false-negative rates meet on the
ROC curve (linearly interpolated); accuracy uses the fixed threshold 0.5 on the fake probability.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["roc_curve", "roc_auc", "average_precision", "equal_error_rate", "accuracy", "detection_metrics",
           "aggregate_scores", "auc_by_strength"]


def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    return y, s


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rates, true-positive rates and thresholds, from (0, 0) to (1, 1), one point per distinct score."""
    y, s = _check(labels, scores)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], y.size - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    p, n = max(int(y.sum()), 1), max(int((1 - y).sum()), 1)
    return np.r_[0.0, fps / n], np.r_[0.0, tps / p], np.r_[np.inf, s[distinct]]


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    y, s = _check(labels, scores)
    pos, neg = s[y == 1], s[y == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(np.r_[pos, neg])
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def average_precision(labels, scores) -> float:
    """Average precision (area under the precision-recall step curve); NaN without fakes."""
    y, s = _check(labels, scores)
    if not y.sum():
        return float("nan")
    fpr, tpr, _ = roc_curve(y, s)
    p, n = y.sum(), (1 - y).sum()
    tp, fp = tpr * p, fpr * n
    precision = np.divide(tp, tp + fp, out=np.ones_like(tp), where=(tp + fp) > 0)
    return float(np.sum(np.diff(tpr) * precision[1:]))


def equal_error_rate(labels, scores) -> float:
    """Error rate where FPR = FNR on the ROC curve; NaN when only one class is present."""
    y, s = _check(labels, scores)
    if y.min() == y.max():
        return float("nan")
    fpr, tpr, _ = roc_curve(y, s)
    fnr = 1 - tpr
    i = int(np.argmax(fpr >= fnr))
    if i == 0:
        return float(fpr[0])
    # linear interpolation between the points before and after the crossing
    d0, d1 = fnr[i - 1] - fpr[i - 1], fnr[i] - fpr[i]
    t = d0 / (d0 - d1) if d0 != d1 else 0.0
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def accuracy(labels, scores, threshold: float = 0.5) -> float:
    y, s = _check(labels, scores)
    return float(np.mean((s >= threshold).astype(np.int64) == y)) if y.size else float("nan")


def detection_metrics(labels, scores, threshold: float = 0.5) -> dict[str, float]:
    """``{"auc", "ap", "eer", "acc", "n_real", "n_fake"}``."""
    y, s = _check(labels, scores)
    return {
        "auc": roc_auc(y, s),
        "ap": average_precision(y, s),
        "eer": equal_error_rate(y, s),
        "acc": accuracy(y, s, threshold),
        "n_real": int((y == 0).sum()),
        "n_fake": int((y == 1).sum()),
    }


def aggregate_scores(scores: Sequence[float], how: str = "topk", k: int = 3) -> float:
    """One volume score from its slice scores: ``max``, ``mean``, or ``topk`` (mean of the ``k`` highest).

    Tampering often touches a few slices only, so the mean of all slices dilutes it; ``topk`` is as sensitive as
    ``max`` but less driven by one noisy slice.
    """
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())[::-1]
    if not s.size:
        return float("nan")
    if how == "max":
        return float(s[0])
    if how == "mean":
        return float(s.mean())
    if how == "topk":
        return float(s[: max(1, int(k))].mean())
    raise ValueError(f"aggregate must be 'max', 'mean' or 'topk', got {how!r}")


def auc_by_strength(labels, scores, strengths, bins: int = 4) -> list[dict]:
    """AUC of the fakes binned by how strongly they were altered, each bin against all reals.

    ``strengths``: one value per item (e.g. mean ``|fake - source|``; ignored for reals). The fakes are split at the
    quantiles of their strengths into ``bins`` groups of (nearly) equal size. A detector that only misses faint
    tampering has a rising AUC from bin to bin; a flat row means it misses strong tampering as often as faint.
    Returns ``[{"bin", "low", "high", "n_fake", "auc"}, ...]`` from the faintest bin up.
    """
    y, s = _check(labels, scores)
    st = np.asarray(strengths, dtype=np.float64).ravel()
    if st.shape != y.shape:
        raise ValueError(f"{y.size} labels but {st.size} strengths")
    fake = np.flatnonzero(y == 1)
    if not fake.size:
        return []
    order = fake[np.argsort(st[fake], kind="mergesort")]
    out = []
    for b, part in enumerate(np.array_split(order, min(int(bins), fake.size))):
        sel = np.r_[np.flatnonzero(y == 0), part]
        out.append({"bin": b + 1, "low": float(st[part].min()), "high": float(st[part].max()),
                    "n_fake": int(part.size), "auc": roc_auc(y[sel], s[sel])})
    return out
