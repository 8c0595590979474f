"""Train and score segmentation networks (UMed's surrogate-free victims, D-VAE's downstream check).

A *victim* is what an unauthorised user would do with shared data: train a standard MONAI network on it, then use
it on clean scans. :class:`VictimStudy` trains each victim architecture on the clean and on the changed training set
and scores both on the same clean held-out cases (Dice, HD95), writing a table and pictures.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..bundle import as_bool
from ..utils.fileio import atomic_path, atomic_write_text

__all__ = ["victim_network", "train_segmenter", "score_segmenter", "subject_dice", "VictimStudy"]


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
    on_epoch: Callable[[int, float], None] | None = None,
    augment: str = "flip",
) -> list[float]:
    """Train ``network`` with Dice + CE on patches of ``files`` (MONAI datalist entries); returns the epoch losses.

    ``augment``: ``flip`` or ``standard`` (see :func:`~trust_monai.data.pipelines.segmentation_transforms`).
    ``on_epoch(epoch, loss)`` is called after each epoch (1-based), e.g. to score held-out cases for a curve.
    """
    from monai.data import DataLoader, Dataset
    from monai.losses import DiceCELoss
    from tqdm.auto import trange

    from ..data.pipelines import segmentation_transforms

    device = torch.device(device)
    xform = segmentation_transforms(spatial_dims, patch_size, train=True, num_samples=num_samples, augment=augment)
    loader = DataLoader(Dataset(list(files), xform), batch_size=max(1, batch_size // num_samples), shuffle=True)
    # batch Dice (one Dice over the whole batch, as nnU-Net does): patches without foreground then cannot pull a
    # small-structure segmenter into predicting background everywhere
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
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
            total, n = total + float(loss.detach()), n + 1
        sched.step()
        losses.append(total / max(n, 1))
        if on_epoch is not None:
            on_epoch(len(losses), losses[-1])
            network.train()
    return losses


def score_segmenter(
    network: torch.nn.Module,
    files: Sequence[dict],
    spatial_dims: int,
    num_classes: int,
    patch_size: Sequence[int] | None = None,
    device="cpu",
) -> list[dict]:
    """Per-case Dice and HD95 (mean over foreground classes present in the reference) with sliding windows.

    An entry with a ``fov`` mask (retinal photographs) is scored inside it only: outside, prediction and reference
    both count as background, as the DRIVE protocol asks. Each row also names its ``subject`` (the entry's
    ``subject`` or ``case``, which the slices of one volume share, else the image file) and keeps per-class voxel counts (``counts``: true
    positives, predicted, reference per foreground class) so that :func:`subject_dice` can score whole subjects.
    """
    from monai.data import DataLoader, Dataset
    from monai.inferers import sliding_window_inference
    from monai.metrics import compute_dice, compute_hausdorff_distance
    from monai.networks.utils import one_hot
    from monai.transforms import LoadImage

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
            pred_map, ref_map = logits.argmax(1, keepdim=True), y.long()
            if isinstance(entry.get("fov"), str):
                fov = torch.as_tensor(LoadImage(image_only=True)(entry["fov"])).to(device)
                inside = (fov > 0).reshape(pred_map.shape)
                pred_map, ref_map = pred_map * inside, ref_map * inside
            pred = one_hot(pred_map, num_classes)
            ref = one_hot(ref_map, num_classes)
            present = ref[:, 1:].flatten(2).sum(-1)[0] > 0
            dice = compute_dice(pred, ref, include_background=False, ignore_empty=True)[0]
            hd = compute_hausdorff_distance(pred, ref, include_background=False, percentile=95)[0]
            d = dice[present]
            h = hd[present & torch.isfinite(hd)]
            counts = torch.stack([(pred[:, 1:] * ref[:, 1:]).flatten(2).sum(-1)[0], pred[:, 1:].flatten(2).sum(-1)[0],
                                  ref[:, 1:].flatten(2).sum(-1)[0]], -1)
            rows.append({
                "case": Path(entry["image"]).name,
                "subject": str(entry.get("subject") or entry.get("case") or Path(entry["image"]).name),
                "counts": counts.cpu().numpy(),
                "dice": float(d.mean()) if d.numel() else float("nan"),
                "hd95": float(h.mean()) if h.numel() else float("nan"),
            })
    return rows


def subject_dice(rows: Sequence[dict]) -> dict[str, float]:
    """Dice per subject from :func:`score_segmenter` rows: voxel counts summed over the subject's rows (the slices of
    one volume), then Dice per foreground class present in its reference, averaged over those classes.

    For 2D slices of volumes this is the volume Dice of the stacked slices, as 3D scoring would give; a mean of slice
    Dice instead weighs a lesion's 3-voxel cap slice like its centre slice.
    """
    totals: dict[str, np.ndarray] = {}
    for r in rows:
        totals[r["subject"]] = totals.get(r["subject"], 0) + np.asarray(r["counts"], dtype=np.float64)
    out = {}
    for subject, c in totals.items():
        present = c[:, 2] > 0
        dice = 2 * c[present, 0] / np.maximum(c[present, 1] + c[present, 2], 1)
        out[subject] = float(dice.mean()) if present.any() else float("nan")
    return out


def _mean(values) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


class VictimStudy:
    """Train victims on clean and on changed data; score all on the clean test split; write tables and pictures.

    For every architecture, seed and training set (clean, changed) a fresh victim is trained; its Dice on the clean
    held-out cases is recorded after every ``eval_every`` epochs (the curve shows whether it converged) and at the end
    (Dice, HD95). Dice is per held-out subject (:func:`subject_dice`: the slices of one volume pooled), averaged over
    subjects; ``slice_dice`` is the mean over files. **Reliance** is the victim's Dice on the changed training cases minus its Dice on the same cases
    without the change: near 0 for a victim that learned anatomy, large for one that learned the perturbation as a
    shortcut (it segments only where the perturbation is).

    Args:
        clean_dir: the original dataset folder (its ``test`` split is the clean held-out set).
        changed_dir: the protected (or purified) copy with the same datalist.
        output_dir: where ``metrics.csv`` / ``.md`` (one row per victim), ``summary.csv`` / ``.md`` (mean and sample
            std over seeds), ``per_case.csv`` (each held-out case), ``curves.csv``, ``curves.png`` and ``dice.png`` go.
        spatial_dims / num_classes: of the data.
        archs: victim architectures (see :func:`victim_network`).
        epochs, patch_size, batch_size, lr: victim training settings.
        max_cases: use at most this many training cases (smoke runs).
        seeds: one victim per seed (``seed`` alone when None).
        eval_every: epochs between held-out scores for the curve (0: final score only).
        label: name of the changed data in the report ("protected", "purified").
        train_on: which training sets get victims, among ``clean`` and ``label`` (both by default; the changed set
            alone when sweeping a budget against one clean baseline). Reliance is scored for every victim.
        augment: the victims' training augmentation, ``flip`` or ``standard`` (flips, rotation and scaling, noise,
            blur, brightness and gamma: what a careful trainer would use; see
            :func:`~trust_monai.data.pipelines.segmentation_transforms`).
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
        seeds: Sequence[int] | None = None,
        eval_every: int = 0,
        train_on: Sequence[str] | None = None,
        augment: str = "flip",
    ) -> None:
        self.clean_dir, self.changed_dir, self.output_dir = Path(clean_dir), Path(changed_dir), Path(output_dir)
        self.spatial_dims, self.num_classes, self.archs = spatial_dims, num_classes, list(archs)
        self.epochs, self.patch_size, self.batch_size, self.lr = epochs, patch_size, batch_size, lr
        self.max_cases, self.device, self.label, self.progress = max_cases, device, label, as_bool(progress)
        self.seeds = [int(seed)] if seeds is None else [int(s) for s in seeds]
        self.eval_every = int(eval_every)
        self.train_on = ["clean", label] if train_on is None else list(train_on)
        self.augment = augment

    def _files(self, root: Path, section: str) -> list[dict]:
        from ..data.datalist import load_datalist

        files = load_datalist(root, section, keys=("image", "label", "fov"))
        return files[: self.max_cases] if self.max_cases and section == "training" else files

    def _dice(self, net, files) -> float:
        rows = score_segmenter(net, files, self.spatial_dims, self.num_classes, self.patch_size, self.device)
        return _mean(subject_dice(rows).values())

    def run(self) -> list[dict]:
        from monai.utils import set_determinism
        from tqdm.auto import tqdm

        test = self._files(self.clean_dir, "test")
        train_sets = {"clean": self._files(self.clean_dir, "training"), self.label: self._files(self.changed_dir, "training")}
        results, curves, per_case = [], [], []
        for arch in self.archs:
            for seed in self.seeds:
                for data_name, files in train_sets.items():
                    if data_name not in self.train_on:
                        continue
                    set_determinism(seed)
                    net = victim_network(arch, self.spatial_dims, 1, self.num_classes)

                    def on_epoch(epoch, loss, net=net, tag=(arch, seed, data_name)):
                        if self.eval_every and (epoch % self.eval_every == 0 or epoch == self.epochs):
                            curves.append({"victim": tag[0], "seed": tag[1], "trained_on": tag[2], "epoch": epoch,
                                           "train_loss": loss, "test_dice": self._dice(net, test)})
                            tqdm.write(f"[victim] {tag[0]} seed {tag[1]} on {tag[2]}: epoch {epoch} loss {loss:.4f} "
                                       f"held-out Dice {curves[-1]['test_dice']:.4f}")

                    losses = train_segmenter(
                        net, files, self.spatial_dims, self.epochs, self.patch_size, self.batch_size, lr=self.lr,
                        device=self.device, progress=self.progress, desc=f"{arch} seed {seed} on {data_name}",
                        on_epoch=on_epoch, augment=self.augment,
                    )
                    rows = score_segmenter(net, test, self.spatial_dims, self.num_classes, self.patch_size, self.device)
                    per_case += [{"victim": arch, "seed": seed, "trained_on": data_name,
                                  **{k: v for k, v in r.items() if k != "counts"}} for r in rows]
                    subjects = subject_dice(rows)
                    with_change = self._dice(net, train_sets[self.label])
                    without = self._dice(net, train_sets["clean"])
                    results.append({
                        "victim": arch,
                        "seed": seed,
                        "trained_on": data_name,
                        "dice": _mean(subjects.values()),
                        "slice_dice": _mean(r["dice"] for r in rows),
                        "hd95": _mean(r["hd95"] for r in rows),
                        "reliance": with_change - without,
                        "train_dice_changed": with_change,
                        "train_dice_clean": without,
                        "final_train_loss": losses[-1] if losses else float("nan"),
                        "test_cases": len(rows),
                        "test_subjects": len(subjects),
                    })
                    r = results[-1]
                    print(f"[victim] {arch:9s} seed {seed} trained on {data_name:9s}: Dice {r['dice']:.4f}  "
                          f"HD95 {r['hd95']:.2f}  reliance {r['reliance']:+.4f}")
        self.write(results, curves, per_case)
        return results

    def summary(self, results: list[dict]) -> list[dict]:
        """Mean and sample std over seeds per (victim, trained_on)."""
        out = []
        for key in dict.fromkeys((r["victim"], r["trained_on"]) for r in results):
            group = [r for r in results if (r["victim"], r["trained_on"]) == key]
            row = {"victim": key[0], "trained_on": key[1], "seeds": len(group)}
            for m in ("dice", "hd95", "reliance"):
                vals = np.array([g[m] for g in group], dtype=np.float64)
                row[m] = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
                row[f"{m}_std"] = float(np.nanstd(vals, ddof=1)) if np.isfinite(vals).sum() > 1 else float("nan")
            out.append(row)
        return out

    def write(self, results: list[dict], curves: Sequence[dict] = (), per_case: Sequence[dict] = ()) -> None:
        """Tables (CSV + Markdown), the curve, per-case scores and the bar chart into ``output_dir`` (atomic)."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        _table(results, self.output_dir / "metrics")
        if per_case:  # one row per held-out case and victim: which subjects the protection holds on
            _table(list(per_case), self.output_dir / "per_case", markdown=False)
        _table(self.summary(results), self.output_dir / "summary")
        if curves:
            _table(list(curves), self.output_dir / "curves", markdown=False)
            _curve_plot(list(curves), self.output_dir / "curves.png")
        _bar_plot(self.summary(results), self.output_dir / "dice.png", self.label)


def _table(rows: list[dict], stem: Path, markdown: bool = True) -> None:
    cols = list(rows[0])
    with atomic_path(stem.with_suffix(".csv")) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
    if markdown:
        md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        md += ["| " + " | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |"
               for r in rows]
        atomic_write_text(stem.with_suffix(".md"), "\n".join(md) + "\n")


def _curve_plot(curves: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for key in dict.fromkeys((c["victim"], c["trained_on"], c["seed"]) for c in curves):
        pts = [c for c in curves if (c["victim"], c["trained_on"], c["seed"]) == key]
        style = "-" if key[1] == "clean" else "--"
        ax.plot([p["epoch"] for p in pts], [p["test_dice"] for p in pts], style, label=f"{key[0]} on {key[1]} s{key[2]}")
    ax.set_ylim(0, 1)
    ax.set_xlabel("victim epoch")
    ax.set_ylabel("Dice on clean held-out cases")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def _bar_plot(summary: list[dict], path: Path, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = sorted({r["victim"] for r in summary})
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(archs), 3.2))
    for j, name in enumerate(("clean", label)):
        rows = [next((r for r in summary if r["victim"] == a and r["trained_on"] == name), None) for a in archs]
        vals = [r["dice"] if r else 0 for r in rows]
        errs = [r["dice_std"] if r and np.isfinite(r["dice_std"]) else 0 for r in rows]
        ax.bar(np.arange(len(archs)) + (j - 0.5) * 0.38, vals, 0.36, yerr=errs, label=f"trained on {name}")
    ax.set_xticks(range(len(archs)), archs)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice on clean test cases")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
