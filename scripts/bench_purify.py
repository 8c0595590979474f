#!/usr/bin/env python
"""Purification throughput: images/s (2D) and volumes/s (3D) of a two-stage D-VAE purifier, beside the raw forward
passes it needs, measured side by side in one run.

Throughput does not depend on the weights, so freshly initialised networks of the bundles' sizes are timed.

    python scripts/bench_purify.py [--sizes2d 28 64 128] [--sizes3d 32 64 128] [--batch 256] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes2d", type=int, nargs="*", default=[28, 64, 128])
    p.add_argument("--sizes3d", type=int, nargs="*", default=[32, 64, 128])
    p.add_argument("--batch", type=int, default=256, help="2D images per batch (volumes go one at a time)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from trust_monai.networks.dvae import DVAE
    from trust_monai.purify.dvae import _stage_output

    print(f"torch {torch.__version__}, {args.threads} threads, best of {args.repeats}")
    print(f"{'case':>16} {'purify s':>9} {'per item':>10} {'throughput':>14} {'raw fwd s':>10} {'ratio':>6}")
    rows = []
    for dims, sizes in ((2, args.sizes2d), (3, args.sizes3d)):
        for s in sizes:
            torch.manual_seed(0)
            kw = dict(channels=(16, 32), latent_channels=8)
            if dims == 2:
                nets = [DVAE(2, 1, 10, latent_size=s // 2, samplewise_perturbation=False, **kw).eval() for _ in range(2)]
                n = args.batch if s <= 64 else max(1, args.batch // 8)
                x, y = torch.rand(n, 1, s, s), torch.randint(0, 10, (n,))
            else:
                nets = [DVAE(3, 1, 4, **kw).eval() for _ in range(2)]
                n = 1
                x, y = torch.rand(1, 1, s, s, s), torch.randint(0, 4, (1, 1, s, s, s))

            def purify():
                with torch.inference_mode():
                    x1 = _stage_output(nets[0], x, y, reconstruct=False)
                    _stage_output(nets[1], x1, y, reconstruct=True)

            def raw():  # the network passes alone: 2 decompositions + 1 reconstruction, no clamps or bookkeeping
                with torch.inference_mode():
                    nets[0].decompose(x, y, sample=False)
                    nets[1].decompose(x, y, sample=False)
                    nets[1].decompose(x, y, sample=False)

            t, t_raw = _time(purify, args.repeats), _time(raw, args.repeats)
            unit = "img/s" if dims == 2 else "vol/s"
            name = f"{dims}D {s}^{dims} x{n}"
            rows.append((name, t, t / n, n / t, unit, t_raw, t / t_raw))
            print(f"{name:>16} {t:9.3f} {t / n * 1e3:8.2f}ms {n / t:10.2f} {unit} {t_raw:10.3f} {t / t_raw:6.2f}")


if __name__ == "__main__":
    main()
