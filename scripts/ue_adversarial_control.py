"""Control experiment of issue 25: adversarial poisoning on a ue_natural dataset folder.

"Adversarial Examples Make Strong Poisons" (Fowl et al., NeurIPS 2021) poisons by moving every training image towards
another class's non-robust features: a surrogate is trained on the clean set, then each image of class ``y`` gets a
class-targeted L-inf PGD perturbation towards ``(y + 1) mod C``. It needs no shortcut to win a learning race, so it
tests a different road to unlearnability than the class-wise codes of the bundle. Writes a poisoned copy (training
split changed, 8-bit PNGs; test split copied) that ``bundles/ue_natural/configs/evaluate.json --poisoned_dir`` reads.

    python scripts/ue_adversarial_control.py --dataset_dir D --output_dir OUT [--epsilon 8] [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from trust_monai.networks.resnet import SmallResNet


def _load(root: Path, entries: list[dict]) -> torch.Tensor:
    return torch.tensor(np.stack([np.asarray(Image.open(root / e["image"]).convert("L")) for e in entries]),
                        dtype=torch.float32)[:, None] / 255


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset_dir", required=True)
    ap.add_argument("--output_dir", required=True)
    ap.add_argument("--epsilon", type=float, default=8, help="L-inf budget in grey levels (of 255)")
    ap.add_argument("--steps", type=int, default=40, help="PGD steps of epsilon / 8")
    ap.add_argument("--surrogate_epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    src, out = Path(args.dataset_dir), Path(args.output_dir)
    doc = json.loads((src / "dataset.json").read_text())
    x, y = _load(src, doc["training"]), torch.tensor([int(e["label"]) for e in doc["training"]])
    xt, yt = _load(src, doc["test"]), torch.tensor([int(e["label"]) for e in doc["test"]])
    num_classes = int(y.max()) + 1

    # the surrogate: the victims' recipe (SGD Nesterov, one-cycle to 0.1, batch 128) on the clean training split
    net = SmallResNet(in_channels=1, num_classes=num_classes)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    batch = 128
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=args.surrogate_epochs * -(-len(x) // batch))
    started = time.time()
    for _ in range(args.surrogate_epochs):
        net.train()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    net.eval().requires_grad_(False)
    with torch.no_grad():
        acc = (net(xt).argmax(1) == yt).float().mean().item()
    print(f"surrogate: clean test accuracy {acc:.4f} ({time.time() - started:.0f} s)", flush=True)

    eps, target = args.epsilon / 255, (y + 1) % num_classes
    poisoned = torch.empty_like(x)
    for i in range(0, len(x), 500):
        xb, tb = x[i:i + 500], target[i:i + 500]
        d = (torch.rand_like(xb) * 2 - 1) * eps
        for _ in range(args.steps):
            d.requires_grad_(True)
            g, = torch.autograd.grad(F.cross_entropy(net((xb + d).clamp(0, 1)), tb), d)
            d = (d.detach() - eps / 8 * g.sign()).clamp(-eps, eps)
            d = (xb + d).clamp(0, 1) - xb
        poisoned[i:i + 500] = ((xb + d).clamp(0, 1) * 255).round() / 255  # as written: 8-bit
    with torch.no_grad():
        pred = net(poisoned).argmax(1)
    print(f"attack: the surrogate reads the target class on {(pred == target).float().mean():.3f} and the true class "
          f"on {(pred == y).float().mean():.3f} of the poisoned training images ({time.time() - started:.0f} s)")

    for k, e in enumerate(doc["training"]):
        dst = out / e["image"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((poisoned[k, 0].numpy() * 255).round().astype(np.uint8)).save(dst)
    for e in doc["test"]:
        dst = out / e["image"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / e["image"], dst)
    (out / "dataset.json").write_text(json.dumps(doc))
    print(out)


if __name__ == "__main__":
    main()
