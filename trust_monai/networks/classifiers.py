"""Small-image classifiers by name: the victim (and surrogate) families of the unlearnable-examples bundle."""

from __future__ import annotations

from torch import nn

__all__ = ["CLASSIFIERS", "make_classifier"]

CLASSIFIERS = ("resnet", "cnn")


def make_classifier(name: str, spatial_dims: int = 2, in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """A new, randomly initialised classifier of family ``name``.

    Args:
        name: ``"resnet"``: :class:`~trust_monai.networks.SmallResNet` (widths 16-32-64-128, one basic block per
            stage); ``"cnn"``: :class:`~trust_monai.networks.simple_cnn.SimpleCNN` (plain conv-pool stacks, widths
            32-64-128, a 256-unit hidden layer); names joined by ``+`` (``"resnet+cnn"``): a
            :class:`~trust_monai.networks.ensemble.LogProbEnsemble` of those families.
        spatial_dims, in_channels, num_classes: as the networks.
    """
    if "+" in name:
        from .ensemble import LogProbEnsemble

        return LogProbEnsemble([make_classifier(n, spatial_dims, in_channels, num_classes) for n in name.split("+")])
    if name == "resnet":
        from .resnet import SmallResNet

        return SmallResNet(spatial_dims, in_channels, num_classes, widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1))
    if name == "cnn":
        from .simple_cnn import SimpleCNN

        return SimpleCNN(spatial_dims, in_channels, num_classes)
    raise ValueError(f"unknown classifier {name!r}; choose one of {', '.join(CLASSIFIERS)}")
