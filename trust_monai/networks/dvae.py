"""D-VAE: the rate-constrained disentangling VAE of "Purify Unlearnable Examples via Rate-Constrained Variational
Autoencoders" (ICML 2024), for 2D and 3D images."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit

from ..bundle import as_bool

__all__ = ["DVAE"]


def _res(spatial_dims: int, cin: int, cout: int, strides: int = 1) -> nn.Module:
    # one sub-unit and leaky ReLU: the purifier trains on every image of a dataset, and on CPUs PReLU's backward
    # pass and a second sub-unit cost more than they add at these widths
    return ResidualUnit(spatial_dims, cin, cout, strides=strides, kernel_size=3, subunits=1, norm="instance",
                        act=("leakyrelu", {"negative_slope": 0.1}))


def _up(spatial_dims: int, cin: int, cout: int) -> nn.Module:
    return Convolution(
        spatial_dims, cin, cout, strides=2, kernel_size=3, is_transposed=True, norm="instance",
        act=("leakyrelu", {"negative_slope": 0.1})
    )


class _Decoder(nn.Sequential):
    """Mirror of the encoder: residual unit per level, transposed convolutions up, a 3x3 head."""

    def __init__(self, spatial_dims: int, out_channels: int, channels, sigmoid: bool):
        layers: list[nn.Module] = []
        rev = list(channels)[::-1]
        for i, c in enumerate(rev[:-1]):
            layers += [_res(spatial_dims, c, c), _up(spatial_dims, c, rev[i + 1])]
        layers += [
            _res(spatial_dims, rev[-1], rev[-1]),
            Convolution(spatial_dims, rev[-1], out_channels, kernel_size=3, conv_only=True),
        ]
        if sigmoid:
            layers.append(nn.Sigmoid())
        super().__init__(*layers)


class DVAE(nn.Module):
    """Disentangling VAE: an image branch through a rate-limited latent, and a perturbation branch fed by the encoder
    features plus a learnable class-wise embedding.

    The image branch is a VAE whose KL rate is held near a target during training (see
    :func:`trust_monai.purify.dvae_loss`): at a low rate it can keep the image content but not an imperceptible,
    high-frequency perturbation. The perturbation branch reads the encoder features (no rate limit) plus a per-class
    embedding, so class-wise shortcuts are cheap for it to represent; training asks ``rec + perturbation`` to explain
    the input, which pushes the perturbation there and keeps it out of ``rec``.

    Class embeddings, one code path for classification and segmentation:
    - image-level labels ``y`` of shape ``(B,)``: each class owns an embedding map over the latent grid when
      ``latent_size`` is given (class-wise patterns are spatial), else one vector broadcast over the grid;
    - a label map ``y`` of shape ``(B, 1, *spatial)``: one vector per segmentation class, painted by the label map at
      latent resolution (the fraction of each class in a latent cell weights its vector).

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels (intensities in [0, 1]).
        num_classes: image classes, or segmentation classes including background.
        channels: encoder widths per level; each level after the first halves the resolution.
        latent_channels: latent channels per latent position.
        latent_size: latent grid size for spatial class embeddings (image size / 2 ** (len(channels) - 1)).
        perturbation: build the perturbation branch (``False``: a plain rate-constrained VAE, the ablation).
        samplewise_perturbation: feed the encoder features to the perturbation branch (sample-wise perturbations);
            ``False`` gives it the class embedding only, so it can represent class-wise patterns and nothing else.
            ``"latent"``: feed it the decoded rate-limited latent instead (what the authors' released code does), so
            a sample-wise perturbation is drawn from the same information budget as the image branch.

    Shapes:
        ``forward(x)`` -> purified reconstruction from the latent mean, like ``x`` (the single-tensor inference form).
        ``decompose(x, y)`` -> ``(rec, perturbation, mu, logvar)``; ``perturbation`` is ``None`` without the branch.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 10,
        channels=(32, 64),
        latent_channels: int = 16,
        latent_size=None,
        perturbation: bool = True,
        samplewise_perturbation: bool = True,
    ) -> None:
        super().__init__()
        self.spatial_dims, self.in_channels, self.num_classes = int(spatial_dims), int(in_channels), int(num_classes)
        channels = [int(c) for c in channels]
        self.multiple = 2 ** (len(channels) - 1)
        enc: list[nn.Module] = [_res(spatial_dims, in_channels, channels[0])]
        for cin, cout in zip(channels[:-1], channels[1:]):
            enc.append(_res(spatial_dims, cin, cout, strides=2))
        self.encoder = nn.Sequential(*enc)
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.to_mu = conv(channels[-1], latent_channels, 1)
        self.to_logvar = conv(channels[-1], latent_channels, 1)
        self.from_latent = conv(latent_channels, channels[-1], 1)
        self.decoder = _Decoder(spatial_dims, in_channels, channels, sigmoid=True)
        self.has_perturbation = bool(perturbation)
        # the branch's input is part of what a checkpoint means: kept in a buffer, so weights trained with one
        # input are never run with another whatever the loading config says (see _load_from_state_dict)
        self.register_buffer("perturbation_source", torch.zeros((), dtype=torch.uint8))
        self.set_perturbation_source(samplewise_perturbation)
        self.latent_size = None if latent_size in (None, [], ()) else [int(s) for s in (
            latent_size if isinstance(latent_size, (list, tuple)) else [latent_size] * spatial_dims)]
        if self.has_perturbation:
            grid = self.latent_size or [1] * spatial_dims
            self.class_embedding = nn.Parameter(0.1 * torch.randn(self.num_classes, channels[-1], *grid))
            self.perturbation_decoder = _Decoder(spatial_dims, in_channels, channels, sigmoid=False)

    _SOURCES = (False, True, "latent")

    def set_perturbation_source(self, samplewise_perturbation) -> None:
        """What the perturbation branch reads besides the class embedding (see the class docstring)."""
        if isinstance(samplewise_perturbation, str) and samplewise_perturbation.lower() in ("true", "false"):
            samplewise_perturbation = as_bool(samplewise_perturbation)  # as typed on the command line
        if samplewise_perturbation not in self._SOURCES:
            raise ValueError(
                f"samplewise_perturbation must be true, false or 'latent', got {samplewise_perturbation!r}")
        self.samplewise_perturbation = samplewise_perturbation if samplewise_perturbation == "latent" else bool(
            samplewise_perturbation)
        self.perturbation_source.fill_(self._SOURCES.index(self.samplewise_perturbation))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "perturbation_source"
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if key in missing_keys:  # a checkpoint written before the source was stored: the configured one
            missing_keys.remove(key)
        # a Python copy of the buffer: decompose reads it every batch, and int() of a GPU buffer would sync each time
        self.samplewise_perturbation = self._SOURCES[int(self.perturbation_source)]

    # -------------------------------------------------------------------------------------------------- helpers
    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        size = list(x.shape[2:])
        pad: list[int] = []
        for s in reversed(size):
            pad += [0, (-s) % self.multiple]
        return (F.pad(x, pad, mode="replicate") if any(pad) else x), size

    @staticmethod
    def _crop(x: torch.Tensor, size: list[int]) -> torch.Tensor:
        return x[(slice(None), slice(None), *[slice(0, s) for s in size])]

    def _embedding(self, y: torch.Tensor, grid: torch.Size) -> torch.Tensor:
        if y.ndim == 1:  # image-level classes
            e = self.class_embedding[y.long()]
            if tuple(e.shape[2:]) != tuple(grid):
                e = F.interpolate(e, size=tuple(grid), mode="nearest") if self.latent_size else e.expand(
                    *e.shape[:2], *grid)
            return e
        # label map: per-class vectors painted at latent resolution
        lab = y.long()[:, 0]
        lab, _ = self._pad(lab[:, None].float())
        onehot = F.one_hot(lab[:, 0].long().clamp(0, self.num_classes - 1), self.num_classes)
        onehot = onehot.movedim(-1, 1).float()
        frac = F.adaptive_avg_pool2d(onehot, grid) if self.spatial_dims == 2 else F.adaptive_avg_pool3d(onehot, grid)
        vectors = self.class_embedding.flatten(2).mean(-1)  # (classes, C)
        return torch.einsum("bk...,kc->bc...", frac, vectors)

    # -------------------------------------------------------------------------------------------------- forward
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder features, latent mean and log-variance (input already padded)."""
        f = self.encoder(x)
        return f, self.to_mu(f), self.to_logvar(f).clamp(-30.0, 20.0)

    def decompose(self, x: torch.Tensor, y: torch.Tensor | None = None, sample: bool = True):
        """Reconstruction, perturbation, latent mean and log-variance (see the class docstring)."""
        xp, size = self._pad(x)
        f, mu, logvar = self.encode(xp)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        h = self.from_latent(z)
        rec = self._crop(self.decoder(h), size)
        pert = None
        if self.has_perturbation:
            if y is None:
                raise ValueError("DVAE.decompose needs labels y for the perturbation branch")
            if self.samplewise_perturbation is False and y.ndim == 1:
                # a class-wise perturbation depends on the class only: decode each class once, then index
                classes, inverse = torch.unique(y.long(), return_inverse=True)
                pert = self.perturbation_decoder(self._embedding(classes, f.shape[2:]))[inverse]
            else:
                e = self._embedding(y, f.shape[2:])
                source = {True: f, "latent": h}.get(self.samplewise_perturbation)
                pert = self.perturbation_decoder(e if source is None else source + e)
            pert = self._crop(pert, size)
        return rec, pert, mu, logvar

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xp, size = self._pad(x)
        _, mu, _ = self.encode(xp)
        return self._crop(self.decoder(self.from_latent(mu)), size)
