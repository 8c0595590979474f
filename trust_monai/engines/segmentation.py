"""Train and score segmentation networks (UMed's surrogate-free victims, D-VAE's downstream check).

A *victim* is what an unauthorised user would do with shared data: train a standard MONAI network on it, then use
it on clean scans. :class:`VictimStudy` trains each victim architecture on the clean and on the changed training set
and scores both on the same clean held-out cases (Dice, HD95), writing a table and pictures.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..utils.fileio import atomic_path, atomic_write_text

__all__ = ["victim_network", "train_segmenter", "score_segmenter", "VictimStudy"]


def victim_network(arch: str, spatial_dims: int, in_channels: int, out_channels: int) -> torch.nn.Module:
    """A standard MONAI segmenter by name: ``unet`` (residual U-Net) or ``segresnet``."""
    from monai.networks.nets import SegResNet, UNet

    if arch == "unet":
        return UNet(spatial_dims, in_channels, out_channels, (16, 32, 64, 128), (2, 2, 2), num_res_units=2)
    if arch == "segresnet":
        return SegResNet(spatial_dims, init_filters=16, in_channels=in_channels, out_channels=out_channels)
    raise ValueError(f"unknown victim architecture {arch!r}; use 'unet' or 'segresnet'")


def train_segmenter(
    network: torch.nn.Module,
    files: Sequence[dict],
    spatial_dims: int,
    epochs: int,
    patch_size: Sequence[int] | None = None,
    batch_size: int = 8,
    num_samples: int = 4,
    lr: float = 1e-3,
    device="cpu",
    progress: bool = True,
    desc: str = "train",
) -> list[float]:
    """Train ``network`` with Dice + CE on patches of ``files`` (MONAI datalist entries); returns the epoch losses."""
    from monai.data import DataLoader, Dataset
    from monai.losses import DiceCELoss
    from tqdm.auto import trange

    from ..data.pipelines import segmentation_transforms

    device = torch.device(device)
    xform = segmentation_transforms(spatial_dims, patch_size, train=True, num_samples=num_samples)
    loader = DataLoader(Dataset(list(files), xform), batch_size=max(1, batch_size // num_samples), shuffle=True)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    network.to(device).train()
    losses = []
    for _ in trange(epochs, desc=desc, disable=not progress, leave=False):
        total, n = 0.0, 0
        for batch in loader:
            x, y = batch["image"].to(device), batch["label"].to(device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(network(x), y)
            loss.backward()
            opt.step()
            total, n = total + float(loss), n + 1
        sched.step()
        losses.append(total / max(n, 1))
    return losses


def score_segmenter(
    network: torch.nn.Module,
    files: Sequence[dict],
    spatial_dims: int,
    num_classes: int,
    patch_size: Sequence[int] | None = None,
    device="cpu",
) -> list[dict]:
    """Per-case Dice and HD95 (mean over foreground classes present in the reference) with sliding windows."""
    from monai.data import DataLoader, Dataset
    from monai.inferers import sliding_window_inference
    from monai.metrics import compute_dice, compute_hausdorff_distance
    from monai.networks.utils import one_hot

    from ..data.pipelines import segmentation_transforms

    device = torch.device(device)
    if patch_size is None:
        patch_size = (128, 128) if spatial_dims == 2 else (64, 64, 32)
    xform = segmentation_transforms(spatial_dims, patch_size, train=False)
    network.to(device).eval()
    rows = []
    with torch.inference_mode():
        for entry, batch in zip(files, DataLoader(Dataset(list(files), xform), batch_size=1)):
            x, y = batch["image"].to(device), batch["label"].to(device)
            logits = sliding_window_inference(x, patch_size, 4, network, overlap=0.25)
            pred = one_hot(logits.argmax(1, keepdim=True), num_classes)
            ref = one_hot(y.long(), num_classes)
            present = ref[:, 1:].flatten(2).sum(-1)[0] > 0
            dice = compute_dice(pred, ref, include_background=False, ignore_empty=True)[0]
            hd = compute_hausdorff_distance(pred, ref, include_background=False, percentile=95)[0]
            d = dice[present]
            h = hd[present & torch.isfinite(hd)]
            rows.append({
                "case": Path(entry["image"]).name,
                "dice": float(d.mean()) if d.numel() else float("nan"),
                "hd95": float(h.mean()) if h.numel() else float("nan"),
            })
    return rows


class VictimStudy:
    """Train victims on clean and on changed data; score all on the clean test split; write CSV, Markdown and PNGs.

    Args:
        clean_dir: the original dataset folder (its ``test`` split is the clean held-out set).
        changed_dir: the protected (or purified) copy with the same datalist.
        output_dir: where ``metrics.csv``, ``metrics.md``, ``dice.png`` and ``examples.png`` go.
        spatial_dims / num_classes: of the data.
        archs: victim architectures (see :func:`victim_network`).
        epochs, patch_size, batch_size, lr: victim training settings.
        max_cases: use at most this many training cases (smoke runs).
        label: name of the changed data in the report ("protected", "purified").
    """

    def __init__(
        self,
        clean_dir,
        changed_dir,
        output_dir,
        spatial_dims: int,
        num_classes: int,
        archs: Sequence[str] = ("unet", "segresnet"),
        epochs: int = 50,
        patch_size: Sequence[int] | None = None,
        batch_size: int = 8,
        lr: float = 1e-3,
        max_cases: int | None = None,
        device="cpu",
        seed: int = 0,
        label: str = "protected",
        progress: bool = True,
    ) -> None:
        self.clean_dir, self.changed_dir, self.output_dir = Path(clean_dir), Path(changed_dir), Path(output_dir)
        self.spatial_dims, self.num_classes, self.archs = spatial_dims, num_classes, list(archs)
        self.epochs, self.patch_size, self.batch_size, self.lr = epochs, patch_size, batch_size, lr
        self.max_cases, self.device, self.seed, self.label, self.progress = max_cases, device, seed, label, progress

    def _files(self, root: Path, section: str) -> list[dict]:
        from ..data.datalist import load_datalist

        files = load_datalist(root, section, keys=("image", "label"))
        return files[: self.max_cases] if self.max_cases and section == "training" else files

    def run(self) -> list[dict]:
        from monai.utils import set_determinism

        test = self._files(self.clean_dir, "test")
        results = []
        for arch in self.archs:
            for data_name, root in (("clean", self.clean_dir), (self.label, self.changed_dir)):
                set_determinism(self.seed)
                net = victim_network(arch, self.spatial_dims, 1, self.num_classes)
                losses = train_segmenter(
                    net, self._files(root, "training"), self.spatial_dims, self.epochs, self.patch_size,
                    self.batch_size, lr=self.lr, device=self.device, progress=self.progress,
                    desc=f"{arch} on {data_name}",
                )
                rows = score_segmenter(net, test, self.spatial_dims, self.num_classes, self.patch_size, self.device)
                dice = [r["dice"] for r in rows if not math.isnan(r["dice"])]
                hd = [r["hd95"] for r in rows if not math.isnan(r["hd95"])]
                results.append({
                    "victim": arch,
                    "trained_on": data_name,
                    "dice": float(np.mean(dice)) if dice else float("nan"),
                    "hd95": float(np.mean(hd)) if hd else float("nan"),
                    "final_train_loss": losses[-1] if losses else float("nan"),
                    "test_cases": len(rows),
                })
                print(f"[victim] {arch:9s} trained on {data_name:9s}: Dice {results[-1]['dice']:.4f}  "
                      f"HD95 {results[-1]['hd95']:.2f}")
        self.write(results)
        return results

    def write(self, results: list[dict]) -> None:
        """``metrics.csv``, ``metrics.md`` and ``dice.png`` into ``output_dir`` (atomic writes)."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        cols = list(results[0])
        with atomic_path(self.output_dir / "metrics.csv") as tmp:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=cols)
                w.writeheader()
                w.writerows(results)
        md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        md += ["| " + " | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |"
               for r in results]
        atomic_write_text(self.output_dir / "metrics.md", "\n".join(md) + "\n")
        _bar_plot(results, self.output_dir / "dice.png", self.label)


def _bar_plot(results: list[dict], path: Path, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = sorted({r["victim"] for r in results})
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(archs), 3.2))
    for j, name in enumerate(("clean", label)):
        vals = [next((r["dice"] for r in results if r["victim"] == a and r["trained_on"] == name), 0) for a in archs]
        ax.bar(np.arange(len(archs)) + (j - 0.5) * 0.38, vals, 0.36, label=f"trained on {name}")
    ax.set_xticks(range(len(archs)), archs)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice on clean test cases")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
