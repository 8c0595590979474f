"""Benchmark: the cost of certification beyond the forward passes it needs (issue bar: overhead < 10% of wall time).

For every image, certifies with RS (``Smooth``) and DRS (``DualSmooth``), and, interleaved with it so both see the same
machine load, runs the same number of raw batched forward passes (same batch sizes, same network, a fixed input, no
noise, no counting, no statistics). Overhead = (certify time - forward time) / certify time: the sampling, the noise,
the class counts and the Clopper-Pearson bounds. Weights do not change the cost; a fresh network is timed unless
--checkpoint (the drs_natural bundle's ``base_models.pt``) is given.

    python scripts/bench_certify.py --images 20 --n0 100 --n 1000 --batch 500 --threads 1
"""

from __future__ import annotations

import argparse
import platform
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--n0", type=int, default=100)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--sigma", type=float, default=0.5)
    ap.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--checkpoint", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from trust_monai.certify import DualSmooth, Smooth
    from trust_monai.engines.certify import SmoothingModels
    from trust_monai.networks import SmallResNet
    from trust_monai.transforms import dual_split
    from trust_monai.utils.checkpoint import load_state_dict

    models = SmoothingModels(lambda: SmallResNet(2, 1, 10, widths=args.widths, blocks=[1] * len(args.widths)), 2)
    if args.checkpoint:
        load_state_dict(models, args.checkpoint)
    models.eval()
    try:
        from trust_monai.data import prepare
        from trust_monai.data.classification import ImageClassificationDataset

        ds = ImageClassificationDataset(prepare("fashion_mnist"), "test", args.images, 1, progress=False)
        images = [ds[i]["image"] for i in range(len(ds))]
        source = "Fashion-MNIST test"
    except Exception:  # noqa: BLE001 - the timing does not depend on the pixels
        images = [torch.rand(1, 28, 28) for _ in range(args.images)]
        source = "random 28x28"

    def forward_only(model, x, num, batch):
        with torch.no_grad():
            remaining = num
            while remaining > 0:
                b = min(batch, remaining)
                remaining -= b
                model(x.unsqueeze(0).expand(b, *x.shape).contiguous()).argmax(1)

    rs = Smooth(models.member("rs"), 10, args.sigma)
    drs = DualSmooth(models.member("drs_l"), models.member("drs_r"), 10, args.sigma)
    n0_h, n_h = args.n0 // 2, args.n // 2
    bh = min(args.batch, n_h)
    # warm-up (allocator, one-time kernel choices)
    rs.certify(images[0], args.n0, args.n, 0.001, args.batch)
    forward_only(models.member("rs"), images[0], args.n0 + args.n, args.batch)
    totals = {"rs": [0.0, 0.0], "drs": [0.0, 0.0]}
    for x in images:
        t = time.perf_counter()
        rs.certify(x, args.n0, args.n, 0.001, args.batch)
        totals["rs"][0] += time.perf_counter() - t
        t = time.perf_counter()
        forward_only(models.member("rs"), x, args.n0, args.batch)
        forward_only(models.member("rs"), x, args.n, args.batch)
        totals["rs"][1] += time.perf_counter() - t
        t = time.perf_counter()
        drs.certify(x, n0_h, n_h, 0.001, bh)
        totals["drs"][0] += time.perf_counter() - t
        x_l, x_r = dual_split(x, 2)
        t = time.perf_counter()
        for num in (n0_h, n_h):
            forward_only(models.member("drs_l"), x_l, num, bh)
            forward_only(models.member("drs_r"), x_r, num, bh)
        totals["drs"][1] += time.perf_counter() - t

    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{len(images)} {source} images, SmallResNet widths {args.widths}")
    print("method  samples/image  certify_s  forward_s  overhead  (overhead = 1 - forward / certify)")
    for m, (cert, fwd) in totals.items():
        samples = args.n0 + args.n if m == "rs" else 2 * (n0_h + n_h)
        print(f"{m:6s}  {samples:13d}  {cert:9.2f}  {fwd:9.2f}  {100 * (cert - fwd) / cert:7.2f}%")


if __name__ == "__main__":
    main()
