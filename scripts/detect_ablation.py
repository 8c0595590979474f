"""Where does the scan-forgery detector's accuracy stop? Per-kind test AUC of a few detectors trained the same way.

Trains one model on the 2D ``scan_forgery`` set (``prepare_scan_forgery``; balanced real / fake batches, flips) and
prints the held-out AUC per fake kind every ``--every`` steps, so the models can be compared at equal steps:

- ``moe``: MoE-ViT with its backbone frozen (what ``bundles/moe_ffd`` trains);
- ``vit``: the same MoE-ViT with every parameter trained (is the frozen random backbone the limit?);
- ``resnet18``: a torchvision ResNet-18 trained from scratch (is the data the limit?).

``--fakes stored`` reads the one stored fake per real slice; ``fresh`` makes a new one per draw
(``ForgeryDataset(resynthesize=True)``). The numbers in bundles/moe_ffd/docs/README.md came from:

    OMP_NUM_THREADS=2 python scripts/detect_ablation.py --model moe --fakes stored --steps 800
    OMP_NUM_THREADS=2 python scripts/detect_ablation.py --model moe --fakes fresh --steps 800
    OMP_NUM_THREADS=2 python scripts/detect_ablation.py --model vit --fakes fresh --steps 800
    OMP_NUM_THREADS=2 python scripts/detect_ablation.py --model resnet18 --fakes fresh --steps 800 --lr 0.001
"""

from __future__ import annotations

import argparse
import json
import time


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("moe", "vit", "resnet18"), default="moe")
    ap.add_argument("--fakes", choices=("stored", "fresh"), default="fresh")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--every", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--depth", type=int, default=6, help="ViT depth (moe, vit)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--max-per-volume", type=int, default=None, help="smaller data set (smoke runs)")
    ap.add_argument("--vae-epochs", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from trust_monai.detect.data import ForgeryDataset, prepare_scan_forgery
    from trust_monai.detect.engine import score_batch
    from trust_monai.detect.metrics import roc_auc
    from trust_monai.networks.moe_vit import MoEViT, count_parameters

    torch.manual_seed(args.seed)
    root = prepare_scan_forgery(size=args.size, vae_epochs=args.vae_epochs, max_per_volume=args.max_per_volume)
    train = ForgeryDataset(root, "training", augment=True, resynthesize=args.fakes == "fresh")
    test = ForgeryDataset(root, "test")
    loader = torch.utils.data.DataLoader(train, batch_size=args.batch, sampler=train.balanced_sampler(
        args.steps * args.batch, seed=args.seed), drop_last=True)

    balance = None
    if args.model == "resnet18":
        import torchvision

        net = torchvision.models.resnet18(num_classes=2)
        net.conv1 = torch.nn.Conv2d(1, 64, 3, 1, 1, bias=False)  # 64 x 64 input: keep the first stage's resolution
    else:
        net = MoEViT("vit_tiny_patch16_224", img_size=args.size, patch_size=8, in_chans=1, num_classes=2,
                     depth=args.depth)
        balance = net.balance_loss
        if args.model == "vit":
            for p in net.parameters():
                p.requires_grad_(True)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps, pct_start=0.1)

    labels = np.array(test.labels)
    kinds = np.array([it["kind"] for it in test.items])
    images = torch.stack([it["image"] for it in test.items])

    def evaluate() -> dict:
        net.eval()
        scores = score_batch(net, images)
        net.train()
        out = {"all": roc_auc(labels, scores)}
        for k in sorted(set(kinds) - {"real"}):
            m = (kinds == "real") | (kinds == k)
            out[k] = roc_auc(labels[m], scores[m])
        return out

    print(f"{args.model}, {args.fakes} fakes: {count_parameters(net):,} trainable parameters; "
          f"{len(train)} training / {len(test)} test images", flush=True)
    t0, correct, seen, result = time.time(), 0, 0, {}
    net.train()
    for step, batch in enumerate(loader, 1):
        x, y = batch["image"], batch["label"]
        logits = net(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        if balance is not None:
            loss = loss + 0.01 * balance()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        if step % args.every == 0 or step == args.steps:
            aucs = evaluate()
            result = {"step": step, "seconds": round(time.time() - t0), "train_acc": round(correct / seen, 3),
                      **{f"auc_{k}": round(v, 4) for k, v in aucs.items()}}
            print(json.dumps(result), flush=True)
            correct = seen = 0
    return result


if __name__ == "__main__":
    main()
