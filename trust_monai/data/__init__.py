"""Offline sample datasets, datalists, and readers / writers that keep geometry and headers.

Names are resolved lazily so ``import trust_monai.data`` stays cheap for the command line.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "cache_dir": ".cache",
    "prepare": ".sources",
    "DATASETS": ".sources",
    "dataset_info": ".sources",
    "load_fashion_mnist_arrays": ".sources",
    "read_image": ".io",
    "write_image": ".io",
    "ImageMeta": ".io",
    "to_metatensor": ".io",
    "probe_image": ".io",
    "detect_format": ".io",
    "load_datalist": ".datalist",
    "check_readable": ".datalist",
    "num_classes": ".datalist",
    "SliceClassificationDataset": ".slices",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    if name in ("cache", "sources", "io", "datalist", "pipelines", "slices"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__
