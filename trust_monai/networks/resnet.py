"""A small pre-activation-free ResNet for classifying small images (28x28, 32x32), any number of channels.

ResNet-18-style basic blocks ("Deep Residual Learning for Image Recognition", He et al. CVPR 2016) with the CIFAR
variant's 3x3 stride-1 stem (no max-pool), so a 28x28 or 32x32 input keeps enough resolution for four stages.
Width and depth are keyword arguments so the same class serves as the ResNet-18 surrogate of the unlearnable-examples
papers (``widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2)``) and as a CPU-sized victim (the default).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv, Norm, Pool
from torch import nn

__all__ = ["BasicBlock", "SmallResNet"]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the first convolution (and of the projection shortcut).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        conv, norm = Conv[Conv.CONV, spatial_dims], Norm[Norm.BATCH, spatial_dims]
        self.conv1 = conv(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(out_channels)
        self.conv2 = conv(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = norm(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                conv(in_channels, out_channels, kernel_size=1, stride=stride, bias=False), norm(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """ResNet for small images: 3x3 stem, ``len(widths)`` stages (the first at stride 1, the others stride 2),
    global average pooling and a linear head.

    Args:
        spatial_dims: 2 (images) or 3 (volumes).
        in_channels: input channels (1 for Fashion-MNIST, 3 for CIFAR).
        num_classes: number of output logits.
        widths: channels of each stage; ``(64, 128, 256, 512)`` with ``blocks=(2, 2, 2, 2)`` is ResNet-18.
        blocks: basic blocks per stage.

    Shapes:
        input ``(B, in_channels, *spatial)``, values in [0, 1]; output ``(B, num_classes)`` logits.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 10,
        widths: Sequence[int] = (16, 32, 64, 128),
        blocks: Sequence[int] = (1, 1, 1, 1),
    ):
        super().__init__()
        if len(widths) != len(blocks) or not widths:
            raise ValueError(f"widths {tuple(widths)} and blocks {tuple(blocks)} must be non-empty and of one length")
        conv, norm = Conv[Conv.CONV, spatial_dims], Norm[Norm.BATCH, spatial_dims]
        self.spatial_dims = spatial_dims
        self.stem = nn.Sequential(
            conv(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False),
            norm(widths[0]),
            nn.ReLU(inplace=True),
        )
        layers: list[nn.Module] = []
        c_in = widths[0]
        for i, (c_out, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(BasicBlock(spatial_dims, c_in, c_out, stride=2 if (i > 0 and j == 0) else 1))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))
