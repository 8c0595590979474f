"""trust_monai.networks: nn.Modules, one per file."""

from .resnet import BasicBlock, SmallResNet
from .half_input import HalfInput  # noqa: F401  (DRS base classifiers)

__all__ = ["BasicBlock", "SmallResNet"]


def __getattr__(name: str):
    # submodules load on first use, so bundle configs can name them after ``import trust_monai``
    import importlib

    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from e
