"""A plain convolutional classifier for small images: no residual connections, a fully connected head.

The second victim family of the unlearnable-examples study (``bundles/ue_natural``): a poison that only fools the
ResNet it was made against is no protection, so victims of another family are trained as well. The layout is the
classic small-image CNN (stacks of 3x3 convolution, batch norm, ReLU and 2x2 max pooling, then two linear layers),
as in the plain-CNN victims of "Unlearnable Examples: Making Personal Data Unexploitable" (Huang et al., ICLR 2021).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv, Norm, Pool
from torch import nn

__all__ = ["SimpleCNN"]


class SimpleCNN(nn.Module):
    """``len(widths)`` stages of conv 3x3 - batch norm - ReLU - max pool 2, an adaptive average pool to a
    ``grid`` (3 x 3 after three stages on 28 px: an identity there), then flatten, a hidden linear layer of
    ``hidden`` units with ReLU and the linear head.

    Args:
        spatial_dims: 2 (images) or 3 (volumes).
        in_channels: input channels.
        num_classes: number of output logits.
        widths: channels of each stage.
        hidden: units of the hidden linear layer.
        grid: side of the feature grid that is flattened into the head (any input size works).

    Shapes:
        input ``(B, in_channels, *spatial)``, values in [0, 1], spatial at least ``2 ** len(widths)``; output
        ``(B, num_classes)`` logits.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 10,
        widths: Sequence[int] = (32, 64, 128),
        hidden: int = 256,
        grid: int = 3,
    ):
        super().__init__()
        if not widths:
            raise ValueError("widths must not be empty")
        conv, norm = Conv[Conv.CONV, spatial_dims], Norm[Norm.BATCH, spatial_dims]
        pool = Pool[Pool.MAX, spatial_dims]
        layers: list[nn.Module] = []
        c_in = in_channels
        for c_out in widths:
            layers += [conv(c_in, c_out, kernel_size=3, padding=1, bias=False), norm(c_out), nn.ReLU(inplace=True),
                       pool(2)]
            c_in = c_out
        layers.append(Pool[Pool.ADAPTIVEAVG, spatial_dims](grid))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(c_in * grid**spatial_dims, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
