"""trust_monai.networks: nn.Modules, one per file."""

from .resnet import BasicBlock, SmallResNet

__all__ = ["BasicBlock", "SmallResNet"]
