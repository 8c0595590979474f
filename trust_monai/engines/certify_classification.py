"""Dataset certification of the classification bundles (``bundles/drs_natural``, ``bundles/drs`` slices):
:class:`CertifyClassification` and the CIFAR-10 reader; split from :mod:`trust_monai.engines.certify`, which
re-exports both."""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.utils import CommonKeys as Keys

from ..bundle import as_bool
from ..certify import ABSTAIN, DualSmooth, Smooth
from ..utils.checkpoint import load_state_dict
from ..utils.fileio import atomic_path, atomic_write_text
from .certify import SmoothingModels, _check_settings, _settings_key, _SmoothingRun, certified_accuracy_curve

logger = logging.getLogger("trust_monai.certify")

__all__ = ["CertifyClassification", "load_cifar10"]


class CertifyClassification(_SmoothingRun):
    """Certify a classification test set with RS and DRS at an equal sample budget; write CSV, Markdown and PNG.

    Equal budget: RS draws ``n0`` + ``n`` noisy images; DRS draws ``n0 // 2`` + ``n // 2`` per half (the same number
    of forward passes of the same architecture) unless ``equal_budget`` is False.

    Args:
        dataset_dir: folder with ``dataset.json`` (PNG images, integer labels).
        output_dir: where the tables and the picture go.
        models: a :class:`SmoothingModels` holding the members of ``methods``.
        checkpoint: its state dict (from training).
        num_classes: number of classes.
        sigma / sigma_l / sigma_r: noise levels (must match training).
        n0, n, alpha, batch_size: Monte Carlo settings (RS's; see ``equal_budget``).
        max_samples: certify this many test images (every ``skip``-th, from the start).
        methods: ``("rs", "drs")`` or one of them.
        radii: radii of the summary table.
        section: datalist section to certify.
        in_channels: 1 or 3 (decoding of the PNGs).
        dataset: certify this map-style dataset instead of the PNG datalist (items as
            :class:`~trust_monai.data.classification.ImageClassificationDataset`'s, e.g. a
            :class:`~trust_monai.data.slices.SliceClassificationDataset`); ``section`` is then unused.
        flush_seconds: how often finished rows are saved for a resume (``certify.rank<r>.partial.csv``).
        mode: ``fixed`` (Cohen et al.'s CERTIFY with ``n0`` + ``n``, the paper's protocol), ``decide`` (is each image
            certified at ``radius``? :meth:`~trust_monai.certify.Smooth.decide`, stopping early) or ``adaptive``
            (input-specific sample size, :meth:`~trust_monai.certify.Smooth.certify_adaptive` with ``tolerance``);
            the sequential modes use ``n`` as ``max_samples``. ``certify.csv`` records ``mode`` and ``samples_used``
            (forward passes, selection included) per image.
        radius: the radius of ``decide`` (required there); a certified image gets this radius in the table.
        tolerance: radius the adaptive mode may trade for samples (per image, predicted).
    """

    _smoothers = (Smooth, DualSmooth)

    def __init__(self, dataset_dir, output_dir, models: SmoothingModels, checkpoint, num_classes: int,
                 sigma: float = 0.5, sigma_l: float | None = None, sigma_r: float | None = None, n0: int = 100,
                 n: int = 1000, alpha: float = 0.001, batch_size: int = 500, max_samples: int = 500, skip: int = 1,
                 methods: Sequence[str] = ("rs", "drs"), equal_budget: bool = True,
                 radii: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), section: str = "test",
                 in_channels: int | None = 1, dataset=None, device="cpu", seed: int = 0, progress: bool = True,
                 flush_seconds: float = 10.0, mode: str = "fixed", radius: float | None = None,
                 tolerance: float = 0.05):
        self.dataset_dir, self.output_dir = Path(dataset_dir), Path(output_dir)
        self.dataset, self.flush_seconds = dataset, float(flush_seconds)
        self.models, self.checkpoint, self.num_classes = models, checkpoint, int(num_classes)
        self._set_sampling(sigma, sigma_l, sigma_r, n0, n, alpha, batch_size, methods, equal_budget)
        self.max_samples, self.skip = int(max_samples), max(1, int(skip))
        self.radii, self.section = [float(r) for r in radii], section
        self.in_channels, self.device, self.seed = in_channels, torch.device(device), int(seed)
        self.progress = as_bool(progress)
        self.mode, self.radius, self.tolerance = str(mode), radius, float(tolerance)
        _check_settings(self)

    def _certify_one(self, smooth, x, n0, n, bs, label) -> None:
        if self.mode == "fixed":
            smooth.certify(x, n0, n, self.alpha, bs, label=label)
        elif self.mode == "decide":
            smooth.decide(x, self.radius, self.alpha, n, bs, n0=n0, label=label)
        else:
            smooth.certify_adaptive(x, self.alpha, n, bs, n0=n0, tolerance=self.tolerance, label=label)

    def settings(self, method: str) -> dict:
        n0, n, bs = self.budget(method)
        sig = {"sigma": self.sigma} if method == "rs" else {"sigma_l": self.sigma_l, "sigma_r": self.sigma_r}
        mode = {} if self.mode == "fixed" else {"mode": self.mode, "radius": self.radius, "tolerance": self.tolerance}
        return {"method": method, "n0": n0, "n": n, "alpha": self.alpha, "seed": self.seed, **sig,
                "checkpoint_sha256": self._ckpt_hash, **mode}

    def _dataset(self):
        from ..data.classification import ImageClassificationDataset, read_datalist

        if self.dataset is not None:
            return self.dataset
        # every listed file must exist (all sections) before anything is loaded or written
        present = json.loads((self.dataset_dir / "dataset.json").read_text()) if (
            self.dataset_dir / "dataset.json").is_file() else {}
        for s in ("training", "validation", "test"):
            if s in present or s == self.section:
                read_datalist(self.dataset_dir, s)
        limit = self.max_samples * self.skip if self.max_samples > 0 else None
        return ImageClassificationDataset(self.dataset_dir, self.section, limit, self.in_channels, self.progress)

    def run(self) -> list[dict]:
        """Certify, write the outputs, return the per-sample rows (every rank's, merged, on rank 0).

        Under ``torchrun`` each rank certifies every ``world``-th image (:func:`trust_monai.utils.dist.shard`) and
        rank 0 merges the rows; each image's noise is seeded by its index, so the rows equal a single process's.
        Finished rows are saved to ``certify.rank<r>.partial.csv`` as the run goes (atomically, at most every
        ``flush_seconds``), so a killed run, or a killed rank, resumes where it stopped.
        """
        from ..utils.dist import all_gather_objects, barrier, init_from_env, shard
        from ..utils.fileio import sha256_file

        from ..utils.fileio import remove_stale_temps

        rank, world = init_from_env(self.device)
        ds = self._dataset()
        if rank == 0 and self.output_dir.is_dir():
            remove_stale_temps(self.output_dir)  # temp files of a killed run's writes
        barrier()
        load_state_dict(self.models, self.checkpoint)
        self._ckpt_hash = sha256_file(self.checkpoint)[:16]
        self.models.to(self.device).eval()
        indices = list(range(0, len(ds), self.skip))[: self.max_samples if self.max_samples > 0 else None]
        old = self._read_rows()
        rows: list[dict] = []
        changed = False
        partial = self.output_dir / f"certify.rank{rank}.partial.csv"
        last_flush = time.perf_counter()
        rels = getattr(ds, "rel", None)
        for method in self.methods:
            key = _settings_key(self.settings(method))
            # a row counts only for the same image: same settings, method, index and relative path
            done = {r["index"]: r for r in old if r.get("settings") == key and r["method"] == method
                    and (rels is None or (r["index"].isdigit() and int(r["index"]) < len(rels)
                                          and r.get("path") == rels[int(r["index"])]))}
            n0, n, bs = self.budget(method)
            smooth = self.smoother(method)
            from tqdm.auto import tqdm

            t_method = time.perf_counter()
            mine = shard(indices)
            # the bar counts forward passes (n0 + n per image and half at most; decide / adaptive stop sooner), so a
            # large n shows progress within an image; it jumps to the image's end when one stops early or is resumed
            per_image = (n0 + n) * (2 if method == "drs" else 1)
            bar = tqdm(total=len(mine) * per_image, desc=f"certify {method} (forward passes)", unit="pass",
                       unit_scale=True, disable=not self.progress or rank > 0, leave=False)
            smooth.on_samples = bar.update
            for j, i in enumerate(mine):
                if str(i) in done:
                    rows.append(done[str(i)])
                    bar.update((j + 1) * per_image - bar.n)
                    continue
                item = ds[i]
                smooth.manual_seed(self.seed + i)  # each image its own noise stream: rows do not depend on order
                self._certify_one(smooth, item[Keys.IMAGE].to(self.device), n0, n, bs, int(item[Keys.LABEL]))
                bar.update((j + 1) * per_image - bar.n)
                rec = smooth.last_record.as_row()
                rows.append({"index": str(i), "path": item["rel"], "settings": key, **{k: rec[k] for k in rec}})
                changed = True
                if time.perf_counter() - last_flush > self.flush_seconds:
                    self._write_rows(partial, rows)
                    last_flush = time.perf_counter()
            bar.close()
            smooth.on_samples = None
            logger.info(f"{'rank %d: ' % rank if world > 1 else ''}certified {len(mine)} images with {method} "
                        f"(n0={n0}, n={n} per smoothed input) in {time.perf_counter() - t_method:.1f}s")
        gathered = all_gather_objects((rows, changed))
        if rank == 0:
            order = {m: k for k, m in enumerate(self.methods)}
            rows = sorted((r for part, _ in gathered for r in part), key=lambda r: (order[r["method"]], int(r["index"])))
            changed = any(c for _, c in gathered)
            outputs = ("certify.csv", "certified_accuracy.csv", "certified_accuracy.md", "certified_accuracy.png")
            if changed or not all((self.output_dir / f).is_file() for f in outputs):
                self._write(rows)
            else:
                logger.info(f"every image was already certified with these settings; {self.output_dir} left unchanged")
            for p in self.output_dir.glob("certify.rank*.partial.csv"):  # merged into certify.csv now
                p.unlink()
        elif partial.is_file():
            partial.unlink()
        barrier()
        return rows

    def _write_rows(self, path: Path, rows: list[dict]) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self._FIELDS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(path, buf.getvalue())

    _FIELDS = ["index", "path", "method", "prediction", "label", "correct", "radius", "n0", "n", "count", "p_lower",
               "count_l", "p_lower_l", "count_r", "p_lower_r", "time", "mode", "samples_used", "settings"]

    def _read_rows(self) -> list[dict]:
        """Rows of a previous run: the merged ``certify.csv`` plus what killed runs left in the partial files."""
        rows: list[dict] = []
        for path in [self.output_dir / "certify.csv", *sorted(self.output_dir.glob("certify.rank*.partial.csv"))]:
            if path.is_file():
                with open(path, newline="") as f:
                    rows += list(csv.DictReader(f))
        return rows

    def summary(self, rows: list[dict]) -> list[dict]:
        """Certified accuracy of every method at ``self.radii`` plus clean accuracy and abstention rate."""
        out = []
        for m in self.methods:
            rr = [r for r in rows if r["method"] == m]
            radius = np.array([float(r["radius"]) for r in rr])
            correct = np.array([str(r["correct"]) == "True" for r in rr])
            acc = certified_accuracy_curve(radius, correct, np.array(self.radii))
            n0, n, _ = self.budget(m)
            row = {"method": m, "images": len(rr), "n0": n0, "n": n,
                   "mode": self.mode,
                   "forward_passes": float(np.mean([float(r.get("samples_used") or (n0 + n) * (2 if m == "drs" else 1))
                                                    for r in rr])) if rr else 0.0,
                   "abstain": float(np.mean([int(r["prediction"]) == ABSTAIN for r in rr])) if rr else 0.0,
                   "mean_radius_correct": float(radius[correct].mean()) if correct.any() else 0.0,
                   "sec_per_image": float(np.mean([float(r["time"]) for r in rr])) if rr else 0.0}
            row.update({f"acc@{r:g}": float(a) for r, a in zip(self.radii, acc)})
            out.append(row)
        return out

    def _write(self, rows: list[dict]) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._write_rows(self.output_dir / "certify.csv", rows)
        table = self.summary(rows)
        cols = list(table[0])
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        w.writerows(table)
        atomic_write_text(self.output_dir / "certified_accuracy.csv", buf.getvalue())
        md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        md += ["| " + " | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |"
               for r in table]
        atomic_write_text(self.output_dir / "certified_accuracy.md", "\n".join(md) + "\n")
        self._figure(rows)
        for r in table:
            logger.info(f"{r['method']}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items() if k.startswith("acc@")))
        logger.info(f"wrote {self.output_dir / 'certify.csv'}, certified_accuracy.csv/.md/.png")

    def _figure(self, rows: list[dict]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.2, 3.6))
        rmax = max([float(r["radius"]) for r in rows] + [max(self.radii)])
        grid = np.linspace(0, rmax * 1.05 + 1e-9, 200)
        for m in self.methods:
            rr = [r for r in rows if r["method"] == m]
            radius = np.array([float(r["radius"]) for r in rr])
            correct = np.array([str(r["correct"]) == "True" for r in rr])
            n0, n, _ = self.budget(m)
            label = (f"RS (sigma {self.sigma:g}, n={n})" if m == "rs"
                     else f"DRS (sigma {self.sigma_l:g}/{self.sigma_r:g}, n={n} per half)")
            if self.mode != "fixed":
                label += f", {self.mode}" + (f" r={self.radius:g}" if self.mode == "decide" else "")
            ax.plot(grid, certified_accuracy_curve(radius, correct, grid), label=label)
        ax.set_xlabel("L2 radius")
        ax.set_ylabel("certified accuracy")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"{len(rows) // max(len(self.methods), 1)} images, alpha {self.alpha:g}", fontsize=9)
        fig.tight_layout()
        with atomic_path(self.output_dir / "certified_accuracy.png") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)


def load_cifar10(root, train: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 from torchvision's on-disk format (``root/cifar-10-batches-py/{data_batch_1..5,test_batch}``),
    as ``uint8 (N, 3, 32, 32)`` images and ``int64`` labels, without torchvision or a download.

    The batches are Python pickles of plain dicts; they are read with an unpickler that accepts only builtins and
    numpy arrays, so a tampered file cannot run code.
    """
    import pickle

    from ..errors import InputFileError

    folder = Path(root) / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]

    class _Safe(pickle.Unpickler):
        def find_class(self, module, name):
            if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
                try:
                    from numpy._core import multiarray
                except ImportError:  # numpy < 2
                    from numpy.core import multiarray
                return getattr(multiarray, name)
            if module == "numpy" and name in ("ndarray", "dtype"):
                return getattr(np, name)
            if module == "_codecs" and name == "encode":  # how protocol-2 pickles store raw bytes
                import codecs

                return codecs.encode
            raise pickle.UnpicklingError(f"refused global {module}.{name}")

    xs, ys = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise InputFileError(path, "CIFAR-10 batch not found (expected torchvision's cifar-10-batches-py layout)")
        try:
            with open(path, "rb") as f:
                d = _Safe(f, encoding="latin1").load()
            data = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            labels = np.asarray(d["labels"], dtype=np.int64)
        except Exception as e:  # noqa: BLE001 - any broken batch is one clear error
            raise InputFileError(path, f"not a CIFAR-10 batch ({type(e).__name__}: {e})") from None
        if len(data) != len(labels):
            raise InputFileError(path, f"{len(data)} images but {len(labels)} labels")
        xs.append(data)
        ys.append(labels)
    return np.concatenate(xs), np.concatenate(ys)
