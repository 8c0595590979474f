"""trust_monai.detect: MoE-FFD forgery detection of scans and faces.

- :mod:`.data`: real-versus-fake data sets made from the offline sample data (copy-move, self-blended, VAE-generated
  scans; self-blended and face-swapped faces) and the dataset that reads them.
- :mod:`.engine`: training loss, checkpoint loading, scoring (volumes by slice aggregation), report and evaluation.
- :mod:`.metrics` (AUC, AP, EER, accuracy), :mod:`.figures` (ROC, saliency heatmaps), :mod:`.generative` (the VAE).

Submodules load on first use, so ``trust_monai.detect.data.prepare_scan_forgery`` works after ``import trust_monai``.
"""

import importlib

_EXPORTS = {
    "prepare_scan_forgery": ".data",
    "prepare_face_forgery": ".data",
    "ForgeryDataset": ".data",
    "SCAN_KINDS": ".data",
    "FACE_KINDS": ".data",
    "MoELoss": ".engine",
    "load_detector": ".engine",
    "DetectionInference": ".engine",
    "DetectionEvaluation": ".engine",
    "detection_metrics": ".metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from e
