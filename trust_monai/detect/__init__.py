"""trust_monai.detect: MoE-FFD forgery detection of scans and faces.

- :mod:`.data`: real-versus-fake data sets made from the offline sample data (copy-move, self-blended, VAE-generated
  and 3D-consistent lesion-tampered scans; self-blended and face-swapped faces); :mod:`.fundus`: the same for DRIVE
  fundus photographs; :mod:`.dataset`: the dataset that reads them (2.5D slices, fresh and paired fakes).
- :mod:`.engine`: training loss, checkpoint loading, scoring (volumes by slice aggregation), report and evaluation.
- :mod:`.metrics` (AUC, AP, EER, accuracy), :mod:`.figures` (ROC, saliency heatmaps), :mod:`.generative` (the VAE).

Submodules load on first use, so ``trust_monai.detect.data.prepare_scan_forgery`` works after ``import trust_monai``.
"""

import importlib

_EXPORTS = {
    "prepare_scan_forgery": ".data",
    "prepare_face_forgery": ".data",
    "ForgeryDataset": ".dataset",
    "slices_with_context": ".dataset",
    "paired_collate": ".dataset",
    "prepare_fundus_forgery": ".fundus",
    "SCAN_KINDS": ".data",
    "VOLUME_KINDS": ".data",
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
