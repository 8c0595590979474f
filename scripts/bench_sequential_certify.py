"""Benchmark (issue 23): fixed-n CERTIFY vs sequential ``decide`` vs input-specific ``certify_adaptive``, side by side
in one run, on the Fashion-MNIST test set with the drs_natural bundle's RS base model.

For every image (its own noise seed, the same for every mode), in this order: ``Smooth.decide`` at each radius,
``Smooth.certify_adaptive``, then Cohen et al.'s ``Smooth.certify`` with ``n0`` + ``n`` samples; each call is timed
on its own. ``decide`` and ``certify_adaptive`` get ``max_samples = n``, so all three modes have the same budget and
the same alpha. One row per image goes to ``OUT/rows.csv`` as soon as the image is done (a rerun with the same
settings resumes after the last finished image); ``OUT/summary.md`` / ``summary.json`` hold, per radius, the certified
accuracy of fixed n and of decide, the mean forward passes of each and their ratio, the wall-clock ratio, and for
adaptive the mean forward passes and the average certified radius (ACR: radius if correct, else 0) against fixed n.

    python scripts/bench_sequential_certify.py --checkpoint bundles/drs_natural/models/base_models.pt \\
        --images 500 --n 100000 --out outputs/bench_sequential

(the issue's protocol: sigma 0.5, alpha 0.001, radii 0.25 / 0.5 / 0.75 / 1.0, n = 100,000, n0 = 100.)
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch


def _summary(rows: list[dict], radii: list[float], n0: int, n: int) -> dict:
    label = np.array([int(r["label"]) for r in rows])
    out: dict = {"images": len(rows), "n0": n0, "n": n, "radii": {}}
    fixed_pred = np.array([int(r["fixed_pred"]) for r in rows])
    fixed_r = np.array([float(r["fixed_radius"]) for r in rows])
    fixed_t = sum(float(r["fixed_time"]) for r in rows)
    fixed_used = float(np.mean([int(r["fixed_used"]) for r in rows]))
    for rad in radii:
        k = f"{rad:g}"
        d_pred = np.array([int(r[f"decide_pred@{k}"]) for r in rows])
        d_used = float(np.mean([int(r[f"decide_used@{k}"]) for r in rows]))
        d_t = sum(float(r[f"decide_time@{k}"]) for r in rows)
        acc_fixed = float(np.mean((fixed_pred == label) & (fixed_r >= rad)))
        acc_decide = float(np.mean(d_pred == label))
        agree = float(np.mean(((fixed_pred == label) & (fixed_r >= rad)) == (d_pred == label)))
        out["radii"][k] = {"acc_fixed": acc_fixed, "acc_decide": acc_decide, "agree": agree,
                           "passes_fixed": fixed_used, "passes_decide": d_used, "pass_ratio": fixed_used / d_used,
                           "time_fixed_s": fixed_t, "time_decide_s": d_t, "time_ratio": fixed_t / max(d_t, 1e-12)}
    a_pred = np.array([int(r["adaptive_pred"]) for r in rows])
    a_r = np.array([float(r["adaptive_radius"]) for r in rows])
    a_used = float(np.mean([int(r["adaptive_used"]) for r in rows]))
    a_t = sum(float(r["adaptive_time"]) for r in rows)
    out["adaptive"] = {"passes": a_used, "pass_ratio": fixed_used / a_used,
                       "acr": float(np.mean(np.where(a_pred == label, a_r, 0.0))),
                       "acr_fixed": float(np.mean(np.where(fixed_pred == label, fixed_r, 0.0))),
                       "time_s": a_t, "time_ratio": fixed_t / max(a_t, 1e-12),
                       **{f"acc@{r:g}": float(np.mean((a_pred == label) & (a_r >= r))) for r in radii}}
    return out


def _markdown(s: dict, radii: list[float]) -> str:
    lines = [f"{s['images']} images; fixed: n0 = {s['n0']}, n = {s['n']}; decide / adaptive: n0 = {s['n0']}, "
             f"max_samples = {s['n']}", "",
             "| radius | cert. acc. fixed | cert. acc. decide | same verdict | passes fixed | passes decide | "
             "pass ratio | wall-clock ratio |", "|---|---|---|---|---|---|---|---|"]
    for r in radii:
        d = s["radii"][f"{r:g}"]
        lines.append(f"| {r:g} | {100 * d['acc_fixed']:.1f}% | {100 * d['acc_decide']:.1f}% | {100 * d['agree']:.1f}% "
                     f"| {d['passes_fixed']:.0f} | {d['passes_decide']:.0f} | {d['pass_ratio']:.1f}x "
                     f"| {d['time_ratio']:.1f}x |")
    a = s["adaptive"]
    lines += ["", "| mode | mean passes | pass ratio | ACR | wall-clock ratio | "
              + " | ".join(f"acc@{r:g}" for r in radii) + " |", "|---|---|---|---|---|" + "---|" * len(radii),
              f"| fixed | {s['n0'] + s['n']} | 1.0x | {a['acr_fixed']:.4f} | 1.0x | "
              + " | ".join(f"{100 * s['radii'][f'{r:g}']['acc_fixed']:.1f}%" for r in radii) + " |",
              f"| adaptive | {a['passes']:.0f} | {a['pass_ratio']:.1f}x | {a['acr']:.4f} | {a['time_ratio']:.1f}x | "
              + " | ".join(f"{100 * a[f'acc@{r:g}']:.1f}%" for r in radii) + " |"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="drs_natural base_models.pt (holding at least 'rs')")
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--n0", type=int, default=100)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--alpha", type=float, default=0.001)
    ap.add_argument("--sigma", type=float, default=0.5)
    ap.add_argument("--radii", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="outputs/bench_sequential")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from trust_monai.certify import Smooth
    from trust_monai.data import prepare
    from trust_monai.data.classification import ImageClassificationDataset
    from trust_monai.engines.certify import SmoothingModels
    from trust_monai.networks import SmallResNet
    from trust_monai.utils.fileio import atomic_write_text, sha256_file

    models = SmoothingModels(lambda: SmallResNet(2, 1, 10, widths=args.widths, blocks=[1] * len(args.widths)), 2,
                             members=["rs"])
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    models.load_state_dict({k: v for k, v in state.items() if k.startswith("nets.rs.")})
    net = models.member("rs").to(args.device).eval()
    ds = ImageClassificationDataset(prepare("fashion_mnist"), "test", args.images, 1, progress=False)
    smooth = Smooth(net, 10, args.sigma)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in ("n0", "n", "alpha", "sigma", "radii", "tolerance", "seed")}
    settings["checkpoint_sha256"] = sha256_file(args.checkpoint)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = out / "rows.csv"
    rows = []
    if path.is_file():
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["settings"] == key]
    done = {int(r["index"]) for r in rows}
    smooth.decide(ds[0]["image"].to(args.device), args.radii[0], args.alpha, args.n, args.batch, n0=args.n0)  # warm-up
    for i in range(len(ds)):
        if i in done:
            continue
        item = ds[i]
        x, y = item["image"].to(args.device), int(item["label"])
        row: dict = {"index": i, "label": y, "settings": key}
        for r in args.radii:
            smooth.manual_seed(args.seed + i)
            t = time.perf_counter()
            pred, used = smooth.decide(x, r, args.alpha, args.n, args.batch, n0=args.n0)
            row.update({f"decide_pred@{r:g}": pred, f"decide_used@{r:g}": used,
                        f"decide_time@{r:g}": time.perf_counter() - t})
        smooth.manual_seed(args.seed + i)
        t = time.perf_counter()
        pred, radius, used = smooth.certify_adaptive(x, args.alpha, args.n, args.batch, n0=args.n0,
                                                     tolerance=args.tolerance)
        row.update({"adaptive_pred": pred, "adaptive_radius": radius, "adaptive_used": used,
                    "adaptive_time": time.perf_counter() - t})
        smooth.manual_seed(args.seed + i)
        t = time.perf_counter()
        pred, radius = smooth.certify(x, args.n0, args.n, args.alpha, args.batch)
        row.update({"fixed_pred": pred, "fixed_radius": radius, "fixed_used": args.n0 + args.n,
                    "fixed_time": time.perf_counter() - t})
        rows.append({k: str(v) for k, v in row.items()})
        with open(path.with_suffix(".tmp"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
        path.with_suffix(".tmp").replace(path)
        s = _summary(rows, args.radii, args.n0, args.n)
        s.update(settings=settings, host=platform.node(), torch_threads=torch.get_num_threads(), device=args.device)
        atomic_write_text(out / "summary.json", json.dumps(s, indent=1) + "\n")
        atomic_write_text(out / "summary.md", _markdown(s, args.radii))
        print(f"image {i}: fixed r={row['fixed_radius']:.3f} ({row['fixed_time']:.1f}s), adaptive r={row['adaptive_radius']:.3f} "
              f"used {row['adaptive_used']}, decide used "
              + ", ".join(str(row[f'decide_used@{r:g}']) for r in args.radii), flush=True)
    if rows:
        print(_markdown(_summary(rows, args.radii, args.n0, args.n), args.radii))


if __name__ == "__main__":
    main()
