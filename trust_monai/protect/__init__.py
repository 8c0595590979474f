"""trust_monai.protect: make data unlearnable before it is shared.

Natural images (classification): error-minimizing noise (EM, sample-wise and class-wise), LSP, AR and block-code
poisons.
Every poison module has ``apply(x, index, label)``, ``noise(index, label)``, ``config()`` and a state dict of plain
tensors; :func:`save_poison` / :func:`load_poison` store one as ``{"poison", "config", "state_dict"}`` so it loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

from .error_minimizing import ErrorMinimizingNoise
from .poisons import (
    AR_PAPER_MAX_RMS,
    AutoregressivePoison,
    BlockCodePoison,
    LinearSeparablePoison,
    ar_budget,
    ar_residual,
    lsp_budget,
    project_l2,
)

__all__ = [
    "POISONS",
    "ErrorMinimizingNoise",
    "LinearSeparablePoison",
    "BlockCodePoison",
    "AutoregressivePoison",
    "make_poison",
    "save_poison",
    "load_poison",
    "lsp_budget",
    "ar_budget",
    "ar_residual",
    "project_l2",
    "AR_PAPER_MAX_RMS",
]

POISONS = ("em_samplewise", "em_classwise", "lsp", "ar", "blocks")


def make_poison(
    poison: str,
    num_classes: int,
    image_shape: Sequence[int],
    num_samples: int | None = None,
    seed: int = 0,
    eps: float | None = None,
    **kwargs,
):
    """Build the poison named ``poison`` (one of :data:`POISONS`).

    Args:
        poison: ``em_samplewise`` | ``em_classwise`` | ``lsp`` | ``ar`` | ``blocks``.
        num_classes: number of classes.
        image_shape: ``(C, *spatial)``.
        num_samples: training samples (rows of sample-wise EM noise).
        seed: seed of the initialisation / generation.
        eps: budget (L-inf for EM and blocks, L2 for LSP / AR); ``None`` = the paper's default for this image size
            (8/255 for blocks).
        kwargs: passed on (``steps``, ``step_size`` for EM; ``patch_size`` for LSP and blocks; ``window``, ``candidates``,
            ``fill_clipped`` for AR).
    """
    if poison in ("em_samplewise", "em_classwise"):
        mode = poison[3:]
        rows = num_classes if mode == "classwise" else num_samples
        if rows is None:
            raise ValueError("sample-wise EM noise needs num_samples")
        em_kwargs = {k: kwargs[k] for k in ("steps", "step_size") if k in kwargs}
        return ErrorMinimizingNoise(rows, image_shape, mode=mode, eps=8 / 255 if eps is None else eps, seed=seed,
                                    **em_kwargs)
    if poison == "lsp":
        return LinearSeparablePoison(num_classes, image_shape, patch_size=kwargs.get("patch_size"), eps=eps, seed=seed)
    if poison == "blocks":
        return BlockCodePoison(num_classes, image_shape, patch_size=kwargs.get("patch_size"), eps=eps, seed=seed)
    if poison == "ar":
        return AutoregressivePoison(num_classes, image_shape, eps=eps, window=kwargs.get("window", 3), seed=seed,
                                    candidates=kwargs.get("candidates", 0),
                                    fill_clipped=kwargs.get("fill_clipped", False), crop=kwargs.get("crop", 0),
                                    max_rms=kwargs.get("max_rms"))
    raise ValueError(f"unknown poison {poison!r}; choose one of {', '.join(POISONS)}")


def save_poison(module, path: str | os.PathLike):
    """Write ``{"poison": name, "config": {...}, "state_dict": {...}}`` atomically (plain tensors and numbers only)."""
    import torch

    from ..utils.fileio import atomic_write_bytes

    buf = io.BytesIO()
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    torch.save({"poison": module.name, "config": module.config(), "state_dict": state}, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_poison(path: str | os.PathLike, map_location="cpu"):
    """Rebuild a poison written by :func:`save_poison` (loaded with ``weights_only=True``)."""
    import pickle

    import torch

    from ..errors import InputFileError
    from ..utils.checkpoint import refusal_reason

    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
        name, cfg, state = blob["poison"], dict(blob["config"]), blob["state_dict"]
    except FileNotFoundError:
        raise InputFileError(path, "noise file not found; run the bundle's train.json first (same --ckpt_dir)") from None
    except pickle.UnpicklingError as e:  # carries code, or types other than tensors and numbers
        raise InputFileError(path, refusal_reason(e)) from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported by name
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        raise InputFileError(path, f"not a poison file written by trust_monai ({reason})") from None
    if name.startswith("em_"):
        module = ErrorMinimizingNoise(**cfg)
    elif name == "lsp":
        module = LinearSeparablePoison(**cfg)
    elif name == "blocks":
        module = BlockCodePoison(**cfg)
    elif name == "ar":  # the saved filters, not a new draw: the noise stays the one the file was written with
        module = AutoregressivePoison(**cfg, coefficients=state.get("coefficients"))
    else:
        raise InputFileError(path, f"unknown poison {name!r}")
    module.load_state_dict(state)
    return module


def __getattr__(name: str):
    # submodules load on first use, so bundle configs can name them after ``import trust_monai``
    import importlib

    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from e
