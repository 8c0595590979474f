"""Defences as batch operators for the dataset writers: ``apply(x, index, y)`` on ``(B, C, *spatial)`` in [0, 1]."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import TrustMonaiError

__all__ = ["SqueezeDefence", "make_defence", "DEFENCES"]

DEFENCES = ("none", "jpeg", "bit_depth", "grayscale", "vae", "dvae_stage1", "dvae")


class SqueezeDefence(nn.Module):
    """An image-shortcut-squeezing transform applied image by image (see :mod:`trust_monai.transforms.squeeze`)."""

    mode = "purify"

    def __init__(self, name: str, **kwargs):
        super().__init__()
        from ..transforms.squeeze import make_squeeze

        self.name, self.kwargs = name, dict(kwargs)
        self.op = make_squeeze(name, **kwargs)

    def fingerprint(self) -> str:
        return self.name + "".join(f":{k}={v}" for k, v in sorted(self.kwargs.items()))

    @torch.no_grad()
    def apply(self, x: torch.Tensor, index=None, y=None) -> torch.Tensor:
        return torch.stack([self.op(xi.cpu()).to(x.device) for xi in x])


def make_defence(name: str, network_factory=None, checkpoints=(), **kwargs) -> nn.Module:
    """A defence by name (see ``DEFENCES``); the VAE / D-VAE ones need a network factory and their checkpoints."""
    from .dvae import DVAEPurifier

    if name in ("jpeg", "bit_depth", "grayscale"):
        return SqueezeDefence(name, **kwargs)
    if name == "vae":
        return DVAEPurifier(network_factory, checkpoints[:1], reconstruct=True, name="vae")
    if name == "dvae_stage1":
        return DVAEPurifier(network_factory, checkpoints[:1], reconstruct=False, name="dvae_stage1")
    if name == "dvae":
        # two stages per pass; four checkpoints are a kept second pass (purifier_checkpoints lists them)
        return DVAEPurifier(network_factory, checkpoints, reconstruct=True, name="dvae", stages_per_pass=2)
    raise TrustMonaiError(f"unknown defence '{name}'; choose one of {', '.join(DEFENCES[1:])}")
