"""Two-stage D-VAE purification ("Purify Unlearnable Examples via Rate-Constrained Variational Autoencoders", ICML 2024).

Stage 1 trains a :class:`~trust_monai.networks.DVAE` on the poisoned training set and keeps ``x - perturbation``;
stage 2 trains a fresh D-VAE on the stage-1 output and keeps its reconstruction of ``x1 - perturbation``. The same
code serves image-level classes and segmentation label maps (the network paints class embeddings by the label map).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.engines import SupervisedTrainer
from monai.utils import CommonKeys as Keys
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..bundle import as_bool
from ..errors import BundleError, DatalistError
from ..utils.checkpoint import load_state_dict, save_state_dict
from ..utils.fileio import atomic_write_text, sha256_file

__all__ = ["dvae_loss", "DVAETrainer", "TwoStagePurification", "DVAEPurifier", "StageOutputs", "check_labels"]

logger = logging.getLogger("trust_monai.purify")


def dvae_loss(
    x: torch.Tensor,
    rec: torch.Tensor,
    perturbation: torch.Tensor | None,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    rate_target: float,
    rate_weight: float,
    perturbation_floor: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """D-VAE objective for one batch.

    ``mse(rec, x) + mse(clamp(rec + p), x) + rate_weight * max(rate, rate_target)
    (+ max(mean(p^2), perturbation_floor) once the warm-up is over)``.

    ``rate`` is the KL divergence to N(0, I) in nats per latent position (summed over latent channels, averaged over
    positions and batch). Holding it at ``rate_target`` (no reward for going lower, a penalty for going higher)
    is the rate constraint: the image branch gets a fixed information budget, spent on content first. The last
    term penalises perturbation energy above the floor, so the perturbation branch cannot take over the whole
    image, but is not pushed to zero either. Without a perturbation branch (plain VAE) only the first and rate
    terms remain.

    Returns:
        the loss and a dict of its parts (floats) for logging.
    """
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1).mean()
    rec_loss = F.mse_loss(rec, x)
    loss = rec_loss + rate_weight * torch.clamp(kl, min=float(rate_target))
    parts = {"rec": float(rec_loss.detach()), "rate": float(kl.detach())}
    if perturbation is not None:
        both = F.mse_loss((rec + perturbation).clamp(0, 1), x)
        loss = loss + both
        energy = perturbation.pow(2).mean()
        if perturbation_floor is not None:
            loss = loss + torch.clamp(energy, min=float(perturbation_floor))
        parts.update(rec_plus_p=float(both.detach()), p_energy=float(energy.detach()))
    parts["loss"] = float(loss.detach())
    return loss, parts


class DVAETrainer(SupervisedTrainer):
    """One D-VAE stage as a MONAI trainer: the iteration computes :func:`dvae_loss` instead of a task loss.

    Args:
        rate_target, rate_weight: the rate constraint of this stage.
        perturbation_floor: energy floor of the perturbation term, switched on after ``warmup_epochs``.
        grad_clip: gradient norm clip (the objective has sharp early steps).
        distributed: average the gradients over the ``torchrun`` ranks before the clip and the step (what
            DistributedDataParallel would do; it cannot wrap the network, whose loss comes from ``decompose``, not
            ``forward``).
        Other args as ``SupervisedTrainer`` (``loss_function`` is not used).
    """

    def __init__(
        self,
        device,
        max_epochs: int,
        train_data_loader,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        rate_target: float = 1.0,
        rate_weight: float = 0.01,
        perturbation_floor: float = 0.002,
        warmup_epochs: int = 10,
        grad_clip: float = 5.0,
        distributed: bool = False,
        **kwargs,
    ):
        kwargs.setdefault("decollate", False)
        super().__init__(
            device=device, max_epochs=max_epochs, train_data_loader=train_data_loader, network=network,
            optimizer=optimizer, loss_function=nn.MSELoss(), **kwargs,
        )
        self.rate_target, self.rate_weight = float(rate_target), float(rate_weight)
        self.perturbation_floor, self.warmup_epochs, self.grad_clip = float(perturbation_floor), int(warmup_epochs), grad_clip
        self.distributed = as_bool(distributed)
        self.parts: dict[str, float] = {}

    def _iteration(self, engine, batchdata: dict) -> dict:
        x = batchdata[Keys.IMAGE].to(engine.state.device).float()
        y = batchdata[Keys.LABEL].to(engine.state.device)
        self.network.train()
        self.optimizer.zero_grad(set_to_none=True)
        rec, pert, mu, logvar = self.network.decompose(x, y)
        floor = self.perturbation_floor if engine.state.epoch > self.warmup_epochs else None
        loss, parts = dvae_loss(x, rec, pert, mu, logvar, self.rate_target, self.rate_weight, floor)
        loss.backward()
        if self.distributed:
            from ..utils.dist import all_reduce_gradients

            all_reduce_gradients(self.network.parameters())
        nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip)
        self.optimizer.step()
        for k, v in parts.items():
            self.parts[k] = 0.9 * self.parts.get(k, v) + 0.1 * v
        return {Keys.IMAGE: x, Keys.LABEL: y, Keys.LOSS: loss.detach()}


class StageOutputs(Dataset):
    """A dataset's items with the image replaced by a stage's output (kept in memory as float16 to halve RAM)."""

    def __init__(self, base: Dataset, images: Sequence[torch.Tensor], data_id: str | None = None):
        self.base, self.images = base, list(images)
        self.data_id = data_id  # names these images in a training record, so a rerun on other ones retrains

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.base[i])
        item[Keys.IMAGE] = self.images[i].float()
        return item


def check_labels(dataset: Dataset) -> None:
    """The class-wise embedding needs a label for every case: name the cases that lack one, before training.

    Image-level classes must also take at least two values: with one class the class-wise perturbation branch
    is a per-dataset constant and nothing tells a poison from content (label maps are not counted: a slice set
    may hold background-only maps).
    """
    missing, classes = [], set()
    for i in range(len(dataset)):
        item = dataset[i]
        lab = item.get(Keys.LABEL) if isinstance(item, dict) else None
        if lab is None or (torch.is_tensor(lab) and lab.numel() == 0):
            missing.append(str(item.get("path", i)) if isinstance(item, dict) else str(i))
        elif classes is not None and (lab.numel() if torch.is_tensor(lab) else np.size(lab)) == 1:
            classes.add(int(lab))
        else:
            classes = None  # label maps
        if len(missing) >= 5:
            break
    if missing:
        raise DatalistError(
            f"the D-VAE's class-wise embedding needs a label for every training case; missing in: {', '.join(missing)}"
        )
    if classes is not None and len(classes) == 1 and len(dataset) > 1:
        raise DatalistError(
            f"all {len(dataset)} training cases have class {classes.pop()}: the class-wise purifier needs at least two "
            "classes (check the datalist's labels)"
        )


def _collate_same_shape(dataset: Dataset) -> None:
    """Mixed image sizes or channel counts stop the run before training, naming two cases that differ."""
    first = None
    for i in range(len(dataset)):
        item = dataset[i]
        shape = tuple(item[Keys.IMAGE].shape)
        if first is None:
            first = (shape, item.get("path", i))
        elif shape != first[0]:
            raise DatalistError(
                f"images differ in size or channels: {item.get('path', i)} is {shape}, {first[1]} is {first[0]}; "
                "resample them to one size (and one channel count) before purification"
            )


@torch.no_grad()
def _stage_output(net: nn.Module, x: torch.Tensor, y: torch.Tensor, reconstruct: bool) -> torch.Tensor:
    rec, pert, _, _ = net.decompose(x, y, sample=False)
    if pert is None:  # plain rate-constrained VAE: its reconstruction is the output
        return rec.clamp(0, 1)
    out = (x - pert).clamp(0, 1)
    if reconstruct:
        out = net.decompose(out, y, sample=False)[0].clamp(0, 1)
    return out


class TwoStagePurification:
    """Train the purifier: stage 1 on the poisoned set, stage 2 (optional) on stage 1's output.

    Checkpoints ``ckpt_dir/<prefix>_stage<k>.pt`` (plain state dicts) and a ``<prefix>_train.json`` record of what
    each was trained on; a rerun with the same data and settings skips finished stages.

    Args:
        dataset: training items ``{"image": (C, *spatial) in [0, 1], "label": int or (1, *spatial) map, "path"}``.
        network_factory: returns a new :class:`~trust_monai.networks.DVAE` (one per stage).
        ckpt_dir: where checkpoints go.
        max_epochs: epochs per stage.
        stages: 1 or 2.
        rate_targets, rate_weights: per stage (the paper: a tight rate first, a looser one for stage 2).
        perturbation_floor, warmup_epochs: see :func:`dvae_loss`; warm-up is capped at half the epochs.
        prefix: checkpoint name prefix (``dvae``; ``vae`` for the ablation).
        distributed: train data-parallel over the ``torchrun`` ranks (``multi_gpu_train.json``); ``None``: whenever a
            process group of more than one rank is initialised. Each stage then starts from rank 0's weights, every
            rank draws its batches from a ``DistributedSampler`` (``batch_size`` is per rank) and the gradients are
            averaged before each step, so the ranks keep one set of weights; the stage-1 outputs that stage 2 trains
            on are computed shard by shard and gathered on every rank; checkpoints, the record and the logs are
            written by rank 0.
    """

    def __init__(
        self,
        dataset: Dataset,
        network_factory: Callable[[], nn.Module],
        ckpt_dir: str | os.PathLike,
        max_epochs: int = 30,
        stages: int = 2,
        batch_size: int = 128,
        lr: float = 2e-3,
        rate_targets: Sequence[float] = (1.0, 3.0),
        rate_weights: Sequence[float] = (0.01, 0.5),
        perturbation_floor: float = 0.002,
        warmup_epochs: int = 10,
        prefix: str = "dvae",
        device: str | torch.device = "cpu",
        num_workers: int = 0,
        seed: int = 0,
        progress: bool = True,
        distributed: bool | None = None,
    ):
        if int(stages) not in (1, 2):
            raise BundleError(f"stages must be 1 or 2, got {stages}")
        self.dataset, self.network_factory, self.ckpt_dir = dataset, network_factory, Path(ckpt_dir)
        self.epochs, self.stages, self.batch_size, self.lr = int(max_epochs), int(stages), int(batch_size), float(lr)
        self.rate_targets, self.rate_weights = [float(r) for r in rate_targets], [float(w) for w in rate_weights]
        self.perturbation_floor, self.prefix = float(perturbation_floor), prefix
        self.warmup_epochs = min(int(warmup_epochs), self.epochs // 2)
        self.device, self.num_workers, self.seed = torch.device(device), int(num_workers), int(seed)
        self.progress = as_bool(progress)
        self.distributed = None if distributed is None else as_bool(distributed)
        self.rank, self.world = 0, 1

    def checkpoint(self, stage: int) -> Path:
        return self.ckpt_dir / f"{self.prefix}_stage{stage}.pt"

    def _record(self, stage: int, data_id: str) -> dict:
        return {
            "stage": stage, "data": data_id, "n": len(self.dataset), "epochs": self.epochs, "lr": self.lr,
            "rate_target": self.rate_targets[stage - 1], "rate_weight": self.rate_weights[stage - 1],
            "perturbation_floor": self.perturbation_floor, "warmup_epochs": self.warmup_epochs, "seed": self.seed,
        }

    def run(self) -> list[Path]:
        from ..utils.dist import barrier, broadcast_state, rank_world

        check_labels(self.dataset)
        _collate_same_shape(self.dataset)
        if self.distributed is not False:
            self.rank, self.world = rank_world()
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        record_file = self.ckpt_dir / f"{self.prefix}_train.json"
        done = json.loads(record_file.read_text()) if record_file.is_file() else {}
        data: Dataset = self.dataset
        data_id = _dataset_id(self.dataset)
        paths = []
        for stage in range(1, self.stages + 1):
            rec = self._record(stage, data_id)
            ckpt = self.checkpoint(stage)
            torch.manual_seed(self.seed + stage)
            net = self.network_factory().to(self.device)
            if ckpt.is_file() and done.get(str(stage)) == rec:
                if self.rank == 0:
                    logger.info(f"stage {stage}: {ckpt} already trained on this data with these settings; reusing it")
                load_state_dict(net, ckpt)
            else:
                broadcast_state(net)  # one starting point on every rank
                self._train(net, data, stage)
                if self.rank == 0:
                    save_state_dict(net.state_dict(), ckpt)
                    done[str(stage)] = rec
                    atomic_write_text(record_file, json.dumps(done, indent=1) + "\n")
                barrier()  # the checkpoint is on disk before any rank hashes it below
            paths.append(ckpt)
            if stage < self.stages:
                data = StageOutputs(self.dataset, self._outputs(net, data))
                data_id = f"{data_id}+stage{stage}:{sha256_file(ckpt)[:16]}"
        return paths

    def _train(self, net: nn.Module, data: Dataset, stage: int) -> None:
        from monai.handlers import StatsHandler

        g = torch.Generator().manual_seed(self.seed + stage)
        sampler = None
        if self.world > 1:
            # equal-length shards (padded), so every rank takes the same number of steps
            sampler = torch.utils.data.DistributedSampler(data, shuffle=True, seed=self.seed + stage)
        n = len(sampler) if sampler is not None else len(data)
        loader = DataLoader(data, batch_size=self.batch_size, shuffle=sampler is None, sampler=sampler,
                            drop_last=n > self.batch_size, num_workers=self.num_workers, generator=g)
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(self.epochs * len(loader), 1))
        from monai.handlers import LrScheduleHandler

        trainer = DVAETrainer(
            device=self.device, max_epochs=self.epochs, train_data_loader=loader, network=net, optimizer=opt,
            rate_target=self.rate_targets[stage - 1], rate_weight=self.rate_weights[stage - 1],
            perturbation_floor=self.perturbation_floor, warmup_epochs=self.warmup_epochs, distributed=self.world > 1,
            train_handlers=[LrScheduleHandler(sched, print_lr=False, epoch_level=False)] + (
                [StatsHandler(name=f"trust_monai.purify.stage{stage}", iteration_log=False,
                              output_transform=lambda o: None)] if self.rank == 0 else []),
        )
        from ignite.engine import Events

        if sampler is not None:
            trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: sampler.set_epoch(e.state.epoch))
        if self.progress and self.rank == 0:
            from ignite.handlers import ProgressBar

            ProgressBar(desc=f"{self.prefix} stage {stage}", persist=False).attach(
                trainer, output_transform=lambda o: {k: round(v, 4) for k, v in trainer.parts.items()})
        @trainer.on(Events.EPOCH_COMPLETED)
        def _log(engine):
            if self.rank > 0:
                return
            p = trainer.parts
            psnr = -10 * math.log10(max(p.get("rec", 1.0), 1e-12))
            logger.info(f"{self.prefix} stage {stage} epoch {engine.state.epoch}/{self.epochs}: "
                        + ", ".join(f"{k} {v:.4g}" for k, v in p.items()) + f", rec PSNR {psnr:.1f} dB")

        t0 = time.time()
        trainer.run()
        if self.world > 1:
            from ..utils.dist import broadcast_state

            broadcast_state(net, buffers_only=True)  # statistics each rank gathered on its own batches: rank 0's
        if self.rank == 0:
            logger.info(f"{self.prefix} stage {stage} trained in {time.time() - t0:.0f}s"
                        + (f" on {self.world} ranks" if self.world > 1 else ""))

    @torch.no_grad()
    def _outputs(self, net: nn.Module, data: Dataset) -> list[torch.Tensor]:
        """Stage output of every item, in order; under ``torchrun`` each rank computes every ``world``-th item and
        all ranks gather the whole list (stage 2 samples from all of it)."""
        from ..utils.dist import all_gather_objects

        net.eval()
        mine = list(range(self.rank, len(data), self.world))
        part = data if self.world == 1 else torch.utils.data.Subset(data, mine)
        loader = DataLoader(part, batch_size=self.batch_size * 2, shuffle=False, num_workers=self.num_workers)
        out: list[torch.Tensor] = []
        for batch in loader:
            x = batch[Keys.IMAGE].to(self.device).float()
            y = batch[Keys.LABEL].to(self.device)
            out.extend(_stage_output(net, x, y, reconstruct=False).half().cpu().unbind(0))
        if self.world == 1:
            return out
        merged: list[torch.Tensor] = [None] * len(data)  # type: ignore[list-item]
        for r, images in enumerate(all_gather_objects(out)):
            for i, img in zip(range(r, len(data), self.world), images):
                merged[i] = img
        return merged


def _dataset_id(ds: Dataset) -> str:
    parts = getattr(ds, "datasets", [ds])
    ids = []
    for d in parts:
        if getattr(d, "data_id", None):
            ids.append(d.data_id)
            continue
        root = getattr(d, "dataset_dir", None)
        datalist = Path(root) / "dataset.json" if root else None
        ids.append(f"{root}:{sha256_file(datalist)[:16]}" if datalist and datalist.is_file() else type(d).__name__)
    return "|".join(ids) + f":{len(ds)}"


class DVAEPurifier(nn.Module):
    """Apply trained purification stages to a batch: the ``poison``-like object the dataset writers take.

    ``apply(x, index, y)``: stage k subtracts its predicted perturbation; the last stage of a two-stage purifier
    (and a plain VAE without perturbation branch) returns its reconstruction instead. Checkpoints load on first use,
    so a bundle checks its input files before it needs the weights.

    Args:
        network_factory: builds one stage's network.
        checkpoints: one file per stage.
        reconstruct: let the last stage reconstruct (two-stage D-VAE); ``False`` keeps ``x - perturbation``
            (the stage-1-only ablation).
        name: recorded in manifests (``dvae``, ``dvae_stage1``, ``vae``).
        stages_per_pass: split the checkpoints into passes of this many stages, each pass a whole purifier run on
            the previous pass's output (its last stage reconstructs); ``None``: one pass. A second pass is what
            :class:`~trust_monai.purify.adaptive.AdaptivePurification` keeps when a first leaves the poison in.
        compile: run each stage's ``decompose`` through ``torch.compile`` (needs a C++ compiler on the CPU); measured
            1.07-1.34x on 3D volumes of 48^3-64^3 on the CPU after a warm-up of about 20-25 s per input shape, so it
            pays on long runs of same-shape inputs only; off by default. Outputs equal to float tolerance.
    """

    mode = "purify"

    def __init__(self, network_factory: Callable[[], nn.Module], checkpoints: Sequence[str | os.PathLike],
                 reconstruct: bool = True, name: str = "dvae", compile: bool = False,
                 stages_per_pass: int | None = None):
        super().__init__()
        if isinstance(checkpoints, (str, os.PathLike)):
            checkpoints = [checkpoints]
        self.checkpoints = [Path(c) for c in checkpoints]
        self.per_pass = int(stages_per_pass or max(len(self.checkpoints), 1))
        if len(self.checkpoints) % self.per_pass:
            raise BundleError(f"{len(self.checkpoints)} checkpoints do not make whole passes of {self.per_pass} "
                              f"stages: {', '.join(str(c) for c in self.checkpoints)}")
        self.stages = nn.ModuleList([network_factory() for _ in self.checkpoints])
        self.reconstruct, self.name, self._loaded = bool(reconstruct), name, False
        self.compile = bool(compile)

    def fingerprint(self) -> str:
        """Identifies the weights, so a resumed write redoes cases made with other ones."""
        return "+".join(sha256_file(c)[:16] for c in self.checkpoints)

    def load(self) -> DVAEPurifier:
        if not self._loaded:
            for net, c in zip(self.stages, self.checkpoints):
                load_state_dict(net, c)
                net.eval()
                if self.compile:  # an instance attribute shadows the method; the state dict is untouched
                    net.decompose = torch.compile(net.decompose)
            self._loaded = True
        return self

    @torch.no_grad()
    def apply(self, x: torch.Tensor, index: torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        self.load()
        for k, net in enumerate(self.stages):
            last = k % self.per_pass == self.per_pass - 1
            x = _stage_output(net, x, y, reconstruct=last and self.reconstruct and self.per_pass > 1)
        return x
