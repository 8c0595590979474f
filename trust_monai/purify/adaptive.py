"""A D-VAE whose perturbation floor is chosen from the received data, with the poisoning check as the judge.

Why the floor decides what D-VAE can remove: above ``perturbation_floor`` the perturbation branch pays its energy
``mean(p^2)`` one for one, while carrying a poison ``d`` gains at most ``mean(d^2)`` in the reconstruction term; the
optimum of ``mean((d - p)^2) + mean(p^2)`` is ``p = d / 2``. So a poison whose energy is far above the floor is at
best halved in stage 1, and a coarse one the rate-limited image branch can draw anyway (a class-wise patch code)
stays in the image. The bundle's floor (0.0005) suits the 8/255-sized poisons it was tuned on; on a class-wise block
code of 38/255 (energy 0.016) the two stages left 68% of it and a victim scored 34.5% (29.2% undefended), with the
floor at 0.05 61.9% (``bundles/dvae_natural/docs/README.md``). A received set is not labelled with its budget, so
the floor is chosen per set:

Rule (:class:`AdaptivePurification`): train the two stages with the first candidate floor; purify the training
images in memory, rounded to 8 bits as the writer stores them; run :func:`~trust_monai.purify.check.check_poisoning`
on the output. If no probe is *clearly* above its threshold (by more than two binomial standard errors of its
held-out accuracy: about 0.02 at 1500 held-out images) and none is above it at all, keep that purifier and stop;
otherwise train a **second pass**: the same two-stage D-VAE trained on that first copy and run on it (inference then
chains the two purifiers: :func:`purifier_checkpoints`), judged the same way. A first copy flagged only within noise
stops there: the second pass is kept unless it is clearly flagged (then the first). A clearly flagged first copy goes
on to the next (larger) floors when its second pass is clearly flagged too. If every copy is clearly flagged, keep
the largest floor. Why a second pass before a larger floor: a pass halves what sits above the floor (above),
so a second one takes much of what the first left, at the first floor's small cost on content; on LSP at 4x its L2
it took the check from 0.953 to 0.888 (within noise) and converged victims from 70.9% to 78.9%, where the larger
floors had given 57.6% and 50.9%; on the 16/255 block code, whose first copy is flagged within noise (where larger
floors did worse), from 78.5% to 82.4% (clean 86.7%; 12-epoch victims, 2 seeds). Measured on two block codes
(``bundles/dvae_natural/docs/README.md``): at 16/255 the first copy was flagged by 0.007 only, and victims did worse
at larger floors (79.3%, 75.0%, 72.4% at 0.0005, 0.005, 0.05); at 38/255 every copy was flagged by 0.14-0.18 and
victims did better at every step (34.5%, 47.2%, 61.9%), while the check's scores of those failing copies ranked 0.005
first, so they do not choose among clear failures. The tolerance was set after seeing these two cases. Before the
second pass, the fallback was wrong once in the budget sweep: on LSP at 4x its L2 every floor's copy is clearly
flagged and victims did *worse* at larger floors (75.2%, 57.6%, 50.9%, 4-epoch victims), the check's scores again not
telling which; the second pass now stops the search there. The kept checkpoints are copied to where inference
reads them, and every candidate is recorded in ``ckpt_dir/dvae_adaptive.json``. If the kept copy is flagged, the
log says so (and inference's check of the written copy prints it): the poison may be stronger than this purifier
removes.

**With clean validation images** (``validation``: a few thousand labelled images of the user's own, never the set
the final model is tested on), a set whose first copy is clearly flagged is judged by what a user wants instead:
every candidate is trained (the floors, then the ``variants``: by default the perturbation branch reading the encoder
features, which can follow a poison that differs on every image such as AR noise; the class-wise branch cannot),
a small ResNet is trained for a few epochs on each candidate's copy, and
the candidate whose network scores best on the validation images is kept, unless one passes the check first; the
best first pass judged so also gets a second pass (when it is not the first floor's, which had one already). In
the budget sweep it kept the class-wise floor-0.0005 copy of LSP at 4x (victim 76.79%; the check-only rule 50.86%)
and the sample-wise copy of AR at 4x (75.67%; 49.93%), where the check cannot tell the copies apart. The check-only
rule stays the default when no validation images are given.

A set whose first purification passes the check costs one in-memory purification and a check (seconds) more than
the plain D-VAE.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..utils.fileio import atomic_path, atomic_write_text, sha256_file
from .check import check_poisoning
from .dvae import DVAEPurifier, StageOutputs, TwoStagePurification

__all__ = ["AdaptivePurification", "DEFAULT_FLOORS", "DEFAULT_VARIANTS", "probe_accuracy", "purifier_checkpoints"]

logger = logging.getLogger("trust_monai.purify")

DEFAULT_FLOORS = (0.0005, 0.005, 0.05)  # the tuned floor, then 10x steps up to about a 57/255 block code's energy
# tried with validation images only: the branch reading the encoder features. (The stage-1 rate is not a variant: the
# KL stays above 1.0 nats throughout stage 1, so targets of 1.0, 0.5 and 0.25 train bit-identical weights, and a 10x
# rate weight, which does hold the KL at the target, gave LSP at 4x the same victim: 76.20% against 76.79%.)
DEFAULT_VARIANTS = ({"samplewise_perturbation": True},)


class AdaptivePurification:
    """Train two-stage D-VAEs at increasing perturbation floors until the poisoning check passes their output.

    Args:
        dataset: training items ``{"image", "label"}`` with image-level integer labels (the check needs classes).
        network_factory: as :class:`~trust_monai.purify.dvae.TwoStagePurification`.
        ckpt_dir: the kept purifier goes to ``ckpt_dir/dvae_stage1.pt`` / ``dvae_stage2.pt`` (a kept second pass
            also to ``dvae_pass2_stage1.pt`` / ``dvae_pass2_stage2.pt``: :func:`purifier_checkpoints`); each candidate
            trains in ``ckpt_dir/floor_<f>/`` (a rerun reuses finished candidates).
        floors: candidate floors, tried in this order; one floor is the plain D-VAE.
        stages, prefix: as :class:`TwoStagePurification`; the ablations (``stages=1``, ``prefix="vae"``) train one
            purifier at the first floor, as does a single floor.
        check_kwargs: passed to :func:`check_poisoning` (``thresholds``, ``max_images``, ``seed``).
        batch_size: for the in-memory purification.
        min_images: a smaller training set gets the plain D-VAE at the first floor: the check's thresholds were set
            on 2000-3000 images, and on a few dozen a barely trained purifier's copy reads as class-separable.
        validation: clean labelled images (items ``{"image", "label"}``) to choose among clearly flagged candidates
            by a small network's accuracy on them; ``None``: the check-only rule.
        variants: candidates tried after the floors when ``validation`` is given, each at the first floor with
            some of ``samplewise_perturbation`` (the branch's input) and ``rate_targets`` (both stages) changed.
        validation_epochs: epochs of the small network trained on each candidate's copy.
        kwargs: the rest of :class:`TwoStagePurification`'s arguments (``max_epochs``, ``rate_targets``, ...).
    """

    def __init__(self, dataset: Dataset, network_factory: Callable[[], nn.Module], ckpt_dir: str | os.PathLike,
                 floors: Sequence[float] = DEFAULT_FLOORS, check_kwargs: dict | None = None, batch_size: int = 128,
                 min_images: int = 2000, validation: Dataset | None = None, variants: Sequence[dict] = DEFAULT_VARIANTS,
                 validation_epochs: int = 4, **kwargs):
        if not floors:
            raise ValueError("floors: give at least one perturbation floor")
        for v in variants:
            unknown = set(v) - {"samplewise_perturbation", "rate_targets"}
            if unknown:
                raise ValueError(f"variants: unknown setting(s) {sorted(unknown)}; "
                                 "use samplewise_perturbation, rate_targets")
        self.validation, self.validation_epochs = validation, int(validation_epochs)
        self._validation_tensors: tuple[torch.Tensor, torch.Tensor] | None = None
        self.variants = [dict(v) for v in variants]
        self.dataset, self.network_factory, self.ckpt_dir = dataset, network_factory, Path(ckpt_dir)
        self.floors = [float(f) for f in floors]
        self.check_kwargs, self.batch_size, self.kwargs = dict(check_kwargs or {}), int(batch_size), kwargs
        self.min_images = int(min_images)
        self.kwargs.pop("perturbation_floor", None)
        self.stages, self.prefix = int(self.kwargs.pop("stages", 2)), self.kwargs.pop("prefix", "dvae")
        self.candidates: list[dict] = []

    def run(self) -> list[Path]:
        """Train the candidates as the rule says; return the kept purifier's checkpoint paths."""
        self.candidates = []
        if self.validation is not None:
            _check_validation(self.dataset, self.validation)
        small = len(self.dataset) < self.min_images
        if small and len(self.floors) > 1 and self.stages == 2 and self.prefix == "dvae":
            logger.info(f"{len(self.dataset)} training images, fewer than the {self.min_images} the poisoning check's "
                        f"thresholds were set at: no floor is chosen from the data, the first ({self.floors[0]:g}) is used")
        if small or (len(self.floors) == 1 and self.validation is None) or self.stages != 2 or self.prefix != "dvae":
            # the plain D-VAE, and the ablations (stage 1 alone, the plain VAE): one purifier at the first floor
            paths = TwoStagePurification(self.dataset, self.network_factory, self.ckpt_dir, stages=self.stages,
                                         prefix=self.prefix, batch_size=self.batch_size,
                                         perturbation_floor=self.floors[0], **self.kwargs).run()
            if self.prefix == "dvae" and self.stages == 2:
                from ..utils.dist import rank_world

                if rank_world()[0] == 0:  # an earlier adaptive run's second pass (inference would chain it) and
                    _remove_second_pass(self.ckpt_dir)  # its record, which would describe another purifier
                    (self.ckpt_dir / "dvae_adaptive.json").unlink(missing_ok=True)
            return paths
        settings = [{"floor": self.floors[0]}, {"floor": self.floors[0], "second_pass": True}]
        settings += [{"floor": f} for f in self.floors[1:]]
        if self.validation is not None:
            settings += [{"floor": self.floors[0], **v} for v in self.variants]
        while settings:
            cand = settings.pop(0)
            entry = self._candidate(cand)
            self.candidates.append(entry)
            if not entry["poisoned"] or (not entry["clearly_poisoned"] and cand.get("second_pass")):
                break
            if not entry["clearly_poisoned"]:  # a first floor flagged within noise: its second pass, then stop
                settings = [s for s in settings if s.get("second_pass")][:1]
                continue
            if not settings and self.validation is not None and all(c["clearly_poisoned"] for c in self.candidates):
                # the best first pass judged on the validation images gets its own second pass, once
                first = max((c for c in self.candidates if not c.get("second_pass")),
                            key=lambda c: c["validation_accuracy"])
                again = {k: v for k, v in first.items() if k in _SETTINGS} | {"second_pass": True}
                if not any(_folder(c) == _folder(again) for c in self.candidates):
                    settings.append(again)
        from ..utils.dist import barrier, rank_world

        # the last not clearly flagged (the loop stops there, or after the second pass of a first floor flagged
        # within noise); when all are clearly flagged, the best on the validation images, else the last tried
        best = next((c for c in reversed(self.candidates) if not c["clearly_poisoned"]), self.candidates[-1])
        if best["clearly_poisoned"] and self.validation is not None:
            best = max(self.candidates, key=lambda c: c["validation_accuracy"])
        kept = purifier_checkpoints(self.ckpt_dir, "dvae", passes=len(best["checkpoints"]) // 2)
        if rank_world()[0] == 0:  # every rank chose the same candidate (same data, same check); one writes
            _remove_second_pass(self.ckpt_dir)  # inference chains a second pass whenever its files are there
            for src, dst in zip(best["checkpoints"], kept):
                with atomic_path(dst) as tmp:
                    shutil.copyfile(src, tmp)
            rule = ("the first candidate whose output is not clearly flagged by the poisoning check (no probe more "
                    "than 2 binomial standard errors above its threshold), else "
                    + ("the one whose copy trains the most accurate small network on the validation images"
                       if self.validation is not None else "the largest floor"))
            record = {"rule": rule, "kept_floor": best["floor"], "kept": _describe(best),
                      "samplewise_perturbation": best.get("samplewise_perturbation"),
                      "passes": len(kept) // 2, "kept_checkpoints": [p.name for p in kept],
                      "still_poisoned": best["poisoned"], "candidates": self.candidates}
            atomic_write_text(self.ckpt_dir / "dvae_adaptive.json", json.dumps(record, indent=1) + "\n")
        barrier()
        if best["clearly_poisoned"]:
            how = (f"kept {_describe(best)}, whose copy trained the best network on the validation images "
                   f"({best['validation_accuracy']:.4f})" if self.validation is not None
                   else f"kept the largest floor, {best['floor']:g}")
            logger.warning(f"the purified set still looks poisoned for every candidate tried ({len(self.candidates)}); "
                           f"{how} (check score {best['score']:+.3f}): this poison is "
                           "stronger than the purifier removes, and a model trained on the output may learn part of it")
        elif best["poisoned"]:
            logger.warning(f"kept {_describe(best)}: its output is flagged by the poisoning check, but only within "
                           f"the check's own noise (score {best['score']:+.3f}); later candidates are not tried then "
                           "(larger floors cost a victim accuracy on such sets)")
        else:
            logger.info(f"kept {_describe(best)}: its output passes the poisoning check")
        return kept

    def _candidate(self, cand: dict) -> dict:
        """Train one candidate (a second pass: on its first pass's output), purify the training images with it in
        memory and judge the copy; return its record."""
        factory = self._factory(cand)
        kwargs = dict(self.kwargs, **({"rate_targets": cand["rate_targets"]} if "rate_targets" in cand else {}))
        first: list[Path] = []
        data: Dataset = self.dataset
        if cand.get("second_pass"):
            base = {k: v for k, v in cand.items() if k != "second_pass"}
            first = [Path(p) for p in next(c for c in self.candidates if _folder(c) == _folder(base))["checkpoints"]]
            data_id = _folder(base) + ":" + "+".join(sha256_file(p)[:16] for p in first)
            # the first pass's output before rounding, what the chained purifier's second pass receives (recomputed
            # rather than kept from the first pass's judging: a copy per candidate would hold a large set in memory)
            source = self._purified(first, factory, self.dataset)[0]
            data = StageOutputs(self.dataset, source.unbind(0), data_id=data_id)
        paths = TwoStagePurification(data, factory, self.ckpt_dir / _folder(cand), stages=2,
                                     batch_size=self.batch_size, perturbation_floor=cand["floor"], **kwargs).run()
        purified, labels = self._purified(paths, factory, data)
        images = purified.mul(255).round().to(torch.uint8)  # what the written PNGs will hold
        result = check_poisoning(images, labels, **self.check_kwargs)
        clearly = result.clearly_poisoned
        entry = {**cand, "checkpoints": [str(p) for p in first + paths], "poisoned": result.poisoned,
                 "clearly_poisoned": clearly, "score": result.score, "scores": result.scores}
        if clearly and self.validation is not None:
            entry["validation_accuracy"] = self._validate(images, labels)
        scores = ", ".join(f"{k} {v:.3f}" for k, v in result.scores.items())
        judged = f"; validation accuracy {entry['validation_accuracy']:.4f}" if "validation_accuracy" in entry else ""
        logger.info(f"{_describe(cand)}: the output {'still looks poisoned to' if result.poisoned else 'passes'} "
                    f"the poisoning check ({scores}){judged}")
        return entry

    def _factory(self, cand: dict) -> Callable[[], nn.Module]:
        if "samplewise_perturbation" not in cand:
            return self.network_factory

        def factory():
            net = self.network_factory()
            net.set_perturbation_source(cand["samplewise_perturbation"])  # stored in the checkpoint it trains
            return net

        return factory

    def _validate(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """Accuracy on the validation images of a small ResNet trained for ``validation_epochs`` on a purified copy."""
        if self._validation_tensors is None:  # read once, judged against every candidate
            val = DataLoader(self.validation, batch_size=512, shuffle=False)
            self._validation_tensors = (torch.cat([b["image"].float() for b in val]),
                                        torch.cat([torch.as_tensor(b["label"]).reshape(-1) for b in val]).long())
        seed = int(self.kwargs.get("seed", 0))
        return probe_accuracy(images.float() / 255, labels.long(), *self._validation_tensors,
                              epochs=self.validation_epochs, seed=seed, device=self.kwargs.get("device", "cpu"))

    @torch.no_grad()
    def _purified(self, paths: Sequence[Path], factory: Callable[[], nn.Module],
                  data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """``data``'s images through the two stages (float, as the writer receives them) and their labels."""
        device = torch.device(self.kwargs.get("device", "cpu"))
        purifier = DVAEPurifier(factory, paths).load().to(device)
        out, labels = [], []
        for batch in DataLoader(data, batch_size=self.batch_size * 2, shuffle=False):
            x, y = batch["image"].float().to(device), batch["label"].to(device)
            out.append(purifier.apply(x, y=y).cpu())
            labels.append(torch.as_tensor(batch["label"]).reshape(-1).cpu())
        return torch.cat(out), torch.cat(labels)


def _check_validation(train: Dataset, validation: Dataset) -> None:
    """Validation images must be labelled images of the training images' size and channels: a clear error before
    any training otherwise."""
    from ..errors import DatalistError

    if len(validation) == 0:
        raise DatalistError("validation: the clean validation set is empty; give a few thousand labelled images")
    a, b = train[0], validation[0]
    if tuple(a["image"].shape) != tuple(b["image"].shape):
        raise DatalistError(
            f"validation images are {tuple(b['image'].shape)} ({b.get('path', 'first validation image')}), training "
            f"images {tuple(a['image'].shape)} ({a.get('path', 'first training image')}): give validation images of "
            "the same size and channels")


def purifier_checkpoints(ckpt_dir: str | os.PathLike, defence: str = "dvae", passes: int | None = None) -> list[Path]:
    """The checkpoint files a D-VAE defence reads from ``ckpt_dir``: ``vae_stage1.pt`` for ``vae``;
    ``dvae_stage1.pt`` (``dvae_stage1``, the ablation); ``dvae_stage{1,2}.pt`` for ``dvae``, followed by
    ``dvae_pass2_stage{1,2}.pt`` when :class:`AdaptivePurification` kept a second pass (``passes``, 1 or 2: which
    names to give, whatever is on disk)."""
    root = Path(ckpt_dir)
    if defence == "vae":
        return [root / "vae_stage1.pt"]
    if defence == "dvae_stage1":
        return [root / "dvae_stage1.pt"]
    if passes is None:
        passes = 2 if all((root / f"dvae_pass2_stage{k}.pt").is_file() for k in (1, 2)) else 1
    return [root / f"dvae_stage{k}.pt" for k in (1, 2)] + [root / f"dvae_pass2_stage{k}.pt" for k in (1, 2)
                                                           if passes == 2]


def _remove_second_pass(ckpt_dir: Path) -> None:
    for k in (1, 2):
        (ckpt_dir / f"dvae_pass2_stage{k}.pt").unlink(missing_ok=True)


_SETTINGS = ("floor", "samplewise_perturbation", "rate_targets")  # what names a first-pass candidate


def _folder(cand: dict) -> str:
    """Candidate folder: ``floor_<f>`` for a floor alone (as before variants existed), then each changed setting;
    ``_pass2`` for a second pass on that candidate's copy."""
    name = f"floor_{cand['floor']:g}"
    if "samplewise_perturbation" in cand:
        name += f"_source_{str(cand['samplewise_perturbation']).lower()}"
    if "rate_targets" in cand:
        name += "_rate_" + "_".join(f"{r:g}" for r in cand["rate_targets"])
    return name + ("_pass2" if cand.get("second_pass") else "")


def _describe(cand: dict) -> str:
    parts = [f"perturbation floor {cand['floor']:g}"]
    if "samplewise_perturbation" in cand:
        parts.append(f"samplewise_perturbation {cand['samplewise_perturbation']}")
    if "rate_targets" in cand:
        parts.append("rate targets " + " / ".join(f"{r:g}" for r in cand["rate_targets"]))
    if cand.get("second_pass"):
        parts.append("second pass on that copy")
    return ", ".join(parts)


def probe_accuracy(x: torch.Tensor, y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor, epochs: int = 4,
                   seed: int = 0, device="cpu", batch_size: int = 128, max_train: int = 5000) -> float:
    """Clean accuracy of a small ResNet trained briefly on ``(x, y)`` (at most ``max_train`` images): the matrix's
    victim recipe (SGD with Nesterov momentum, one-cycle learning rate 0.1)."""
    from ..networks import SmallResNet

    g = torch.Generator().manual_seed(seed)
    if len(x) > max_train:
        keep = torch.randperm(len(x), generator=g)[:max_train]
        x, y = x[keep], y[keep]
    torch.manual_seed(seed)
    num_classes = int(max(int(y.max()), int(val_y.max()))) + 1
    net = SmallResNet(2, x.shape[1], num_classes, widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1)).to(device)
    steps = max(1, epochs * -(-len(x) // batch_size))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps, pct_start=0.15)
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(batch_size):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(x[idx].to(device)), y[idx].to(device)).backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(b.to(device)).argmax(1).cpu() for b in val_x.split(512)])
    return float((pred == val_y).float().mean())
