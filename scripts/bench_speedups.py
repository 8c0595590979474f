"""Before / after ratios of candidate speed-ups on the hot paths (issue 9), measured side by side in one run.

For every hot path a baseline (what the library does now) and each variant are run interleaved, A, B, A, B, ...,
so the load of a shared machine hits both alike; the median time of each side and the median of the per-pair ratios
(baseline / variant, > 1 = the variant is faster) are printed, with the largest output difference against the
baseline (0 = bit-identical). torch.compile's one-off warm-up is timed on its own and reported beside the ratio.

    OMP_NUM_THREADS=1 python scripts/bench_speedups.py --threads 1 --repeats 7 [--only certify protect detect purify]

Paths: certify = ``Smooth._counts`` (noisy batched forward passes of the drs_natural ResNet, 28x28),
protect = ``UMedProtector.protect`` of one 3D volume, detect = ``MoEViT`` forward (top-1 routing),
purify = two-stage D-VAE of one 3D volume and of a 2D batch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch


def _timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def ab(name: str, base, variant, repeats: int, warmup_fn=None, rows=None) -> dict:
    """Interleave ``base`` and ``variant``; returns medians, median pair ratio and the max output difference."""
    warm = None
    if warmup_fn is not None:
        warm, _ = _timed(warmup_fn)
    _, ref = _timed(base)  # warm both (allocator, oneDNN primitive caches)
    _, got = _timed(variant)
    ta, tb, ratios = [], [], []
    for _ in range(repeats):
        a, _ = _timed(base)
        b, _ = _timed(variant)
        ta.append(a)
        tb.append(b)
        ratios.append(a / b)
    diff = max(float((r.double() - g.double()).abs().max()) for r, g in zip(_flat(ref), _flat(got)))
    row = {"case": name, "base_s": statistics.median(ta), "variant_s": statistics.median(tb),
           "ratio": statistics.median(ratios), "max_abs_diff": diff, "warmup_s": warm}
    w = f"  (compile warm-up {warm:.1f} s)" if warm is not None else ""
    print(f"{name:48s} {row['base_s']:8.4f} {row['variant_s']:8.4f} {row['ratio']:6.2f}x  diff {diff:.2e}{w}",
          flush=True)
    if rows is not None:
        rows.append(row)
    return row


def _flat(x):
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in _flat(v)]
    import numpy as np

    return [torch.as_tensor(np.asarray(x, dtype=np.float64))]


def bench_certify(args, rows):
    from trust_monai.certify import Smooth
    from trust_monai.networks import SmallResNet

    n0, n, bs = 100, 1000, 500
    for chans, size in ((1, 28), (3, 32)):  # drs_natural's Fashion-MNIST ResNet; a CIFAR-shaped one
        torch.manual_seed(0)
        make = lambda: SmallResNet(2, chans, 10, widths=[8, 16, 32, 64], blocks=[1, 1, 1, 1]).eval()  # noqa: E731
        net = make()
        x = torch.rand(chans, size, size)

        def counts(model, mode=torch.no_grad, channels_last=False, compile=False):
            # Smooth.certify's two sampling phases, a fresh seed each call: every variant sees the same noise
            s = Smooth(model, 10, 0.5, seed=0, channels_last=channels_last, compile=compile)

            def run():
                s.manual_seed(0)
                with mode():
                    return [torch.as_tensor(s._counts(model, x, 0.5, k, bs)) for k in (n0, n)]
            return run

        def copy():
            m = make()
            m.load_state_dict(net.state_dict())
            return m

        name = f"certify {chans}x{size}^2"
        base = counts(net)
        ab(f"{name}: inference_mode vs no_grad", base, counts(net, torch.inference_mode), args.repeats, rows=rows)
        net_cl = copy()
        ab(f"{name}: channels_last (Smooth option)", base, counts(net_cl, channels_last=True), args.repeats,
           rows=rows)
        with torch.no_grad():  # the logits themselves, not only the counts
            xb = torch.rand(64, chans, size, size)
            d = float((net(xb) - net_cl(xb.contiguous(memory_format=torch.channels_last))).abs().max())
        print(f"{'':48s} channels_last logits max abs diff {d:.2e}")
        if args.compile:
            comp = counts(copy(), compile=True)
            ab(f"{name}: torch.compile (Smooth option)", base, comp, args.repeats, warmup_fn=comp, rows=rows)
            comp_cl = counts(copy(), channels_last=True, compile=True)
            ab(f"{name}: compile + channels_last vs channels_last", counts(net_cl, channels_last=True), comp_cl,
               args.repeats, warmup_fn=comp_cl, rows=rows)


def bench_protect(args, rows):
    import numpy as np
    from monai.data.synthetic import create_test_image_3d

    from trust_monai.networks.umed_generator import UMedGenerator
    from trust_monai.protect.umed import UMedProtector

    s = args.protect_size
    img, lab = create_test_image_3d(s, s, s, num_objs=8, rad_max=s // 6, random_state=np.random.RandomState(0))
    image, label = (img * 1000).astype(np.int16), (lab > 0).astype(np.uint8)
    torch.manual_seed(0)
    gen = UMedGenerator(3, num_classes=2)
    base_p = UMedProtector(gen, num_classes=2)

    class _Hooked(UMedProtector):  # the protector's own override point; umed.py itself is left unchanged
        def __init__(self, g, fmt=None, fn=None):
            super().__init__(g, num_classes=2)
            self.fmt, self.fn = fmt, fn

        def delta(self, x, y, name):
            if self.fmt is not None:
                x, y = x.contiguous(memory_format=self.fmt), y.contiguous(memory_format=self.fmt)
            return (self.fn if self.fn is not None else self.generator)(x, y)

    def run(p):
        return lambda: torch.as_tensor(p.protect(image, label, modality="CT")[0].astype(np.float64))

    cl = UMedGenerator(3, num_classes=2)
    cl.load_state_dict(gen.state_dict())
    cl = cl.eval().to(memory_format=torch.channels_last_3d)
    ab(f"protect {s}^3: channels_last_3d", run(base_p), run(_Hooked(cl, torch.channels_last_3d)), args.repeats,
       rows=rows)
    if args.compile:
        hooked = _Hooked(gen, fn=torch.compile(gen, dynamic=False))
        ab(f"protect {s}^3: torch.compile", run(base_p), run(hooked), args.repeats, warmup_fn=run(hooked), rows=rows)


def bench_detect(args, rows):
    from trust_monai.networks.moe_vit import MoEViT

    torch.manual_seed(0)
    net = MoEViT(backbone="vit_tiny_patch16_224", img_size=64, patch_size=8, in_chans=1, depth=6,
                 lora_ranks=[16, 32, 64, 128], lora_top_k=1, adapter_top_k=1).eval()
    for p in net.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.02)
    x = torch.rand(args.detect_batch, 1, 64, 64)

    def run(model, mode=torch.no_grad):
        def f():
            with mode():
                return model(x)
        return f

    ab("detect: inference_mode vs no_grad", run(net), run(net, torch.inference_mode), args.repeats, rows=rows)
    if args.compile:
        comp = torch.compile(net, dynamic=False)
        ab("detect: torch.compile", run(net), run(comp), args.repeats, warmup_fn=run(comp), rows=rows)


def bench_purify(args, rows):
    from trust_monai.networks.dvae import DVAE
    from trust_monai.purify.dvae import _stage_output

    kw = dict(channels=(16, 32), latent_channels=8)
    s3, s2 = args.purify_size, 28
    cases = []
    torch.manual_seed(0)
    nets3 = [DVAE(3, 1, 4, **kw).eval() for _ in range(2)]
    cases.append((f"purify 3D {s3}^3", nets3, torch.rand(1, 1, s3, s3, s3), torch.randint(0, 4, (1, 1, s3, s3, s3)),
                  torch.channels_last_3d, lambda: [DVAE(3, 1, 4, **kw).eval() for _ in range(2)]))
    nets2 = [DVAE(2, 1, 10, latent_size=s2 // 2, samplewise_perturbation=False, **kw).eval() for _ in range(2)]
    cases.append((f"purify 2D {s2}^2 x256", nets2, torch.rand(256, 1, s2, s2), torch.randint(0, 10, (256,)),
                  torch.channels_last,
                  lambda: [DVAE(2, 1, 10, latent_size=s2 // 2, samplewise_perturbation=False, **kw).eval()
                           for _ in range(2)]))

    for name, nets, x, y, fmt, fresh in cases:
        def run(ns, mode=torch.no_grad, xin=x):
            def f():
                with mode():
                    x1 = _stage_output(ns[0], xin, y, reconstruct=False)
                    return _stage_output(ns[1], x1, y, reconstruct=True)
            return f

        ab(f"{name}: inference_mode vs no_grad", run(nets), run(nets, torch.inference_mode), args.repeats, rows=rows)
        cl = fresh()
        for a, b in zip(cl, nets):
            a.load_state_dict(b.state_dict())
        cl = [m.to(memory_format=fmt) for m in cl]
        ab(f"{name}: {'channels_last_3d' if x.ndim == 5 else 'channels_last'}", run(nets),
           run(cl, xin=x.contiguous(memory_format=fmt)), args.repeats, rows=rows)
        if args.compile and x.ndim == 5:
            import tempfile

            from trust_monai.purify.dvae import DVAEPurifier

            with tempfile.TemporaryDirectory() as tmp:  # the purifier loads its stages from checkpoint files
                ckpts = [f"{tmp}/stage{k}.pt" for k in range(2)]
                for c, m in zip(ckpts, nets):
                    torch.save(m.state_dict(), c)
                pur = [DVAEPurifier(lambda: fresh()[0], ckpts, compile=c).load() for c in (False, True)]

                def apply(p):
                    def f():
                        with torch.inference_mode():  # as the medical purifier calls it
                            return p.apply(x, None, y)
                    return f

                ab(f"{name}: torch.compile (DVAEPurifier option)", apply(pur[0]), apply(pur[1]), args.repeats,
                   warmup_fn=apply(pur[1]), rows=rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", default=["certify", "protect", "detect", "purify"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile variants")
    ap.add_argument("--protect-size", type=int, default=64)
    ap.add_argument("--purify-size", type=int, default=48)
    ap.add_argument("--detect-batch", type=int, default=32)
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {platform.machine()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.2f}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, repeats {args.repeats} (interleaved A/B, medians)")
    print(f"{'case':48s} {'base_s':>8s} {'var_s':>8s} {'ratio':>7s}")
    rows: list[dict] = []
    for name in args.only:
        try:
            globals()[f"bench_{name}"](args, rows)
        except Exception as e:  # noqa: BLE001 - report (e.g. a compile failure) and go on with the other paths
            print(f"{name}: failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    print(f"# load at end {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
