"""Error-minimizing noise: "Unlearnable Examples: Making Personal Data Unexploitable" (Huang et al., ICLR 2021).

The noise solves the min-min problem ``min_theta E[ min_{||delta||_inf <= eps} L(f_theta(x + delta), y) ]``: a
surrogate network and the noise are optimised *together* to make the training loss small, so the noise carries an
easy shortcut to the label and a network trained on ``x + delta`` learns almost nothing about ``x``. The outer loop
alternates ``train_steps`` SGD steps of the surrogate with one pass of ``steps`` PGD steps (step ``step_size``,
gradient *descent* on the loss) over the noise, and stops once the surrogate classifies the perturbed training set
with accuracy >= 99%. The loop itself is the engine
:class:`~trust_monai.protect.error_minimizing_trainer.ErrorMinimizingTrainer`; this module holds the noise and the
inner minimisation.

Sample-wise noise keeps one ``delta`` per training sample (keyed by its index in the datalist), class-wise noise one
per class (keyed by the label). Both run through the same code: the rows of the noise table touched by a batch are
gathered, optimised jointly, and written back (a class row receives the summed gradient of its samples).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["ErrorMinimizingNoise"]


class ErrorMinimizingNoise(nn.Module):
    """Table of L-inf bounded error-minimizing noise with the inner PGD minimisation.

    Args:
        num_items: rows of the table: the number of training samples (``samplewise``) or of classes (``classwise``).
        image_shape: ``(C, *spatial)`` of one image.
        mode: ``"samplewise"`` (row = sample index) or ``"classwise"`` (row = label).
        eps: L-inf budget (8/255 in the paper).
        step_size: PGD step (0.8/255).
        steps: PGD steps per noise update (20).
        seed: seed of the uniform(-eps, eps) initialisation.
        budget_map: keep a per-element bound (buffer ``budget``, at most ``eps``) instead of the scalar ``eps``: the
            segmentation baseline confines noise to mask + contour band, texture-scaled, exactly like UMed.

    The buffer ``delta`` (``num_items, C, *spatial``) is the noise; its state dict holds plain tensors only.
    """

    learnable = True

    def __init__(
        self,
        num_items: int,
        image_shape: Sequence[int],
        mode: str = "samplewise",
        eps: float = 8 / 255,
        step_size: float = 0.8 / 255,
        steps: int = 20,
        seed: int = 0,
        budget_map: bool = False,
    ):
        super().__init__()
        if mode not in ("samplewise", "classwise"):
            raise ValueError(f"mode must be 'samplewise' or 'classwise', got {mode!r}")
        self.num_items, self.image_shape, self.mode = int(num_items), tuple(int(s) for s in image_shape), mode
        self.eps, self.step_size, self.steps, self.seed = float(eps), float(step_size), int(steps), int(seed)
        g = torch.Generator().manual_seed(self.seed)
        init = (torch.rand((self.num_items, *self.image_shape), generator=g) * 2 - 1) * self.eps
        self.register_buffer("delta", init)
        self.budget_map = bool(budget_map)
        if self.budget_map:
            self.register_buffer("budget", torch.full_like(init, self.eps))

    def set_budget(self, budget: torch.Tensor) -> None:
        """Per-element bound, ``(num_items, C, *spatial)`` in ``[0, eps]``; the noise is projected into it."""
        if not self.budget_map:
            raise ValueError("this noise was built with budget_map=False")
        self.budget.copy_(budget.clamp(0.0, self.eps).to(self.budget))
        self.delta.copy_(torch.maximum(torch.minimum(self.delta, self.budget), -self.budget))

    def _limit(self, rows: torch.Tensor, like: torch.Tensor):
        return self.budget[rows].to(like) if self.budget_map else self.eps

    @property
    def name(self) -> str:
        return "em_" + self.mode

    def rows(self, index: torch.Tensor | None, label: torch.Tensor) -> torch.Tensor:
        """Row of the noise table for each sample of a batch."""
        key = label if self.mode == "classwise" else index
        if key is None:
            raise ValueError("sample-wise noise needs the sample index of every image")
        key = key.long().to(self.delta.device)
        if key.numel() and (key.min() < 0 or key.max() >= self.num_items):
            raise IndexError(f"noise rows {int(key.min())}..{int(key.max())} outside the table of {self.num_items}")
        return key

    def noise(self, index: torch.Tensor | None, label: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial)`` noise of the batch."""
        return self.delta[self.rows(index, label)]

    def apply(self, x: torch.Tensor, index: torch.Tensor | None, label: torch.Tensor) -> torch.Tensor:
        """``clip(x + delta, 0, 1)``; the change of every value stays within ``eps``."""
        return (x + self.noise(index, label).to(x)).clamp(0.0, 1.0)

    def perturb(
        self,
        network: nn.Module,
        x: torch.Tensor,
        label: torch.Tensor,
        index: torch.Tensor | None = None,
        loss_function: Callable | None = None,
        inferer: Callable | None = None,
    ) -> torch.Tensor:
        """Run ``steps`` PGD steps that *minimise* the loss of ``network`` on the batch and store the new noise.

        Args:
            network: the surrogate, used as is (call ``network.eval()`` first for fixed batch-norm statistics).
            x: clean images ``(B, C, *spatial)`` in [0, 1].
            label: ``(B,)`` class indices.
            index: ``(B,)`` sample indices (needed for sample-wise noise).
            loss_function: per-batch loss, default cross-entropy.
            inferer: ``inferer(inputs, network)``, default ``network(inputs)``.

        Returns:
            the perturbed batch ``clip(x + delta, 0, 1)`` after the update.
        """
        loss_function = loss_function or nn.functional.cross_entropy
        rows = self.rows(index, label)
        uniq, inverse = torch.unique(rows, return_inverse=True)
        d = self.delta[uniq].to(x).clone()
        requires = [p.requires_grad for p in network.parameters()]
        for p in network.parameters():
            p.requires_grad_(False)
        try:
            lim = self._limit(uniq, x)
            for _ in range(self.steps):
                d.requires_grad_(True)
                inputs = (x + d[inverse]).clamp(0.0, 1.0)
                logits = inferer(inputs, network) if inferer is not None else network(inputs)
                loss = loss_function(logits, label.to(logits.device))
                (grad,) = torch.autograd.grad(loss, d)
                with torch.no_grad():
                    d = torch.clamp(d - self.step_size * grad.sign(), -lim, lim)
        finally:
            for p, r in zip(network.parameters(), requires):
                p.requires_grad_(r)
        d = d.detach()
        self.delta[uniq] = d.to(self.delta)
        return (x + d[inverse]).clamp(0.0, 1.0)

    def merge_ranks(self, touched: torch.Tensor) -> None:
        """Under ``torchrun``: make the table one again after each rank updated the rows of its own batches.

        Every row becomes the mean of the versions of the ranks that updated it (``touched``, a boolean per row);
        rows no rank touched keep their value, which is the same on every rank. Sample-wise rows have one owner when
        the ranks take disjoint shards of the data, so each gets exactly its owner's PGD result; a class-wise row is
        updated by every rank and gets the mean of their updates, which stays within the budget (a convex combination
        of points in the box). A no-op in a single process.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        mask = touched.to(self.delta.device, self.delta.dtype)
        total = self.delta * mask.view(-1, *([1] * (self.delta.ndim - 1)))
        dist.all_reduce(total)
        dist.all_reduce(mask)
        upd = mask > 0
        self.delta[upd] = total[upd] / mask[upd].view(-1, *([1] * (self.delta.ndim - 1)))

    def config(self) -> dict:
        return {"num_items": self.num_items, "image_shape": list(self.image_shape), "mode": self.mode,
                "eps": self.eps, "step_size": self.step_size, "steps": self.steps, "seed": self.seed,
                "budget_map": self.budget_map}
