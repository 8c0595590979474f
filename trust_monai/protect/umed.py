"""UMed: learn a perturbation that fresh segmenters learn faster than anatomy, and protect cases with it.

Error-minimizing ("min-min") as in "Unlearnable Examples: Making Personal Data Unexploitable", with UMed's
contour- and texture-aware generators. One co-trained surrogate is not enough pressure: generator and surrogate
reach the same loss together and nothing asks the perturbation to be *easier to learn than anatomy*. So the
generator is trained against an ensemble of surrogates (different architectures) that are re-initialised every
``reinit_every`` iterations, and it lowers the loss those young networks reach after a few steps on protected data.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.utils import CommonKeys as Keys

from ..networks import reinitialise
from ..transforms.roi import contour_band

__all__ = ["UMedTrainer", "UMedProtector", "SampleWiseProtector", "samplewise_noise_data", "usable_cases", "check_case"]


def check_case(image, label, name: str, label_name: str, num_classes: int | None = None) -> None:
    """Raise :class:`~trust_monai.errors.CaseError` naming the file if a case cannot be protected or learnt from:
    NaN / Inf voxels, or labels outside ``0..num_classes-1``. Learning and protecting share it, so both refuse the
    same cases with the same line."""
    import numpy as np

    from ..errors import CaseError

    if not np.isfinite(np.asarray(image, dtype=np.float64)).all():
        raise CaseError(f"{name}: image has NaN or Inf voxels")
    lab = np.asarray(label)
    if lab.min() < 0 or (num_classes is not None and lab.max() >= num_classes):
        raise CaseError(f"{label_name}: label values {int(lab.min())}..{int(lab.max())} outside 0..{num_classes - 1}")


def usable_cases(files: Sequence[dict], num_classes: int | None = None) -> list[dict]:
    """The training cases the generators can learn from; each other case gets one line naming its file and why.

    A case is skipped when its mask cannot be read against its image (other shape or geometry, colour channels), has
    no foreground, or holds labels outside ``0..num_classes-1``. Skipping here keeps one bad case from stopping the
    learning; the protect step reports the same case as failed, and the rest of the dataset is still written.

    Raises:
        TrustMonaiError: no usable case is left.
    """
    from pathlib import Path

    import numpy as np

    from ..data.io import read_image
    from ..engines.case_writer import read_case_label
    from ..errors import CaseError, InputFileError, TrustMonaiError

    kept, empty = [], []
    for entry in files:
        try:
            image, meta = read_image(entry["image"])
            label, label_path = read_case_label(entry, image, meta, "UMed")
            check_case(image, label, entry["image"], label_path, num_classes)
        except (CaseError, InputFileError) as e:
            print(f"[umed] skipping {e}")
            continue
        if (np.asarray(label) > 0).any():
            kept.append(entry)
        else:
            empty.append(Path(label_path).name)
    if empty:
        # slices without foreground are normal in a slice dataset: one summary line, not one line per slice
        shown = ", ".join(empty[:3]) + (", ..." if len(empty) > 3 else "")
        print(f"[umed] {len(empty)} of {len(files)} training cases have an empty mask ({shown}): nothing to learn "
              "from them; protecting copies them unchanged")
    if not kept:
        raise TrustMonaiError("no training case has a usable mask (see the lines above); nothing to learn from")
    return kept


class UMedTrainer(SupervisedTrainer):
    """MONAI ``SupervisedTrainer`` whose iteration alternates generator and surrogate-ensemble updates.

    Objective (alternating, not unrolled): every iteration first takes ``g_steps`` generator steps that lower the
    mean Dice + CE of all surrogates on ``x + delta``, then one step of every surrogate on ``x + delta``. Every
    ``reinit_every`` iterations the surrogates get fresh random weights and fresh optimiser state, so the generator
    always faces networks that have seen at most ``reinit_every`` protected batches: what it learns is a perturbation
    that is learnt *fast from scratch*, i.e. a shortcut, rather than one tuned to a single converged surrogate.

    Stopping: before training, each surrogate is trained ``reinit_every`` steps from scratch on *clean* batches; the
    mean of its last fifth of losses is the clean reference. At the end of each cycle the same statistic of the
    protected losses gives the learnability ratio ``protected / clean`` (both at equal steps from scratch, same
    architectures). Training stops once the ratio is at most ``target_ratio`` (or at ``max_epochs``). The history is in
    ``engine.state.learnability`` and, with ``history_file``, written as JSON.

    Args:
        network / optimizer / loss_function: the first surrogate, its optimiser and the loss (Dice + CE on logits
            against an integer label map); other arguments are SupervisedTrainer's.
        generator / g_optimizer / g_steps: the perturbation network, its optimiser, its steps per iteration.
        extra_surrogates: more surrogates (other architectures); each gets a copy of ``optimizer``'s class and lr.
        reinit_every: cycle length K in iterations (0: never re-initialise, no ratio, fixed epochs).
        target_ratio: stop when the cycle's learnability ratio is at most this.
        history_file: where the ratio history goes (JSON), or None.

    Output of each iteration: ``image`` (= x + delta), ``label``, ``pred``, ``loss`` (mean surrogate loss) and
    ``g_loss``.
    """

    def __init__(
        self,
        *args: Any,
        generator: torch.nn.Module,
        g_optimizer: torch.optim.Optimizer,
        g_steps: int = 1,
        extra_surrogates: Sequence[torch.nn.Module] = (),
        reinit_every: int = 0,
        target_ratio: float = 0.85,
        history_file: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.generator = generator
        self.g_optimizer = g_optimizer
        self.g_steps = int(g_steps)
        self.surrogates = [self.network, *[s.to(self.state.device) for s in extra_surrogates]]
        group = self.optimizer.param_groups[0]
        self.surrogate_opts = [self.optimizer] + [
            type(self.optimizer)(s.parameters(), lr=group["lr"]) for s in self.surrogates[1:]
        ]
        self.reinit_every, self.target_ratio, self.history_file = int(reinit_every), float(target_ratio), history_file
        self.state.learnability = []
        self._cycle_losses: list[float] = []
        self._clean_reference: float | None = None
        if self.reinit_every > 0:
            self.add_event_handler(Events.STARTED, self._measure_clean_reference)
            self.add_event_handler(Events.ITERATION_COMPLETED(every=self.reinit_every), self._end_cycle)

    def _reset_surrogates(self) -> None:
        for net, opt in zip(self.surrogates, self.surrogate_opts):
            reinitialise(net)
            opt.state.clear()

    def _tail(self, losses: Sequence[float]) -> float:
        k = max(1, len(losses) // 5)
        return float(sum(losses[-k:]) / k)

    def _measure_clean_reference(self, engine: "UMedTrainer") -> None:
        """Loss of fresh surrogates after ``reinit_every`` steps on clean data: the ratio's denominator."""
        from tqdm.auto import trange

        losses: list[float] = []
        self._reset_surrogates()
        batches = iter(engine.data_loader)
        for _ in trange(self.reinit_every, desc="clean reference (fresh surrogates on clean data)", leave=False):
            try:
                batchdata = next(batches)
            except StopIteration:
                batches = iter(engine.data_loader)
                batchdata = next(batches)
            x, y = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)[:2]
            losses.append(self._surrogate_step(engine, x, y)[1])
        self._clean_reference = self._tail(losses)
        self._reset_surrogates()

    def _end_cycle(self, engine: "UMedTrainer") -> None:
        protected = self._tail(self._cycle_losses)
        ratio = protected / max(self._clean_reference or 0.0, 1e-8)
        engine.state.learnability.append({
            "iteration": engine.state.iteration, "protected_loss": protected,
            "clean_loss": self._clean_reference, "ratio": ratio,
        })
        if self.history_file:
            from ..utils.fileio import atomic_write_json

            atomic_write_json(self.history_file, {"target_ratio": self.target_ratio, "cycles": engine.state.learnability})
        self._cycle_losses = []
        if ratio <= self.target_ratio:
            engine.terminate()
        else:
            self._reset_surrogates()

    def _surrogate_step(self, engine: "UMedTrainer", x: torch.Tensor, y: torch.Tensor):
        """One optimiser step of every surrogate on ``x``; returns (first surrogate's logits, mean loss)."""
        preds, total = [], 0.0
        for net, opt in zip(self.surrogates, self.surrogate_opts):
            net.train()
            opt.zero_grad(set_to_none=engine.optim_set_to_none)
            pred = engine.inferer(x, net)
            loss = engine.loss_function(pred, y).mean()
            loss.backward()
            opt.step()
            preds.append(pred.detach())
            total += float(loss.detach())
        return preds[0], total / len(self.surrogates)

    def _iteration(self, engine: "UMedTrainer", batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        x, y = batch[0], batch[1]
        gen = engine.generator

        # min over delta: the generator lowers every surrogate's loss (frozen statistics while it learns)
        gen.train()
        for net in self.surrogates:
            net.eval()
        g_loss = torch.zeros(())
        for _ in range(self.g_steps):
            engine.g_optimizer.zero_grad(set_to_none=True)
            x_adv = x + gen(x, y)
            g_loss = torch.stack([engine.loss_function(engine.inferer(x_adv, n), y).mean() for n in self.surrogates]).mean()
            g_loss.backward()
            engine.g_optimizer.step()

        # min over theta: the surrogates learn from the current protected batch
        with torch.no_grad():
            gen.eval()
            x_adv = x + gen(x, y)
        pred, loss = self._surrogate_step(engine, x_adv, y)
        self._cycle_losses.append(loss)
        engine.state.output = {
            Keys.IMAGE: x_adv,
            Keys.LABEL: y,
            Keys.PRED: pred,
            Keys.LOSS: torch.tensor(loss),
            "g_loss": g_loss.detach(),
        }
        return engine.state.output


class UMedProtector:
    """Protect one case with a trained :class:`~trust_monai.networks.UMedGenerator` (a ``CaseWriter`` processor).

    The scan is windowed to [0, 1] (CT: fixed HU window; MR: percentiles), the generator's ``delta`` is mapped back to
    the scan's own units (``delta * (high - low)``) and added, so the file keeps its dtype and geometry. For integer
    scans the change is rounded and then clipped to ``floor(eps * (high - low))`` so rounding never breaks the budget.

    Args:
        generator: the network (its ``epsilon`` is the budget in normalised units).
        checkpoint: state-dict file of the generator (loaded with ``weights_only=True``), or None if already loaded.
        device: where the generator runs.
        ct_window / percentiles: the intensity window (see :mod:`trust_monai.transforms.intensity`).
        num_classes: labels must lie in ``[0, num_classes)`` when given.

    Returns (per call): ``(protected_array, metrics)``, or ``(None, metrics)`` for an empty mask (nothing to protect).
    """

    def __init__(
        self,
        generator: torch.nn.Module,
        checkpoint=None,
        device="cpu",
        ct_window=(-1000.0, 1000.0),
        percentiles=(0.5, 99.5),
        num_classes: int | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.generator = generator.to(self.device).eval()
        # loaded on the first case, so unreadable inputs are reported before a missing checkpoint
        self.checkpoint = checkpoint
        self.ct_window, self.percentiles, self.num_classes = ct_window, percentiles, num_classes

    def __call__(self, image, meta, entry: dict):
        """CaseWriter processor: read and check the case's mask, then :meth:`protect`."""
        from ..engines.case_writer import in_monai_axes, read_case_label

        label, label_path = read_case_label(entry, image, meta, "UMed")
        # the datalist's modality, else the DICOM header's: a CT series must get the CT window, not MR percentiles
        modality = entry.get("modality") or meta.modality or "MR"
        return in_monai_axes(meta, self.protect, image, label, modality=modality, name=entry["image"],
                             label_name=label_path, step=meta.value_step)

    def delta(self, x: torch.Tensor, y: torch.Tensor, name: str) -> torch.Tensor:
        """Perturbation in window units for a (1, 1, *spatial) windowed image and its label map."""
        return self.generator(x, y)

    def protect(self, image, label, modality: str = "MR", name: str = "image", label_name: str = "label",
                step: float = 0.0):
        """Protect in-memory arrays (same shape, voxel order): ``(protected, metrics)`` or ``(None, metrics)``.

        ``step``: the value grid of the file the result goes to (:attr:`ImageMeta.value_step`; integer arrays are on
        a grid of 1 anyway); the change is rounded to it and kept within the budget *after* rounding.
        A colour image (channel last, RGB or RGBA) is protected through its luminance: the same change goes into each
        colour channel (alpha untouched), so every channel stays within the budget.
        """
        import numpy as np

        from ..errors import CaseError
        from ..metrics.image import image_change_metrics
        from ..transforms.intensity import ScanNormalize, is_colour, to_channels, to_luminance

        if self.checkpoint is not None:
            from ..utils.checkpoint import load_state_dict

            load_state_dict(self.generator, self.checkpoint)
            self.checkpoint = None
        image_np, lab = np.asarray(image), np.asarray(label)
        check_case(image_np, lab, name, label_name, self.num_classes)
        if not (lab > 0).any():
            return None, {"empty_mask": True}
        spatial = self.generator.spatial_dims
        if image_np.ndim == spatial + 1 and image_np.shape[-1] == 1 and lab.shape == image_np.shape:
            # a single-slice DICOM reads as (cols, rows, 1): protect the slice, keep the stored shape
            out, metrics = self.protect(image_np[..., 0], lab[..., 0], modality, name, label_name, step)
            return (None if out is None else out[..., None]), metrics
        colour = is_colour(image_np, spatial) and lab.ndim == spatial
        work = to_luminance(image_np) if colour else image_np
        if work.ndim != spatial:
            raise CaseError(
                f"{name}: {image_np.ndim}D image but the generator is {spatial}D (set --spatial_dims)"
            )
        x, (low, high) = ScanNormalize(self.ct_window, self.percentiles)(work, modality)
        scale = high - low
        with torch.inference_mode():
            xt = x[None, None].to(self.device)
            yt = torch.as_tensor(lab, dtype=torch.float32)[None, None].to(self.device)
            delta = self.delta(xt, yt, name)[0, 0].double().cpu().numpy()
            region = contour_band(yt, self.generator.band_width)[1][0, 0].cpu().numpy() > 0
        change = delta * scale
        if colour:
            change = to_channels(change, image_np.shape[-1])
        eps_native = self.generator.epsilon * scale
        if np.issubdtype(image_np.dtype, np.integer) or step > 0:
            q = float(step) if step > 0 else 1.0
            limit = np.floor(eps_native / q + 1e-9) * q
            change = np.clip(np.rint(change / q) * q, -limit, limit)
            out = image_np.astype(np.float64) + change
            if np.issubdtype(image_np.dtype, np.integer):
                info = np.iinfo(image_np.dtype)
                out = np.clip(out, info.min, info.max)
            out = out.astype(image_np.dtype)
        else:
            # a change of exactly eps would round past it in the file's float type about half the time; two units in
            # the last place of margin keep a full-budget change inside the bound after storage
            ulp = float(np.finfo(image_np.dtype).eps) * float(np.abs(image_np).max()) if image_np.dtype.kind == "f" else 0
            limit = max(eps_native - 2 * ulp, 0.0)
            change = np.clip(change, -limit, limit)
            out = (image_np.astype(np.float64) + change).astype(image_np.dtype)
            # storing in the file's float type rounds; on a near-constant scan (tiny window) that rounding alone can
            # exceed the budget, so such voxels keep their original value: the bound is a guarantee, not a target
            over = np.abs(out.astype(np.float64) - image_np) > eps_native
            out[over] = image_np[over]
        metrics = image_change_metrics(image_np, out, low, high)
        changed = (out != image_np).any(-1) if colour else out != image_np
        metrics.update(
            {"changed_outside_region": int(changed[~region].sum()),
             "epsilon_native": float(eps_native), "window": [float(low), float(high)], "roi_voxels": int((lab > 0).sum())}
        )
        return out, metrics


def samplewise_noise_data(
    files, spatial_dims: int, epsilon: float = 4 / 255, band_width: int = 2, texture_floor: float = 1.0, seed: int = 0,
    steps: int = 20, step_size: float | None = None, multiple: int = 16,
):
    """The per-sample error-minimizing baseline's data and noise table (no generator).

    Every training case is windowed as in training, zero-padded to the largest shape (rounded up to ``multiple`` so
    the surrogate's down-sampling fits), and given a row of an
    :class:`~trust_monai.protect.ErrorMinimizingNoise` table whose per-voxel bound is UMed's budget (``epsilon`` on the
    contour band, texture-scaled inside the mask, 0 elsewhere and in the padding), so the baseline differs from UMed
    only in how the perturbation is found.

    Returns:
        ``(items, noise)``: a list of ``{"image", "label", "index"}`` dicts for a DataLoader, and the noise table.
    """
    import torch.nn.functional as F

    from ..data.pipelines import segmentation_transforms
    from ..transforms.roi import budget_map
    from .error_minimizing import ErrorMinimizingNoise

    load = segmentation_transforms(spatial_dims, train=False)
    cases = [load(f) for f in files]
    shape = [max(c["image"].shape[1 + a] for c in cases) for a in range(spatial_dims)]
    shape = [-(-s // multiple) * multiple for s in shape]

    def pad(t):
        t = torch.as_tensor(t).float()
        widths = []
        for a in reversed(range(spatial_dims)):
            widths += [0, shape[a] - t.shape[1 + a]]
        return F.pad(t, widths)

    items, budgets = [], []
    for i, c in enumerate(cases):
        img, lab = pad(c["image"]), pad(c["label"])
        eps_map, _, _ = budget_map(img[None], lab[None], epsilon, band_width, texture_floor)
        items.append({"image": img, "label": lab, "index": i})
        budgets.append(eps_map[0])
    noise = ErrorMinimizingNoise(
        len(items), [1, *shape], mode="samplewise", eps=epsilon, steps=steps,
        step_size=epsilon / 5 if step_size is None else step_size, seed=seed, budget_map=True,
    )
    noise.set_budget(torch.stack(budgets))
    return items, noise


class SampleWiseProtector(UMedProtector):
    """Protect with the per-sample baseline's learned noise table: the row of the case's training-datalist position.

    Args:
        noise_file: the table saved by the baseline's training (``save_poison`` format).
        dataset_dir: the dataset whose ``training`` order numbered the rows.
        generator_like: a :class:`~trust_monai.networks.UMedGenerator` giving ``spatial_dims`` / ``band_width`` /
            ``epsilon`` (its weights are not used).
        other args: as :class:`UMedProtector`.
    """

    def __init__(self, noise_file, dataset_dir, generator_like, device="cpu", num_classes=None, **kwargs):
        super().__init__(generator_like, None, device, num_classes=num_classes, **kwargs)
        self.noise_file, self.dataset_dir, self.table = noise_file, dataset_dir, None

    def delta(self, x, y, name):
        from ..data.datalist import load_datalist
        from ..errors import CaseError
        from . import load_poison

        if self.table is None:
            self.table = load_poison(self.noise_file).delta
            self.rows = {e["image"]: i for i, e in enumerate(load_datalist(self.dataset_dir, "training"))}
        if name not in self.rows:
            raise CaseError(f"{name}: not in the training list the per-sample noise was learned on")
        row = self.table[self.rows[name]][None]
        row = row[(slice(None), slice(None)) + tuple(slice(0, s) for s in x.shape[2:])]
        if tuple(row.shape[2:]) != tuple(x.shape[2:]):
            raise CaseError(f"{name}: image shape {tuple(x.shape[2:])} differs from the learned noise's")
        return ((x + row.to(x)).clamp(0.0, 1.0) - x)
