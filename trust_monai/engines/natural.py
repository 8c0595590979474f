"""Engines and glue of the natural-image unlearnable-examples bundle (``bundles/ue_natural``).

- :class:`ImageClassificationDataset`: a datalist section of PNGs with integer labels, decoded once into memory
  (a corrupt file raises :class:`~trust_monai.errors.InputFileError` naming it, before anything is written).
- :class:`ErrorMinimizingTrainer`: the min-min loop of error-minimizing noise as a MONAI ``SupervisedTrainer``; one
  epoch is one round (``train_steps`` surrogate steps, then a PGD pass over the noise of every training image), and
  the run stops early once the surrogate's accuracy on the perturbed training set reaches ``stop_accuracy``. For the
  synthetic poisons (LSP, AR) there is nothing to learn: the engine stops at once and only the pattern is saved.
- :class:`PoisonCheckpoint`: saves the noise (and the surrogate) as plain state dicts.
- :class:`PoisonWriter`: a MONAI ``Evaluator`` whose iteration writes the poisoned copy of a dataset (PNG, same
  relative paths, ``dataset.json``, ``manifest.json``); the ``test`` split is copied unpoisoned.
- :class:`VictimEvaluation`: trains fresh victim networks on clean and poisoned data and writes the table and figures.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.engines import Evaluator, SupervisedEvaluator, SupervisedTrainer
from monai.utils import CommonKeys as Keys
from torch import nn
from torch.utils.data import DataLoader

from ..errors import BundleError, DatalistError, InputFileError
from ..utils.fileio import atomic_path, atomic_write_text
from .manifest import Manifest

__all__ = [
    "read_datalist",
    "ImageClassificationDataset",
    "ErrorMinimizingTrainer",
    "PoisonCheckpoint",
    "PoisonWriter",
    "VictimEvaluation",
    "change_metrics",
    "load_sections",
]

logger = logging.getLogger("trust_monai.ue_natural")

# ----------------------------------------------------------------------------------------------------------- data


_DATALISTS: dict[tuple, tuple] = {}


def read_datalist(dataset_dir: str | os.PathLike, section: str) -> tuple[list[dict], dict]:
    """Entries of ``section`` of ``dataset_dir/dataset.json`` with ``image`` made absolute, and the whole datalist.

    Uses :func:`trust_monai.data.load_datalist` (schema check, paths kept inside the folder, files exist); results
    are cached per file version, since a 70k-entry datalist takes seconds to check.
    """
    dataset_dir = Path(dataset_dir).resolve()
    path = dataset_dir / "dataset.json"
    try:
        key = (str(path), os.stat(path).st_mtime_ns, section)
    except OSError:
        key = None
    if key is not None and key in _DATALISTS:
        entries, datalist = _DATALISTS[key]
        return [dict(e) for e in entries], datalist
    entries, datalist = _read_datalist(dataset_dir, path, section)
    if key is not None:
        _DATALISTS[key] = (entries, datalist)
    return [dict(e) for e in entries], datalist


def _read_datalist(dataset_dir: Path, path: Path, section: str) -> tuple[list[dict], dict]:
    from ..data.datalist import load_datalist

    entries = [dict(e) for e in load_datalist(dataset_dir, section, keys=("image",))]
    return entries, json.loads(path.read_text())


_CACHE: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_CACHE_SIZE = 8  # decoded sections kept in memory (clean train, test, poisoned train ...): 47 MB each for 60k x 28x28


def _decode(path: str, channels: int | None) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if channels == 1 or (channels is None and im.mode in ("L", "I", "I;16", "1", "P", "LA")):
                arr = np.asarray(im.convert("L"))[None]
            else:
                arr = np.asarray(im.convert("RGB")).transpose(2, 0, 1)
    except FileNotFoundError:
        raise InputFileError(path, "file listed in the datalist does not exist") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
        raise InputFileError(path, f"not a readable image ({type(e).__name__}: {e})") from None
    return np.ascontiguousarray(arr)


class ImageClassificationDataset(torch.utils.data.Dataset):
    """One datalist section of 2D images with integer labels, decoded once into a ``uint8`` array.

    Items are dicts: ``image`` (float tensor ``(C, H, W)`` in [0, 1]), ``label`` (int64), ``index`` (position in the
    datalist section, the key of sample-wise noise), ``path`` (absolute input path), ``rel`` (path relative to the
    dataset folder) and ``section``.

    Args:
        dataset_dir: folder with ``dataset.json``.
        section: datalist section (``training`` / ``test``).
        max_samples: keep the first ``max_samples`` entries (``None`` or <= 0: all).
        in_channels: 1 (grey) or 3 (RGB); ``None`` keeps the file's own.
        progress: show a progress bar while decoding.
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike,
        section: str = "training",
        max_samples: int | None = None,
        in_channels: int | None = None,
        progress: bool = True,
    ):
        self.dataset_dir = Path(dataset_dir).resolve()
        self.section = section
        entries, datalist = read_datalist(self.dataset_dir, section)
        if max_samples is not None and int(max_samples) > 0:
            entries = entries[: int(max_samples)]
        if not entries:
            raise DatalistError(f"{self.dataset_dir / 'dataset.json'}: section '{section}' is empty")
        self.classes = list(datalist.get("classes", []))
        self.paths = [e["image"] for e in entries]
        self.rel = [Path(p).relative_to(self.dataset_dir).as_posix() for p in self.paths]
        try:
            self.labels = torch.tensor([int(e["label"]) for e in entries], dtype=torch.long)
        except (KeyError, TypeError, ValueError) as e:
            raise DatalistError(f"{self.dataset_dir / 'dataset.json'}: '{section}' needs integer labels ({e})") from None
        key = (str(self.dataset_dir), os.stat(self.dataset_dir / "dataset.json").st_mtime_ns, section, len(entries),
               in_channels)
        if key not in _CACHE:
            _CACHE[key] = self._load(in_channels, progress)
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        _CACHE.move_to_end(key)
        self.images = _CACHE[key]

    def _load(self, in_channels, progress) -> torch.Tensor:
        from tqdm.auto import tqdm

        first = _decode(self.paths[0], in_channels)
        out = np.empty((len(self.paths), *first.shape), dtype=np.uint8)
        it = tqdm(self.paths, desc=f"read {self.section}", disable=not progress or len(self.paths) < 2000, leave=False)
        for i, p in enumerate(it):
            a = first if i == 0 else _decode(p, in_channels)
            if a.shape != first.shape:
                raise InputFileError(p, f"shape {a.shape} differs from {first.shape} of {self.paths[0]}")
            out[i] = a
        return torch.from_numpy(out)

    @property
    def image_shape(self) -> list[int]:
        """``[C, H, W]`` of every image."""
        return list(self.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else int(self.labels.max()) + 1

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        return {
            Keys.IMAGE: self.images[i].float().div_(255.0),
            Keys.LABEL: self.labels[i],
            "index": i,
            "path": self.paths[i],
            "rel": self.rel[i],
            "section": self.section,
        }


def load_sections(
    dataset_dir: str | os.PathLike,
    sections: Sequence[str] = ("training", "test"),
    max_samples: int | Mapping[str, int | None] | None = None,
    in_channels: int | None = None,
    progress: bool = True,
) -> torch.utils.data.ConcatDataset:
    """The datalist sections of ``dataset_dir`` as one dataset (``training`` is required, other sections are used
    when the datalist has them); ``max_samples`` is one limit for all or ``{section: limit}``."""
    path = Path(dataset_dir) / "dataset.json"
    try:
        present = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputFileError(path, "datalist not found; pass --dataset_dir pointing at a folder with dataset.json") from None
    except (OSError, ValueError) as e:
        raise InputFileError(path, f"unreadable datalist ({e})") from None
    parts = []
    for s in sections:
        if s != "training" and not present.get(s):
            continue
        limit = max_samples.get(s) if isinstance(max_samples, Mapping) else max_samples
        parts.append(ImageClassificationDataset(dataset_dir, s, limit, in_channels, progress))
    return torch.utils.data.ConcatDataset(parts)


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


# --------------------------------------------------------------------------------------------------- EM training


def _check_every_rank_has_data(loader, device) -> None:
    """Under torchrun, refuse on every rank at once when some rank's shard is empty: its missing PGD pass would leave
    the others waiting forever in the round's merge."""
    from ..utils.dist import rank_world

    world = rank_world()[1]
    if world == 1:
        return
    import torch.distributed as dist

    device = torch.device(device)
    smallest = torch.tensor([len(loader)], dtype=torch.long, device=device)
    dist.all_reduce(smallest, op=dist.ReduceOp.MIN)
    if int(smallest) == 0:
        from ..errors import TrustMonaiError

        total = torch.tensor([len(loader.sampler)], dtype=torch.long, device=device)  # this rank's images
        dist.all_reduce(total)
        raise TrustMonaiError(
            f"error-minimizing training under torchrun: {world} processes for {int(total)} training images leave a "
            f"process without images; run with at most {max(1, int(total))} processes (--nproc_per_node)"
        )


class ErrorMinimizingTrainer(SupervisedTrainer):
    """Min-min training of error-minimizing noise (Huang et al., ICLR 2021) as a MONAI trainer.

    One epoch is one round of the paper's loop: at its first iteration the surrogate takes ``train_steps`` SGD steps on
    perturbed batches from ``surrogate_loader``; then every iteration runs the noise's PGD minimisation on one batch of
    ``train_data_loader`` (a pass over all training images) and scores the fixed surrogate on the result. At the end
    of the round ``engine.state.metrics["perturbed_acc"]`` is the surrogate's accuracy on the perturbed training set,
    and the run stops once it reaches ``stop_accuracy`` (``max_epochs`` is the round limit).

    For noise that is not learned (``noise.learnable`` is False: LSP, AR) the engine stops at ``STARTED``; handlers
    on ``COMPLETED`` (the checkpoint) still run.

    Under ``torchrun`` (``bundles/ue_natural/configs/multi_gpu_train.json``): ``network`` is a DistributedDataParallel
    surrogate (its SGD steps average gradients over the ranks; its batch-norm statistics are then taken from rank 0),
    ``train_data_loader`` holds this rank's shard of the images (every ``world``-th), and the PGD pass updates only
    the noise rows of that shard. At the end of each rank's pass the rows are merged
    (:meth:`~trust_monai.protect.ErrorMinimizingNoise.merge_ranks`) and the accuracy tallies summed, so every rank holds
    the same table and takes the same stop decision, and rank 0's checkpoint is the whole table.

    Args:
        noise: an :class:`~trust_monai.protect.ErrorMinimizingNoise` (or a synthetic poison).
        train_steps: surrogate SGD steps per round (10 in the paper).
        stop_accuracy: accuracy on the perturbed data that ends the run (0.99).
        surrogate_loader: shuffled loader of the surrogate steps; default ``train_data_loader``.
        other args: as :class:`monai.engines.SupervisedTrainer`; batches are dicts with ``image``, ``label``, ``index``.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: DataLoader,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        noise: nn.Module,
        loss_function: Callable | None = None,
        train_steps: int = 10,
        stop_accuracy: float = 0.99,
        surrogate_loader: DataLoader | None = None,
        **kwargs: Any,
    ):
        kwargs.setdefault("decollate", False)
        _check_every_rank_has_data(train_data_loader, device)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function or nn.CrossEntropyLoss(),
            **kwargs,
        )
        self.noise = noise.to(self.state.device)
        self.train_steps = int(train_steps)
        self.stop_accuracy = float(stop_accuracy)
        self.surrogate_loader = surrogate_loader if surrogate_loader is not None else train_data_loader
        self._surrogate_iter = None
        self._world, self._touched = 1, None
        from ignite.engine import Events

        self.add_event_handler(Events.STARTED, self._maybe_skip)
        self.add_event_handler(Events.EPOCH_STARTED, self._reset_tally)
        self.add_event_handler(Events.EPOCH_COMPLETED, self._check_stop)

    def _maybe_skip(self, engine) -> None:
        if not getattr(self.noise, "learnable", True):
            self.logger.info(f"{self.noise.name}: synthetic class-wise pattern from the seed, nothing to learn")
            engine.state.metrics["perturbed_acc"] = float("nan")
            engine.terminate()

    def _reset_tally(self, engine) -> None:
        from ..utils.dist import rank_world

        engine.state.em_correct, engine.state.em_total, engine.state.em_loss = 0, 0, 0.0
        self._world = rank_world()[1]
        rows = getattr(self.noise, "num_items", 0)
        self._touched = torch.zeros(rows, dtype=torch.bool, device=self.state.device) if self._world > 1 else None

    @property
    def surrogate(self) -> nn.Module:
        """The surrogate itself (unwrapped from DistributedDataParallel): the PGD pass needs no gradient sync."""
        return getattr(self.network, "module", self.network)

    def _next_surrogate_batch(self) -> dict:
        if self._surrogate_iter is None:
            self._surrogate_iter = iter(self.surrogate_loader)
        try:
            return next(self._surrogate_iter)
        except StopIteration:
            self._surrogate_iter = iter(self.surrogate_loader)
            return next(self._surrogate_iter)

    def _unpack(self, batch: dict):
        dev = self.state.device
        x = batch[Keys.IMAGE].to(dev, non_blocking=self.non_blocking)
        y = batch[Keys.LABEL].to(dev, non_blocking=self.non_blocking).long()
        idx = torch.as_tensor(batch["index"]).to(dev)
        return x, y, idx

    def _train_surrogate(self) -> float:
        self.network.train()
        total = 0.0
        for _ in range(self.train_steps):
            x, y, idx = self._unpack(self._next_surrogate_batch())
            with torch.no_grad():
                xp = self.noise.apply(x, idx, y)
            self.optimizer.zero_grad(set_to_none=self.optim_set_to_none)
            loss = self.loss_function(self.inferer(xp, self.network), y).mean()
            loss.backward()
            self.optimizer.step()
            total += loss.detach().item()
        if self._world > 1:  # each rank's batch-norm statistics saw its own batches: take rank 0's
            from ..utils.dist import broadcast_state

            broadcast_state(self.surrogate, buffers_only=True)
        return total / max(self.train_steps, 1)

    def _iteration(self, engine, batchdata: dict) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        epoch_length = engine.state.epoch_length or 1
        if (engine.state.iteration - 1) % epoch_length == 0:
            engine.state.surrogate_loss = self._train_surrogate()
        x, y, idx = self._unpack(batchdata)
        net = self.surrogate
        net.eval()
        xp = self.noise.perturb(net, x, y, idx, loss_function=self.loss_function, inferer=self.inferer)
        with torch.no_grad():
            pred = self.inferer(xp, net)
            loss = self.loss_function(pred, y).mean()
        # classification: pred (B, K), y (B,); segmentation: pred (B, K, *S), y (B, 1, *S) -> voxel accuracy
        engine.state.em_correct += int((pred.argmax(1, keepdim=pred.ndim == y.ndim) == y).sum())
        engine.state.em_total += int(y.numel())
        engine.state.em_loss += float(loss) * y.numel()
        if self._touched is not None:
            self._touched[self.noise.rows(idx, y)] = True
            if engine.state.iteration % epoch_length == 0:  # this rank's last batch of the round
                self._merge_round(engine)
        engine.state.metrics["perturbed_acc"] = engine.state.em_correct / max(engine.state.em_total, 1)
        engine.state.metrics["perturbed_loss"] = engine.state.em_loss / max(engine.state.em_total, 1)
        return {Keys.IMAGE: xp, Keys.LABEL: y, Keys.PRED: pred, Keys.LOSS: loss}

    def _merge_round(self, engine) -> None:
        """One noise table and one tally over all ranks (ranks may have one batch more or less than another)."""
        import torch.distributed as dist

        self.noise.merge_ranks(self._touched)
        t = torch.tensor([engine.state.em_correct, engine.state.em_total, engine.state.em_loss], dtype=torch.float64,
                         device=self.state.device)
        dist.all_reduce(t)
        engine.state.em_correct, engine.state.em_total, engine.state.em_loss = int(t[0]), int(t[1]), float(t[2])

    def _check_stop(self, engine) -> None:
        from ..utils.dist import is_main

        acc = engine.state.metrics.get("perturbed_acc", 0.0)
        log = self.logger.info if is_main() else self.logger.debug  # the tallies are global: rank 0 speaks for all
        log(
            f"round {engine.state.epoch}: surrogate loss {getattr(engine.state, 'surrogate_loss', float('nan')):.4f}, "
            f"accuracy on perturbed training data {acc:.4f} (stop at {self.stop_accuracy})"
        )
        if acc >= self.stop_accuracy:
            log(f"accuracy target {self.stop_accuracy} reached after {engine.state.epoch} rounds")
            engine.terminate()


class PoisonCheckpoint:
    """Save the poison (``noise_file``) and, for learned noise, the surrogate's state dict (``model_file``).

    Writes after every epoch (a killed run keeps its last round) and at ``COMPLETED``; both files are plain
    dicts of tensors, written atomically.

    Args:
        noise: the poison module.
        noise_file: where :func:`trust_monai.protect.save_poison` writes it.
        network: the surrogate (optional).
        model_file: where its ``state_dict()`` goes (only when the noise is learned).
    """

    def __init__(self, noise: nn.Module, noise_file: str, network: nn.Module | None = None, model_file: str | None = None):
        self.noise, self.noise_file, self.network, self.model_file = noise, noise_file, network, model_file

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine) -> None:
        from ..protect import save_poison

        save_poison(self.noise, self.noise_file)
        if self.network is not None and self.model_file and getattr(self.noise, "learnable", False):
            buf = io.BytesIO()
            net = getattr(self.network, "module", self.network)  # DistributedDataParallel: the plain module's keys
            torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, buf)
            from ..utils.fileio import atomic_write_bytes

            atomic_write_bytes(self.model_file, buf.getvalue())
        logging.getLogger(engine.logger.name).info(f"saved {self.noise.name} noise to {self.noise_file}")


# ----------------------------------------------------------------------------------------------------- writer


class PoisonWriter(Evaluator):
    """Write the poisoned copy of a dataset: a MONAI ``Evaluator`` whose iteration writes images, not predictions.

    Training images get ``poison.apply`` and are written as 8-bit PNG to the same relative path under
    ``output_dir``; ``test`` images are copied byte for byte (clean test data, for evaluating victims). At the end a
    ``dataset.json`` with the same entries (and ``classes``) makes ``output_dir`` itself a ``dataset_dir``.
    ``output_dir/manifest.json`` records per case the input / output sha256 and the change's L-inf, L2 and PSNR; a
    rerun skips every case whose output still matches its record. Writing into ``dataset_dir`` is refused.

    Args:
        device: where the poison is computed.
        val_data_loader: loader over a :class:`ImageClassificationDataset` (or a ``ConcatDataset`` of its sections),
            batch items as that dataset's.
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


# ---------------------------------------------------------------------------------------------------- victims


def _augment(x: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop with zero padding ``pad`` and random horizontal flip, per image (the papers' victim setting)."""
    b, _, h, w = x.shape
    xp = nn.functional.pad(x, (pad, pad, pad, pad))
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    out = torch.empty_like(x)
    for i in range(b):
        crop = xp[i, :, oy[i] : oy[i] + h, ox[i] : ox[i] + w]
        out[i] = crop.flip(-1) if flip[i] else crop
    return out


def _as_bool(v) -> bool:
    """Booleans from the command line arrive as ``"false"`` / ``"true"`` strings (fire keeps JSON literals as text)."""
    if isinstance(v, str):
        if v.strip().lower() in ("false", "0", "no", "off", "none", ""):
            return False
        if v.strip().lower() in ("true", "1", "yes", "on"):
            return True
        raise ValueError(f"not a boolean: {v!r}")
    return bool(v)


class VictimEvaluation:
    """Train fresh victims on clean and on poisoned training data; report accuracy on the clean test split.

    For every condition (``clean`` = ``dataset_dir``, plus one per poisoned folder) a new network from
    ``network_factory`` is trained with MONAI's ``SupervisedTrainer`` (SGD, momentum 0.9, weight decay 5e-4, cosine
    learning rate), validated on the clean test split of ``dataset_dir`` after every epoch with a
    ``SupervisedEvaluator``; the curves go to ``output_dir/eval/metrics.csv``, the final accuracies to
    ``metrics.csv`` / ``metrics.md``, and ``ue_natural_eval.png`` shows learning curves and clean / poisoned /
    amplified-noise examples.

    Args:
        dataset_dir: clean dataset (training for the clean victim, test for every victim).
        poisoned_dirs: one folder (``str``) or ``{name: folder}``; a folder without ``dataset.json`` is first
            written by ``writer`` when one is given.
        output_dir: results go to ``output_dir/eval``.
        network_factory: callable returning a new network (``_mode_: callable`` in the config).
        epochs, batch_size, lr: victim training.
        max_train, max_test: limit the number of samples (``None``: all).
        augment: random crop (pad 2 for 28 px, 4 for 32 px) + horizontal flip.
        train_clean: also train the clean reference victim.
        writer: a :class:`PoisonWriter` for a missing poisoned folder.
        device, in_channels, num_workers, progress: as usual.
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike,
        poisoned_dirs: str | os.PathLike | Mapping[str, str],
        output_dir: str | os.PathLike,
        network_factory: Callable[[], nn.Module],
        epochs: int = 10,
        batch_size: int = 128,
        lr: float = 0.1,
        max_train: int | None = None,
        max_test: int | None = None,
        augment: bool = False,
        train_clean: bool = True,
        writer: PoisonWriter | None = None,
        device: str | torch.device = "cpu",
        in_channels: int | None = None,
        num_workers: int = 0,
        progress: bool = True,
        seed: int = 0,
    ):
        self.dataset_dir = Path(dataset_dir)
        if isinstance(poisoned_dirs, Mapping):
            self.poisoned = {str(k): Path(v) for k, v in poisoned_dirs.items()}
        elif poisoned_dirs:
            self.poisoned = {"poisoned": Path(poisoned_dirs)}
        else:
            self.poisoned = {}
        self.output_dir = Path(output_dir) / "eval"
        self.network_factory, self.epochs, self.batch_size, self.lr = network_factory, int(epochs), batch_size, lr
        self.max_train, self.max_test = max_train, max_test
        self.augment, self.train_clean = _as_bool(augment), _as_bool(train_clean)
        self.writer, self.device, self.in_channels = writer, torch.device(device), in_channels
        self.num_workers, self.progress, self.seed = num_workers, progress, int(seed)
        self.curves: dict[str, list[dict]] = {}

    def _loader(self, ds, shuffle: bool) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers, generator=g)

    def _train_one(self, name: str, train_dir: Path, test_ds: ImageClassificationDataset) -> list[dict]:
        from ignite.engine import Events
        from ignite.metrics import Accuracy
        from monai.handlers import LrScheduleHandler, StatsHandler, ValidationHandler, from_engine

        torch.manual_seed(self.seed)
        train_ds = ImageClassificationDataset(train_dir, "training", self.max_train, self.in_channels, self.progress)
        net = self.network_factory().to(self.device)
        opt = torch.optim.SGD(net.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
        loader = self._loader(train_ds, shuffle=True)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=self.lr, total_steps=max(self.epochs * len(loader), 1), pct_start=0.15
        )
        evaluator = SupervisedEvaluator(
            device=self.device,
            val_data_loader=self._loader(test_ds, shuffle=False),
            network=net,
            key_val_metric={"test_acc": Accuracy(output_transform=from_engine([Keys.PRED, Keys.LABEL]))},
            decollate=False,
        )
        pad = max(1, train_ds.image_shape[-1] // 8)
        gen = torch.Generator().manual_seed(self.seed)

        def prepare(batch, device, non_blocking=False, **kw):
            x = batch[Keys.IMAGE]
            if self.augment:
                x = _augment(x, pad, gen)
            return x.to(device, non_blocking=non_blocking), batch[Keys.LABEL].to(device, non_blocking=non_blocking)

        handlers = [
            LrScheduleHandler(sched, print_lr=False, epoch_level=False),
            ValidationHandler(validator=evaluator, interval=1, epoch_level=True),
            StatsHandler(name=f"victim.{name}", tag_name="train_loss", output_transform=from_engine([Keys.LOSS], first=True),
                         iteration_log=False),
        ]
        trainer = SupervisedTrainer(
            device=self.device,
            max_epochs=self.epochs,
            train_data_loader=loader,
            network=net,
            optimizer=opt,
            loss_function=nn.CrossEntropyLoss(),
            prepare_batch=prepare,
            train_handlers=handlers,
            decollate=False,
        )
        if self.progress:
            from ignite.handlers import ProgressBar

            ProgressBar(desc=f"victim {name}", persist=False).attach(trainer, output_transform=lambda o: {"loss": float(o[Keys.LOSS])})
        curve: list[dict] = []
        losses: list[float] = []
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: losses.clear())
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output[Keys.LOSS])))

        @trainer.on(Events.EPOCH_COMPLETED)
        def _record(engine):  # runs after ValidationHandler (attached first)
            row = {"condition": name, "epoch": engine.state.epoch, "train_loss": float(np.mean(losses)),
                   "test_acc": float(evaluator.state.metrics["test_acc"])}
            curve.append(row)
            logger.info(f"victim[{name}] epoch {row['epoch']}: train loss {row['train_loss']:.4f}, "
                        f"clean test accuracy {row['test_acc']:.4f}")

        t0 = time.time()
        trainer.run()
        logger.info(f"victim[{name}] done in {time.time() - t0:.0f}s: clean test accuracy {curve[-1]['test_acc']:.4f}")
        return curve

    def run(self) -> dict[str, float]:
        """Train every victim and write the results; returns ``{condition: final clean test accuracy}``."""
        missing = [d for d in self.poisoned.values() if not (d / "dataset.json").is_file()]
        for d in missing:
            # the writer fills the one folder it is meant for (several missing folders: ambiguous, so refuse)
            if self.writer is None or len(missing) > 1:
                raise BundleError(f"{d} has no dataset.json; write it first with the bundle's inference.json "
                                  f"(--output_dir {d})")
            logger.info(f"{d} has no dataset yet: writing it first")
            self.writer.output_dir = d.resolve()
            self.writer.run()
        test_ds = ImageClassificationDataset(self.dataset_dir, "test", self.max_test, self.in_channels, self.progress)
        conditions = ([("clean", self.dataset_dir)] if self.train_clean else []) + list(self.poisoned.items())
        for name, d in conditions:
            self.curves[name] = self._train_one(name, d, test_ds)
        final = {n: c[-1]["test_acc"] for n, c in self.curves.items()}
        self._write(final, test_ds)
        return final

    def _write(self, final: dict[str, float], test_ds: ImageClassificationDataset) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["condition", "epoch", "train_loss", "test_acc"], lineterminator="\n")
        w.writeheader()
        for rows in self.curves.values():
            w.writerows(rows)
        atomic_write_text(self.output_dir / "curves.csv", buf.getvalue())
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["condition", "train_dir", "epochs", "n_train", "n_test", "clean_test_acc", "best_test_acc"])
        dirs = {"clean": self.dataset_dir, **self.poisoned}
        rows = []
        for n, c in self.curves.items():
            n_train = len(ImageClassificationDataset(dirs[n], "training", self.max_train, self.in_channels, False))
            row = [n, str(dirs[n]), self.epochs, n_train, len(test_ds), f"{final[n]:.4f}",
                   f"{max(r['test_acc'] for r in c):.4f}"]
            rows.append(row)
            w.writerow(row)
        atomic_write_text(self.output_dir / "metrics.csv", buf.getvalue())
        md = ["| condition | training data | epochs | train / test images | clean test accuracy | best epoch accuracy |",
              "|---|---|---|---|---|---|"]
        md += [f"| {r[0]} | `{r[1]}` | {r[2]} | {r[3]} / {r[4]} | {float(r[5]) * 100:.2f}% | {float(r[6]) * 100:.2f}% |"
               for r in rows]
        atomic_write_text(self.output_dir / "metrics.md", "\n".join(md) + "\n")
        self._figure(test_ds)
        logger.info(f"wrote {self.output_dir / 'metrics.csv'}, metrics.md, curves.csv and ue_natural_eval.png")

    def _figure(self, test_ds) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        examples = []
        clean = ImageClassificationDataset(self.dataset_dir, "training", self.max_train, self.in_channels, False)
        for name, d in self.poisoned.items():
            pois = ImageClassificationDataset(d, "training", self.max_train, self.in_channels, False)
            n = min(6, len(pois), len(clean))
            examples.append((name, clean.images[:n].float() / 255, pois.images[:n].float() / 255))
        rows = 1 + 3 * len(examples)
        ncol = max(6, 1)
        fig = plt.figure(figsize=(2.0 * ncol, 2.2 * rows))
        ax = fig.add_subplot(rows, 1, 1)
        for n, c in self.curves.items():
            ax.plot([r["epoch"] for r in c], [r["test_acc"] * 100 for r in c], marker="o", label=n)
        ax.set_xlabel("epoch")
        ax.set_ylabel("clean test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
        ax.set_title("victim trained on clean vs poisoned data")
        for e, (name, xc, xp) in enumerate(examples):
            noise = xp - xc
            scale = 0.5 / max(float(noise.abs().max()), 1e-8)
            for j in range(xc.shape[0]):
                for r, (img, title) in enumerate(
                    [(xc[j], "clean"), (xp[j], name), ((noise[j] * scale + 0.5).clamp(0, 1), "noise (amplified)")]
                ):
                    a = fig.add_subplot(rows, ncol, ncol * (1 + 3 * e + r) + j + 1)
                    arr = img.permute(1, 2, 0).numpy()
                    a.imshow(arr[..., 0] if arr.shape[-1] == 1 else arr, cmap="gray", vmin=0, vmax=1)
                    a.set_axis_off()
                    if j == 0:
                        a.set_title(title, fontsize=8, loc="left")
        fig.tight_layout()
        with atomic_path(self.output_dir / "ue_natural_eval.png") as tmp:
            fig.savefig(tmp, dpi=80, format="png")
        plt.close(fig)
