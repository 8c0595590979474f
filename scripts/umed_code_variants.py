#!/usr/bin/env python
"""Write UMed generator checkpoints whose class code is a hand-made variant, to screen shortcut designs.

The code is what the generator paints before any learning (gates closed): ``tanh(code[label])`` times eps on mask +
contour band. This script takes a checkpoint written by ``train.json --epochs 1 --g_lr 0 --reinit_every 0`` (the
texture code alone) and replaces the two-class code by

    background (only the contour band around the foreground is ever changed): the constant ``--background``
    foreground: ``--offset + --checker * (the texture code's checkerboard sign)``

so ``--background -3 --offset 3 --checker 0`` lowers (here: reverses) the boundary contrast of dark vessels, and
``--background 0 --offset 0 --checker 1.5`` is the default texture code. The variants measured on DRIVE, and why
none replaced the default, are in bundles/umed/docs/README.md.

    python scripts/umed_code_variants.py CKPT_IN CKPT_OUT --background -3 --offset 1.5 --checker 1.5
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="generator checkpoint (generator_2d.pt) with the texture code")
    ap.add_argument("dst", type=Path, help="where to write the variant")
    ap.add_argument("--background", type=float, default=0.0, help="code of background voxels in the contour band")
    ap.add_argument("--offset", type=float, default=0.0, help="constant part of the foreground code")
    ap.add_argument("--checker", type=float, default=1.5, help="checkerboard amplitude of the foreground code")
    args = ap.parse_args()
    state = torch.load(args.src, map_location="cpu", weights_only=True)
    code = state["class_patterns"].clone()
    if code.shape[0] != 2:
        raise SystemExit(f"{args.src}: the variants are defined for two classes, this code has {code.shape[0]}")
    sign = torch.sign(code[1])
    if not sign.abs().bool().all():
        raise SystemExit(f"{args.src}: class 1 has no checkerboard code (train it with the default code='texture')")
    code[0] = args.background
    code[1] = args.offset + args.checker * sign
    state["class_patterns"] = code
    args.dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.dst)
    print(f"{args.dst}: background {args.background:+g}, foreground {args.offset:+g} {args.checker:+g} x checkerboard")


if __name__ == "__main__":
    main()
