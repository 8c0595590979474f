"""Probe: can *any* class-wise shortcut under a UMed-style budget make a segmentation dataset unlearnable?

Upper-bound experiment behind the finding in ``bundles/umed/docs/README.md``. Instead of a learned perturbation it
paints the strongest simple shortcut there is - every voxel of class ``c`` inside mask + contour band gets the value
of a fixed random +-1 tile of class ``c`` (period ``--period``) times ``--epsilon`` - then trains the bundle's victim
UNet on clean and on shortcut data (same seed, same iterations) and scores both on the clean held-out slab. If the
shortcut-trained victim scores like the clean-trained one, the victim ignores the shortcut and no perturbation of
that size confined to the region can lower its Dice through a shortcut of this kind.

    python scripts/umed_shortcut_probe.py --epsilon 4 16 --period 2 8 --iters 300
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F


def load_split(dataset: str, section: str):
    """Windowed (N, 1, H, W) images and labels of one section, zero-padded to a multiple of 16."""
    from trust_monai.data import load_datalist, prepare
    from trust_monai.data.pipelines import segmentation_transforms

    root = prepare(dataset)
    xform = segmentation_transforms(2, train=False)
    cases = [xform({"image": e["image"], "label": e["label"]}) for e in load_datalist(root, section)]
    shape = [-(-max(c["image"].shape[1 + a] for c in cases) // 16) * 16 for a in range(2)]

    def pad(t):
        t = torch.as_tensor(t).float()
        return F.pad(t, [0, shape[1] - t.shape[2], 0, shape[0] - t.shape[1]])

    return torch.stack([pad(c["image"]) for c in cases]), torch.stack([pad(c["label"]) for c in cases])


def class_shortcut(x, y, num_classes: int, epsilon: float, period: int, band_width: int = 2, seed: int = 1):
    """``x + eps * tile_{class}`` inside mask + contour band (class 0 on the band outside the mask), clipped."""
    from trust_monai.transforms.roi import contour_band

    g = torch.Generator().manual_seed(seed)
    tiles = torch.randint(0, 2, (num_classes, period, period), generator=g).float() * 2 - 1
    h, w = x.shape[2:]
    tiled = tiles.repeat(1, -(-h // period), -(-w // period))[:, :h, :w]
    onehot = F.one_hot(y[:, 0].long(), num_classes).permute(0, 3, 1, 2).float()
    pattern = torch.einsum("bkhw,khw->bhw", onehot, tiled)[:, None]
    region = contour_band(y, band_width)[1]
    return (x + epsilon * pattern * region).clamp(0, 1)


def train_victim(x, y, num_classes: int, iters: int, seed: int = 0, batch: int = 8):
    from monai.losses import DiceCELoss

    from trust_monai.engines.segmentation import victim_network

    torch.manual_seed(seed)
    net = victim_network("unet", 2, 1, num_classes)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    g = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(iters):
        idx = torch.randint(0, len(x), (batch,), generator=g)
        xb, yb = x[idx], y[idx]
        if torch.rand(1, generator=g) < 0.5:
            xb, yb = xb.flip(2), yb.flip(2)
        loss = loss_fn(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


def mean_dice(net, x, y, num_classes: int) -> float:
    from monai.metrics import compute_dice
    from monai.networks.utils import one_hot

    with torch.inference_mode():
        pred = net(x).argmax(1, keepdim=True)
    d = compute_dice(one_hot(pred, num_classes), one_hot(y.long(), num_classes), include_background=False,
                     ignore_empty=True)
    return float(torch.nanmean(d))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mni152_tissue_2d")
    ap.add_argument("--epsilon", type=float, nargs="+", default=[4.0], help="budgets in units of 1/255")
    ap.add_argument("--period", type=int, nargs="+", default=[8])
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x, y = load_split(args.dataset, "training")
    xt, yt = load_split(args.dataset, "test")
    k = int(max(y.max(), yt.max())) + 1
    t0 = time.time()
    clean = train_victim(x, y, k, args.iters)
    rows = [{"condition": "clean", "train_dice": mean_dice(clean, x, y, k), "test_dice": mean_dice(clean, xt, yt, k)}]
    print(json.dumps(rows[-1]), flush=True)
    for eps in args.epsilon:
        for period in args.period:
            xs = class_shortcut(x, y, k, eps / 255, period)
            net = train_victim(xs, y, k, args.iters)
            rows.append({"condition": f"shortcut eps={eps:g}/255 period={period}",
                         "train_dice_shortcut": mean_dice(net, xs, y, k), "train_dice_clean": mean_dice(net, x, y, k),
                         "test_dice": mean_dice(net, xt, yt, k)})
            print(json.dumps(rows[-1]), flush=True)
    print(f"| condition | test Dice (clean held-out) |\n|---|---|")
    for r in rows:
        print(f"| {r['condition']} | {r['test_dice']:.3f} |")
    print(f"{args.iters} iterations per victim, {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
