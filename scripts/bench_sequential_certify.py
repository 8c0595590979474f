"""Benchmark (issue 23): fixed-n CERTIFY vs sequential ``decide`` vs input-specific ``certify_adaptive``, side by side
in one run, on the Fashion-MNIST test set with the drs_natural bundle's RS base model.

For every image, ``Smooth.decide`` at each radius, ``Smooth.certify_adaptive`` and Cohen et al.'s ``Smooth.certify``
(``n0`` + ``n`` samples) run with the same alpha and the same budget (``max_samples = n``). One row per image goes to
``OUT/rows*.csv`` as soon as the image is done (a rerun with the same settings resumes); ``OUT/summary.md`` /
``summary.json`` hold, per radius, the certified accuracy of fixed n and of decide, the mean forward passes of each
and their ratio, the wall-clock ratio, and for adaptive the mean forward passes and the average certified radius
(ACR: radius if correct, else 0) against fixed n.

**Replay** (all images after the first ``--timed``): the base model runs once per image, on one recorded stream of
``max(n0 + n, pilot + n)`` noisy samples (its own noise seed); every mode then reads its samples from the start of
that stream in order (selection first, then estimation), exactly as it would read fresh ones. Each mode alone sees
i.i.d. samples, so each result is a faithful draw of that mode (the modes share their noise, as they share a seed
in the timed rows), and the forward passes a mode *would* spend are counted exactly; the base model runs once per
image instead of once per mode (fixed n's passes plus adaptive's and the decides' become one stream). The first
``--timed`` images run every mode on its own forward
passes, timed on its own: the wall-clock ratios come from those rows only.

    python scripts/bench_sequential_certify.py --checkpoint bundles/drs_natural/models/base_models.pt \\
        --images 500 --n 100000 --out outputs/bench_sequential [--shard 0 --shards 2]

(the issue's protocol: sigma 0.5, alpha 0.001, radii 0.25 / 0.5 / 0.75 / 1.0, n = 100,000, n0 = 100.) Shards split
the images (index modulo ``--shards``) between processes that write their own ``rows-K.csv``; ``--summarize``
merges them.
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

NUM_CLASSES = 10  # Fashion-MNIST


def _summary(rows: list[dict], radii: list[float], n0: int, n: int) -> dict:
    label = np.array([int(r["label"]) for r in rows])
    timed = [r for r in rows if r.get("replay", "0") == "0"]  # wall-clock only where every mode ran its own passes
    out: dict = {"images": len(rows), "timed_images": len(timed), "n0": n0, "n": n, "radii": {}}
    fixed_pred = np.array([int(r["fixed_pred"]) for r in rows])
    fixed_r = np.array([float(r["fixed_radius"]) for r in rows])
    fixed_t = sum(float(r["fixed_time"]) for r in timed)
    fixed_used = float(np.mean([int(r["fixed_used"]) for r in rows]))
    for rad in radii:
        k = f"{rad:g}"
        d_pred = np.array([int(r[f"decide_pred@{k}"]) for r in rows])
        d_used = float(np.mean([int(r[f"decide_used@{k}"]) for r in rows]))
        d_t = sum(float(r[f"decide_time@{k}"]) for r in timed)
        acc_fixed = float(np.mean((fixed_pred == label) & (fixed_r >= rad)))
        acc_decide = float(np.mean(d_pred == label))
        agree = float(np.mean(((fixed_pred == label) & (fixed_r >= rad)) == (d_pred == label)))
        out["radii"][k] = {"acc_fixed": acc_fixed, "acc_decide": acc_decide, "agree": agree,
                           "passes_fixed": fixed_used, "passes_decide": d_used, "pass_ratio": fixed_used / d_used,
                           "time_fixed_s": fixed_t, "time_decide_s": d_t, "time_ratio": fixed_t / max(d_t, 1e-12)}
    a_pred = np.array([int(r["adaptive_pred"]) for r in rows])
    a_r = np.array([float(r["adaptive_radius"]) for r in rows])
    a_used = float(np.mean([int(r["adaptive_used"]) for r in rows]))
    a_t = sum(float(r["adaptive_time"]) for r in timed)
    out["adaptive"] = {"passes": a_used, "pass_ratio": fixed_used / a_used,
                       "acr": float(np.mean(np.where(a_pred == label, a_r, 0.0))),
                       "acr_fixed": float(np.mean(np.where(fixed_pred == label, fixed_r, 0.0))),
                       "time_s": a_t, "time_ratio": fixed_t / max(a_t, 1e-12),
                       **{f"acc@{r:g}": float(np.mean((a_pred == label) & (a_r >= r))) for r in radii}}
    return out


def _recover_counts(rows: list[dict], n: int, alpha: float, sigma: float) -> list[int | None]:
    """Each image's top-class count among the fixed run's ``n`` samples, from its radius (None: fixed abstained)."""
    from scipy.stats import norm
    from trust_monai.certify.stats import cp_lower

    table = cp_lower(np.arange(n + 1), np.full(n + 1, n), alpha)  # increasing in the count
    return [min(int(np.searchsorted(table, norm.cdf(float(r["fixed_radius"]) / sigma) - 1e-12)), n)
            if int(r["fixed_pred"]) >= 0 else None for r in rows]


def _tolerance_curve(rows: list[dict], n0: int, n: int, alpha: float, sigma: float, tolerances: list[float],
                     reps: int = 5) -> list[dict]:
    """``certify_adaptive`` at other tolerances without new forward passes: its counts are drawn from each image's
    binomial at the fixed run's frequency (the same distribution the network's samples follow), through the real
    rule (:func:`trust_monai.certify.sequential.adaptive`, default pilot). Images on which fixed n abstained keep
    their measured cost (the rule stops on the upper bound there, whatever the tolerance)."""
    from trust_monai.certify import sequential as seq
    from trust_monai.certify.stats import phi_inv

    counts = _recover_counts(rows, n, alpha, sigma)
    pilot = max(n0, n // 100)  # certify_adaptive's default

    def score(lo: np.ndarray) -> float:
        return float(sigma * phi_inv(lo[0])) if lo[0] > 0.5 else 0.0

    fixed_acr = float(np.mean([float(r["fixed_radius"]) if int(r["fixed_pred"]) == int(r["label"]) else 0.0
                               for r in rows]))
    out = []
    for tol in tolerances:
        used, acr = [], []
        for rep in range(reps):
            rng = np.random.default_rng(rep)
            for r, k in zip(rows, counts):
                if k is None:
                    used.append(float(r["adaptive_used"]))
                    acr.append(0.0)
                    continue
                hits = np.array([rng.binomial(pilot, k / n)])
                res = seq.adaptive(hits, pilot, lambda m: np.array([rng.binomial(m, k / n)]), score, 1, alpha, n, 100,
                                   tol)
                used.append(pilot + res.n)
                acr.append(res.radius if int(r["fixed_pred"]) == int(r["label"]) else 0.0)
        out.append({"tolerance": tol, "pass_ratio": (n0 + n) / float(np.mean(used)),
                    "acr_loss": fixed_acr - float(np.mean(acr))})
    return out


def _oracle(rows: list[dict], n0: int, n: int, alpha: float, sigma: float, tolerance: float) -> dict:
    """The most any input-specific sample size could save at an ACR within ``tolerance`` of fixed n (an ideal).

    The oracle knows each image's top-class frequency in advance (the fixed run's ``k / n``, recovered from its
    radius), spends the whole alpha at one sample size ``m`` per image, and gets the expected count ``round(p m)``. It
    picks ``m`` from a geometric grid (100 to n, steps of about 5%) to minimise the total forward passes subject to
    the mean radius loss against fixed n being at most ``tolerance`` (a Lagrangian sweep over the trade-off), and, as
    ``per_image_*``, subject to every image losing at most ``tolerance`` (what ``certify_adaptive`` aims at). A real
    rule must also learn ``p`` (a pilot), so it cannot beat this bound except by sampling luck.
    """
    from trust_monai.certify.stats import cp_lower, phi_inv

    ms = np.unique(np.append(np.geomspace(100, n, 97).astype(np.int64), n))  # steps of about 5%

    def radius(k: np.ndarray, m: np.ndarray) -> np.ndarray:
        lo = cp_lower(k, m, alpha)
        return np.where(lo > 0.5, sigma * phi_inv(np.clip(lo, 1e-300, 1.0)), 0.0)

    drops = []
    for r, k in zip(rows, _recover_counts(rows, n, alpha, sigma)):
        if k is None or int(r["fixed_pred"]) != int(r["label"]) or float(r["fixed_radius"]) <= 0:
            drops.append(np.zeros(len(ms)))  # counts 0 in the ACR whatever m is
            continue
        full = float(radius(np.array([k]), np.array([n]))[0])
        drops.append(np.maximum(full - radius(np.round(k / n * ms).astype(np.int64), ms), 0.0))
    drops = np.stack(drops)
    cost = n0 + ms[None, :].astype(np.float64)
    # the same oracle held to the per-image rule of certify_adaptive (each image loses at most ``tolerance``)
    per_image = float(cost[0, np.argmax(drops <= tolerance, axis=1)].mean())
    best = (float(n0 + n), 0.0)
    for lam in np.logspace(0, 8, 400):
        pick = np.argmin(cost + lam * drops, axis=1)
        loss = float(drops[np.arange(len(rows)), pick].mean())
        passes = float(cost[0, pick].mean())
        if loss <= tolerance and passes < best[0]:
            best = (passes, loss)
    return {"passes": best[0], "pass_ratio": (n0 + n) / best[0], "acr_loss": best[1],
            "per_image_passes": per_image, "per_image_ratio": (n0 + n) / per_image}


def _markdown(s: dict, radii: list[float]) -> str:
    lines = [f"{s['images']} images; fixed: n0 = {s['n0']}, n = {s['n']}; decide / adaptive: n0 = {s['n0']}, "
             f"max_samples = {s['n']}; wall-clock ratios from the first {s['timed_images']} images (every mode on its "
             "own forward passes), the rest replayed from one recorded stream per image", "",
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
    if "tolerance_curve" in s:
        lines += ["", "Adaptive at other tolerances (simulated from each image's fixed-n frequency, 5 draws):", "",
                  "| tolerance | pass ratio | ACR loss |", "|---|---|---|"]
        lines += [f"| {t['tolerance']:g} | {t['pass_ratio']:.2f}x | {t['acr_loss']:.4f} |"
                  for t in s["tolerance_curve"]]
    if "oracle" in s:
        o = s["oracle"]
        lines += ["", "Oracle bound (each image's p known, whole alpha at one sample size): at most "
                  f"{o['pass_ratio']:.1f}x fewer passes ({o['passes']:.0f}) at an ACR loss of {o['acr_loss']:.4f}; "
                  "held to a loss of at most the tolerance on every image (the aim of certify_adaptive), "
                  f"{o['per_image_ratio']:.1f}x."]
    return "\n".join(lines) + "\n"


class _Replay(torch.nn.Module):
    """Stands in for the base model: one-hot logits of the recorded predictions ``preds``, read in order from
    ``pos`` (so a mode sees the recorded stream exactly as it would see fresh samples)."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes, self.preds, self.pos = num_classes, torch.zeros(0, dtype=torch.long), 0

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        b = batch.shape[0]
        if self.pos + b > len(self.preds):
            raise IndexError(f"replay stream exhausted: {self.pos} + {b} > {len(self.preds)} recorded samples")
        p = self.preds[self.pos:self.pos + b]
        self.pos += b
        return torch.nn.functional.one_hot(p, self.num_classes).float()


@torch.no_grad()
def _record(net: torch.nn.Module, x: torch.Tensor, sigma: float, num: int, batch: int, seed: int) -> torch.Tensor:
    """The base model's predictions on ``num`` noisy copies of ``x`` (noise from ``seed``), in order."""
    gen = torch.Generator(x.device).manual_seed(seed)
    out = []
    for start in range(0, num, batch):
        b = min(batch, num - start)
        noise = torch.randn((b, *x.shape), generator=gen, device=x.device, dtype=x.dtype)
        out.append(net(x.unsqueeze(0) + sigma * noise).argmax(1).cpu())
    return torch.cat(out)


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
    ap.add_argument("--timed", type=int, default=20,
                    help="the first TIMED images run every mode on its own forward passes (the wall-clock rows); "
                         "the rest replay one recorded stream per image")
    ap.add_argument("--compile", action="store_true",
                    help="record the replay streams through torch.compile (about 1.2x on this CPU; the timed rows "
                         "stay eager: their varying batch sizes would recompile)")
    ap.add_argument("--shard", type=int, default=0)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--out", default="outputs/bench_sequential")
    ap.add_argument("--summarize", action="store_true",
                    help="sample nothing: rewrite OUT/summary.* (with the oracle bound) from the rows already in OUT")
    args = ap.parse_args()
    if not 0 <= args.shard < args.shards:
        ap.error(f"--shard must be in 0 .. {args.shards - 1}")
    if args.threads:
        torch.set_num_threads(args.threads)

    from trust_monai.certify import Smooth
    from trust_monai.data import prepare
    from trust_monai.data.classification import ImageClassificationDataset
    from trust_monai.engines.certify import SmoothingModels
    from trust_monai.networks import SmallResNet
    from trust_monai.utils.fileio import atomic_write_text, sha256_file

    models = SmoothingModels(lambda: SmallResNet(2, 1, NUM_CLASSES, widths=args.widths,
                                                 blocks=[1] * len(args.widths)), 2,
                             members=["rs"])
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    models.load_state_dict({k: v for k, v in state.items() if k.startswith("nets.rs.")})
    net = models.member("rs").to(args.device).eval()
    ds = ImageClassificationDataset(prepare("fashion_mnist"), "test", args.images, 1, progress=False)
    smooth = Smooth(net, NUM_CLASSES, args.sigma)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in ("n0", "n", "alpha", "sigma", "radii", "tolerance", "seed")}
    settings["adaptive_rule"] = "two-stage, pilot 1% of n"  # rows of the earlier sequential rule do not mix in
    settings["checkpoint_sha256"] = sha256_file(args.checkpoint)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    suffix = f"-{args.shard}" if args.shards > 1 else ""
    path = out / f"rows{suffix}.csv"
    rows = []
    for p in sorted(out.glob("rows*.csv")):  # every shard's rows (the summary merges them)
        with open(p, newline="") as f:
            rows += [r for r in csv.DictReader(f) if r["settings"] == key]
    done = {int(r["index"]) for r in rows}

    def report() -> str:
        s = _summary(rows, args.radii, args.n0, args.n)
        s["oracle"] = _oracle(rows, args.n0, args.n, args.alpha, args.sigma, args.tolerance)
        s["tolerance_curve"] = _tolerance_curve(rows, args.n0, args.n, args.alpha, args.sigma,
                                                [0.02, 0.05, 0.075, 0.1, 0.15])
        s.update(settings=settings, host=platform.node(), torch_threads=torch.get_num_threads(), device=args.device)
        atomic_write_text(out / "summary.json", json.dumps(s, indent=1) + "\n")
        atomic_write_text(out / "summary.md", _markdown(s, args.radii))
        return _markdown(s, args.radii)

    if args.summarize:
        print(report() if rows else f"no rows with these settings in {path}")
        return
    smooth.decide(ds[0]["image"].to(args.device), args.radii[0], args.alpha, args.n, args.batch, n0=args.n0)  # warm-up
    recorder = torch.compile(net, dynamic=False) if args.compile else net  # after the warm-up set its layout
    replay = _Replay(NUM_CLASSES)
    replayed = Smooth(replay, NUM_CLASSES, args.sigma, channels_last=False)
    stream_len = max(args.n0 + args.n, max(args.n0, args.n // 100) + args.n)  # fixed; adaptive's pilot + budget
    for i in range(len(ds)):
        if i in done or i % args.shards != args.shard:
            continue
        item = ds[i]
        x, y = item["image"].to(args.device), int(item["label"])
        timed = i < args.timed
        row: dict = {"index": i, "label": y, "settings": key, "replay": int(not timed)}
        if not timed:
            t = time.perf_counter()
            replay.preds = _record(recorder, x, args.sigma, stream_len, args.batch, args.seed + i)
            row["stream_time"] = time.perf_counter() - t
        run = smooth if timed else replayed
        for r in args.radii:
            run.manual_seed(args.seed + i)
            replay.pos = 0
            t = time.perf_counter()
            pred, used = run.decide(x, r, args.alpha, args.n, args.batch, n0=args.n0)
            row.update({f"decide_pred@{r:g}": pred, f"decide_used@{r:g}": used,
                        f"decide_time@{r:g}": time.perf_counter() - t})
        run.manual_seed(args.seed + i)
        replay.pos = 0
        t = time.perf_counter()
        pred, radius, used = run.certify_adaptive(x, args.alpha, args.n, args.batch, n0=args.n0,
                                                  tolerance=args.tolerance)
        row.update({"adaptive_pred": pred, "adaptive_radius": radius, "adaptive_used": used,
                    "adaptive_time": time.perf_counter() - t})
        run.manual_seed(args.seed + i)
        replay.pos = 0
        t = time.perf_counter()
        pred, radius = run.certify(x, args.n0, args.n, args.alpha, args.batch)
        row.update({"fixed_pred": pred, "fixed_radius": radius, "fixed_used": args.n0 + args.n,
                    "fixed_time": time.perf_counter() - t})
        rows.append({k: str(v) for k, v in row.items()})
        mine = [r for r in rows if int(r["index"]) % args.shards == args.shard]
        fields = list(dict.fromkeys(k for r in mine for k in r))
        with open(path.with_suffix(".tmp"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, lineterminator="\n", restval="")
            w.writeheader()
            w.writerows(mine)
        path.with_suffix(".tmp").replace(path)
        s = _summary(rows, args.radii, args.n0, args.n)
        s.update(settings=settings, host=platform.node(), torch_threads=torch.get_num_threads(), device=args.device)
        atomic_write_text(out / f"summary{suffix}.json", json.dumps(s, indent=1) + "\n")
        atomic_write_text(out / f"summary{suffix}.md", _markdown(s, args.radii))
        print(f"image {i}{'' if timed else ' (replay)'}: fixed r={row['fixed_radius']:.3f} ({row['fixed_time']:.1f}s), "
              f"adaptive r={row['adaptive_radius']:.3f} used {row['adaptive_used']}, decide used "
              + ", ".join(str(row[f'decide_used@{r:g}']) for r in args.radii), flush=True)
    if rows:
        print(report())


if __name__ == "__main__":
    main()
