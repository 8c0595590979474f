"""Dataset certification of the segmentation bundle (``bundles/drs``): :class:`CertifySegmentation`; split from
:mod:`trust_monai.engines.certify`, which re-exports it."""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..bundle import as_bool
from ..certify import ABSTAIN, DualSegmentationSmooth, SegmentationSmooth, certified_metrics
from ..utils.checkpoint import load_state_dict
from ..utils.fileio import atomic_path, atomic_write_text
from .certify import SmoothingModels, _check_settings, _settings_key, _SmoothingRun

logger = logging.getLogger("trust_monai.certify")

__all__ = ["CertifySegmentation"]

# -------------------------------------------------------------------------------------------------- segmentation


class CertifySegmentation(_SmoothingRun):
    """Certify every voxel of a segmentation test set with RS and DRS; write label maps, manifest, tables, picture.

    The scan is windowed to [0, 1] as in training, zero-padded at the end of each spatial axis to a multiple of
    ``divisible`` (the U-Net's down-sampling and the even last axis of the dual split; end padding keeps the
    coordinate parity), certified, and cropped back. Certified label maps keep the input's geometry and format; a
    voxel that abstains gets the label ``num_classes`` (e.g. 4 for a 4-class dataset).

    Args:
        dataset_dir, output_dir: input dataset and output folder.
        models: a :class:`SmoothingModels` of segmenters; ``checkpoint`` its state dict.
        spatial_dims, num_classes: of the data.
        sigma / sigma_l / sigma_r: noise levels; ``tau``: per-voxel threshold (RS radius ``sigma PhiInv(tau)``).
        n0, n, alpha, batch_size: Monte Carlo settings (DRS gets half of ``n0`` / ``n`` per half when
            ``equal_budget``).
        max_cases: certify at most this many test cases (0: all).
        methods: ``("rs", "drs")`` or one of them.
    """

    _smoothers = (SegmentationSmooth, DualSegmentationSmooth)

    def __init__(self, dataset_dir, output_dir, models: SmoothingModels, checkpoint, spatial_dims: int,
                 num_classes: int, sigma: float = 0.25, sigma_l: float | None = None, sigma_r: float | None = None,
                 tau: float = 0.75, n0: int = 10, n: int = 100, alpha: float = 0.001, batch_size: int = 10,
                 max_cases: int = 0, methods: Sequence[str] = ("rs", "drs"), equal_budget: bool = True,
                 divisible: int = 16, section: str = "test", device="cpu", seed: int = 0, overwrite: bool = False,
                 progress: bool = True):
        self.dataset_dir, self.output_dir = Path(dataset_dir).resolve(), Path(output_dir).resolve()
        self.models, self.checkpoint = models, checkpoint
        self.spatial_dims, self.num_classes = int(spatial_dims), int(num_classes)
        self._set_sampling(sigma, sigma_l, sigma_r, n0, n, alpha, batch_size, methods, equal_budget)
        self.tau, self.max_cases = float(tau), int(max_cases or 0)
        self.divisible, self.section = int(divisible), section
        self.device, self.seed = torch.device(device), int(seed)
        self.overwrite, self.progress = as_bool(overwrite), as_bool(progress)
        _check_settings(self)

    def _entries(self) -> list[dict]:
        from ..data.datalist import check_readable, load_datalist

        present = json.loads((self.dataset_dir / "dataset.json").read_text()) if (
            self.dataset_dir / "dataset.json").is_file() else {}
        every, test = [], []
        for s in dict.fromkeys(("training", "validation", "test", self.section)):
            if s in present or s == self.section:
                entries = load_datalist(self.dataset_dir, s, keys=("image", "label"))
                every += entries
                if s == self.section:
                    test = entries
        check_readable(every, ("image", "label"))  # a corrupt file stops the run before anything is written
        return test[: self.max_cases] if self.max_cases > 0 else test

    def _out(self, method: str, src: str) -> Path:
        rel = Path(src).resolve().relative_to(self.dataset_dir)
        if Path(src).is_dir():  # a DICOM series: its label map is written as NIfTI, <series>.nii.gz (and as SEG by
            rel = rel.with_name(rel.name + ".nii.gz")  # trust-monai certify), never as a folder of slices
        return self.output_dir / method / rel

    def run(self) -> list[dict]:
        """Certify, write the outputs, return the per-case rows (every rank's, merged, on rank 0).

        Under ``torchrun`` rank ``r`` of ``w`` certifies cases ``r, r + w, ...`` of the datalist and records them in
        ``manifest.rank<r>.json``; rank 0 then merges the records into ``manifest.json`` in datalist order and writes
        the tables and the picture. Every case's smoother starts its noise stream from ``seed`` (a new smoother per
        case and method), so a case's certificate does not depend on which rank, or in which order, it was certified:
        the sharded result equals a single process's. A finished case (its record, its label maps with the recorded
        hashes, the same settings) is not redone, also when its record sits in a rank file of a killed run.
        """
        from monai.transforms import DivisiblePad

        from ..data.io import read_image, write_image
        from ..data.pipelines import segmentation_transforms
        from ..utils.dist import all_gather_objects, barrier, init_from_env
        from ..utils.fileio import sha256_file
        from .manifest import Manifest

        rank, world = init_from_env(self.device)
        entries = self._entries()
        load_state_dict(self.models, self.checkpoint)
        self.models.to(self.device).eval()
        manifest = Manifest(self.output_dir, "drs", "inference", input_dir=self.dataset_dir, seed=self.seed,
                            overwrite=self.overwrite, shard=rank if world > 1 else None)
        mine = list(range(rank, len(entries), world))
        if world > 1:
            manifest.restrict(entries[i]["image"] for i in mine)
        from ..utils.fileio import remove_stale_temps

        if rank == 0:
            remove_stale_temps(self.output_dir)  # temp files of a killed run's writes (the manifest above vouches)
        barrier()  # no rank writes before the temps are gone
        settings = {m: _settings_key({"method": m, "budget": self.budget(m), "tau": self.tau, "alpha": self.alpha,
                                      "sigma": (self.sigma, self.sigma_l, self.sigma_r), "seed": self.seed,
                                      "ckpt": sha256_file(self.checkpoint)}) for m in self.methods}
        xform = segmentation_transforms(self.spatial_dims, train=False)
        pad = DivisiblePad(k=self.divisible, method="end", mode="constant")
        rows: list[dict] = []
        changed = False
        from tqdm.auto import tqdm

        t0 = time.perf_counter()
        for pos in tqdm(mine, desc="certify voxels", disable=not self.progress or rank > 0, leave=False):
            entry = entries[pos]
            src = entry["image"]
            rec = manifest.cases[manifest._index[src]] if src in manifest._index else None
            if (rec is not None and manifest.is_done(src) and all(
                    rec["metrics"].get(m, {}).get("settings") == settings[m] and self._out(m, src).is_file()
                    and sha256_file(self._out(m, src)) == rec["metrics"][m].get("output_sha256")
                    for m in self.methods)):
                rows += [{"pos": pos, "case": Path(src).name, "method": m, **rec["metrics"][m]} for m in self.methods]
                continue
            data = xform({"image": src, "label": entry["label"]})
            x = pad(data["image"]).as_tensor().float().to(self.device)
            ref = data["label"][0].as_tensor().long()
            shape = ref.shape
            _, label_meta = read_image(entry["label"])
            metrics: dict[str, Any] = {}
            first = None
            for m in self.methods:
                n0, n, bs = self.budget(m)
                smooth = self.smoother(m)  # a fresh stream from `seed` for every case: results independent of order
                labels, radius = smooth.certify(x, n0, n, self.alpha, bs, tau=self.tau)
                labels = labels[tuple(slice(0, s) for s in shape)].cpu()
                met = certified_metrics(labels, ref, self.num_classes)
                out = labels.numpy().astype(np.int64)
                out[out == ABSTAIN] = self.num_classes
                dst = self._out(m, src)
                write_image(out.astype(np.uint8), label_meta, dst,
                            derivation=f"trust_monai drs: {m} certified labels, r={radius:.3f}, abstain={self.num_classes}")
                metrics[m] = {"settings": settings[m], "radius": radius, "n0": n0, "n": n, "tau": self.tau,
                              "time": smooth.last_record["time"], "output": manifest.relpath(dst),
                              "output_sha256": sha256_file(dst), **met}
                rows.append({"pos": pos, "case": Path(src).name, "method": m, **metrics[m]})
                first = first or dst
            manifest.record(src, first, status="done", metrics=metrics)
            changed = True
        if world > 1:
            manifest.save()  # this rank's file, even when it had nothing to do
            logger.info(f"rank {rank}: certified {len(mine)} cases in {time.perf_counter() - t0:.1f}s")
        gathered = all_gather_objects((rows, changed))  # also the point where every rank's files are on disk
        if rank == 0:
            order = {m: k for k, m in enumerate(self.methods)}
            rows = sorted((r for part, _ in gathered for r in part), key=lambda r: (r["pos"], order[r["method"]]))
            for r in rows:
                del r["pos"]
            changed = any(c for _, c in gathered)
            if world == 1 and any(self.output_dir.glob("manifest.rank*.json")):
                manifest.save()  # a rerun after a killed sharded run: this manifest holds what the ranks recorded
            Manifest.finish_shards(self.output_dir, [e["image"] for e in entries], world)
            outputs = ("certify_cases.csv", "certified_segmentation.csv", "certified_segmentation.md",
                       "certified_segmentation.png")
            if changed or not all((self.output_dir / f).is_file() for f in outputs):
                self._write(rows, entries)
            else:
                logger.info(f"every case was already certified with these settings; {self.output_dir} left unchanged")
        barrier()
        return rows

    def _write(self, rows: list[dict], entries: list[dict]) -> None:
        cols = ["case", "method", "radius", "certified_fraction", "certified_accuracy", "dice_mean",
                *[f"dice_{c}" for c in range(1, self.num_classes)], "n0", "n", "tau", "time"]
        self._csv(self.output_dir / "certify_cases.csv", rows, cols)
        table = []
        for m in self.methods:
            rr = [r for r in rows if r["method"] == m]
            mean = lambda k: float(np.mean([r[k] for r in rr if r.get(k) is not None])) if rr else float("nan")  # noqa: E731
            table.append({"method": m, "cases": len(rr), "n0": rr[0]["n0"] if rr else 0, "n": rr[0]["n"] if rr else 0,
                          "radius": rr[0]["radius"] if rr else 0.0, "certified_fraction": mean("certified_fraction"),
                          "certified_accuracy": mean("certified_accuracy"), "certified_dice": mean("dice_mean"),
                          "sec_per_case": mean("time")})
        self._csv(self.output_dir / "certified_segmentation.csv", table, list(table[0]))
        md = ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
        md += ["| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in r.values()) + " |"
               for r in table]
        atomic_write_text(self.output_dir / "certified_segmentation.md", "\n".join(md) + "\n")
        self._figure(entries)
        for r in table:
            logger.info(f"{r['method']}: radius {r['radius']:.3f}, certified fraction {r['certified_fraction']:.3f}, "
                        f"certified accuracy {r['certified_accuracy']:.3f}, certified Dice {r['certified_dice']:.3f}")

    @staticmethod
    def _csv(path: Path, rows: list[dict], cols: list[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        new = io.StringIO()
        w = csv.DictWriter(new, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        # an unchanged table is not rewritten, so a resumed run leaves every file as it was
        if not path.is_file() or path.read_text() != new.getvalue():
            atomic_write_text(path, new.getvalue())

    def _figure(self, entries: list[dict]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap

        from ..data.io import read_image

        if not entries:
            return
        entry = entries[len(entries) // 2]
        img = np.asarray(read_image(entry["image"])[0], np.float32)
        ref = np.asarray(read_image(entry["label"])[0])
        maps = [(m, np.asarray(read_image(self._out(m, entry["image"]))[0])) for m in self.methods
                if self._out(m, entry["image"]).is_file()]

        def view(a):
            return a if a.ndim == 2 else a[..., a.shape[-1] // 2]

        colors = plt.get_cmap("tab10").colors[: self.num_classes] + ((1.0, 1.0, 1.0),)  # abstain: white
        cmap = ListedColormap(["black", *colors[1: self.num_classes], "white"])
        panels = [("image", view(img), dict(cmap="gray")), ("reference", view(ref), dict(cmap=cmap, vmin=0,
                  vmax=self.num_classes))]
        panels += [(f"{m.upper()} certified (white: abstain)", view(a), dict(cmap=cmap, vmin=0, vmax=self.num_classes))
                   for m, a in maps]
        fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9), squeeze=False)
        for ax, (title, a, kw) in zip(axes[0], panels):
            ax.imshow(a.T, origin="lower", interpolation="nearest", **kw)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        fig.tight_layout()
        with atomic_path(self.output_dir / "certified_segmentation.png") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
