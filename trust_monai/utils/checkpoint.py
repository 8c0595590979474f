"""Load weights safely: plain state dicts only (``torch.load(weights_only=True)``), never arbitrary pickles."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputFileError

__all__ = ["load_state_dict", "refusal_reason", "save_state_dict"]


def load_state_dict(module, path: str | os.PathLike, strict: bool = True, key: str | None = None, hint: str = ""):
    """Load ``path`` into ``module`` with ``weights_only=True``; a pickle carrying code is refused with a clear error.

    Args:
        module: the ``nn.Module`` to fill.
        path: a ``.pt`` state dict (optionally a dict holding it under ``key``).
        strict: as in ``load_state_dict``.
        key: sub-dict to load (e.g. ``"generator"`` in a checkpoint with several networks).
        hint: what to do about a checkpoint that does not fit (default: retrain or match the training config).
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "checkpoint not found; train the bundle first (train.json) or set --ckpt_dir")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise InputFileError(path, refusal_reason(e)) from e
    except Exception as e:  # truncated zip, wrong format
        raise InputFileError(path, f"cannot read checkpoint: {type(e).__name__}: {_squash(str(e))}") from e
    if key is not None:
        if key not in state:
            raise InputFileError(path, f"checkpoint has no '{key}' entry (entries: {', '.join(map(str, state))})")
        state = state[key]
    try:
        module.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        # a checkpoint from another configuration (class count, widths, experts): name the keys in one line
        expected = module.state_dict()
        missing, unexpected = _key_diff(expected, state)
        shapes = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))

        def few(keys):
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")

        detail = "; ".join(
            part
            for part in (
                f"missing {few(missing)}" if missing else "",
                f"unexpected {few(unexpected)}" if unexpected else "",
                f"shape differs for {few(shapes)}" if shapes else "",
            )
            if part
        )
        raise InputFileError(
            path, f"checkpoint does not fit {type(module).__name__} as configured ({detail}); "
            + (hint or "retrain or match the config it was trained with")
        ) from e
    return module


def refusal_reason(e: BaseException) -> str:
    """One line saying why ``torch.load(weights_only=True)`` refused a file, naming the blocked global if any."""
    import re

    blocked = re.search(r"(?:GLOBAL|globals:) ([\w.]+)", str(e), flags=re.IGNORECASE)
    what = f"it calls {blocked.group(1)}, which could run code" if blocked else _squash(str(e))
    return f"refused: not a plain state dict of tensors ({what}); only load checkpoints you or this project made"


def _squash(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key_diff(expected: dict, got: dict) -> tuple[list[str], list[str]]:
    return sorted(set(expected) - set(got)), sorted(set(got) - set(expected))


def save_state_dict(state: dict, path: str | os.PathLike):
    """Save a state dict atomically (temp file + rename)."""
    import torch

    from .fileio import atomic_path

    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)
