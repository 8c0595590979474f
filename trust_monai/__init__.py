"""trust_monai: the trustworthy-AI layer for MONAI (protect, purify, certify, detect).

Importing the package is cheap on purpose: no torch or monai import happens here, so the command line starts fast.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
