"""The victim study: train fresh networks on clean and on poisoned (or purified) data, compare clean test accuracy.

:class:`VictimEvaluation` trains one victim per condition with MONAI's ``SupervisedTrainer`` and writes the table
(``eval/metrics.csv``, ``metrics.md``), the learning curves (``curves.csv``) and a figure (``ue_natural_eval.png``).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.utils import CommonKeys as Keys
from torch import nn
from torch.utils.data import DataLoader

from ..data.classification import ImageClassificationDataset
from ..bundle import as_bool
from ..errors import BundleError
from ..transforms.crop_flip import random_crop_flip
from ..utils.fileio import atomic_path, atomic_write_text
from .poison_writer import PoisonWriter

__all__ = ["VictimEvaluation", "training_change"]

logger = logging.getLogger("trust_monai.ue_natural")

_NO_CHANGE = {"mean_abs_change": float("nan"), "max_abs_change": float("nan"), "changed_fraction": float("nan")}


def training_change(clean: ImageClassificationDataset, other: ImageClassificationDataset) -> dict[str, float]:
    """How far the decoded training images of ``other`` are from those of ``clean``, matched by relative path.

    Returns ``mean_abs_change`` and ``max_abs_change`` (in units of 1/255, over all values of the matched images)
    and ``changed_fraction`` (share of values that differ); all NaN when no image is matched (other paths or other
    image shapes), so a missing comparison is never mistaken for "unchanged".
    """
    pos = {r: i for i, r in enumerate(clean.rel)}
    pairs = [(pos[r], j) for j, r in enumerate(other.rel) if r in pos]
    if not pairs or list(clean.images.shape[1:]) != list(other.images.shape[1:]):
        return dict(_NO_CHANGE)
    ci, oj = (torch.tensor(t) for t in zip(*pairs))
    d = (other.images[oj].to(torch.int16) - clean.images[ci].to(torch.int16)).abs()
    return {"mean_abs_change": float(d.float().mean()), "max_abs_change": float(d.max()),
            "changed_fraction": float((d > 0).float().mean())}


class VictimEvaluation:
    """Train fresh victims on clean and on poisoned training data; report accuracy on the clean test split.

    For every condition (``clean`` = ``dataset_dir``, plus one per poisoned folder) a new network from
    ``network_factory`` is trained with MONAI's ``SupervisedTrainer`` (SGD, momentum 0.9, weight decay 5e-4, cosine
    learning rate), validated on the clean test split of ``dataset_dir`` after every epoch with a
    ``SupervisedEvaluator``; the curves go to ``output_dir/eval/metrics.csv``, the final accuracies to
    ``metrics.csv`` / ``metrics.md``, and ``ue_natural_eval.png`` shows learning curves and clean / poisoned /
    amplified-noise examples.

    Before a poisoned victim trains, the images it loaded are compared with the clean training images of the same
    relative paths (:func:`training_change`): ``metrics.csv`` records the mean and largest absolute change (in 1/255)
    and the fraction of changed values, so a table row always says what the victim really trained on; a poisoned
    copy identical to the clean data (a wrong folder, a poison rounded away by 8-bit PNG) is logged as a warning.

    Args:
        dataset_dir: clean dataset (training for the clean victim, test for every victim).
        poisoned_dirs: one folder (``str``) or ``{name: folder}``; a folder without ``dataset.json`` is first
            written by ``writer`` when one is given.
        output_dir: results go to ``output_dir/eval``.
        network_factory: callable returning a new network (``_mode_: callable`` in the config).
        epochs, batch_size, lr: victim training.
        max_train, max_test: limit the number of samples (``None``: all).
        augment: random crop (pad 2 for 28 px, 4 for 32 px) + horizontal flip.
        train_clean: also train the clean reference victim.
        writer: a :class:`PoisonWriter` for a missing poisoned folder.
        device, in_channels, num_workers, progress: as usual.
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike,
        poisoned_dirs: str | os.PathLike | Mapping[str, str],
        output_dir: str | os.PathLike,
        network_factory: Callable[[], nn.Module],
        epochs: int = 10,
        batch_size: int = 128,
        lr: float = 0.1,
        max_train: int | None = None,
        max_test: int | None = None,
        augment: bool = False,
        train_clean: bool = True,
        writer: PoisonWriter | None = None,
        device: str | torch.device = "cpu",
        in_channels: int | None = None,
        num_workers: int = 0,
        progress: bool = True,
        seed: int = 0,
    ):
        self.dataset_dir = Path(dataset_dir)
        if isinstance(poisoned_dirs, Mapping):
            self.poisoned = {str(k): Path(v) for k, v in poisoned_dirs.items()}
        elif poisoned_dirs:
            self.poisoned = {"poisoned": Path(poisoned_dirs)}
        else:
            self.poisoned = {}
        self.output_dir = Path(output_dir) / "eval"
        self.network_factory, self.epochs, self.batch_size, self.lr = network_factory, int(epochs), batch_size, lr
        self.max_train, self.max_test = max_train, max_test
        self.augment, self.train_clean = as_bool(augment), as_bool(train_clean)
        self.writer, self.device, self.in_channels = writer, torch.device(device), in_channels
        self.num_workers, self.progress, self.seed = num_workers, progress, int(seed)
        self.curves: dict[str, list[dict]] = {}
        self.changes: dict[str, dict[str, float]] = {}

    def _loader(self, ds, shuffle: bool) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers, generator=g)

    def _train_one(self, name: str, train_dir: Path, test_ds: ImageClassificationDataset) -> list[dict]:
        from ignite.engine import Events
        from ignite.metrics import Accuracy
        from monai.handlers import LrScheduleHandler, StatsHandler, ValidationHandler, from_engine

        torch.manual_seed(self.seed)
        train_ds = ImageClassificationDataset(train_dir, "training", self.max_train, self.in_channels, self.progress)
        if name == "clean":
            self.changes[name] = {"mean_abs_change": 0.0, "max_abs_change": 0.0, "changed_fraction": 0.0}
        else:
            clean = ImageClassificationDataset(self.dataset_dir, "training", self.max_train, self.in_channels, False)
            ch = self.changes[name] = training_change(clean, train_ds)
            if ch["max_abs_change"] == 0:
                logger.warning(f"victim[{name}]: the training images of {train_dir} are identical to the clean ones "
                               f"of {self.dataset_dir}: this victim trains on clean data")
            else:
                logger.info(f"victim[{name}] trains on images that differ from the clean copy by mean |change| "
                            f"{ch['mean_abs_change']:.2f}/255, max {ch['max_abs_change']:.0f}/255, on "
                            f"{ch['changed_fraction'] * 100:.1f}% of values")
        net = self.network_factory().to(self.device)
        opt = torch.optim.SGD(net.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
        loader = self._loader(train_ds, shuffle=True)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=self.lr, total_steps=max(self.epochs * len(loader), 1), pct_start=0.15
        )
        evaluator = SupervisedEvaluator(
            device=self.device,
            val_data_loader=self._loader(test_ds, shuffle=False),
            network=net,
            key_val_metric={"test_acc": Accuracy(output_transform=from_engine([Keys.PRED, Keys.LABEL]))},
            decollate=False,
        )
        pad = max(1, train_ds.image_shape[-1] // 8)
        gen = torch.Generator().manual_seed(self.seed)

        def prepare(batch, device, non_blocking=False, **kw):
            x = batch[Keys.IMAGE]
            if self.augment:
                x = random_crop_flip(x, pad, gen)
            return x.to(device, non_blocking=non_blocking), batch[Keys.LABEL].to(device, non_blocking=non_blocking)

        handlers = [
            LrScheduleHandler(sched, print_lr=False, epoch_level=False),
            ValidationHandler(validator=evaluator, interval=1, epoch_level=True),
            StatsHandler(name=f"victim.{name}", tag_name="train_loss", output_transform=from_engine([Keys.LOSS], first=True),
                         iteration_log=False),
        ]
        trainer = SupervisedTrainer(
            device=self.device,
            max_epochs=self.epochs,
            train_data_loader=loader,
            network=net,
            optimizer=opt,
            loss_function=nn.CrossEntropyLoss(),
            prepare_batch=prepare,
            train_handlers=handlers,
            decollate=False,
        )
        if self.progress:
            from ignite.handlers import ProgressBar

            ProgressBar(desc=f"victim {name}", persist=False).attach(trainer, output_transform=lambda o: {"loss": float(o[Keys.LOSS])})
        curve: list[dict] = []
        losses: list[float] = []
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: losses.clear())
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output[Keys.LOSS])))

        @trainer.on(Events.EPOCH_COMPLETED)
        def _record(engine):  # runs after ValidationHandler (attached first)
            row = {"condition": name, "epoch": engine.state.epoch, "train_loss": float(np.mean(losses)),
                   "test_acc": float(evaluator.state.metrics["test_acc"])}
            curve.append(row)
            logger.info(f"victim[{name}] epoch {row['epoch']}: train loss {row['train_loss']:.4f}, "
                        f"clean test accuracy {row['test_acc']:.4f}")

        t0 = time.time()
        trainer.run()
        logger.info(f"victim[{name}] done in {time.time() - t0:.0f}s: clean test accuracy {curve[-1]['test_acc']:.4f}")
        return curve

    def run(self) -> dict[str, float]:
        """Train every victim and write the results; returns ``{condition: final clean test accuracy}``."""
        missing = [d for d in self.poisoned.values() if not (d / "dataset.json").is_file()]
        for d in missing:
            # the writer fills the one folder it is meant for (several missing folders: ambiguous, so refuse)
            if self.writer is None or len(missing) > 1:
                raise BundleError(f"{d} has no dataset.json; write it first with the bundle's inference.json "
                                  f"(--output_dir {d})")
            logger.info(f"{d} has no dataset yet: writing it first")
            self.writer.output_dir = d.resolve()
            self.writer.run()
        test_ds = ImageClassificationDataset(self.dataset_dir, "test", self.max_test, self.in_channels, self.progress)
        conditions = ([("clean", self.dataset_dir)] if self.train_clean else []) + list(self.poisoned.items())
        for name, d in conditions:
            self.curves[name] = self._train_one(name, d, test_ds)
        final = {n: c[-1]["test_acc"] for n, c in self.curves.items()}
        self._write(final, test_ds)
        return final

    def _write(self, final: dict[str, float], test_ds: ImageClassificationDataset) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["condition", "epoch", "train_loss", "test_acc"], lineterminator="\n")
        w.writeheader()
        for rows in self.curves.values():
            w.writerows(rows)
        atomic_write_text(self.output_dir / "curves.csv", buf.getvalue())
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["condition", "train_dir", "epochs", "n_train", "n_test", "clean_test_acc", "best_test_acc",
                    "mean_abs_change", "max_abs_change", "changed_fraction"])
        dirs = {"clean": self.dataset_dir, **self.poisoned}
        rows = []
        for n, c in self.curves.items():
            n_train = len(ImageClassificationDataset(dirs[n], "training", self.max_train, self.in_channels, False))
            ch = self.changes.get(n, _NO_CHANGE)
            row = [n, str(dirs[n]), self.epochs, n_train, len(test_ds), f"{final[n]:.4f}",
                   f"{max(r['test_acc'] for r in c):.4f}", f"{ch['mean_abs_change']:.3f}",
                   f"{ch['max_abs_change']:.0f}", f"{ch['changed_fraction']:.4f}"]
            rows.append(row)
            w.writerow(row)
        atomic_write_text(self.output_dir / "metrics.csv", buf.getvalue())
        md = ["| condition | training data | epochs | train / test images | clean test accuracy | best epoch accuracy "
              "| change of the training images (mean / max, 1/255) |",
              "|---|---|---|---|---|---|---|"]
        md += [f"| {r[0]} | `{r[1]}` | {r[2]} | {r[3]} / {r[4]} | {float(r[5]) * 100:.2f}% | {float(r[6]) * 100:.2f}% "
               f"| {r[7]} / {r[8]} |" for r in rows]
        atomic_write_text(self.output_dir / "metrics.md", "\n".join(md) + "\n")
        self._figure(test_ds)
        logger.info(f"wrote {self.output_dir / 'metrics.csv'}, metrics.md, curves.csv and ue_natural_eval.png")

    def _figure(self, test_ds) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        examples = []
        clean = ImageClassificationDataset(self.dataset_dir, "training", self.max_train, self.in_channels, False)
        for name, d in self.poisoned.items():
            pois = ImageClassificationDataset(d, "training", self.max_train, self.in_channels, False)
            n = min(6, len(pois), len(clean))
            examples.append((name, clean.images[:n].float() / 255, pois.images[:n].float() / 255))
        rows = 1 + 3 * len(examples)
        ncol = max(6, 1)
        fig = plt.figure(figsize=(2.0 * ncol, 2.2 * rows))
        ax = fig.add_subplot(rows, 1, 1)
        for n, c in self.curves.items():
            ax.plot([r["epoch"] for r in c], [r["test_acc"] * 100 for r in c], marker="o", label=n)
        ax.set_xlabel("epoch")
        ax.set_ylabel("clean test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
        ax.set_title("victim trained on clean vs poisoned data")
        for e, (name, xc, xp) in enumerate(examples):
            noise = xp - xc
            scale = 0.5 / max(float(noise.abs().max()), 1e-8)
            for j in range(xc.shape[0]):
                for r, (img, title) in enumerate(
                    [(xc[j], "clean"), (xp[j], name), ((noise[j] * scale + 0.5).clamp(0, 1), "noise (amplified)")]
                ):
                    a = fig.add_subplot(rows, ncol, ncol * (1 + 3 * e + r) + j + 1)
                    arr = img.permute(1, 2, 0).numpy()
                    a.imshow(arr[..., 0] if arr.shape[-1] == 1 else arr, cmap="gray", vmin=0, vmax=1)
                    a.set_axis_off()
                    if j == 0:
                        a.set_title(title, fontsize=8, loc="left")
        fig.tight_layout()
        with atomic_path(self.output_dir / "ue_natural_eval.png") as tmp:
            fig.savefig(tmp, dpi=80, format="png")
        plt.close(fig)
