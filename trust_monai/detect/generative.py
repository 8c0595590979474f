"""A small convolutional VAE trained on real slices, the source of the ``generated`` kind of fake scans.

Fully generated slices stand for scans produced by a generative model (the threat a detector must catch besides
tampering). A VAE is the cheapest honest such model on CPU: its samples look like plausible, smoothed anatomy.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SliceVAE", "train_vae"]


class SliceVAE(nn.Module):
    """Conv encoder to a Gaussian latent, transposed-conv decoder with a sigmoid; input ``(B, 1, S, S)``, ``S`` a power
    of two >= 16.

    Args:
        size: image side.
        latent: latent size.
        width: channels of the first layer (doubled per level, capped at ``4 * width``).
    """

    def __init__(self, size: int = 64, latent: int = 64, width: int = 32):
        super().__init__()
        levels = int(math.log2(size // 4))
        if 4 * 2**levels != size:
            raise ValueError(f"SliceVAE needs a power-of-two size >= 16, got {size}")
        chans = [min(width * 2**i, 4 * width) for i in range(levels)]
        enc, c_in = [], 1
        for c in chans:
            enc += [nn.Conv2d(c_in, c, 4, 2, 1), nn.BatchNorm2d(c), nn.LeakyReLU(0.2)]
            c_in = c
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        self.to_stats = nn.Linear(c_in * 16, 2 * latent)
        self.from_latent = nn.Linear(latent, c_in * 16)
        dec = []
        for c in reversed([1] + chans[:-1]):
            last = c == 1 and len(dec) == 3 * (levels - 1)
            dec += [nn.ConvTranspose2d(c_in, c, 4, 2, 1)]
            dec += [nn.Sigmoid()] if last else [nn.BatchNorm2d(c), nn.ReLU()]
            c_in = c
        self.decoder = nn.Sequential(*dec)
        self.latent, self.top = latent, chans[-1]

    def encode(self, x):
        mu, logvar = self.to_stats(self.encoder(x)).chunk(2, -1)
        return mu, logvar.clamp(-10, 10)

    def decode(self, z):
        return self.decoder(self.from_latent(z).view(-1, self.top, 4, 4))

    def forward(self, x):
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.decode(z), mu, logvar

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        z = torch.randn(n, self.latent, generator=generator) * temperature
        return self.decode(z)


def train_vae(images: torch.Tensor, epochs: int = 150, batch_size: int = 32, lr: float = 2e-3, beta: float = 0.5,
              latent: int = 64, seed: int = 0, desc: str = "train VAE") -> SliceVAE:
    """Fit a :class:`SliceVAE` to ``images`` ``(N, 1, S, S)`` in [0, 1] (random flips); returns it in eval mode."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    vae = SliceVAE(images.shape[-1], latent)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs))
    gen = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc=desc, disable=None, leave=False):
        perm = torch.randperm(len(images), generator=gen)
        for i in range(0, len(images), batch_size):
            x = images[perm[i : i + batch_size]]
            if len(x) < 2:
                continue
            x = torch.where(torch.rand(len(x), 1, 1, 1, generator=gen) < 0.5, x.flip(-1), x)
            recon, mu, logvar = vae(x)
            rec = F.binary_cross_entropy(recon, x, reduction="sum") / len(x)
            kl = -0.5 * torch.sum(1 + logvar - mu**2 - logvar.exp()) / len(x)
            opt.zero_grad()
            (rec + beta * kl).backward()
            opt.step()
        sched.step()
    return vae.eval()
