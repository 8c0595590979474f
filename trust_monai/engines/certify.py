"""Glue of the certification bundles (``bundles/drs_natural``, ``bundles/drs``): noisy training of the base models,
dataset certification with per-sample / per-case records, and the reports.

- :class:`SmoothingModels`: the base networks of one study, ``rs`` (full image) and ``drs_l`` / ``drs_r`` (one dual-split
  half each, seen at full resolution through :class:`~trust_monai.networks.HalfInput`), saved as one state dict.
- :class:`NoisyTrainer`: a MONAI ``SupervisedTrainer`` that trains every member on its own input plus Gaussian noise of
  its own level (Cohen et al.'s training). The members share no parameter, so one optimizer on the summed loss trains
  each exactly as alone.
- :class:`CertifyClassification` (:mod:`~trust_monai.engines.certify_classification`): certifies the first ``max_samples`` test images with RS and DRS, writes
  ``certify.csv`` (one row per image and method), ``certified_accuracy.csv`` / ``.md`` and the curves
  ``certified_accuracy.png``. A rerun with the same settings reuses the rows already in ``certify.csv``.
- :class:`CertifySegmentation` (:mod:`~trust_monai.engines.certify_segmentation`): certifies every voxel of the test scans, writes the certified label maps in the
  input's format (``output_dir/<method>/<input relative path>``; abstain = label ``num_classes``), ``manifest.json``,
  ``certify_cases.csv``, ``certified_segmentation.csv`` / ``.md`` and ``certified_segmentation.png``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.engines import SupervisedTrainer
from monai.utils import CommonKeys as Keys
from torch import nn

from ..bundle import as_bool
from ..errors import TrustMonaiError
from ..networks.half_input import HalfInput
from ..transforms.dual_split import dual_split

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


# ------------------------------------------------------------------------------------------ shared by the certifiers


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
        self.equal_budget = as_bool(equal_budget)

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
    mode = getattr(runner, "mode", "fixed")
    if mode not in ("fixed", "decide", "adaptive"):
        raise TrustMonaiError(f"unknown mode {mode!r}; use fixed, decide or adaptive")
    if mode == "fixed":
        return
    if mode == "decide" and runner.radius is None:
        raise TrustMonaiError("mode decide needs --radius (the radius each image is certified at)")
    for m in runner.methods:  # the sequential rules' own checks, on a model-free smoother (nothing is sampled)
        n0, n, bs = runner.budget(m)
        rs, drs = runner._smoothers
        smooth = (rs(nn.Identity(), runner.num_classes, runner.sigma) if m == "rs"
                  else drs(nn.Identity(), nn.Identity(), runner.num_classes, runner.sigma_l, runner.sigma_r))
        if mode == "decide":
            smooth.check_decide(runner.radius, runner.alpha, n, bs, n0)
        else:
            smooth.check_adaptive(runner.alpha, n, bs, n0, runner.tolerance)


def _settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def certified_accuracy_curve(radii: np.ndarray, correct: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Fraction of samples certified correct with a radius >= r, for every r in ``grid`` (Cohen et al.'s curve;
    radius 0 counts every correct, non-abstaining prediction)."""
    radii, correct = np.asarray(radii, float), np.asarray(correct, bool)
    if radii.size == 0:
        return np.zeros(len(grid))
    return np.array([float(np.mean(correct & (radii >= r))) for r in grid])


# the dataset certifiers live in their own modules (one job each); their names stay importable from here
from .certify_classification import CertifyClassification, load_cifar10  # noqa: E402
from .certify_segmentation import CertifySegmentation  # noqa: E402
