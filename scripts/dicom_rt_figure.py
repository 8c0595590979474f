"""Picture of one protected DICOM slice with the contours of the re-written RTSTRUCT, and the change beside it.

    python scripts/dicom_rt_figure.py --output OUT [--input STUDY] [--png docs/dicom_rtstruct_protected.png]

OUT is a ``trust-monai protect`` output folder of a study with an RTSTRUCT (e.g. LUNG1-001); STUDY the input folder
(for the change panel). The slice is the one where the first structure of ``--roi`` (default GTV-1) is largest.
Contours are read from OUT's RTSTRUCT and placed through OUT's series, so the picture shows that the re-referenced
structure set lies on the protected images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _grid(folder: Path):
    from trust_monai.data.dicom_rt import series_grid
    from trust_monai.data.io import _series_headers

    return series_grid(_series_headers(folder), folder)


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pydicom

    from trust_monai.data.dicom_rt import rasterise_rtstruct, rtstruct_roi_names
    from trust_monai.data.io import read_image

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", required=True, type=Path, help="the protect output folder")
    ap.add_argument("--input", type=Path, help="the input study (for the change panel)")
    ap.add_argument("--roi", default="GTV-1", help="structure that picks the slice")
    ap.add_argument("--png", type=Path, default=Path("docs/dicom_rtstruct_protected.png"))
    ap.add_argument("--caption", default="", help="added under the change panel's title")
    args = ap.parse_args()

    record = json.loads((args.output / ".trust_monai" / "input" / "dicom_objects.json").read_text())
    link = record["links"][0]
    series = args.output / link["series"]
    rt_path = args.output / link["object"]
    grid = _grid(series)
    image, _ = read_image(series)
    roi_mask, _ = rasterise_rtstruct(rt_path, grid, [args.roi])
    k = int(np.argmax(roi_mask.sum(axis=(0, 1))))
    rt = pydicom.dcmread(rt_path)
    names = rtstruct_roi_names(rt)
    colours = plt.cm.tab10(np.arange(len(names)))

    panels = 2 if args.input else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 4.4), dpi=90)
    axes = np.atleast_1d(axes)
    ax = axes[0]
    ax.imshow(image[:, :, k].T, cmap="gray", vmin=-1000, vmax=400)
    for name, colour, item in zip(names, colours, rt.ROIContourSequence):
        drawn = False
        for c in item.get("ContourSequence", None) or []:
            ijk = grid.to_voxel(np.asarray(c.ContourData, float).reshape(-1, 3))
            if abs(ijk[:, 2].mean() - k) > 0.25:
                continue
            closed = np.vstack([ijk, ijk[:1]])
            ax.plot(closed[:, 0], closed[:, 1], color=colour, lw=1.0, label=None if drawn else name)
            drawn = True
    ax.set_title(f"protected slice {k + 1}/{grid.shape[2]} + re-written RTSTRUCT", fontsize=8)
    ax.legend(loc="lower left", fontsize=6, framealpha=0.6)
    ax.axis("off")
    if args.input:
        before, _ = read_image(args.input / link["series"])
        change = image[:, :, k].astype(np.float64) - before[:, :, k]
        lim = max(1.0, float(np.abs(change).max()))
        im = axes[1].imshow(change.T, cmap="seismic", vmin=-lim, vmax=lim)
        title = f"change (HU), max |change| {np.abs(change).max():.0f}"
        axes[1].set_title(title + (f"\n{args.caption}" if args.caption else ""), fontsize=8)
        axes[1].axis("off")
        fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.02)
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png)
    print(args.png, f"{args.png.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
