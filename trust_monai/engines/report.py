"""Pictures people would rather look at than read: before / after / difference panels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..utils.fileio import atomic_path

__all__ = ["before_after_png"]


def _middle_slice(a: np.ndarray, label: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """2D view of a scan: itself, or the axial slice with the most label voxels (the middle one when unlabelled)."""
    if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4) and a.dtype == np.uint8):
        return a, label
    k = int(np.argmax((label > 0).reshape(-1, a.shape[-1]).sum(0))) if label is not None else a.shape[-1] // 2
    return a[..., k], None if label is None else label[..., k]


def before_after_png(clean_dir, changed_dir, path, section: str = "training", n: int = 4, title: str = "protected"):
    """Write a grid of ``n`` cases: original, changed copy, |difference| (contrast-stretched), mask outline.

    Reads ``n`` entries of ``section``, evenly spaced, that exist in both folders (same relative paths). Returns the
    path, or None when no case is in both.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..data.datalist import load_datalist
    from ..data.io import read_image

    clean = load_datalist(clean_dir, section, keys=("image", "label"))
    changed_root = Path(changed_dir).resolve()
    pairs = []
    for entry in clean:
        rel = Path(entry["image"]).resolve().relative_to(Path(clean_dir).resolve())
        if (changed_root / rel).exists():
            pairs.append((entry, changed_root / rel))
    # evenly spaced through the list: the first cases of a slice dataset are edge slices with little to see
    rows = [pairs[int(i)] for i in np.unique(np.linspace(0, len(pairs) - 1, min(n, len(pairs))).round())] if pairs else []
    if not rows:
        return None
    fig, axes = plt.subplots(len(rows), 3, figsize=(8.4, 2.8 * len(rows)), squeeze=False)
    for (entry, other), ax in zip(rows, axes):
        a, _ = read_image(entry["image"])
        b, _ = read_image(other)
        lab = read_image(entry["label"])[0] if isinstance(entry.get("label"), str) else None
        a2, l2 = _middle_slice(np.asarray(a, np.float64), lab)
        b2, _ = _middle_slice(np.asarray(b, np.float64), lab)
        lo, hi = np.percentile(a2, [0.5, 99.5]) if a2.size else (0, 1)
        diff = np.abs(b2 - a2)
        for axis, img, name, kw in (
            (ax[0], a2, "original", dict(cmap="gray", vmin=lo, vmax=hi)),
            (ax[1], b2, title, dict(cmap="gray", vmin=lo, vmax=hi)),
            (ax[2], diff, f"|difference| (max {diff.max():.3g})", dict(cmap="magma", vmin=0, vmax=max(diff.max(), 1e-12))),
        ):
            axis.imshow(img.T if img.ndim == 2 else img, origin="lower" if img.ndim == 2 else "upper", **kw)
            if l2 is not None and (l2 > 0).any() and img.ndim == 2:
                axis.contour((l2 > 0).T.astype(float), levels=[0.5], colors="cyan", linewidths=0.6)
            axis.set_title(name, fontsize=8)
            axis.axis("off")
        ax[0].set_ylabel(Path(entry["image"]).name)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)
