"""Glue that bundles call: manifests, case writers, victim studies, reports.

Submodules load on first use (``trust_monai.engines.report.before_after_png`` after ``import trust_monai``).
"""

import importlib

from .manifest import Manifest

__all__ = ["Manifest"]


def __getattr__(name: str):
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from e
