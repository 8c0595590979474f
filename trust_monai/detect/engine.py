"""Glue the detection bundles call: the training loss, checkpoint loading, scoring, the report and the evaluation.

- :class:`MoELoss`: class-weighted cross-entropy plus the routers' load-balancing loss (read from the network right
  after its forward pass), so a plain MONAI ``SupervisedTrainer`` trains a :class:`~trust_monai.networks.moe_vit.MoEViT`.
- :func:`load_detector`: a plain state dict into the configured network; a checkpoint made for other experts fails
  with one line naming the mismatched keys.
- :class:`DetectionInference`: scores every image (a 3D volume by aggregating its slice scores; with ``context``
  each slice enters with its neighbours as channels, 2.5D), writes ``report.json`` (per image and per volume,
  atomically), ``scores.csv`` (one row per slice: image, slice index, score), ``volumes.csv`` (one row per volume:
  image, score) and ``heatmaps.png`` (gradient saliency).
- :class:`DetectionEvaluation`: the same scores against the labels: AUC, AP, EER, accuracy at 0.5 per fake kind and
  level (image / slice / volume; slice level also per held-out volume), ``metrics.csv`` + ``metrics.md`` +
  ``roc.png``; fake kinds not in ``train_kinds`` are marked unseen (the cross-manipulation protocol).
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..bundle import as_bool
from ..errors import InputFileError
from ..utils.checkpoint import load_state_dict
from ..utils.fileio import atomic_write_json, atomic_write_text, sha256_file
from .dataset import slices_with_context
from .figures import heatmap_png, roc_png, saliency
from .metrics import aggregate_scores, detection_metrics

__all__ = ["MoELoss", "load_detector", "score_batch", "log_trainable", "DetectionInference", "DetectionEvaluation"]

logger = logging.getLogger("trust_monai.detect")


class MoELoss(nn.Module):
    """``CE(logits, label; class weights) + balance_weight * network.balance_loss()``.

    Args:
        network: the network being trained; its ``balance_loss()`` (if it has one) is read at each call, i.e. right
            after the trainer's forward pass.
        balance_weight: weight of the load-balancing term.
        class_weights: per-class weights of the cross-entropy (e.g. ``ForgeryDataset.class_weights()``).
    """

    def __init__(self, network: nn.Module, balance_weight: float = 0.01, class_weights=None):
        super().__init__()
        self.network, self.balance_weight = network, float(balance_weight)
        self.register_buffer("class_weights", None if class_weights is None else torch.as_tensor(class_weights).float())

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.reshape(-1).long()
        w = None if self.class_weights is None else self.class_weights.to(pred.device)
        loss = F.cross_entropy(pred, target, weight=w)
        balance = getattr(self.network, "balance_loss", None)
        if self.balance_weight and callable(balance):
            loss = loss + self.balance_weight * balance().to(loss.device)
        return loss


def load_detector(network: nn.Module, path) -> nn.Module:
    """Load a plain state dict (``weights_only``) into ``network``; one made for other experts is refused by name."""
    return load_state_dict(
        network, path, hint="use the config its experts were trained with (count, ranks, kinds, sizes) or retrain"
    )


@torch.no_grad()
def score_batch(network: nn.Module, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Fake probability of every 2D image of ``images`` ``(N, C, H, W)``."""
    device = next(network.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        logits = network(images[i : i + batch_size].to(device).float())
        out.append(logits.float().softmax(-1)[:, 1].cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


class DetectionInference:
    """Score a data set and write ``report.json`` and ``heatmaps.png`` into ``output_dir``.

    Args:
        network: the detector (built from the same config as in training).
        checkpoint: its trained state dict.
        dataset: a :class:`~trust_monai.detect.data.ForgeryDataset` (labels optional); its files were checked
            when it was built, so a bad input fails before the checkpoint is read or anything is written.
        output_dir: where the outputs go.
        device: torch device.
        batch_size: images (or slices) per forward pass.
        aggregate, topk: how slice scores become a volume score (:func:`~trust_monai.detect.metrics.aggregate_scores`).
        threshold: fake probability from which an image is called fake.
        heatmaps: cases shown in ``heatmaps.png`` (0: none).
        progress: progress bar.
        context: neighbours per side given with each slice of a volume (1: 2.5D, the slice and its two neighbours as
            three channels); must match training.
    """

    def __init__(self, network: nn.Module, checkpoint, dataset, output_dir, device="cpu", batch_size: int = 64,
                 aggregate: str = "topk", topk: int = 3, threshold: float = 0.5, heatmaps: int = 8,
                 progress: bool = True, context: int = 0):
        self.network, self.checkpoint, self.dataset = network, checkpoint, dataset
        self.context = int(context)
        self.output_dir, self.device = Path(output_dir), torch.device(device)
        self.batch_size, self.aggregate, self.topk = int(batch_size), aggregate, int(topk)
        self.threshold, self.heatmaps, self.progress = float(threshold), int(heatmaps), as_bool(progress)

    # ------------------------------------------------------------------------------------------------ scoring
    def score(self) -> list[dict]:
        """One record per dataset item: ``score`` (and ``slice_scores`` for a volume).

        Under ``torchrun`` each rank scores every ``world``-th item and every rank gets all records back, in dataset
        order (only rank 0 writes; see :meth:`run`).
        """
        from tqdm.auto import tqdm

        from ..utils.dist import all_gather_objects, init_from_env

        rank, world = init_from_env(self.device)
        load_detector(self.network, self.checkpoint)
        self.network.to(self.device).eval()
        records = []
        mine = list(range(len(self.dataset.items)))[rank::world]
        items = [self.dataset.items[k] for k in mine]
        i = 0
        bar = tqdm(total=len(items), desc="score", disable=None if self.progress else True, leave=False)
        while i < len(items):
            img = items[i]["image"]
            if img.ndim == 4:  # (C, H, W, D): score every slice (with its neighbours), aggregate
                slices = slices_with_context(img, self.context, items[i]["rel"])
                s = score_batch(self.network, slices, self.batch_size)
                rec = self._record(items[i], aggregate_scores(s, self.aggregate, self.topk), s)
                if self.context and img.shape[-1] < 2 * self.context + 1:
                    rec["note"] = f"{img.shape[-1]} slice(s): neighbour channels repeated"
                records.append(rec)
                i += 1
                bar.update(1)
                continue
            j = i
            while j < len(items) and j - i < self.batch_size and items[j]["image"].shape == img.shape:
                j += 1
            s = score_batch(self.network, torch.stack([it["image"] for it in items[i:j]]), self.batch_size)
            records += [self._record(it, float(v)) for it, v in zip(items[i:j], s)]
            bar.update(j - i)
            i = j
        bar.close()
        if world == 1:
            return records
        merged = sorted((k, r) for part in all_gather_objects(list(zip(mine, records))) for k, r in part)
        return [r for _, r in merged]

    def _record(self, item: dict, score: float, slice_scores=None) -> dict:
        r = {"image": item["rel"], "sha256": sha256_file(item["path"]), "score": round(float(score), 6),
             "pred": "fake" if score >= self.threshold else "real", "volume": item["volume"]}
        if item.get("slice") is not None:
            r["slice"] = int(item["slice"])
        if item["label"] >= 0:
            r.update(label=int(item["label"]), kind=item["kind"])
        if slice_scores is not None:
            r["slice_scores"] = [round(float(v), 6) for v in slice_scores]
            if item.get("slice_labels"):
                r["slice_labels"] = [int(v) for v in item["slice_labels"]]
        return r

    def volumes(self, records: list[dict]) -> list[dict]:
        """Records grouped by ``volume`` with the aggregated score (a 3D item is its own volume)."""
        groups: dict[str, list[dict]] = {}
        for r in records:
            groups.setdefault(r["volume"], []).append(r)
        out = []
        for name, rs in groups.items():
            scores = [v for r in rs for v in (r["slice_scores"] if "slice_scores" in r else [r["score"]])]
            score = aggregate_scores(scores, self.aggregate, self.topk)
            v = {"volume": name, "image": rs[0]["image"] if len(rs) == 1 else name, "images": len(rs),
                 "score": round(score, 6), "pred": "fake" if score >= self.threshold else "real"}
            if all("label" in r for r in rs):
                v["label"] = max(r["label"] for r in rs)
                kinds = sorted({r["kind"] for r in rs if r["label"] == 1})
                v["kind"] = kinds[0] if len(kinds) == 1 else ("real" if not kinds else "mixed")
            out.append(v)
        return out

    # ------------------------------------------------------------------------------------------------ writing
    def write_report(self, records: list[dict], extra: dict | None = None) -> Path:
        doc = {
            "checkpoint": str(self.checkpoint),
            "threshold": self.threshold,
            "aggregate": {"how": self.aggregate, "k": self.topk},
            "images": records,
            "volumes": self.volumes(records),
            **(extra or {}),
        }
        self.write_csv(records, doc["volumes"])
        return atomic_write_json(self.output_dir / "report.json", doc)

    def write_csv(self, records: list[dict], volumes: list[dict]) -> None:
        """``scores.csv`` (image, slice, score: one row per slice, a 2D image is slice 0 unless its datalist names
        one) and ``volumes.csv`` (image, score: one row per volume), so any tool can read the scores."""
        rows = []
        for r in records:
            per_slice = enumerate(r["slice_scores"]) if "slice_scores" in r else [(r.get("slice", 0), r["score"])]
            rows += [(r["image"], z, v) for z, v in per_slice]
        for name, table, header in (("scores.csv", rows, ("image", "slice", "score")),
                                    ("volumes.csv", [(v["image"], v["score"]) for v in volumes], ("image", "score"))):
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(header)
            w.writerows(table)
            atomic_write_text(self.output_dir / name, buf.getvalue())

    def write_heatmaps(self, records: list[dict]) -> Path | None:
        """Saliency of the most-fake-looking cases and of the most-real-looking ones, side by side."""
        if self.heatmaps <= 0 or not records:
            return None
        order = np.argsort([-r["score"] for r in records])
        n = min(self.heatmaps, len(records))
        chosen = list(order[: (n + 1) // 2]) + [k for k in order[::-1][: n // 2] if k not in order[: (n + 1) // 2]]
        by_rel = {it["rel"]: it for it in self.dataset.items}
        rows = []
        for k in chosen:
            r = records[k]
            img = by_rel[r["image"]]["image"]
            caption = f"{Path(r['image']).name}\np(fake)={r['score']:.3f}" + (f" [{r['kind']}]" if "kind" in r else "")
            if img.ndim == 4:
                z = int(np.argmax(r["slice_scores"]))
                img = slices_with_context(img, self.context, r["image"])[z]
                caption += f" z={z}"
            heat = saliency(self.network, img.to(self.device))
            picture = Path(r["image"]).suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
            shown = img[self.context] if self.context and not picture and img.shape[0] > 1 else img.float().mean(0)
            rows.append({"image": shown.float().cpu().numpy(), "heat": heat, "caption": caption,
                         "voxel_order": not picture})
        return heatmap_png(rows, self.output_dir / "heatmaps.png")

    def run(self) -> list[dict]:
        from ..utils.dist import is_main

        records = self.score()
        if not is_main():  # rank 0 writes the merged report
            return records
        self.write_report(records)
        self.write_heatmaps(records)
        logger.info("scored %d images into %s", len(records), self.output_dir / "report.json")
        return records


_COLUMNS = ("level", "fakes", "seen_in_training", "n_real", "n_fake", "auc", "ap", "eer", "acc")


class DetectionEvaluation(DetectionInference):
    """Score a labelled test set and write ``metrics.csv``, ``metrics.md``, ``roc.png`` (plus the report and heatmaps).

    Rows: every level present (``image``; ``slice`` for volumes with per-slice labels; ``volume`` when several
    images share a volume id), once with all fakes, once with the fakes of the seen kinds when some are unseen, and once
    per fake kind, each against all reals. ``train_kinds`` (the kinds the checkpoint was trained on; ``None``: all)
    marks each kind seen or unseen, the cross-manipulation view.
    """

    def __init__(self, *args, train_kinds: Sequence[str] | None = None, title: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.train_kinds = list(train_kinds) if train_kinds else None
        self.title = title

    def _seen(self, kind: str) -> str:
        if kind == "seen":
            return "yes"
        if kind == "all":
            return "all" if self.train_kinds is None else "mixed"
        return "yes" if self.train_kinds is None or kind in self.train_kinds else "no"

    def rows(self, records: list[dict]) -> tuple[list[dict], dict]:
        levels: dict[str, list[tuple[int, float, str]]] = {"image": [], "slice": [], "volume": []}
        held_out: dict[str, list[tuple[int, float, str]]] = {}
        for r in records:
            if "label" not in r:
                continue
            levels["image"].append((r["label"], r["score"], r["kind"]))
            base = str(r["volume"]).split(":")[0]
            for lb, s in zip(r.get("slice_labels", []), r.get("slice_scores", [])):
                levels["slice"].append((lb, s, r["kind"] if lb else "real"))
                # per held-out volume: its real slices against the tampered slices of its tampered copies
                if r["kind"] == "real" or lb:
                    held_out.setdefault(f"slice:{base}", []).append((lb, s, r["kind"] if lb else "real"))
        if len(held_out) > 1:
            levels.update(sorted(held_out.items()))
        vols = self.volumes(records)
        if len(vols) < len(records):
            levels["volume"] = [(v["label"], v["score"], v["kind"]) for v in vols if "label" in v]
        rows, curves = [], {}
        for level, data in levels.items():
            if not data:
                continue
            kinds = sorted({k for lb, _, k in data if lb == 1})
            groups = [(k, {k}) for k in kinds]
            if len(kinds) > 1:
                groups.insert(0, ("all", set(kinds)))
                seen = [k for k in kinds if self.train_kinds and k in self.train_kinds]
                if seen and len(seen) < len(kinds):  # in-domain view of a cross-manipulation run
                    groups.insert(1, ("seen", set(seen)))
            for name, members in groups:
                sel = [(lb, s) for lb, s, k in data if lb == 0 or k in members]
                y, s = [a for a, _ in sel], [b for _, b in sel]
                m = detection_metrics(y, s, self.threshold)
                rows.append({"level": level, "fakes": name, "seen_in_training": self._seen(name), **m})
                if level == "image":
                    curves[name] = (y, s)
        return rows, curves

    def run(self) -> list[dict]:
        from ..utils.dist import is_main

        records = self.score()
        if not is_main():
            return records
        rows, curves = self.rows(records)
        if not rows:
            raise InputFileError(self.dataset.dataset_dir / "dataset.json", "evaluation needs 'label' in the entries")
        self.write_report(records, {"metrics": rows, "train_kinds": self.train_kinds})
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.4f}" if isinstance(r[k], float) else r[k]) for k in _COLUMNS})
        atomic_write_text(self.output_dir / "metrics.csv", buf.getvalue())

        def fmt(v):
            return "n/a" if isinstance(v, float) and math.isnan(v) else (f"{v:.4f}" if isinstance(v, float) else str(v))

        md = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
        md += ["| " + " | ".join(fmt(r[k]) for k in _COLUMNS) + " |" for r in rows]
        head = f"# Detection metrics{': ' + self.title if self.title else ''}\n\n"
        head += f"Checkpoint `{self.checkpoint}`; trained on fakes: {self.train_kinds or 'all kinds'}.\n\n"
        atomic_write_text(self.output_dir / "metrics.md", head + "\n".join(md) + "\n")
        roc_png(curves, self.output_dir / "roc.png", title=self.title or "real vs fake (image level)")
        self.write_heatmaps(records)
        for r in rows:
            logger.info("%s level, fakes=%s (seen: %s): AUC %.4f AP %.4f EER %.4f ACC %.4f", r["level"], r["fakes"],
                        r["seen_in_training"], r["auc"], r["ap"], r["eer"], r["acc"])
        return rows


def log_trainable(network: nn.Module) -> tuple[int, int]:
    """Log and return the trainable and total parameter counts of ``network``."""
    trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
    total = sum(p.numel() for p in network.parameters())
    logger.info("%s: %d trainable of %d parameters (%.2f%%)", type(network).__name__, trainable, total,
                100.0 * trainable / max(total, 1))
    return trainable, total
