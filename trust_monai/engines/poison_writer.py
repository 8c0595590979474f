"""Write a poisoned (or purified) copy of an image classification dataset.

- :class:`PoisonWriter`: a MONAI ``Evaluator`` whose iteration writes the poisoned copy of a dataset (PNG, same
  relative paths, ``dataset.json``, ``manifest.json``); the ``test`` split is copied unpoisoned. A purifier in place
  of the poison (``mode == "purify"``) writes the purified copy the same way.
- :func:`change_metrics`: L-inf, L2 and PSNR of the change of one image, recorded per case in the manifest.
- :func:`write_dataset_loader`: the in-order loader the writer expects.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.engines import Evaluator
from monai.utils import CommonKeys as Keys
from torch import nn
from torch.utils.data import DataLoader

from ..errors import BundleError
from ..utils.fileio import atomic_path, atomic_write_text
from .manifest import Manifest

__all__ = ["PoisonWriter", "change_metrics", "write_dataset_loader"]


def change_metrics(clean: torch.Tensor, changed: torch.Tensor) -> dict[str, float]:
    """L-inf, L2 and PSNR (dB, peak 1) of the change of one image (values in [0, 1])."""
    from ..metrics.image import psnr

    d = (changed.double() - clean.double()).flatten()
    p = psnr(clean.double().cpu().numpy(), changed.double().cpu().numpy())
    return {
        "linf": float(d.abs().max()) if d.numel() else 0.0,
        "l2": float(d.norm()),
        "psnr": p if math.isfinite(p) else None,  # None: unchanged image
    }


class PoisonWriter(Evaluator):
    """Write the poisoned copy of a dataset: a MONAI ``Evaluator`` whose iteration writes images, not predictions.

    Training images get ``poison.apply`` and are written as 8-bit PNG to the same relative path under
    ``output_dir``; ``test`` images are copied byte for byte (clean test data, for evaluating victims). At the end a
    ``dataset.json`` with the same entries (and ``classes``) makes ``output_dir`` itself a ``dataset_dir``.
    ``output_dir/manifest.json`` records per case the input / output sha256 and the change's L-inf, L2 and PSNR; a
    rerun skips every case whose output still matches its record. Writing into ``dataset_dir`` is refused.

    Args:
        device: where the poison is computed.
        val_data_loader: loader over an :class:`~trust_monai.data.classification.ImageClassificationDataset` (or a
            ``ConcatDataset`` of its sections), batch items as that dataset's.
        dataset_dir: the input dataset folder.
        output_dir: the output folder.
        noise_file: poison written by the train config (loaded when the run starts).
        poison: an already built poison module (instead of ``noise_file``).
        seed: recorded in the manifest.
        bundle: bundle name recorded in the manifest.
        val_handlers: handlers (progress bar, stats).

    Under ``torchrun`` the writer shards itself: rank ``r`` of ``w`` takes batches ``r, r + w, ...`` of the loader
    (the very batches a single process forms, so even a batched purifier network computes the same numbers), writes
    their images and records them in ``manifest.rank<r>.json``; rank 0 writes ``dataset.json`` and merges the rank
    files into ``manifest.json`` in datalist order. Poisons are fixed tables or patterns (or networks in eval mode), so
    the files equal a single process's; a rerun after a killed rank redoes only what is missing.
    """

    def __init__(
        self,
        device: str | torch.device,
        val_data_loader: DataLoader,
        dataset_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        noise_file: str | os.PathLike | None = None,
        poison: nn.Module | None = None,
        seed: int | None = None,
        bundle: str = "ue_natural",
        val_handlers: Sequence | None = None,
        **kwargs: Any,
    ):
        kwargs.setdefault("decollate", False)
        from ..utils.dist import init_from_env

        self.rank, self.world = init_from_env(device)
        self.full_dataset = val_data_loader.dataset
        if self.world > 1:
            val_data_loader = _shard_batches(val_data_loader, self.rank, self.world)
        super().__init__(device=device, val_data_loader=val_data_loader, val_handlers=val_handlers, **kwargs)
        if noise_file is None and poison is None:
            raise BundleError("PoisonWriter needs noise_file or poison")
        self.dataset_dir, self.output_dir = Path(dataset_dir).resolve(), Path(output_dir).resolve()
        self.noise_file, self.poison, self.seed, self.bundle = noise_file, poison, seed, bundle
        self.manifest: Manifest | None = None
        from ignite.engine import Events

        self.add_event_handler(Events.STARTED, self._start)
        self.add_event_handler(Events.COMPLETED, self._finish)

    def _start(self, engine) -> None:
        from ..utils.dist import barrier

        # everything that can fail on bad input happens before the first write
        self.manifest = Manifest(
            self.output_dir, self.bundle, "inference", self.dataset_dir, self.seed, save_every=2048,
            shard=self.rank if self.world > 1 else None,
        )
        parts = _parts(self.full_dataset)
        self._inputs = [p for d in parts for p in d.paths]  # datalist order: the order of the merged manifest
        if self.world > 1:  # this rank's file holds only its own cases (see Manifest.restrict)
            self.manifest.restrict(
                p for idx in self.data_loader.batch_sampler for p in (self._inputs[i] for i in idx))
        from ..utils.fileio import remove_stale_temps

        if self.rank == 0:
            remove_stale_temps(self.output_dir)  # temp files of a killed run (the manifest above accepted the folder)
        barrier()  # no rank writes before the temps are gone
        if self.poison is None:
            from ..protect import load_poison

            self.poison = load_poison(self.noise_file)
        self.poison = self.poison.to(self.state.device)
        n_train = sum(len(d) for d in parts if getattr(d, "section", "") == "training")
        rows = getattr(self.poison, "num_items", None)
        if getattr(self.poison, "mode", "") == "samplewise" and rows is not None and rows < n_train:
            raise BundleError(
                f"{self.noise_file}: sample-wise noise covers {rows} training images but {self.dataset_dir} lists "
                f"{n_train}; run train.json on the same dataset with the same --max_train"
            )
        # the output datalist lists every entry, also those other ranks write
        self._sections: dict[str, list] = {}
        for d in parts:
            self._sections.setdefault(d.section, []).extend(
                {"image": r, "label": int(lab)} for r, lab in zip(d.rel, d.labels.tolist()))
        self._stats: list[dict] = []
        from ..utils.fileio import sha256_file

        if self.noise_file:
            self._noise_hash = sha256_file(self.noise_file)
        else:  # a built operator (a purifier, a squeeze) names its own weights / settings
            self._noise_hash = self.poison.fingerprint() if hasattr(self.poison, "fingerprint") else self.poison.name
        self._verb = "purified" if getattr(self.poison, "mode", "") == "purify" else "poisoned"
        self.logger.info(f"writing {self.poison.name}-{self._verb} copy of {self.dataset_dir} into {self.output_dir}")

    def _iteration(self, engine, batchdata: dict) -> dict:
        assert self.manifest is not None
        x = batchdata[Keys.IMAGE].to(self.state.device)
        y = batchdata[Keys.LABEL].to(self.state.device).long()
        idx = torch.as_tensor(batchdata["index"]).to(self.state.device)
        sections, paths, rels = batchdata["section"], batchdata["path"], batchdata["rel"]
        train = torch.tensor([s == "training" for s in sections], device=x.device)
        todo = [not self._done(p, s) for p, s in zip(paths, sections)]
        if not any(todo):
            return {Keys.IMAGE: x, Keys.LABEL: y}
        xp = x.clone()
        if bool(train.any()):
            with torch.no_grad():
                xp[train] = self.poison.apply(x[train], idx[train], y[train])
        out8 = (xp * 255.0).round().clamp(0, 255).to(torch.uint8).cpu()
        x8 = (x * 255.0).round().to(torch.uint8).cpu()
        for i, (p, r) in enumerate(zip(paths, rels)):
            if not todo[i]:
                continue
            target = self.output_dir / r
            if sections[i] == "training":
                _write_png(out8[i], target)
                m = change_metrics(x8[i].float() / 255, out8[i].float() / 255)
                self._stats.append(m)
                self.manifest.record(
                    p, target, status="done", metrics={**m, "poison": self.poison.name, "noise_sha256": self._noise_hash}
                )
            else:
                with atomic_path(target) as tmp:
                    shutil.copyfile(p, tmp)
                self.manifest.record(p, target, status="copied", metrics={})
        return {Keys.IMAGE: xp, Keys.LABEL: y}

    def _done(self, path: str, section: str) -> bool:
        """Finished with the current noise: a poisoned case made with another noise file is redone."""
        assert self.manifest is not None
        if not self.manifest.is_done(path):
            return False
        if section != "training":
            return True
        rec = self.manifest.cases[self.manifest._index[str(path)]]
        return rec["metrics"].get("noise_sha256") == self._noise_hash

    def _finish(self, engine) -> None:
        from ..utils.dist import all_gather_objects, barrier

        assert self.manifest is not None
        if self.rank == 0:
            datalist_path = self.dataset_dir / "dataset.json"
            src = json.loads(datalist_path.read_text())
            out = {k: v for k, v in src.items() if not (isinstance(v, list) and v and isinstance(v[0], dict))}
            out.update(self._sections)
            out["description"] = f"{src.get('description', self.dataset_dir.name)} - training split {self._verb} " \
                                 f"with {self.poison.name} by trust_monai {self.bundle}; test split copied unchanged"
            text = json.dumps(out, indent=1) + "\n"
            target = self.output_dir / "dataset.json"
            if not target.is_file() or target.read_text() != text:
                atomic_write_text(target, text)
        self.manifest.save()
        stats = [s for part in all_gather_objects(self._stats) for s in part]  # also: every rank's files are written
        if self.rank == 0:
            Manifest.finish_shards(self.output_dir, self._inputs, self.world)
            if stats:
                mean = {k: float(np.mean([s[k] for s in stats if s[k] is not None] or [float("nan")]))
                        for k in ("linf", "l2", "psnr")}
                self.logger.info(
                    f"wrote {len(stats)} {self._verb} images: mean L-inf {mean['linf'] * 255:.2f}/255, "
                    f"L2 {mean['l2']:.3f}, PSNR {mean['psnr']:.1f} dB"
                    + (f" ({self.world} ranks)" if self.world > 1 else "")
                )
            else:
                self.logger.info("every case was already done; nothing rewritten")
        barrier()


def _shard_batches(loader: DataLoader, rank: int, world: int) -> DataLoader:
    """``loader`` restricted to batches ``rank, rank + world, ...`` of its in-order batches (same batch size)."""
    n, bs = len(loader.dataset), int(loader.batch_size or 1)
    batches = [list(range(i, min(i + bs, n))) for i in range(0, n, bs)][rank::world]
    return DataLoader(loader.dataset, batch_sampler=batches, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn)


def _parts(ds) -> list:
    return list(ds.datasets) if isinstance(ds, torch.utils.data.ConcatDataset) else [ds]


def _write_png(img: torch.Tensor, target: Path) -> None:
    from PIL import Image

    arr = img.numpy()
    arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    with atomic_path(target) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def write_dataset_loader(dataset: torch.utils.data.Dataset, batch_size: int = 256, num_workers: int = 0) -> DataLoader:
    """Loader for :class:`PoisonWriter` (in order, string fields kept as lists)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
