"""trust_monai.purify: remove unlearnable perturbations before training.

- :mod:`~trust_monai.purify.dvae`: two-stage D-VAE purification (training, and the purifier used by writers);
- :mod:`~trust_monai.purify.defences`: ISS squeezes and the VAE ablations under one ``apply(x, index, y)`` interface;
- :mod:`~trust_monai.purify.check`: does a received training set look poisoned (run before purifying);
- :mod:`~trust_monai.purify.adaptive`: the D-VAE whose perturbation floor the check chooses from the data.
"""

from .adaptive import AdaptivePurification, purifier_checkpoints
from .check import PoisoningCheck, check_poisoning
from .defences import DEFENCES, SqueezeDefence, make_defence
from .dvae import DVAEPurifier, DVAETrainer, StageOutputs, TwoStagePurification, check_labels, dvae_loss

__all__ = [
    "AdaptivePurification", "purifier_checkpoints", "PoisoningCheck", "check_poisoning", "DEFENCES", "SqueezeDefence",
    "make_defence", "DVAEPurifier", "DVAETrainer",
    "StageOutputs", "TwoStagePurification", "check_labels", "dvae_loss",
]
