"""Pictures of a detector: ROC curves, and heatmaps of where it looks (gradient saliency)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..utils.fileio import atomic_path
from .metrics import roc_auc, roc_curve

__all__ = ["saliency", "roc_png", "heatmap_png"]


def saliency(network: torch.nn.Module, image: torch.Tensor, target: int = 1, sigma: float = 1.0) -> np.ndarray:
    """Gradient saliency of the ``target`` logit for one 2D image ``(C, H, W)``: ``|d logit / d x| * x``-free map.

    The absolute input gradient, summed over channels and Gaussian-smoothed (raw gradients of a patch model are
    blocky and speckled), normalised to [0, 1]. Works for any network, attention or not, so the MoE-ViT and the
    single-LoRA baseline are shown the same way.
    """
    from scipy.ndimage import gaussian_filter

    x = image[None].detach().clone().float().requires_grad_(True)
    with torch.enable_grad():
        logits = network(x)
        logits[0, target].backward()
    g = x.grad[0].abs().sum(0).cpu().numpy()
    g = gaussian_filter(g, sigma) if sigma > 0 else g
    return g / max(float(g.max()), 1e-12)


def roc_png(curves: Mapping[str, tuple[Sequence[int], Sequence[float]]], path, title: str = "ROC") -> Path:
    """One ROC curve per entry of ``curves`` (``name -> (labels, scores)``), AUC in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    for name, (y, s) in curves.items():
        if len(set(int(v) for v in y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, lw=1.6, label=f"{name} (AUC {roc_auc(y, s):.3f})")
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
    ax.set(xlabel="false-positive rate (real called fake)", ylabel="true-positive rate (fake caught)", title=title,
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return Path(path)


def heatmap_png(rows: Sequence[dict], path, title: str = "where the detector looks") -> Path:
    """A grid, one row per case: the image, and the saliency heatmap over it. ``rows`` items: ``image`` (2D array),
    ``heat`` (2D array in [0, 1]), ``caption``, ``voxel_order`` (a scan array in (i, j) order: shown transposed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(rows))
    cols = min(4, n)
    lines = int(np.ceil(n / cols))
    # constrained layout keeps each row clear of the two-line captions of the row below (tight_layout let them
    # slide under the images above)
    fig, axes = plt.subplots(lines, 2 * cols, figsize=(2.0 * 2 * cols, 2.4 * lines), squeeze=False,
                             layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    for i, r in enumerate(rows):
        a, b = axes[i // cols, 2 * (i % cols)], axes[i // cols, 2 * (i % cols) + 1]
        img, heat = np.asarray(r["image"], np.float32), np.asarray(r["heat"], np.float32)
        # scan arrays are (i, j) voxel order: shown transposed with the origin below, as radiology viewers do
        view = dict(origin="lower") if r.get("voxel_order") else {}
        if r.get("voxel_order"):
            img, heat = img.T, heat.T
        a.imshow(img, cmap="gray", vmin=0, vmax=1, **view)
        a.set_title(r.get("caption", ""), fontsize=6)
        b.imshow(img, cmap="gray", vmin=0, vmax=1, **view)
        b.imshow(heat, cmap="inferno", alpha=0.55, vmin=0, vmax=1, **view)
        b.set_title("saliency", fontsize=6)
    fig.suptitle(title, fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)
