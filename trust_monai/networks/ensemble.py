"""An ensemble of classifiers that acts as one network: the surrogate of error-minimizing noise made against several
architectures at once."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["LogProbEnsemble"]


class LogProbEnsemble(nn.Module):
    """Returns the mean of the members' log-probabilities: a geometric-mean (product-of-experts) ensemble.

    After the softmax of the loss, a class is likely only where every member gives it probability, so the loss of
    this output is low only where the members agree on the label: noise minimised against the ensemble has to be an
    easy cue for each architecture, not only for the one that would dominate an average of logits.

    Args:
        members: the classifiers, each mapping ``(B, C, *spatial)`` to ``(B, K)`` logits.

    Shapes:
        input ``(B, C, *spatial)``; output ``(B, K)`` (log-probabilities, usable as logits).
    """

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.log_softmax(m(x), dim=1) for m in self.members]).mean(0)
