"""Glue of the certification bundles (``bundles/drs_natural``, ``bundles/drs``): noisy training of the base models,
dataset certification with per-sample / per-case records, and the reports.

- :class:`SmoothingModels`: the base networks of one study, ``rs`` (full image) and ``drs_l`` / ``drs_r`` (one dual-split
  half each, seen at full resolution through :class:`~trust_monai.networks.HalfInput`), saved as one state dict.
- :class:`NoisyTrainer`: a MONAI ``SupervisedTrainer`` that trains every member on its own input plus Gaussian noise of
  its own level (Cohen et al.'s training). The members share no parameter, so one optimizer on the summed loss trains
  each exactly as alone.
- :class:`CertifyClassification`: certifies the first ``max_samples`` test images with RS and DRS, writes
  ``certify.csv`` (one row per image and method), ``certified_accuracy.csv`` / ``.md`` and the curves
  ``certified_accuracy.png``. A rerun with the same settings reuses the rows already in ``certify.csv``.
- :class:`CertifySegmentation`: certifies every voxel of the test scans, writes the certified label maps in the
  input's format (``output_dir/<method>/<input relative path>``; abstain = label ``num_classes``), ``manifest.json``,
  ``certify_cases.csv``, ``certified_segmentation.csv`` / ``.md`` and ``certified_segmentation.png``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.engines import SupervisedTrainer
from monai.utils import CommonKeys as Keys
from torch import nn

from ..certify import ABSTAIN, DualSegmentationSmooth, DualSmooth, SegmentationSmooth, Smooth, certified_metrics
from ..errors import TrustMonaiError
from ..networks.half_input import HalfInput
from ..transforms.dual_split import dual_split
from ..utils.checkpoint import load_state_dict
from ..utils.fileio import atomic_path, atomic_write_text

__all__ = [
    "MEMBERS",
    "SmoothingModels",
    "NoisyTrainer",
    "ModelSaver",
    "CertifyClassification",
    "CertifySegmentation",
    "certified_accuracy_curve",
    "load_cifar10",
]

logger = logging.getLogger("trust_monai.certify")
MEMBERS = ("rs", "drs_l", "drs_r")


class SmoothingModels(nn.Module):
    """The base networks of RS and DRS; ``network_factory()`` builds each (same architecture for a fair comparison).

    Args:
        network_factory: callable returning a new full-resolution network (classifier or segmenter).
        spatial_dims: 2 or 3.
        members: which of ``("rs", "drs_l", "drs_r")`` to hold.

    ``self.input(name, x)`` is what member ``name`` reads from a full batch ``x`` (the image, or one half), and
    ``self.member(name)`` the module that reads it (``HalfInput`` around the network for the halves).
    """

    def __init__(self, network_factory: Callable[[], nn.Module], spatial_dims: int = 2,
                 members: Sequence[str] = MEMBERS):
        super().__init__()
        bad = [m for m in members if m not in MEMBERS]
        if bad or not members:
            raise TrustMonaiError(f"members must be a non-empty subset of {MEMBERS}, got {list(members)}")
        self.spatial_dims = int(spatial_dims)
        self.nets = nn.ModuleDict({m: network_factory() for m in members})
        self._wrapped = {m: HalfInput(self.nets[m], self.spatial_dims, m[-1]) for m in members if m != "rs"}

    @property
    def members(self) -> list[str]:
        return list(self.nets)

    def member(self, name: str) -> nn.Module:
        return self.nets[name] if name == "rs" else self._wrapped[name]

    def input(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name == "rs":
            return x
        x_l, x_r = dual_split(x, self.spatial_dims)
        return x_l if name == "drs_l" else x_r

    def forward(self, x: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor | dict[str, torch.Tensor]:
        """A tensor: the first member on the full batch (what MONAI's checks and a plain inferer see). A dict
        ``{member: its input}``: ``{member: its output}``, every member in one call, so that DistributedDataParallel
        sees one forward per backward."""
        if isinstance(x, dict):
            return {name: self.member(name)(xin) for name, xin in x.items()}
        name = self.members[0]
        return self.member(name)(self.input(name, x))


class NoisyTrainer(SupervisedTrainer):
    """Train every member of a :class:`SmoothingModels` on its input plus ``N(0, sigma^2 I)`` noise.

    Args:
        network: a :class:`SmoothingModels`.
        sigma: noise of ``rs``; ``sigma_l`` / ``sigma_r`` of the halves (None: ``sigma``).
        other args: as :class:`monai.engines.SupervisedTrainer`; batches are dicts with ``image`` and ``label``.

    ``engine.state.output`` holds the summed ``loss`` and ``loss_<member>``; the noise comes from a generator seeded
    with ``seed``.
    """

    def __init__(self, device, max_epochs: int, train_data_loader, network: SmoothingModels, optimizer,
                 loss_function: Callable | None = None, sigma: float = 0.5, sigma_l: float | None = None,
                 sigma_r: float | None = None, seed: int = 0, **kwargs: Any):
        kwargs.setdefault("decollate", False)
        super().__init__(device=device, max_epochs=max_epochs, train_data_loader=train_data_loader, network=network,
                         optimizer=optimizer, loss_function=loss_function or nn.CrossEntropyLoss(), **kwargs)
        s = float(sigma)
        self.sigmas = {"rs": s, "drs_l": float(sigma_l or s), "drs_r": float(sigma_r or s)}
        if min(self.sigmas.values()) < 0:
            raise TrustMonaiError(f"noise levels must be >= 0, got {self.sigmas}")
        from ..utils.dist import rank_world

        # each rank its own noise stream (under torchrun the ranks' batches differ, and so should their noise)
        self._noise_gen = torch.Generator(self.state.device).manual_seed(int(seed) + rank_world()[0])

    def _iteration(self, engine, batchdata: dict) -> dict:
        x = batchdata[Keys.IMAGE].to(engine.state.device, non_blocking=self.non_blocking).float()
        y = batchdata[Keys.LABEL].to(engine.state.device, non_blocking=self.non_blocking)
        # plain tensors: MetaTensor's reshapes in the dual split would carry (wrong) geometry along
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        y = y.as_tensor() if hasattr(y, "as_tensor") else y
        y = y.long() if y.ndim == 1 else y
        self.network.train()
        self.optimizer.zero_grad(set_to_none=self.optim_set_to_none)
        out: dict[str, Any] = {Keys.IMAGE: x, Keys.LABEL: y}
        models = getattr(self.network, "module", self.network)  # under DistributedDataParallel
        inputs = {}
        for name in models.members:
            xin = models.input(name, x)
            noise = torch.randn(xin.shape, generator=self._noise_gen, device=xin.device, dtype=xin.dtype)
            inputs[name] = xin + self.sigmas[name] * noise
        preds = self.network(inputs)
        total = 0.0
        for name in models.members:
            loss = self.loss_function(preds[name], y).mean()
            total = total + loss
            out[f"loss_{name}"] = loss.detach()
            if name == models.members[0]:
                out[Keys.PRED] = preds[name].detach()
        total.backward()
        self.optimizer.step()
        out[Keys.LOSS] = total.detach()
        engine.state.output = out
        return out


class ModelSaver:
    """Ignite handler: save ``models.state_dict()`` to ``path`` (atomic, plain state dict) after every epoch, so an
    interrupted run keeps its last finished epoch."""

    def __init__(self, models: nn.Module, path) -> None:
        self.models, self.path = models, Path(path)

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine) -> None:
        from ..utils.checkpoint import save_state_dict

        models = getattr(self.models, "module", self.models)  # DistributedDataParallel: the plain module's keys
        save_state_dict({k: v.detach().cpu() for k, v in models.state_dict().items()}, self.path)
        logger.info(f"epoch {engine.state.epoch}: saved {self.path}")


# ------------------------------------------------------------------------------------------------ classification


class _SmoothingRun:
    """What the dataset certifiers share: the Monte Carlo settings, the method list, the smoothers and the
    equal-budget rule (DRS gets half of ``n0`` / ``n`` per half, so both methods cost the same forward passes)."""

    _smoothers: tuple[type, type]  # (RS class, DRS class) of the certifier

    def _set_sampling(self, sigma, sigma_l, sigma_r, n0, n, alpha, batch_size, methods, equal_budget) -> None:
        self.sigma = float(sigma)
        self.sigma_l, self.sigma_r = float(sigma_l or sigma), float(sigma_r or sigma_l or sigma)
        self.n0, self.n, self.alpha, self.batch_size = int(n0), int(n), float(alpha), int(batch_size)
        self.methods = [methods] if isinstance(methods, str) else list(methods)
        for m in self.methods:
            if m not in ("rs", "drs"):
                raise TrustMonaiError(f"unknown method {m!r}; use 'rs' and/or 'drs'")
        self.equal_budget = bool(equal_budget)

    def smoother(self, method: str):
        """The seeded smoother of ``method`` over the loaded base models."""
        rs, drs = self._smoothers
        if method == "rs":
            return rs(self.models.member("rs"), self.num_classes, self.sigma, seed=self.seed)
        return drs(self.models.member("drs_l"), self.models.member("drs_r"), self.num_classes, self.sigma_l,
                   self.sigma_r, seed=self.seed)

    def budget(self, method: str) -> tuple[int, int, int]:
        """``(n0, n, batch_size)`` of ``method`` (per half for DRS)."""
        if method == "drs" and self.equal_budget:
            n = max(2, self.n // 2)
            return max(1, self.n0 // 2), n, min(self.batch_size, n)
        return self.n0, self.n, self.batch_size


def _check_settings(runner) -> None:
    """Refuse bad Monte Carlo settings when the run is configured, before data, checkpoint or output are touched."""
    from ..certify.smooth import check_sampling_args, check_sigma

    check_sigma(runner.sigma, runner.sigma_l, runner.sigma_r)
    for m in runner.methods:
        n0, n, bs = runner.budget(m)
        check_sampling_args(runner.n0, runner.n, runner.alpha, runner.batch_size)
        check_sampling_args(n0, n, runner.alpha, bs)


def _settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def certified_accuracy_curve(radii: np.ndarray, correct: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Fraction of samples certified correct with a radius >= r, for every r in ``grid`` (Cohen et al.'s curve;
    radius 0 counts every correct, non-abstaining prediction)."""
    radii, correct = np.asarray(radii, float), np.asarray(correct, bool)
    if radii.size == 0:
        return np.zeros(len(grid))
    return np.array([float(np.mean(correct & (radii >= r))) for r in grid])


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
    """

    _smoothers = (Smooth, DualSmooth)

    def __init__(self, dataset_dir, output_dir, models: SmoothingModels, checkpoint, num_classes: int,
                 sigma: float = 0.5, sigma_l: float | None = None, sigma_r: float | None = None, n0: int = 100,
                 n: int = 1000, alpha: float = 0.001, batch_size: int = 500, max_samples: int = 500, skip: int = 1,
                 methods: Sequence[str] = ("rs", "drs"), equal_budget: bool = True,
                 radii: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), section: str = "test",
                 in_channels: int | None = 1, dataset=None, device="cpu", seed: int = 0, progress: bool = True,
                 flush_seconds: float = 10.0):
        self.dataset_dir, self.output_dir = Path(dataset_dir), Path(output_dir)
        self.dataset, self.flush_seconds = dataset, float(flush_seconds)
        self.models, self.checkpoint, self.num_classes = models, checkpoint, int(num_classes)
        self._set_sampling(sigma, sigma_l, sigma_r, n0, n, alpha, batch_size, methods, equal_budget)
        self.max_samples, self.skip = int(max_samples), max(1, int(skip))
        self.radii, self.section = [float(r) for r in radii], section
        self.in_channels, self.device, self.seed, self.progress = in_channels, torch.device(device), int(seed), progress
        _check_settings(self)

    def settings(self, method: str) -> dict:
        n0, n, bs = self.budget(method)
        sig = {"sigma": self.sigma} if method == "rs" else {"sigma_l": self.sigma_l, "sigma_r": self.sigma_r}
        return {"method": method, "n0": n0, "n": n, "alpha": self.alpha, "seed": self.seed, **sig,
                "checkpoint_sha256": self._ckpt_hash}

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
            for i in tqdm(mine, desc=f"certify {method}", disable=not self.progress or rank > 0, leave=False):
                if str(i) in done:
                    rows.append(done[str(i)])
                    continue
                item = ds[i]
                smooth.manual_seed(self.seed + i)  # each image its own noise stream: rows do not depend on order
                smooth.certify(item[Keys.IMAGE].to(self.device), n0, n, self.alpha, bs, label=int(item[Keys.LABEL]))
                rec = smooth.last_record.as_row()
                rows.append({"index": str(i), "path": item["rel"], "settings": key, **{k: rec[k] for k in rec}})
                changed = True
                if time.perf_counter() - last_flush > self.flush_seconds:
                    self._write_rows(partial, rows)
                    last_flush = time.perf_counter()
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
               "count_l", "p_lower_l", "count_r", "p_lower_r", "time", "settings"]

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
                   "forward_passes": (n0 + n) * (2 if m == "drs" else 1),
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
        self.device, self.seed, self.overwrite, self.progress = torch.device(device), int(seed), overwrite, progress
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
