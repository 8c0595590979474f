"""Cost versus size for every verb: seconds per item and peak memory, with one plot.

Each point runs in a fresh subprocess, so its peak resident memory (``ru_maxrss``; CUDA peak allocation on GPU) is the
point's own; the memory column is the peak minus the process's footprint after imports and model construction, i.e.
what the work itself needs. The library's own code paths are timed (untrained weights: speed does not depend on them):

- protect: ``UMedProtector.protect`` (window, both generators, native units, rounding, PSNR / SSIM), 2D and 3D;
- purify: the two-stage D-VAE purification of one scan (``purify.dvae._stage_output`` twice), 2D and 3D;
- certify: ``Smooth.certify`` on a 28x28 image with the drs_natural ResNet, n = 1e3 .. 1e5 noise samples;
- detect: ``MoEViT`` (ViT-Ti/16 backbone, top-1 experts) on one slice, 64 .. 224 pixels.

    python scripts/bench_scale.py --out scripts/benchmarks/cost_vs_size.png
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POINTS = [("protect", "2D", s) for s in (64, 128, 256)] + [("protect", "3D", s) for s in (32, 64, 128)] + \
         [("purify", "2D", s) for s in (64, 128, 256)] + [("purify", "3D", s) for s in (32, 64, 128)] + \
         [("certify", "n", s) for s in (1000, 10000, 100000)] + [("detect", "2D", s) for s in (64, 128, 224)]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def point(verb: str, kind: str, size: int, repeats: int, device: str) -> dict:
    import numpy as np
    import torch

    torch.manual_seed(0)
    dims = 3 if kind == "3D" else 2
    if verb == "protect":
        from monai.data.synthetic import create_test_image_2d, create_test_image_3d

        from trust_monai.networks.umed_generator import UMedGenerator
        from trust_monai.protect.umed import UMedProtector

        rng = np.random.RandomState(0)
        make = create_test_image_3d if dims == 3 else create_test_image_2d
        img, lab = make(*([size] * dims), num_objs=8, rad_min=2, rad_max=max(size // 6, 4), random_state=rng)
        image, label = (img * 1000).astype(np.int16), (lab > 0).astype(np.uint8)
        prot = UMedProtector(UMedGenerator(dims, num_classes=2), num_classes=2, device=device)
        work = lambda: prot.protect(image, label, modality="CT")  # noqa: E731
    elif verb == "purify":
        from trust_monai.networks.dvae import DVAE
        from trust_monai.purify.dvae import _stage_output

        nets = [DVAE(dims, 1, 4, channels=(16, 32), latent_channels=8).to(device).eval() for _ in range(2)]
        x = torch.rand(1, 1, *([size] * dims), device=device)
        y = torch.randint(0, 4, (1, 1, *([size] * dims)), device=device)

        def work():
            with torch.inference_mode():
                _stage_output(nets[1], _stage_output(nets[0], x, y, reconstruct=False), y, reconstruct=True)
    elif verb == "certify":
        from trust_monai.certify import Smooth
        from trust_monai.networks import SmallResNet

        net = SmallResNet(2, 1, 10, widths=(8, 16, 32, 64), blocks=(1, 1, 1, 1)).to(device).eval()
        smooth = Smooth(net, 10, 0.5, seed=0)
        x = torch.rand(1, 28, 28, device=device)
        work = lambda: smooth.certify(x, 100, size, 0.001, 1000)  # noqa: E731
    else:
        from trust_monai.networks.moe_vit import MoEViT

        net = MoEViT(backbone="vit_tiny_patch16_224", img_size=size, patch_size=16, in_chans=1).to(device).eval()
        x = torch.rand(1, 1, size, size, device=device)

        def work():
            with torch.inference_mode():
                net(x)
    base = _rss_mb()  # after imports and model construction: what follows is the work's own memory
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    work()  # warm-up (lazy init, allocator)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        work()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else _rss_mb()
    return {"verb": verb, "kind": kind, "size": size, "seconds": float(np.median(times)), "peak_mb": peak,
            "work_mb": peak if device.startswith("cuda") else peak - base}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "scripts" / "benchmarks" / "cost_vs_size.png"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--from_json", default=None, help="re-plot the rows of an earlier run's JSON")
    ap.add_argument("--point", nargs=3, metavar=("VERB", "KIND", "SIZE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.point:
        import torch

        torch.set_num_threads(a.threads)
        print(json.dumps(point(a.point[0], a.point[1], int(a.point[2]), a.repeats, a.device)))
        return
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(a.threads)}
    rows = json.loads(Path(a.from_json).read_text()) if a.from_json else []
    print(f"{os.cpu_count()} cores, {a.threads} threads, device {a.device}, load average {os.getloadavg()[0]:.2f}")
    print(f"{'verb':8s} {'size':>10s} {'s / item':>10s} {'peak MB':>9s} {'work MB':>9s}")
    for verb, kind, size in ([] if a.from_json else POINTS):
        proc = subprocess.run([sys.executable, __file__, "--point", verb, kind, str(size), "--repeats",
                               str(a.repeats), "--threads", str(a.threads), "--device", a.device],
                              env=env, capture_output=True, text=True)
        if proc.returncode:
            print(f"{verb} {kind} {size}: failed\n{proc.stderr[-2000:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(r)
        label = f"n={size}" if kind == "n" else f"{size}^{3 if kind == '3D' else 2}"
        print(f"{verb:8s} {label:>10s} {r['seconds']:10.3f} {r['peak_mb']:9.0f} {r['work_mb']:9.0f}", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(15, 6.2), sharex="col")
    for col, verb in enumerate(("protect", "purify", "certify", "detect")):
        for kind in ("2D", "3D", "n"):
            rr = [r for r in rows if r["verb"] == verb and r["kind"] == kind]
            if not rr:
                continue
            xs = [r["size"] if kind == "n" else r["size"] ** (3 if kind == "3D" else 2) for r in rr]
            axes[0, col].loglog(xs, [r["seconds"] for r in rr], "o-", label=kind if kind != "n" else "image 28x28")
            axes[1, col].loglog(xs, [max(r["work_mb"], 1.0) for r in rr], "s-", label=kind if kind != "n" else "")
        axes[0, col].set_title(verb)
        axes[0, col].set_ylabel("seconds per item")
        axes[1, col].set_ylabel("work memory (MB)")
        axes[1, col].set_xlabel("noise samples" if verb == "certify" else "pixels / voxels")
        axes[0, col].legend(fontsize=7)
        for ax in axes[:, col]:
            ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.out, dpi=100)
    (Path(a.out).with_suffix(".json")).write_text(json.dumps(rows, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
