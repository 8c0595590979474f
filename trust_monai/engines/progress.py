"""A progress bar handler for bundle JSON: ignite's bar with the chosen scalars of the iteration output beside it."""

from __future__ import annotations

from typing import Sequence

__all__ = ["OutputProgressBar"]


class OutputProgressBar:
    """Attachable handler: a tqdm bar per epoch showing ``keys`` of ``engine.state.output`` (raw engine log lines
    are for logs; people watching a run want one bar).

    Args:
        desc: the bar's label.
        keys: output dict keys whose scalar values are shown (e.g. ``["loss", "g_loss"]``).
        persist: keep finished epoch bars on screen.
    """

    def __init__(self, desc: str = "training", keys: Sequence[str] = ("loss",), persist: bool = False) -> None:
        self.desc, self.keys, self.persist = desc, list(keys), persist

    def _scalars(self, out) -> dict:
        return {k: float(out[k]) for k in self.keys if isinstance(out, dict) and k in out}

    def attach(self, engine) -> None:
        from ignite.handlers import ProgressBar

        ProgressBar(desc=self.desc, persist=self.persist).attach(engine, output_transform=self._scalars)
