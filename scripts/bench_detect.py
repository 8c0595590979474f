"""Inference throughput of MoE-ViT with top-k routing (only the selected experts run) versus every expert run densely.

Both modes give the same outputs (unselected experts are weighted by zero gates); the ratio is what sparse routing
saves. Example (the numbers in bundles/moe_ffd/docs/README.md):

    OMP_NUM_THREADS=2 python scripts/bench_detect.py --depth 6 --batch 64 --iters 10
    OMP_NUM_THREADS=2 python scripts/bench_detect.py --backbone vit_base_patch16_224 --img-size 224 --patch 16 \
        --in-chans 3 --batch 8 --iters 3
"""

from __future__ import annotations

import argparse
import json
import time


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="vit_tiny_patch16_224")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--in-chans", type=int, default=1)
    ap.add_argument("--depth", type=int, default=None)
    ap.add_argument("--lora-ranks", default="16,32,64,128")
    ap.add_argument("--top-k", type=int, default=1, help="experts per token (LoRA) and per image (adapters)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    import torch

    from trust_monai.networks.moe_vit import MoEViT, count_parameters

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = MoEViT(backbone=args.backbone, img_size=args.img_size, patch_size=args.patch, in_chans=args.in_chans,
                 depth=args.depth, lora_ranks=[int(r) for r in args.lora_ranks.split(",")], lora_top_k=args.top_k,
                 adapter_top_k=args.top_k).to(args.device).eval()
    for name, p in net.named_parameters():  # trained-looking experts and routers (fresh ones are zero / uniform)
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.02)
    x = torch.rand(args.batch, args.in_chans, args.img_size, args.img_size, device=args.device)

    def timed(dense: bool) -> float:
        net.set_dense(dense)
        with torch.no_grad():
            net(x)  # warm-up
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(args.iters):
                net(x)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
        return args.iters * args.batch / (time.perf_counter() - t)

    # alternate the two modes so background load hits both alike
    sparse, dense = [], []
    for _ in range(2):
        sparse.append(timed(False))
        dense.append(timed(True))
    with torch.no_grad():
        net.set_dense(False)
        a = net(x[:4])
        net.set_dense(True)
        b = net(x[:4])
    result = {
        "backbone": args.backbone, "img_size": args.img_size, "patch": args.patch, "depth": len(net.vit.blocks),
        "lora_ranks": args.lora_ranks, "top_k": args.top_k, "batch": args.batch,
        "threads": torch.get_num_threads(), "trainable_params": count_parameters(net),
        "sparse_img_per_s": round(max(sparse), 2), "dense_img_per_s": round(max(dense), 2),
        "sparse_over_dense": round(max(sparse) / max(dense), 3),
        "max_abs_output_difference": float((a - b).abs().max()),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
