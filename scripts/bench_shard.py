"""Sharded certification throughput: 1 process versus ``torchrun`` with 2 processes, side by side in one run.

Runs ``bundles/drs_natural/configs/inference.json`` (RS and DRS on Fashion-MNIST test images, the bundle's trained
models) three ways: one process with 1 intra-op thread, one process with 2 threads (both cores, the fair single-process
baseline), and 2 processes with 1 thread each under ``torchrun`` (gloo). Throughput counts certified images per second
of the certification phase (from the bundle's log: the slowest rank's time per method, summed over methods), so the
~10 s of interpreter and MONAI start-up every process pays is left out; the end-to-end wall time is printed too.

    python scripts/bench_shard.py --max_samples 100 --n 500
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINE = re.compile(r"(?:rank (\d+): )?certified (\d+) images with (\w+) .* in ([\d.]+)s")


def run(nproc: int, threads: int, args: dict, out: Path) -> tuple[float, float, int]:
    """(certification seconds, wall seconds, images x methods) of one configuration."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    args_file = out.parent / f"{out.name}.json"
    args_file.write_text(json.dumps({**args, "output_dir": str(out), "progress": False}))
    bundle = ["-m", "monai.bundle", "run", "--config_file", str(ROOT / "bundles/drs_natural/configs/inference.json"),
              "--args_file", str(args_file)]
    cmd = [sys.executable, *(["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                             if nproc > 1 else []), *bundle]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"failed ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    per_method: dict[str, float] = {}
    images = 0
    for rank, n, method, sec in LINE.findall(proc.stdout + proc.stderr):
        per_method[method] = max(per_method.get(method, 0.0), float(sec))
        images += int(n)
    return sum(per_method.values()), wall, images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max_samples", type=int, default=100)
    ap.add_argument("--n0", type=int, default=20)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--batch_size", type=int, default=250)
    a = ap.parse_args()
    args = {"max_samples": a.max_samples, "n0": a.n0, "n": a.n, "batch_size": a.batch_size}
    print(f"drs_natural inference, {a.max_samples} images x (RS + DRS), n0={a.n0}, n={a.n}; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, nproc, threads in (("1 process, 1 thread", 1, 1), ("1 process, 2 threads", 1, 2),
                                     ("2 processes, 1 thread each", 2, 1)):
            sec, wall, images = run(nproc, threads, args, Path(tmp) / name.replace(" ", "_").replace(",", ""))
            results[name] = (images / sec, wall)
            print(f"{name:28s} {images / sec:8.1f} certified images/s   (certification {sec:6.1f} s, "
                  f"end to end {wall:6.1f} s)")
    two = results["2 processes, 1 thread each"][0]
    print(f"ratio 2 processes / 1 process (1 thread): {two / results['1 process, 1 thread'][0]:.2f}x")
    print(f"ratio 2 processes / 1 process (2 threads): {two / results['1 process, 2 threads'][0]:.2f}x")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
