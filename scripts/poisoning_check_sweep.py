#!/usr/bin/env python
"""Poisoning check (``trust_monai.purify.check``) on clean and poisoned Fashion-MNIST subsets: the table of the
``dvae_natural`` docs.

Every poison the package generates is applied to the first ``--n`` training images at its default strength and at
stronger and weaker ones, written as 8-bit (as the poison writer's PNGs are), and checked. EM noise is learned first:
pass the files ``bundles/ue_natural/configs/train.json --poison em_classwise`` (or ``em_samplewise``, learned with
``--max_train`` at least ``--n``) wrote (``--em_noise``); each is checked as learned and with its amplitude halved.
``--calibrate`` prints the clean scores the check's thresholds come from.

    python scripts/poisoning_check_sweep.py --n 2000 [--em_noise noise_em_classwise.pt noise_em_samplewise.pt]
    python scripts/poisoning_check_sweep.py --calibrate
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    from trust_monai.data import prepare
    from trust_monai.data.classification import ImageClassificationDataset
    from trust_monai.protect import load_poison, make_poison
    from trust_monai.protect.poisons import ar_budget, lsp_budget
    from trust_monai.purify.check import check_poisoning

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--em_noise", nargs="*", default=[], help="EM noise files (class-wise and / or sample-wise)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the Markdown table here")
    ap.add_argument("--calibrate", action="store_true",
                    help="only the clean scores the thresholds come from: 4 disjoint subsets x 2 split seeds, "
                         "at 2000 and 3000 images")
    args = ap.parse_args()
    if args.calibrate:
        full = ImageClassificationDataset(prepare("fashion_mnist"), "training", 12000, 1, progress=False)
        top = {}
        for n in (2000, 3000):
            for off in (0, 3000, 6000, 9000):
                for seed in (0, 1):
                    r = check_poisoning(full.images[off:off + n], full.labels[off:off + n], seed=seed,
                                        fractions=(1.0,))
                    top = {k: max(top.get(k, 0.0), v) for k, v in r.scores.items()}
                    print(f"clean n={n} images {off}-{off + n - 1} split seed {seed}: "
                          + ", ".join(f"{k} {v:.3f}" for k, v in r.scores.items()), flush=True)
        print("highest clean: " + ", ".join(f"{k} {v:.3f}" for k, v in top.items())
              + "; thresholds = these + 0.04, rounded up to 0.01")
        return

    ds = ImageClassificationDataset(prepare("fashion_mnist"), "training", args.n, 1, progress=False)
    x, y, shape = ds.images.float() / 255, ds.labels, ds.image_shape
    idx = torch.arange(len(y))
    lsp, ar = lsp_budget(shape), ar_budget(shape)
    ar_kw = dict(candidates=200, fill_clipped=True)  # bundles/ue_natural's defaults
    specs = [("clean", "-", None, {}),
             ("lsp", "2x L2", "lsp", {"eps": 2 * lsp}), ("lsp", "1x L2 (default)", "lsp", {}),
             ("lsp", "0.5x L2", "lsp", {"eps": 0.5 * lsp}),
             ("ar", "2x L2", "ar", {**ar_kw, "eps": 2 * ar}), ("ar", "1x L2 (default)", "ar", ar_kw),
             ("ar", "0.5x L2", "ar", {**ar_kw, "eps": 0.5 * ar}),
             ("blocks", "16/255", "blocks", {"eps": 16 / 255}), ("blocks", "8/255 (default)", "blocks", {}),
             ("blocks", "4/255", "blocks", {"eps": 4 / 255}),
             ("patch 7x7 (issue 24)", "0.15", "blocks", {"patch_size": 7, "eps": 0.15}),
             ("patch 7x7", "8/255", "blocks", {"patch_size": 7, "eps": 8 / 255}),
             ("patch 7x7", "4/255", "blocks", {"patch_size": 7, "eps": 4 / 255})]
    rows = []

    def run(name, strength, xp):
        t0 = time.time()
        r = check_poisoning((xp * 255).round().to(torch.uint8), y, seed=args.seed)
        rows.append((name, strength, *r.scores.values(), r.poisoned, time.time() - t0))
        print(f"{name:22s} {strength:16s} " + " ".join(f"{k} {v:.3f}" for k, v in r.scores.items())
              + f" -> {'POISONED' if r.poisoned else 'clean'} ({time.time() - t0:.1f}s)", flush=True)

    for name, strength, poison, kw in specs:
        if poison is None:
            run(name, strength, x)
            continue
        p = make_poison(poison, 10, shape, num_samples=len(y), seed=args.seed, **kw)
        with torch.no_grad():
            run(name, strength, p.apply(x, idx, y))
    for path in args.em_noise:
        em = load_poison(path)
        if em.mode == "samplewise" and em.num_items < len(y):
            raise SystemExit(f"{path}: sample-wise noise for {em.num_items} images, --n is {len(y)}")
        for scale, strength in ((1.0, "8/255 (default)"), (0.5, "4/255 (halved)")):
            with torch.no_grad():
                delta = em.noise(idx, y) * scale
            run(em.name, strength, (x + delta).clamp(0, 1))
    lines = ["| set | strength | linear | residual | texture | verdict | seconds |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {n} | {s} | {a:.3f} | {b:.3f} | {c:.3f} | {'poisoned' if p else 'clean'} | {t:.1f} |"
              for n, s, a, b, c, p, t in rows]
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
