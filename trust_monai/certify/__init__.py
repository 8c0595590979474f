"""trust_monai.certify: certified L2 robustness by randomized smoothing (RS) and dual randomized smoothing (DRS).

``Smooth`` / ``DualSmooth`` certify classifiers (``certify``: Cohen et al.'s fixed n; ``decide`` / ``certify_adaptive``:
sequential, stopping early, with the confidence sequence of ``sequential``), ``SegmentationSmooth`` /
``DualSegmentationSmooth`` every pixel of a segmentation; ``stats`` holds the binomial bounds and Holm's correction.
Abstention is the label -1 (``ABSTAIN``).
"""

from . import sequential
from .segmentation import DualSegmentationSmooth, SegmentationSmooth, certified_metrics
from .smooth import ABSTAIN, CertifyRecord, DualSmooth, Smooth
from .stats import binom_sf_pvalue, cp_lower, holm, phi_inv

__all__ = [
    "ABSTAIN",
    "CertifyRecord",
    "Smooth",
    "DualSmooth",
    "SegmentationSmooth",
    "DualSegmentationSmooth",
    "certified_metrics",
    "sequential",
    "cp_lower",
    "binom_sf_pvalue",
    "holm",
    "phi_inv",
]
