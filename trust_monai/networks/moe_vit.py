"""MoE-ViT: a frozen timm Vision Transformer with mixtures of LoRA experts and of convolutional adapter experts.

After "MoE-FFD: Mixture of Experts for Generalized and Parameter-Efficient Face Forgery Detection". In every block:

- the attention ``qkv`` projection gets a mixture of LoRA experts (one rank each, e.g. 16/32/64/128) whose low-rank
  deltas are added to the frozen projection; the router picks experts per token;
- beside the MLP runs a mixture of adapter experts: down-projection, a 3x3 convolution on the patch grid, up-projection;
  each expert's convolution is one kind of pixel-difference convolution from "Pixel Difference Networks for Efficient
  Edge Detection" (vanilla, central, angular, radial), so the experts look for different local-gradient cues
  (blending edges, resampling traces); the router picks experts per image.

Routers are noisy top-k gates (Shazeer et al., "Outrageously Large Neural Networks"): the selected experts' outputs are
weighted by their softmax probabilities, so the task loss trains the routers, and :meth:`MoEViT.balance_loss` returns
the load-balancing term (squared coefficient of variation of expert importance and load) for the trainer to add.
Only experts, routers and the classification head are trainable; the backbone stays frozen.

:func:`single_lora_vit` is the single-LoRA baseline (one LoRA on ``qkv`` through peft) for comparison.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TrustMonaiError

__all__ = [
    "PDC_KINDS",
    "NoisyTopKGate",
    "PixelDifferenceConv2d",
    "MoELoRALinear",
    "MoEAdapter",
    "MLPWithAdapters",
    "MoEViT",
    "build_vit",
    "single_lora_vit",
    "count_parameters",
]

PDC_KINDS = ("vanilla", "central", "angular", "radial")
# clockwise ring of a 3x3 kernel (row, col), starting top-left: the neighbour order of angular / radial differences
_RING = ((0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0))


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _cv_squared(x: torch.Tensor) -> torch.Tensor:
    # squared coefficient of variation: 0 when every expert gets the same share
    if x.numel() <= 1:
        return x.new_zeros(())
    return x.float().var() / (x.float().mean() ** 2 + 1e-10)


class NoisyTopKGate(nn.Module):
    """Noisy top-k router: ``logits = x W_g + N(0, 1) * softplus(x W_n)`` while training, top-k kept.

    Gate values are the softmax probabilities of the kept experts (not renormalised, so top-1 routing still passes a
    gradient from the task loss into the router). After each forward, ``balance_loss`` holds
    ``cv^2(importance) + cv^2(load)``; ``load`` is the smooth estimate of the number of inputs routed to each expert
    (the probability that the expert stays in the top-k under resampled noise), so both terms are differentiable.

    Args:
        dim: input feature size.
        num_experts: number of experts E.
        top_k: experts kept per input (1 <= top_k <= E).
        noisy: add the learned noise while training.
    """

    def __init__(self, dim: int, num_experts: int, top_k: int = 1, noisy: bool = True):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise TrustMonaiError(f"top_k must be in [1, {num_experts}] (the expert count), got {top_k}")
        self.num_experts, self.top_k, self.noisy = num_experts, top_k, noisy
        self.w_gate = nn.Linear(dim, num_experts, bias=False)
        self.w_noise = nn.Linear(dim, num_experts, bias=False)
        nn.init.zeros_(self.w_gate.weight)  # uniform routing at start; the noise breaks ties
        nn.init.zeros_(self.w_noise.weight)
        self.balance_loss = torch.zeros(())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Route ``x`` of shape ``(N, dim)``.

        Returns:
            ``(gates, index)``: ``gates`` ``(N, E)`` with the kept experts' probabilities and zeros elsewhere,
            ``index`` ``(N, top_k)`` the kept experts.
        """
        clean = self.w_gate(x)
        use_noise = self.noisy and self.training
        if use_noise:
            std = F.softplus(self.w_noise(x)) + 1e-2
            logits = clean + torch.randn_like(clean) * std
        else:
            logits = clean
        probs = logits.softmax(-1)
        top_p, index = probs.topk(self.top_k, dim=-1)
        gates = torch.zeros_like(probs).scatter(-1, index, top_p)
        importance = gates.sum(0)
        if use_noise and self.top_k < self.num_experts:
            load = self._smooth_load(clean, logits, std)
        else:
            load = (gates > 0).float().sum(0)
        self.balance_loss = _cv_squared(importance) + _cv_squared(load)
        return gates, index

    def _smooth_load(self, clean, noisy, std) -> torch.Tensor:
        # P(expert i in top-k) = P(clean_i + noise > k-th largest of the others' noisy logits)
        top = noisy.topk(self.top_k + 1, dim=-1).values
        thr_in = top[:, self.top_k : self.top_k + 1]  # the threshold an expert that is in must stay above
        thr_out = top[:, self.top_k - 1 : self.top_k]  # the threshold an expert that is out must pass
        normal = torch.distributions.Normal(clean.new_zeros(()), clean.new_ones(()))
        is_in = noisy > thr_in
        p = torch.where(is_in, normal.cdf((clean - thr_in) / std), normal.cdf((clean - thr_out) / std))
        return p.sum(0)


class PixelDifferenceConv2d(nn.Module):
    """3x3 pixel-difference convolution of one kind, run as a plain convolution with an equivalent kernel.

    - ``vanilla``: ordinary convolution.
    - ``central``: ``sum_i w_i (x_i - x_c)``: the kernel with ``sum(w)`` taken off its centre.
    - ``angular``: ``sum_i w_i (x_i - x_{i-1})`` over clockwise neighbours: ``w - w`` shifted one step along the ring.
    - ``radial``: ``sum_i w_i (x_outer_i - x_inner_i)``: a 5x5 kernel, ring weights at distance 2, minus at distance 1.

    Args:
        channels: input and output channels.
        kind: one of ``PDC_KINDS``.
    """

    def __init__(self, channels: int, kind: str = "vanilla"):
        super().__init__()
        if kind not in PDC_KINDS:
            raise TrustMonaiError(f"unknown pixel-difference convolution {kind!r}; use one of {PDC_KINDS}")
        self.kind = kind
        self.weight = nn.Parameter(torch.empty(channels, channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def kernel(self) -> torch.Tensor:
        """The equivalent ordinary kernel (3x3, or 5x5 for ``radial``)."""
        w = self.weight
        if self.kind == "vanilla":
            return w
        if self.kind == "central":
            k = w.clone()
            k[:, :, 1, 1] = w[:, :, 1, 1] - w.sum((2, 3))
            return k
        ring = torch.stack([w[:, :, r, c] for r, c in _RING], -1)  # (O, I, 8)
        if self.kind == "angular":
            k = torch.zeros_like(w)
            for j, (r, c) in enumerate(_RING):
                pr, pc = _RING[j - 1]
                k[:, :, r, c] = k[:, :, r, c] + ring[..., j]
                k[:, :, pr, pc] = k[:, :, pr, pc] - ring[..., j]
            return k
        k = w.new_zeros(*w.shape[:2], 5, 5)
        for j, (r, c) in enumerate(_RING):
            k[:, :, 2 + 2 * (r - 1), 2 + 2 * (c - 1)] = ring[..., j]
            k[:, :, 2 + (r - 1), 2 + (c - 1)] = -ring[..., j]
        return k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel()
        return F.conv2d(x, k, self.bias, padding=k.shape[-1] // 2)


class MoELoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a per-token mixture of LoRA experts: ``y = W x + sum_e g_e(x) B_e A_e x * s_e``.

    Args:
        base: the frozen projection (the attention ``qkv``).
        ranks: one LoRA rank per expert.
        top_k: experts per token.
        alpha: LoRA scaling numerator; expert ``e`` is scaled by ``alpha / rank_e``.
        noisy: noisy gating while training.
        dense: run every expert on every token (weighted by zero gates for the unselected ones) instead of only the
            routed tokens; same output, used to measure what sparse routing saves.
    """

    def __init__(self, base: nn.Linear, ranks: Sequence[int], top_k: int = 1, alpha: float = 16.0, noisy: bool = True,
                 dense: bool = False):
        super().__init__()
        self.base = base
        self.ranks = [int(r) for r in ranks]
        self.gate = NoisyTopKGate(base.in_features, len(self.ranks), top_k, noisy)
        self.lora_a = nn.ParameterList(nn.Parameter(torch.empty(r, base.in_features)) for r in self.ranks)
        self.lora_b = nn.ParameterList(nn.Parameter(torch.zeros(base.out_features, r)) for r in self.ranks)
        for a in self.lora_a:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.scales = [alpha / r for r in self.ranks]
        self.dense = dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        flat = x.reshape(-1, x.shape[-1])
        gates, index = self.gate(flat)
        delta = flat.new_zeros(flat.shape[0], y.shape[-1])
        for e, (a, b, s) in enumerate(zip(self.lora_a, self.lora_b, self.scales)):
            if self.dense:
                delta = delta + gates[:, e : e + 1] * (flat @ a.t() @ b.t()) * s
                continue
            rows = (index == e).any(-1).nonzero(as_tuple=True)[0]
            if rows.numel():
                out = (flat[rows] @ a.t() @ b.t()) * (s * gates[rows, e : e + 1])
                delta = delta.index_add(0, rows, out)
        return y + delta.reshape(y.shape)


class _AdapterExpert(nn.Module):
    """Bottleneck adapter: down-projection, GELU, a pixel-difference conv on the patch grid, GELU, up-projection."""

    def __init__(self, dim: int, hidden: int, kind: str):
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.conv = PixelDifferenceConv2d(hidden, kind)
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)  # starts as the identity of the frozen block
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor, num_prefix: int, grid: tuple[int, int]) -> torch.Tensor:
        h = F.gelu(self.down(x))
        prefix, patches = h[:, :num_prefix], h[:, num_prefix:]
        b, n, c = patches.shape
        fmap = patches.transpose(1, 2).reshape(b, c, *grid)
        patches = F.gelu(self.conv(fmap)).flatten(2).transpose(1, 2)
        return self.up(torch.cat([prefix, patches], 1))


class MoEAdapter(nn.Module):
    """Mixture of adapter experts routed per image (the router sees the mean token of each image).

    Args:
        dim: token size.
        hidden: bottleneck width.
        kinds: one pixel-difference convolution kind per expert.
        top_k: experts per image.
        num_prefix: class / register tokens in front of the patch tokens (skipped by the convolution).
        grid: patch grid ``(rows, cols)``.
        noisy: noisy gating while training.
        dense: run every expert on every image (see :class:`MoELoRALinear`).
    """

    def __init__(self, dim: int, hidden: int, kinds: Sequence[str], top_k: int, num_prefix: int,
                 grid: tuple[int, int], noisy: bool = True, dense: bool = False):
        super().__init__()
        self.kinds = list(kinds)
        self.experts = nn.ModuleList(_AdapterExpert(dim, hidden, k) for k in self.kinds)
        self.gate = NoisyTopKGate(dim, len(self.kinds), top_k, noisy)
        self.num_prefix, self.grid, self.dense = num_prefix, tuple(grid), dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates, index = self.gate(x.mean(1))
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            if self.dense:
                out = out + gates[:, e, None, None] * expert(x, self.num_prefix, self.grid)
                continue
            rows = (index == e).any(-1).nonzero(as_tuple=True)[0]
            if rows.numel():
                y = expert(x[rows], self.num_prefix, self.grid) * gates[rows, e, None, None]
                out = out.index_add(0, rows, y)
        return out


class MLPWithAdapters(nn.Module):
    """The block's frozen MLP with the adapter mixture beside it: ``mlp(x) + adapters(x)``."""

    def __init__(self, mlp: nn.Module, adapters: MoEAdapter):
        super().__init__()
        self.mlp, self.adapters = mlp, adapters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x) + self.adapters(x)


def build_vit(backbone: str = "vit_tiny_patch16_224", pretrained_file: str | None = None,
              pretrained: str | None = None, **kwargs) -> nn.Module:
    """A timm ``VisionTransformer`` built locally (never downloads); ``pretrained_file`` loads a local state dict.

    Args:
        backbone: timm model name giving the architecture (``vit_base_patch16_224`` for ViT-B/16).
        pretrained_file: a local ``.pt`` / ``.pth`` / ``.safetensors`` state dict of that backbone; a head or
            position embedding of another size is re-made by timm's loader (``num_classes``, ``img_size``).
        pretrained: a weights source of :mod:`trust_monai.weights` (``"dinov2_vits14"``), converted once from the
            package that carries it and cached; every backbone key must load (only the new head is left out).
            Ignored when ``pretrained_file`` is given.
        kwargs: timm overrides (``img_size``, ``patch_size``, ``in_chans``, ``num_classes``, ``embed_dim``, ``depth``,
            ``num_heads`` ...); ``None`` values are dropped.
    """
    import timm

    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    pretrained = _no_weights(pretrained)
    if pretrained and not pretrained_file:
        return _from_weights_source(backbone, pretrained, kwargs)
    if pretrained_file:
        from pathlib import Path

        from ..errors import InputFileError

        if not Path(pretrained_file).is_file():
            raise InputFileError(pretrained_file, "pretrained backbone file not found (a local state dict is needed)")
        kwargs["pretrained_cfg_overlay"] = dict(file=str(pretrained_file))
        try:
            # timm loads with weights_only=True (or safetensors); its refusals and mismatches name the file here
            return timm.create_model(backbone, pretrained=True, **kwargs)
        except Exception as e:  # noqa: BLE001 - pickle refusal, truncated file, another backbone's weights
            from ..utils.checkpoint import refusal_reason

            text = " ".join(str(e).split())
            if "weights_only" in text or "pickle" in text.lower():
                raise InputFileError(pretrained_file, refusal_reason(e)) from e
            raise InputFileError(pretrained_file, f"cannot load as {backbone} weights: {type(e).__name__}: "
                                                  f"{text[:200]}") from e
    return timm.create_model(backbone, pretrained=False, **kwargs)


def _no_weights(name):
    """``None`` for an unset weights source: ``None``, or ``""`` / ``null`` / ``none`` as typed on a command line."""
    return None if name is None or str(name).strip().lower() in ("", "null", "none") else str(name)


def _from_weights_source(backbone: str, name: str, kwargs: dict) -> nn.Module:
    """``backbone`` with the registry weights ``name`` loaded: every backbone key present, only the head missing."""
    import timm

    from ..weights import weights_file, weights_info

    info = weights_info(name)
    if backbone != info.architecture:
        raise TrustMonaiError(f"pretrained weights {name!r} are for backbone {info.architecture!r}, not {backbone!r}")
    for k, v in info.timm_kwargs.items():
        if k != "num_classes" and kwargs.get(k, v) != v:
            raise TrustMonaiError(f"pretrained weights {name!r} were converted for {k}={v}, got {k}={kwargs[k]}")
    state = torch.load(weights_file(name), map_location="cpu", weights_only=True)
    net = timm.create_model(backbone, pretrained=False, **{**info.timm_kwargs, **kwargs})
    missing, unexpected = net.load_state_dict(state, strict=False)
    head = {n for n, _ in net.get_classifier().named_parameters(prefix="head")} if kwargs.get("num_classes") else set()
    if unexpected or set(missing) - head:
        raise TrustMonaiError(f"pretrained weights {name!r} do not fit {backbone} with {kwargs}: missing "
                              f"{sorted(set(missing) - head)[:5]}, unexpected {sorted(unexpected)[:5]}")
    return net


class MoEViT(nn.Module):
    """Frozen ViT + per-block LoRA-expert and adapter-expert mixtures (MoE-FFD). Returns ``(B, num_classes)`` logits.

    Inputs of another channel count are adapted (1 -> repeat to 3, 3 -> mean to 1) or refused, and inputs of another
    spatial size are resized to ``img_size``, so any 2D image batch ``(B, C, H, W)`` can be scored.

    Args:
        backbone: timm ViT architecture name.
        img_size: input size the backbone runs at.
        patch_size: patch size.
        in_chans: backbone input channels.
        num_classes: classifier outputs (2: real, fake).
        embed_dim, depth, num_heads: optional overrides of the architecture (tiny test models).
        lora_ranks: rank of each LoRA expert (the expert count is its length).
        lora_top_k: LoRA experts per token.
        lora_alpha: LoRA scaling numerator.
        adapter_kinds: pixel-difference kind of each adapter expert.
        adapter_dim: adapter bottleneck width (default ``embed_dim // 12``, 64 at ViT-B).
        adapter_top_k: adapter experts per image.
        noisy_gating: noisy top-k routing while training.
        dense: run all experts densely (benchmark baseline; same outputs as sparse routing).
        pretrained_file: local backbone state dict (see :func:`build_vit`); random init when ``None``.
        pretrained: a weights source of :mod:`trust_monai.weights` (``"dinov2_vits14"``: DINOv2 ViT-S/14 at 224,
            ``backbone="vit_small_patch14_dinov2"``, ``patch_size=14``); inputs are then normalised with the source's
            mean and std unless ``input_mean`` / ``input_std`` say otherwise.
        input_mean, input_std: per-channel normalisation applied to the [0, 1] input inside ``forward`` (``None``:
            the pretrained source's, or none).
        freeze_backbone: freeze every backbone weight except the new head.
    """

    def __init__(
        self,
        backbone: str = "vit_tiny_patch16_224",
        img_size: int = 64,
        patch_size: int = 8,
        in_chans: int = 1,
        num_classes: int = 2,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        lora_ranks: Sequence[int] = (16, 32, 64, 128),
        lora_top_k: int = 1,
        lora_alpha: float = 16.0,
        adapter_kinds: Sequence[str] = PDC_KINDS,
        adapter_dim: int | None = None,
        adapter_top_k: int = 1,
        noisy_gating: bool = True,
        dense: bool = False,
        pretrained_file: str | None = None,
        pretrained: str | None = None,
        input_mean: Sequence[float] | None = None,
        input_std: Sequence[float] | None = None,
        freeze_backbone: bool = True,
    ):
        super().__init__()
        self.vit = build_vit(
            backbone, pretrained_file, pretrained, img_size=img_size, patch_size=patch_size, in_chans=in_chans,
            num_classes=num_classes, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
        )
        self.img_size, self.in_chans = int(img_size), int(in_chans)
        pretrained = _no_weights(pretrained)
        if pretrained and input_mean is None and input_std is None:
            from ..weights import weights_info

            info = weights_info(pretrained)
            input_mean, input_std = info.mean[:in_chans] if in_chans < 3 else info.mean, \
                info.std[:in_chans] if in_chans < 3 else info.std
        mean = torch.zeros(in_chans) if input_mean is None else torch.as_tensor(input_mean, dtype=torch.float32)
        std = torch.ones(in_chans) if input_std is None else torch.as_tensor(input_std, dtype=torch.float32)
        # buffers (not parameters): they move with .to(device) and stay out of the state dict's trainable part
        self.register_buffer("input_mean", mean.reshape(1, -1, 1, 1).expand(1, in_chans, 1, 1).clone(), False)
        self.register_buffer("input_std", std.reshape(1, -1, 1, 1).expand(1, in_chans, 1, 1).clone(), False)
        if freeze_backbone:
            for p in self.vit.parameters():
                p.requires_grad_(False)
        dim = self.vit.embed_dim
        grid = tuple(self.vit.patch_embed.grid_size)
        hidden = int(adapter_dim or max(4, dim // 12))
        for block in self.vit.blocks:
            block.attn.qkv = MoELoRALinear(block.attn.qkv, lora_ranks, lora_top_k, lora_alpha, noisy_gating, dense)
            block.mlp = MLPWithAdapters(
                block.mlp,
                MoEAdapter(dim, hidden, adapter_kinds, adapter_top_k, self.vit.num_prefix_tokens, grid, noisy_gating,
                           dense),
            )
        for p in self.vit.get_classifier().parameters():
            p.requires_grad_(True)

    def gates(self) -> list[NoisyTopKGate]:
        return [m for m in self.modules() if isinstance(m, NoisyTopKGate)]

    def balance_loss(self) -> torch.Tensor:
        """Sum of the load-balancing losses of every router from the last forward pass."""
        losses = [g.balance_loss for g in self.gates()]
        return torch.stack([loss.to(losses[0].device) for loss in losses]).sum() if losses else torch.zeros(())

    def set_dense(self, dense: bool) -> None:
        """Switch every mixture between sparse (top-k experts only) and dense execution."""
        for m in self.modules():
            if isinstance(m, (MoELoRALinear, MoEAdapter)):
                m.dense = bool(dense)

    def adapt_input(self, x: torch.Tensor) -> torch.Tensor:
        """Bring ``(B, C, H, W)`` to the backbone's channels and size, or refuse with a clear message."""
        if x.ndim != 4:
            raise TrustMonaiError(f"MoEViT expects a 2D image batch (B, C, H, W), got shape {tuple(x.shape)}")
        c = x.shape[1]
        if c != self.in_chans:
            if c == 1 and self.in_chans == 3:
                x = x.expand(-1, 3, -1, -1)
            elif c == 3 and self.in_chans == 1:
                x = x.mean(1, keepdim=True)
            else:
                raise TrustMonaiError(
                    f"input has {c} channels but the detector takes {self.in_chans} (only 1 <-> 3 is adapted); "
                    "convert the images or set in_chans"
                )
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            x = F.interpolate(x.float(), size=(self.img_size, self.img_size), mode="bilinear", align_corners=False,
                              antialias=bool(min(x.shape[-2:]) > self.img_size))
        return (x.float() - self.input_mean) / self.input_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(self.adapt_input(x))


def single_lora_vit(
    backbone: str = "vit_tiny_patch16_224",
    rank: int = 64,
    alpha: float = 16.0,
    img_size: int = 64,
    patch_size: int = 8,
    in_chans: int = 1,
    num_classes: int = 2,
    pretrained_file: str | None = None,
    **vit_kwargs,
) -> nn.Module:
    """Baseline: the same frozen ViT with one LoRA on every ``qkv`` (peft) and a trainable head."""
    from peft import LoraConfig, get_peft_model

    vit = build_vit(backbone, pretrained_file, img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                    num_classes=num_classes, **vit_kwargs)
    config = LoraConfig(r=int(rank), lora_alpha=alpha, target_modules=["qkv"], modules_to_save=["head"])
    return get_peft_model(vit, config)
