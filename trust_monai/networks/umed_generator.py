"""UMed's perturbation network: a per-class code plus contour and texture generators under a per-voxel L-inf budget."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import UNet

from ..transforms.roi import contour_band, texture_map

__all__ = ["UMedGenerator"]


def _small_unet(spatial_dims: int, in_channels: int, out_channels: int, channels, strides) -> nn.Module:
    return UNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(channels),
        strides=tuple(strides),
        num_res_units=1,
        norm="instance",
    )


class UMedGenerator(nn.Module):
    """Contour- and texture-aware error-minimizing perturbation, after "Safeguarding Medical Image Segmentation
    Datasets against Unauthorized Training via Contour- and Texture-Aware Perturbations".

    ``delta = eps * w * tanh(code[label] + G_c([x, band, onehot]) * band + G_t([x, texture, onehot]) * interior)``,
    then clipped so ``x + delta`` stays in ``[0, 1]``. ``w`` is 1 on the contour band and the texture weight inside the
    mask (``texture_floor=1``, the default, gives every ROI voxel the whole budget), 0 elsewhere; so ``|delta| <= eps``
    everywhere and ``delta == 0`` exactly outside mask + band, whatever the generators output.

    The class code is the shortcut: each class owns a small periodic pattern, painted by the label map (by default
    a fine grating on the foreground classes and nothing on background, see :meth:`initial_code`). It starts
    saturated (``tanh(code_init) ~ 0.9`` of the budget), so even an untrained generator hands a victim a label cue that
    is easier to learn than anatomy whose contrast is comparable to the budget. The two image-conditioned U-Nets shape
    it per image (the contour one can also lower the true boundary contrast inside the band); each enters through a
    gate that starts at 0, so before training ``delta`` is exactly the code.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels (intensities normalised to [0, 1]).
        num_classes: label classes including background; both generators see the one-hot label map.
        epsilon: L-inf budget in normalised intensity units (4/255 by default).
        band_width: contour band half-width in voxels.
        texture_floor: smallest texture weight inside the ROI; 1 (default) = uniform budget, lower values scale the
            budget with local texture (flat tissue then gets ``floor * eps``).
        channels / strides: the two small U-Nets' widths and down-sampling.
        pattern_size: period of the class code in voxels (0 disables it: generators only).
        code_init: magnitude of the initial code.
        code: the code's starting pattern, ``texture`` | ``antipodal`` | ``random`` (see :meth:`initial_code`).

    Shapes:
        ``forward(image, label)``: image (B, C, *spatial) in [0, 1], label (B, 1, *spatial) integer class map
        -> delta like image.
        ``forward(x)`` with ``x = cat([image, label], 1)`` is the single-tensor form used by MONAI bundle tools.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 2,
        epsilon: float = 4 / 255,
        band_width: int = 2,
        texture_floor: float = 1.0,
        channels=(16, 32, 64),
        strides=(2, 2),
        pattern_size: int = 2,
        code_init: float = 1.5,
        code: str = "texture",
    ) -> None:
        super().__init__()
        self.spatial_dims, self.in_channels, self.num_classes = spatial_dims, in_channels, int(num_classes)
        self.epsilon, self.band_width, self.texture_floor = float(epsilon), int(band_width), float(texture_floor)
        self.multiple = 2 ** len(strides)
        cond = in_channels + 1 + self.num_classes
        self.contour_gen = _small_unet(spatial_dims, cond, in_channels, channels, strides)
        self.texture_gen = _small_unet(spatial_dims, cond, in_channels, channels, strides)
        # ReZero-style gates: the generators start switched off, so training starts from the pure class code and
        # they enter only as far as lowering the surrogates' loss asks for
        self.gates = nn.Parameter(torch.zeros(2))
        self.pattern_size = int(pattern_size)
        if self.pattern_size > 0:
            self.class_patterns = nn.Parameter(
                float(code_init) * self.initial_code(code, self.num_classes, in_channels, self.pattern_size, spatial_dims)
            )

    @staticmethod
    def initial_code(code: str, num_classes: int, in_channels: int, period: int, spatial_dims: int) -> torch.Tensor:
        """The code's starting sign pattern, (K, C, *[period] * spatial_dims) in {-1, 0, 1}.

        ``texture`` (default): background 0 (no change); class k >= 1 a +-1 grating at the highest frequency the
        period allows, a checkerboard for class 1 and stripes along axis k - 2 for the next classes. A victim's
        random crops and flips move a pattern's phase, so a class cue must be *translation-invariant*: "fine texture
        here" is, and it is visible in a vessel one voxel wide, where a random tile is cut to a sliver.
        ``antipodal``: a random +-1 tile for class 1 and its negative for background (other classes random).
        ``random``: an independent random +-1 tile per class. Both random codes come from a fixed seed: the code is
        part of the method, not of the run's randomness.
        """
        shape = (num_classes, in_channels) + (period,) * spatial_dims
        if code == "texture":
            grid = torch.stack(torch.meshgrid(*[torch.arange(period)] * spatial_dims, indexing="ij"))
            out = torch.zeros(shape)
            for k in range(1, num_classes):
                parity = grid.sum(0) if k == 1 else grid[(k - 2) % spatial_dims]
                out[k] = (1 - 2 * (parity % 2)).float()
            return out
        if code not in ("antipodal", "random"):
            raise ValueError(f"code must be 'texture', 'antipodal' or 'random', got {code!r}")
        g = torch.Generator().manual_seed(1234)
        signs = torch.randint(0, 2, shape, generator=g).float() * 2 - 1
        if code == "antipodal" and num_classes > 1:
            signs[0] = -signs[1]
        return signs

    def budget(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(band, texture_weight_inside_roi)``, each (B, 1, *spatial); their sum is the budget weight ``w``."""
        band, region = contour_band(label, self.band_width)
        interior = region - band
        if self.texture_floor >= 1.0:
            return band, interior
        return band, texture_map(image, interior, self.texture_floor)

    def _run(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        # the U-Net needs sizes divisible by 2**depth; pad by replication and crop back, so any scan size works
        size = x.shape[2:]
        pad = []
        for s in reversed(size):
            pad += [0, (-s) % self.multiple]
        y = net(F.pad(x, pad, mode="replicate") if any(pad) else x)
        return y[(slice(None), slice(None)) + tuple(slice(0, s) for s in size)]

    def class_pattern(self, onehot: torch.Tensor) -> torch.Tensor:
        """Per-voxel code of the voxel's class: the class patterns tiled over space, (B, C, *spatial)."""
        size = onehot.shape[2:]
        p = self.pattern_size
        reps = (1, 1) + tuple(-(-s // p) for s in size)
        tiled = self.class_patterns.repeat(reps)[(slice(None), slice(None)) + tuple(slice(0, s) for s in size)]
        # (B, K, *S) x (K, C, *S) -> (B, C, *S)
        return torch.einsum("bk...,kc...->bc...", onehot, tiled)

    def forward(self, image: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
        if label is None:
            image, label = image[:, : self.in_channels], image[:, self.in_channels :]
        band, tex = self.budget(image, label)
        interior = (tex > 0).to(image.dtype)
        classes = torch.arange(self.num_classes, device=label.device).reshape((1, -1) + (1,) * (label.ndim - 2))
        onehot = (label.round() == classes).to(image.dtype)
        code = self.class_pattern(onehot) if self.pattern_size > 0 else 0.0
        g_contour = self.gates[0] * self._run(self.contour_gen, torch.cat([image, band, onehot], 1)) * band
        g_texture = self.gates[1] * self._run(self.texture_gen, torch.cat([image, tex, onehot], 1)) * interior
        delta = self.epsilon * (band + tex) * torch.tanh(code + g_contour + g_texture)
        # keep x + delta a valid image; clipping only shrinks |delta|, so the budget still holds
        return (image + delta).clamp(0.0, 1.0) - image
