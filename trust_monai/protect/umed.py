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

from ..transforms.roi import contour_band

__all__ = ["UMedTrainer", "UMedProtector", "SampleWiseProtector", "samplewise_noise_data"]


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
        from ..engines.case_writer import read_case_label

        label, label_path = read_case_label(entry, image, meta, "UMed")
        # the datalist's modality, else the DICOM header's: a CT series must get the CT window, not MR percentiles
        modality = entry.get("modality") or meta.modality or "MR"
        return self.protect(image, label, modality, name=entry["image"], label_name=label_path, step=meta.value_step)

    def delta(self, x: torch.Tensor, y: torch.Tensor, name: str) -> torch.Tensor:
        """Perturbation in window units for a (1, 1, *spatial) windowed image and its label map."""
        return self.generator(x, y)

    def protect(self, image, label, modality: str = "MR", name: str = "image", label_name: str = "label",
                step: float = 0.0):
        """Protect in-memory arrays (same shape, voxel order): ``(protected, metrics)`` or ``(None, metrics)``.

        ``step``: the value grid of the file the result goes to (:attr:`ImageMeta.value_step`; integer arrays are on
        a grid of 1 anyway); the change is rounded to it and kept within the budget *after* rounding.
        """
        import numpy as np

        from ..errors import CaseError
        from ..metrics.image import image_change_metrics
        from ..transforms.intensity import ScanNormalize

        if self.checkpoint is not None:
            from ..utils.checkpoint import load_state_dict

            load_state_dict(self.generator, self.checkpoint)
            self.checkpoint = None
        image_np = np.asarray(image)
        if not np.isfinite(image_np).all():
            raise CaseError(f"{name}: image has NaN or Inf voxels")
        lab = np.asarray(label)
        if lab.min() < 0 or (self.num_classes is not None and lab.max() >= self.num_classes):
            raise CaseError(
                f"{label_name}: label values {int(lab.min())}..{int(lab.max())} outside 0..{self.num_classes - 1}"
            )
        if not (lab > 0).any():
            return None, {"empty_mask": True}
        spatial = self.generator.spatial_dims
        if image_np.ndim == spatial + 1 and image_np.shape[-1] == 1 and lab.shape == image_np.shape:
            # a single-slice DICOM reads as (cols, rows, 1): protect the slice, keep the stored shape
            out, metrics = self.protect(image_np[..., 0], lab[..., 0], modality, name, label_name, step)
            return (None if out is None else out[..., None]), metrics
        if image_np.ndim != spatial:
            raise CaseError(
                f"{name}: {image_np.ndim}D image but the generator is {spatial}D (set --spatial_dims)"
            )
        x, (low, high) = ScanNormalize(self.ct_window, self.percentiles)(image_np, modality)
        scale = high - low
        with torch.inference_mode():
            xt = x[None, None].to(self.device)
            yt = torch.as_tensor(lab, dtype=torch.float32)[None, None].to(self.device)
            delta = self.delta(xt, yt, name)[0, 0].double().cpu().numpy()
            region = contour_band(yt, self.generator.band_width)[1][0, 0].cpu().numpy() > 0
        change = delta * scale
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
            out = (image_np.astype(np.float64) + change).astype(image_np.dtype)
            # storing in the file's float type rounds; on a near-constant scan (tiny window) that rounding alone can
            # exceed the budget, so such voxels keep their original value: the bound is a guarantee, not a target
            over = np.abs(out.astype(np.float64) - image_np) > eps_native
            out[over] = image_np[over]
        metrics = image_change_metrics(image_np, out, low, high)
        metrics.update(
            {"changed_outside_region": int((out != image_np)[~region].sum()),
             "epsilon_native": float(eps_native), "window": [float(low), float(high)], "roi_voxels": int((lab > 0).sum())}
        )
        return out, metrics


def samplewise_noise_data(
    files, spatial_dims: int, epsilon: float = 4 / 255, band_width: int = 2, texture_floor: float = 0.25, seed: int = 0,
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
