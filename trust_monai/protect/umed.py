"""UMed min-min training: generators learn a perturbation that makes a surrogate segmenter's loss small.

Error-minimizing ("min-min") as in "Unlearnable Examples: Making Personal Data Unexploitable", with UMed's
contour- and texture-aware generators: each iteration first updates the generators to *lower* the surrogate's
Dice + cross-entropy on ``x + delta`` (so ``delta`` becomes an easy shortcut for the labels), then updates the
surrogate on ``x + delta``. A victim trained later on protected data learns the shortcut instead of anatomy.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from monai.engines import SupervisedTrainer
from monai.utils import CommonKeys as Keys

__all__ = ["UMedTrainer"]


class UMedTrainer(SupervisedTrainer):
    """MONAI ``SupervisedTrainer`` whose iteration alternates generator and surrogate updates.

    ``network`` is the surrogate segmenter, ``optimizer`` / ``loss_function`` its optimiser and loss (Dice + CE on
    logits against an integer label map). ``generator`` maps ``(image, label)`` to ``delta``; ``g_optimizer`` updates
    it; ``g_steps`` generator updates run per surrogate update. All other arguments are SupervisedTrainer's.

    Output of each iteration: ``image`` (= x + delta), ``label``, ``pred``, ``loss`` (surrogate) and ``g_loss``.
    """

    def __init__(
        self,
        *args: Any,
        generator: torch.nn.Module,
        g_optimizer: torch.optim.Optimizer,
        g_steps: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.generator = generator
        self.g_optimizer = g_optimizer
        self.g_steps = int(g_steps)

    def _iteration(self, engine: "UMedTrainer", batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        x, y = batch[0], batch[1]
        loss_fn: Callable = engine.loss_function
        net, gen = engine.network, engine.generator

        # min over delta: the generator makes the surrogate's loss small
        gen.train()
        net.eval()  # frozen statistics while the generator learns against the current surrogate
        g_loss = torch.zeros(())
        for _ in range(self.g_steps):
            engine.g_optimizer.zero_grad(set_to_none=True)
            g_loss = loss_fn(engine.inferer(x + gen(x, y), net), y).mean()
            g_loss.backward()
            engine.g_optimizer.step()

        # min over theta: the surrogate learns from the current protected batch
        with torch.no_grad():
            gen.eval()
            x_adv = x + gen(x, y)
        net.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        pred = engine.inferer(x_adv, net)
        loss = loss_fn(pred, y).mean()
        loss.backward()
        engine.optimizer.step()
        engine.state.output = {
            Keys.IMAGE: x_adv,
            Keys.LABEL: y,
            Keys.PRED: pred.detach(),
            Keys.LOSS: loss.detach(),
            "g_loss": g_loss.detach(),
        }
        return engine.state.output
