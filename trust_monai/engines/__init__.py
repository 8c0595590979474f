"""Glue that bundles call: manifests, case writers, reports."""

from .manifest import Manifest

__all__ = ["Manifest"]
