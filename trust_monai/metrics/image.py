"""How much a protected / purified image differs from its source, in the source's window."""

from __future__ import annotations

import numpy as np

__all__ = ["psnr", "image_change_metrics"]


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB (``inf`` for identical arrays)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))


def image_change_metrics(before: np.ndarray, after: np.ndarray, low: float, high: float) -> dict:
    """PSNR and SSIM on the [0, 1] window ``(low, high)``, and the largest change in native units.

    Returns:
        ``{"psnr": dB, "ssim": float, "max_abs_change": native units, "max_abs_change_norm": window units,
        "changed_voxels": int}``.
    """
    from skimage.metrics import structural_similarity

    scale = float(high - low)
    a = np.clip((np.asarray(before, np.float64) - low) / scale, 0, 1)
    b = np.clip((np.asarray(after, np.float64) - low) / scale, 0, 1)
    diff = np.abs(np.asarray(after, np.float64) - np.asarray(before, np.float64))
    win = min(7, *[s if s % 2 else s - 1 for s in a.shape])
    ssim = float(structural_similarity(a, b, data_range=1.0, win_size=win)) if win >= 3 else float("nan")
    return {
        "psnr": psnr(a, b, 1.0),
        "ssim": ssim,
        "max_abs_change": float(diff.max()),
        "max_abs_change_norm": float(diff.max() / scale),
        "changed_voxels": int((diff > 0).sum()),
    }
