"""The min-min engine of error-minimizing noise (Huang et al., ICLR 2021), and the checkpoint of its poisons.

- :class:`ErrorMinimizingTrainer`: the min-min loop of error-minimizing noise as a MONAI ``SupervisedTrainer``; one
  epoch is one round (``train_steps`` surrogate steps, then a PGD pass over the noise of every training image), and
  the run stops early once the surrogate's accuracy on the perturbed training set reaches ``stop_accuracy``. For the
  synthetic poisons (LSP, AR) there is nothing to learn: the engine stops at once and only the pattern is saved.
- :class:`PoisonCheckpoint`: saves the noise (and the surrogate) as plain state dicts.

The noise table and its inner PGD minimisation are :class:`~trust_monai.protect.ErrorMinimizingNoise`
(:mod:`trust_monai.protect.error_minimizing`).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.utils import CommonKeys as Keys
from torch import nn
from torch.utils.data import DataLoader

__all__ = ["ErrorMinimizingTrainer", "PoisonCheckpoint"]


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

    Two departures from the paper's loop make sample-wise noise transfer to victims it was not made against (see
    ``bundles/ue_natural/docs``): ``reinit_every`` re-initialises the surrogate every that many rounds, so the noise
    is optimised to lower the loss of *fresh* networks after a few steps (the learnability of the noise, not its fit
    to one trained surrogate), and ``augment`` trains the surrogate on randomly cropped and flipped batches, as the
    victim would be trained. With ``reinit_every=1`` the round's accuracy (the stop test) is that of a network trained
    for ``train_steps`` steps from scratch on the perturbed data.

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
        reinit_every: re-initialise the surrogate's weights (and clear the optimizer's state) at the start of every
            ``reinit_every``-th round after the first; 0 = never (the paper).
        augment: train the surrogate on random crop (zero padding of 1/8 of the width) + horizontal flip of the
            perturbed batches (the victims' augmentation); the PGD pass sees the images as they are.
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
        reinit_every: int = 0,
        augment: bool = False,
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
        self.reinit_every = int(reinit_every)
        from ..bundle import as_bool

        self.augment = as_bool(augment)
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

    def _reinit_surrogate(self) -> None:
        """Fresh random weights for the surrogate, no optimizer history (same on every rank)."""
        from ..networks import reinitialise

        reinitialise(self.surrogate)
        self.optimizer.state.clear()
        if self._world > 1:
            from ..utils.dist import broadcast_state

            broadcast_state(self.surrogate)

    def _train_surrogate(self, round_: int = 1) -> float:
        if self.reinit_every > 0 and round_ > 1 and (round_ - 1) % self.reinit_every == 0:
            self._reinit_surrogate()
        self.network.train()
        total = 0.0
        for _ in range(self.train_steps):
            x, y, idx = self._unpack(self._next_surrogate_batch())
            with torch.no_grad():
                xp = self.noise.apply(x, idx, y)
                if self.augment and xp.ndim == 4:
                    from ..transforms.crop_flip import random_crop_flip

                    xp = random_crop_flip(xp, max(1, xp.shape[-1] // 8))
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
            engine.state.surrogate_loss = self._train_surrogate(engine.state.epoch)
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
        from . import save_poison

        save_poison(self.noise, self.noise_file)
        if self.network is not None and self.model_file and getattr(self.noise, "learnable", False):
            buf = io.BytesIO()
            net = getattr(self.network, "module", self.network)  # DistributedDataParallel: the plain module's keys
            torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, buf)
            from ..utils.fileio import atomic_write_bytes

            atomic_write_bytes(self.model_file, buf.getvalue())
        logging.getLogger(engine.logger.name).info(f"saved {self.noise.name} noise to {self.noise_file}")
