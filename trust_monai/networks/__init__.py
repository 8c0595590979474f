"""trust_monai.networks: nn.Modules, one per file."""

from .resnet import BasicBlock, SmallResNet
from .half_input import HalfInput  # noqa: F401  (DRS base classifiers)

__all__ = ["BasicBlock", "SmallResNet", "reinitialise"]


def reinitialise(net) -> None:
    """Fresh random weights in place: every module of ``net`` (itself included) that can reset itself does."""
    for m in net.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()


def __getattr__(name: str):
    # submodules load on first use, so bundle configs can name them after ``import trust_monai``
    import importlib

    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from e
