"""trust_monai.transforms"""
from .dual_split import DualMerge, DualMerged, DualSplit, DualSplitd, dual_merge, dual_split  # noqa: F401
