"""trust_monai: the trustworthy-AI layer for MONAI (protect, purify, certify, detect).

Importing the package is cheap on purpose: no torch or monai import happens here, so the command line starts fast.
Subpackages load on first attribute access (``trust_monai.bundle.common(...)`` works after ``import trust_monai``,
which is what bundle configs rely on).
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = {
    "bundle", "certify", "cli", "data", "detect", "engines", "errors", "metrics", "networks", "protect", "purify",
    "transforms", "utils",
}

__all__ = ["__version__", *sorted(_SUBMODULES)]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
