"""Frozen DINOv2 ViT-S/14 on the 2.5D scan task: linear probe and MoE experts in the last block, on cached features.

On 2 CPU cores a frozen ViT-S at 224 costs about 0.5 s per image forward and about 2.5 s per image for a training
step with experts in every block (measured), so this script caches the frozen work once and trains on the cache:

1. data: ``prepare_scan_forgery(spatial_dims=3, size=64, kinds=per-slice kinds + lesion3d_*)``; training slices are
   2.5D (the slice and its two neighbours as RGB, ``ForgeryDataset(context=1, paired=True)``): every real training
   slice plus ``--pool`` fresh fakes made from it (a random per-slice kind each; only the middle slice tampered), drawn
   once with ``--data-seed``. Test: every slice of the stored held-out volumes (brain2, the superior MNI152 slab),
   real and tampered copies, 2.5D from the stored volume.
2. frozen DINOv2 (``pretrained="dinov2_vits14"``, input resized to 224, ImageNet-normalised): per image, the tokens
   entering the last block (cached, float16) and the CLS + mean patch token of every block's output.
3. ``linear``: logistic regression on the last block's CLS + mean token, and on all 12 blocks' (the probe); its
   ``C`` is chosen by leave-one-training-volume-out AUC.
   ``moe``: the last block with the MoE-FFD experts (LoRA mixture on qkv, pixel-difference adapter mixture beside
   the MLP, noisy top-1 routers, balance loss) and a 2-class head, trained on the cached tokens for ``--steps`` steps
   per seed, balanced batches, AdamW with a cosine schedule; the test AUC is recorded along the way (the curve).

Reports slice-level AUC per held-out volume (its real slices against the tampered slices of its tampered copies), for
the per-slice kinds seen in training and for the 3D-consistent kinds (never trained on). Writes ``results.json``.

    OMP_NUM_THREADS=2 nice -n 10 python scripts/detect_dinov2_probe.py --out /tmp/d21/probe --seeds 0 1
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

PER_SLICE = ("copy_move_inject", "copy_move_remove", "self_blend")
VOLUME = ("lesion3d_inject", "lesion3d_remove")


def _data(args):
    from trust_monai.detect.data import prepare_scan_forgery
    from trust_monai.detect.dataset import ForgeryDataset, slices_with_context

    root = prepare_scan_forgery(spatial_dims=3, size=args.size, kinds=PER_SLICE + VOLUME)
    train = ForgeryDataset(root, "training", kinds=list(PER_SLICE), unroll=True, context=1, paired=True)
    torch.manual_seed(args.data_seed)
    xs, ys, groups = [], [], []
    for i in range(len(train)):
        volume = train.items[i]["volume"].split(":")[0]
        for d in range(args.pool):
            pair = train[i]["image"]
            if d == 0:
                xs.append(pair[0]), ys.append(0), groups.append(volume)
            xs.append(pair[1]), ys.append(1), groups.append(volume)
    test = ForgeryDataset(root, "test")
    tx, meta = [], []
    for it in test.items:
        base = it["volume"].split(":")[0]
        labels = it.get("slice_labels") or [it["label"]] * it["image"].shape[-1]
        for z, s in enumerate(slices_with_context(it["image"], 1, it["rel"])):
            if it["kind"] == "real" or labels[z]:  # a tampered copy's untouched slices duplicate the real ones
                tx.append(s), meta.append((base, it["kind"] if labels[z] else "real", int(labels[z])))
    return torch.stack(xs), np.array(ys), np.array(groups), torch.stack(tx), meta


@torch.no_grad()
def _features(vit, norm, x, batch=16):
    """Tokens entering the last block (float16) and CLS + mean token of every block's output (normed)."""
    pre, summary = [], []
    for i in range(0, len(x), batch):
        h = vit.patch_embed(norm(x[i : i + batch]))
        h = vit.norm_pre(vit.patch_drop(vit._pos_embed(h)))
        per_block = []
        for b, blk in enumerate(vit.blocks):
            if b == len(vit.blocks) - 1:
                pre.append(h.half())
            h = blk(h)
            n = vit.norm(h)
            per_block.append(torch.cat([n[:, 0], n[:, 1:].mean(1)], -1))
        summary.append(torch.stack(per_block, 1))
        print(f"  features {min(i + batch, len(x))}/{len(x)}", flush=True)
    return torch.cat(pre), torch.cat(summary)


def _auc_rows(scores, meta):
    from trust_monai.detect.metrics import roc_auc

    out = {}
    for base in sorted({m[0] for m in meta}) + ["all"]:  # each held-out volume, then both pooled
        for name, kinds in (("per_slice", PER_SLICE), ("lesion3d", VOLUME)) + tuple((k, (k,)) for k in PER_SLICE
                                                                                    + VOLUME):
            sel = [i for i, m in enumerate(meta) if base in (m[0], "all") and (m[1] == "real" or m[1] in kinds)]
            out[f"{base}/{name}"] = round(roc_auc([meta[i][2] for i in sel], scores[sel]), 4)
    return out


def _linear(ftr, ytr, groups, fte, meta, grid=(0.003, 0.01, 0.03, 0.1, 0.3)):
    """Logistic regression on standardised features, its ``C`` chosen by leave-one-training-volume-out AUC (the test
    volumes are never looked at); the per-volume CV AUCs are kept, since they show how the probe fares on a volume
    of a kind it has not seen."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from trust_monai.detect.metrics import roc_auc

    def fit(a, y, c):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000)).fit(a, y)

    res = {}
    for name, sel in (("last_block", slice(-1, None)), ("all_blocks", slice(None))):
        a, b = ftr[:, sel].flatten(1).float().numpy(), fte[:, sel].flatten(1).float().numpy()
        cv = {c: {v: round(float(roc_auc(ytr[groups == v], fit(a[groups != v], ytr[groups != v], c)
                                         .decision_function(a[groups == v]))), 4) for v in sorted(set(groups))}
              for c in grid}
        best = max(grid, key=lambda c: np.mean(list(cv[c].values())))
        clf = fit(a, ytr, best)
        res[name] = {"C": best, "cv_auc": cv[best], "cv_mean": {str(c): round(float(np.mean(list(cv[c].values()))), 4)
                                                                for c in grid},
                     "train_acc": round(float(clf.score(a, ytr)), 4), "auc": _auc_rows(clf.decision_function(b), meta)}
        print(name, json.dumps(res[name]), flush=True)
    return res


class LastBlockMoE(torch.nn.Module):
    """The frozen last block with MoE-FFD experts, the final norm and a 2-class head on the CLS + mean token."""

    def __init__(self, vit, ranks=(16, 32, 64, 128), kinds=("vanilla", "central", "angular", "radial")):
        super().__init__()
        from trust_monai.networks.moe_vit import MLPWithAdapters, MoEAdapter, MoELoRALinear

        self.block, self.norm = copy.deepcopy(vit.blocks[-1]), copy.deepcopy(vit.norm)
        for p in list(self.block.parameters()) + list(self.norm.parameters()):
            p.requires_grad_(False)
        dim, grid = vit.embed_dim, tuple(vit.patch_embed.grid_size)
        self.block.attn.qkv = MoELoRALinear(self.block.attn.qkv, ranks, 1, 16.0)
        self.block.mlp = MLPWithAdapters(self.block.mlp, MoEAdapter(dim, dim // 12, kinds, 1, vit.num_prefix_tokens,
                                                                    grid))
        self.head = torch.nn.Linear(2 * dim, 2)

    def forward(self, h):
        n = self.norm(self.block(h.float()))
        return self.head(torch.cat([n[:, 0], n[:, 1:].mean(1)], -1))

    def balance_loss(self):
        from trust_monai.networks.moe_vit import NoisyTopKGate

        return sum(m.balance_loss for m in self.modules() if isinstance(m, NoisyTopKGate))


def _moe(vit, pre_tr, ytr, pre_te, meta, seed, args):
    torch.manual_seed(seed)
    net = LastBlockMoE(vit)
    params = [p for p in net.parameters() if p.requires_grad]
    print(f"seed {seed}: {sum(p.numel() for p in params)} trainable parameters (last block experts + head)")
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / args.steps)))
    gen = torch.Generator().manual_seed(seed)
    real, fake = np.flatnonzero(ytr == 0), np.flatnonzero(ytr == 1)
    curve, t0 = [], time.time()

    def evaluate():
        net.eval()
        with torch.no_grad():
            s = torch.cat([net(pre_te[i : i + 64]).softmax(-1)[:, 1] for i in range(0, len(pre_te), 64)]).numpy()
        net.train()
        return _auc_rows(s, meta)

    losses = []
    for step in range(1, args.steps + 1):
        half = args.batch // 2
        idx = np.r_[real[torch.randint(len(real), (half,), generator=gen).numpy()],
                    fake[torch.randint(len(fake), (half,), generator=gen).numpy()]]
        x, y = pre_tr[idx], torch.as_tensor(ytr[idx])
        logits = net(x)
        loss = F.cross_entropy(logits, y) + 0.01 * net.balance_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append((loss.item(), float((logits.argmax(-1) == y).float().mean())))
        if step % args.eval_every == 0 or step == args.steps:
            auc = evaluate()
            point = {"step": step, "loss": round(float(np.mean([a for a, _ in losses])), 4),
                     "train_acc": round(float(np.mean([b for _, b in losses])), 4), "seconds": round(time.time() - t0),
                     "auc": auc}
            losses = []
            curve.append(point)
            print(json.dumps(point), flush=True)
    return curve


def _cnn(args, xte, meta, seed):
    """The small 2.5D CNN from scratch at the data's own 64 x 64, with truly fresh paired fakes in every batch."""
    from trust_monai.detect.data import prepare_scan_forgery
    from trust_monai.detect.dataset import ForgeryDataset, paired_collate

    torch.manual_seed(seed)
    root = prepare_scan_forgery(spatial_dims=3, size=args.size, kinds=PER_SLICE + VOLUME)
    train = ForgeryDataset(root, "training", kinds=list(PER_SLICE), unroll=True, context=1, paired=True, augment=True)
    loader = torch.utils.data.DataLoader(train, batch_size=args.batch // 2, collate_fn=paired_collate,
                                         sampler=train.balanced_sampler(args.cnn_steps * args.batch // 2, seed=seed))
    layers, c = [], 3
    for w in (32, 64, 128, 128):
        layers += [torch.nn.Conv2d(c, w, 3, padding=1), torch.nn.BatchNorm2d(w), torch.nn.ReLU(),
                   torch.nn.Conv2d(w, w, 3, padding=1), torch.nn.BatchNorm2d(w), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
        c = w
    net = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(c, 2))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / args.cnn_steps)))
    curve, t0, losses = [], time.time(), []
    for step, batch in enumerate(loader, 1):
        logits = net(batch["image"])
        loss = F.cross_entropy(logits, batch["label"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append((loss.item(), float((logits.argmax(-1) == batch["label"]).float().mean())))
        if step % (args.eval_every * 4) == 0 or step == args.cnn_steps:
            net.eval()
            with torch.no_grad():
                s = net(xte).softmax(-1)[:, 1].numpy()
            net.train()
            curve.append({"step": step, "loss": round(float(np.mean([a for a, _ in losses])), 4),
                          "train_acc": round(float(np.mean([b for _, b in losses])), 4),
                          "seconds": round(time.time() - t0), "auc": _auc_rows(s, meta)})
            losses = []
            print(json.dumps(curve[-1]), flush=True)
    print(f"cnn seed {seed}: {sum(p.numel() for p in net.parameters())} parameters")
    return curve


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="outputs/dinov2_probe")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--pool", type=int, default=3, help="fresh fakes drawn per real training slice")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--skip-moe", action="store_true")
    ap.add_argument("--skip-linear", action="store_true")
    ap.add_argument("--cnn-steps", type=int, default=0, help="also train the small 2.5D CNN from scratch (0: no)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from trust_monai.networks.moe_vit import MoEViT

    t0 = time.time()
    xtr, ytr, groups, xte, meta = _data(args)
    print(f"train {len(xtr)} ({int((ytr == 0).sum())} real), test {len(xte)} slices; {time.time() - t0:.0f} s")
    frozen = MoEViT("vit_small_patch14_dinov2", img_size=224, patch_size=14, in_chans=3, pretrained="dinov2_vits14",
                    lora_ranks=(1,), adapter_kinds=("vanilla",)).eval()  # only its input adaptation is used here
    vit = __import__("trust_monai.networks.moe_vit", fromlist=["build_vit"]).build_vit(
        "vit_small_patch14_dinov2", pretrained="dinov2_vits14", img_size=224, patch_size=14, num_classes=0).eval()
    cache = out / f"features_pool{args.pool}_seed{args.data_seed}.pt"
    if cache.is_file():
        pre_tr, ftr, pre_te, fte = torch.load(cache, weights_only=True)
    else:
        pre_tr, ftr = _features(vit, frozen.adapt_input, xtr)
        pre_te, fte = _features(vit, frozen.adapt_input, xte)
        torch.save((pre_tr, ftr, pre_te, fte), cache)
    t_feat = time.time() - t0
    print(f"features cached: {t_feat:.0f} s")
    res = {"command": vars(args), "n_train": len(xtr), "n_test": len(xte), "feature_seconds": round(t_feat)}
    name = "results.json" if not (args.skip_linear and args.skip_moe) else "results_cnn.json"
    if not args.skip_linear:
        res["linear"] = _linear(ftr, ytr, groups, fte, meta)
    (out / name).write_text(json.dumps(res, indent=1))
    if not args.skip_moe:
        res["moe_last_block"] = {str(s): _moe(vit, pre_tr, ytr, pre_te, meta, s, args) for s in args.seeds}
    if args.cnn_steps:
        res["cnn_2p5d"] = {str(s): _cnn(args, xte, meta, s) for s in args.seeds}
    (out / name).write_text(json.dumps(res, indent=1))
    print(f"done in {time.time() - t0:.0f} s -> {out / name}")


if __name__ == "__main__":
    main()
