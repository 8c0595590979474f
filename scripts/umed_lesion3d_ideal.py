"""Where the clean 3D lesion victim loses Dice: the ideal experiments behind bundles/umed/docs (lesion task, 3D).

Trains one clean victim with the library's recipe and scores it on every held-out *volume* of ``mni152_lesions``:
whole-volume Dice, Dice on the slices the 2D set stores (its per-subject score), after removing small predicted
components, and the false-negative / false-positive voxels (false positives split into lesion-free and lesion
slices). ``--victim 2d`` trains the 2D victim on ``mni152_lesions_2d`` and runs it slice by slice over the volumes
(same subjects and lesions), so the 2D and 3D scores can be compared on one footing. ``--contrast`` only measures
each lesion's contrast against a ring 2-3 voxels outside it, as a fraction of the data set's nominal contrast.

    python scripts/umed_lesion3d_ideal.py --victim 3d --patch 96 112 48 --num_samples 1 --batch_size 1 --epochs 100
    python scripts/umed_lesion3d_ideal.py --victim 2d --patch 64 64 --batch_size 16 --epochs 20
    python scripts/umed_lesion3d_ideal.py --contrast
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from trust_monai.data import prepare
from trust_monai.data.datalist import load_datalist
from trust_monai.data.pipelines import segmentation_transforms
from trust_monai.engines.segmentation import train_segmenter, victim_network


def dice(p: np.ndarray, r: np.ndarray) -> float:
    return float(2 * (p & r).sum() / max(int(p.sum() + r.sum()), 1))


def lesion_contrast(d3: Path) -> list[tuple[str, str, float]]:
    """(section, case, contrast) per lesion: its mean minus the mean of a ring 2-3 voxels outside every lesion, over
    the data set's nominal contrast (1.0: as painted on flat tissue; 0: as bright as its surroundings)."""
    import nibabel as nib

    info = json.loads((d3 / "dataset.json").read_text())
    nominal = info["contrast"] * info["brain_intensity_range"]
    rows = []
    for section in ("training", "test"):
        for e in info[section]:
            x = nib.load(d3 / e["image"]).get_fdata()
            y = nib.load(d3 / e["label"]).get_fdata() > 0
            lab, n = ndimage.label(y)
            for i in range(1, n + 1):
                m = lab == i
                ring = ndimage.binary_dilation(m, iterations=3) & ~ndimage.binary_dilation(m, iterations=1) & ~y
                rows.append((section, Path(e["image"]).name, float((x[m].mean() - x[ring].mean()) / nominal)))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--victim", choices=("2d", "3d"), default="3d")
    p.add_argument("--arch", default="unet")
    p.add_argument("--patch", type=int, nargs="+", default=[64, 64, 32])
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--num_samples", type=int, default=4)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--contrast", action="store_true")
    args = p.parse_args()
    d3 = Path(prepare("mni152_lesions"))
    if args.contrast:
        rows = lesion_contrast(d3)
        c = np.array([r[2] for r in rows])
        print(f"{len(c)} lesions; local contrast / nominal quantiles 0, 5, 10, 25, 50%:",
              np.quantile(c, [0, 0.05, 0.1, 0.25, 0.5]).round(2), f"under 0.25: {np.mean(c < 0.25):.3f}",
              f"under 0.5: {np.mean(c < 0.5):.3f}")
        for section, case, v in rows:
            if section == "test" and v < 0.5:
                print(f"  test {case}: {v:.2f}")
        return
    from monai.data import DataLoader, Dataset
    from monai.inferers import sliding_window_inference
    from monai.utils import set_determinism

    dims = 2 if args.victim == "2d" else 3
    patch = tuple(args.patch)
    if len(patch) != dims:
        p.error(f"--patch needs {dims} sizes for a {args.victim} victim")
    d2 = Path(prepare("mni152_lesions_2d"))
    train = load_datalist(d2 if dims == 2 else d3, "training", keys=("image", "label"))
    test = load_datalist(d3, "test", keys=("image", "label"))
    stored: dict[str, list[int]] = {}  # the slices the 2D set keeps of each test subject
    for e in json.loads((d2 / "dataset.json").read_text())["test"]:
        stored.setdefault(e["case"], []).append(e["slice"])
    set_determinism(args.seed)
    net = victim_network(args.arch, dims, 1, 2)
    train_segmenter(net, train, dims, args.epochs, patch, args.batch_size, num_samples=args.num_samples)
    net.eval()
    rows = []
    with torch.inference_mode():
        for e, b in zip(test, DataLoader(Dataset(test, segmentation_transforms(3, train=False)), batch_size=1)):
            x = b["image"] if dims == 3 else b["image"][0].permute(3, 0, 1, 2)  # 2D: the slices as a batch
            logits = sliding_window_inference(x, patch, 8, net, overlap=0.25)
            pred = (logits.argmax(1)[0] if dims == 3 else logits.argmax(1).permute(1, 2, 0)).numpy() > 0
            ref = b["label"][0, 0].numpy() > 0
            z = sorted(stored[Path(e["image"]).name.split(".")[0]])
            lab, n = ndimage.label(pred)
            sizes = ndimage.sum(pred, lab, range(1, n + 1))
            lesion_z = ref.any((0, 1))
            rows.append({
                "case": Path(e["image"]).name, "whole": dice(pred, ref),
                "stored_slices": dice(pred[..., z], ref[..., z]),
                **{f"min{k}": dice(np.isin(lab, 1 + np.flatnonzero(sizes >= k)), ref) for k in (20, 50, 100)},
                "fn": int((ref & ~pred).sum()), "fp_lesion_free_slices": int((pred & ~ref)[..., ~lesion_z].sum()),
                "fp_lesion_slices": int((pred & ~ref)[..., lesion_z].sum()), "ref": int(ref.sum()),
            })
            print(json.dumps(rows[-1]), flush=True)
    print("mean", {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0] if k != "case"})


if __name__ == "__main__":
    main()
