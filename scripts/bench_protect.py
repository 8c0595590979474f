"""Benchmark: UMed protection of one 3D volume with a generator (issue bar: 128^3 in < 10 s on 2 CPU cores).

Times the per-case protection a user pays once the scan is in memory (window, generator forward, mapping back to
native units, rounding, PSNR / SSIM metrics) on a synthetic MONAI phantom, at several sizes, and prints one line per size. Generator weights
do not change the cost, so a freshly initialised generator is timed unless --checkpoint is given.

    python scripts/bench_protect.py --sizes 64 96 128 --repeats 3 [--checkpoint bundles/umed/models/generator_3d.pt]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--checkpoint", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from monai.data.synthetic import create_test_image_3d

    from trust_monai.networks.umed_generator import UMedGenerator
    from trust_monai.protect.umed import UMedProtector

    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("size      seconds(median)  voxels/s      psnr_dB")
    for n in args.sizes:
        img, lab = create_test_image_3d(n, n, n, num_objs=8, rad_max=n // 6, random_state=np.random.RandomState(0))
        image = (img * 1000).astype(np.int16)
        label = (lab > 0).astype(np.uint8)
        gen = UMedGenerator(3, num_classes=2)
        prot = UMedProtector(gen, checkpoint=args.checkpoint, num_classes=2)

        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            out, metrics = prot.protect(image, label, modality="CT")
            times.append(time.perf_counter() - t)
        med = float(np.median(times))
        print(f"{n:>3}^3     {med:8.2f}        {n**3 / med:10.3e}   {metrics['psnr']:.1f}")


if __name__ == "__main__":
    main()
