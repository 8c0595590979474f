"""What the MONAI Label app serves, without MONAI Label: one class per served task, each built from a bundle's own
inference config (so the app and the bundle always agree on architecture, noise levels and file names) and a model
folder holding the bundle's trained checkpoints.

- :class:`CertifiedSegmenter`: per-pixel certified segmentation of one scan with the ``bundles/drs`` base models
  (:class:`~trust_monai.certify.SegmentationSmooth` for ``rs``, :class:`~trust_monai.certify.DualSegmentationSmooth`
  for ``drs``); abstaining pixels get the label ``num_classes``.
- :class:`SyntheticScanScorer`: fake probability of one scan with the ``bundles/moe_ffd`` MoE-FFD detector (a volume
  by aggregating its slice scores, as the bundle does).
- :class:`StudyProtector`: a UMed-protected copy of one scan (``bundles/umed`` generator), written with its geometry
  into an output folder that may not lie inside the studies folder, and recorded in that folder's ``manifest.json``.

Nothing here imports MONAI Label; ``trust_monai/label/tasks.py`` wraps these classes as MONAI Label tasks.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputFileError, OutputExistsError, TrustMonaiError

__all__ = [
    "ModelNotTrained",
    "bundle_config",
    "parse_overrides",
    "CertifiedSegmenter",
    "SyntheticScanScorer",
    "StudyProtector",
    "DEFAULT_LABELS",
]

logger = logging.getLogger("trust_monai.label")

# the classes of the sample data the bundles train on (mni152_tissue_2d); a model folder trained on other data passes
# its own names through the app's ``labels`` conf option
DEFAULT_LABELS = ("background", "other_brain", "grey_matter", "white_matter")

TRAIN_COMMANDS = {
    "drs": "python -m monai.bundle run --config_file bundles/drs/configs/train.json --ckpt_dir {dir}",
    "moe_ffd": "python -m monai.bundle run --config_file bundles/moe_ffd/configs/train.json --ckpt_dir {dir}",
    "umed": "python -m monai.bundle run --config_file bundles/umed/configs/train.json --ckpt_dir {dir}",
}


class ModelNotTrained(InputFileError):
    """A served model's checkpoint is not in the model folder; the message gives the command that trains it."""


def parse_overrides(value: Any) -> dict:
    """Config overrides from a dict or a JSON object string (how MONAI Label ``--conf`` values arrive)."""
    if value in (None, ""):
        return {}
    if isinstance(value, dict):
        return dict(value)
    try:
        out = json.loads(value)
    except json.JSONDecodeError as e:
        raise TrustMonaiError(f"overrides must be a JSON object, got {value!r} ({e})") from e
    if not isinstance(out, dict):
        raise TrustMonaiError(f"overrides must be a JSON object, got {value!r}")
    return out


def bundle_config(name: str, overrides: dict | None = None, bundles_dir=None, config: str = "inference.json"):
    """The parsed-on-demand ``ConfigParser`` of ``bundles/<name>/configs/<config>`` with ``overrides`` applied.

    Only the ids asked for are resolved, so the bundle's sample dataset is never prepared unless an asked id needs it
    (callers override ``num_classes`` for that reason).
    """
    from monai.bundle import ConfigParser

    from ..bundle import bundles_dir as default_bundles

    root = Path(bundles_dir or default_bundles()) / name
    path = root / "configs" / config
    if not path.is_file():
        raise TrustMonaiError(f"bundle config {path} not found; set the app's 'bundles' conf option to the bundles folder")
    parser = ConfigParser()
    parser.read_config(str(path))
    parser["bundle_root"] = str(root)
    for k, v in (overrides or {}).items():
        parser[k] = v
    return parser


def _checkpoint(parser, bundle: str, model_dir: Path) -> Path:
    path = Path(parser.get_parsed_content("checkpoint"))
    if not path.is_file():
        cmd = TRAIN_COMMANDS[bundle].format(dir=model_dir)
        raise ModelNotTrained(path, f"checkpoint not found in the model folder; train it first: {cmd}")
    return path


def _read(path) -> tuple[np.ndarray, Any]:
    from ..data.io import read_image

    return read_image(path)


class CertifiedSegmenter:
    """Certified segmentation of one scan with the base models trained by ``bundles/drs``.

    Args:
        model_dir: folder holding ``base_models_<spatial_dims>d.pt``.
        labels: class names; ``num_classes = len(labels)`` and the abstain label is ``num_classes``.
        method: ``"rs"`` (randomized smoothing of the full-image U-Net) or ``"drs"`` (dual randomized smoothing).
        overrides: ids of ``bundles/drs/configs/inference.json`` to change (``sigma``, ``tau``, ``n0``, ``n``,
            ``alpha``, ``batch_size``, ``channels``, ``spatial_dims`` ...).
        bundles_dir: the bundles folder (default: the packaged one).
        device: torch device.
    """

    def __init__(self, model_dir, labels=DEFAULT_LABELS, method: str = "rs", overrides: dict | None = None,
                 bundles_dir=None, device: str = "cpu"):
        if method not in ("rs", "drs"):
            raise TrustMonaiError(f"unknown certification method {method!r}; use 'rs' or 'drs'")
        self.model_dir, self.labels, self.method = Path(model_dir), list(labels), method
        self.num_classes = len(self.labels)
        ov = {"ckpt_dir": str(self.model_dir), "num_classes": self.num_classes, "device": device, **(overrides or {})}
        self.parser = bundle_config("drs", ov, bundles_dir)
        p = self.parser.get_parsed_content
        self.spatial_dims = int(p("spatial_dims"))
        self.settings = {k: p(k) for k in ("sigma", "sigma_l", "sigma_r", "tau", "n0", "n", "alpha", "batch_size")}
        self.device = device
        self._runner = None

    @property
    def checkpoint(self) -> Path:
        return _checkpoint(self.parser, "drs", self.model_dir)

    def runner(self):
        """The bundle's :class:`~trust_monai.engines.certify.CertifySegmentation`, its base models loaded once.

        Never ``run()`` (that certifies a datalist into an output folder): the app takes its models, its sample budget
        per method (DRS: half of ``n0`` / ``n`` per half) and its smoother, so a study certified here gets exactly the
        bundle's certificate."""
        if self._runner is None:
            from ..engines.certify import CertifySegmentation
            from ..utils.checkpoint import load_state_dict

            ckpt = self.checkpoint
            s = self.settings
            runner = CertifySegmentation(
                self.model_dir, self.model_dir, self.parser.get_parsed_content("models"), ckpt, self.spatial_dims,
                self.num_classes, sigma=s["sigma"], sigma_l=s["sigma_l"], sigma_r=s["sigma_r"], tau=s["tau"],
                n0=s["n0"], n=s["n"], alpha=s["alpha"], batch_size=s["batch_size"], methods=(self.method,),
                device=self.device, progress=False,
            )
            load_state_dict(runner.models, ckpt)
            runner.models.to(runner.device).eval()
            self._runner = runner
        return self._runner

    def segment(self, image_path, seed: int = 0, modality: str = "MR") -> tuple[np.ndarray, Any, dict]:
        """Certify every pixel of the scan at ``image_path``.

        Returns:
            ``(labels, meta, record)``: uint8 labels in the scan's voxel order (``num_classes`` = abstain), the scan's
            :class:`~trust_monai.data.io.ImageMeta` (to write the labels with its geometry), and a JSON-ready record
            with ``certified_fraction``, ``radius``, ``abstain_label``, sampling settings and ``time``.
        """
        import torch
        from monai.transforms import DivisiblePad

        from ..certify import ABSTAIN
        from ..transforms.intensity import ScanNormalize

        runner = self.runner()
        image, meta = _read(image_path)
        if image.ndim != self.spatial_dims:
            raise InputFileError(image_path, f"{image.ndim}D scan, but the served models are {self.spatial_dims}D")
        x, _ = ScanNormalize()(np.asarray(image), modality)  # the bundle's windowing (segmentation_transforms)
        pad = DivisiblePad(k=runner.divisible, method="end", mode="constant")
        x = pad(x[None])
        x = (x.as_tensor() if hasattr(x, "as_tensor") else x).float().to(runner.device)
        n0, n, bs = runner.budget(self.method)
        smooth = runner.smoother(self.method)
        smooth.manual_seed(int(seed))
        with torch.inference_mode():
            labels, radius = smooth.certify(x, n0, n, runner.alpha, bs, tau=runner.tau)
        labels = labels[tuple(slice(0, s) for s in image.shape)].cpu().numpy().astype(np.int64)
        labels[labels == ABSTAIN] = self.num_classes
        rec = smooth.last_record
        record = {
            # over the scan's own pixels (the smoother's record also counts the padding)
            "method": self.method, "certified_fraction": float(np.mean(labels != self.num_classes)),
            "radius": float(radius),
            "abstain_label": self.num_classes, "labels": {name: i for i, name in enumerate(self.labels)},
            "n0": n0, "n": n, "tau": runner.tau, "alpha": runner.alpha, "seed": int(seed),
            "time": float(rec["time"]),
        }
        return labels.astype(np.uint8), meta, record

    def write(self, labels: np.ndarray, meta, out_path, record: dict) -> Path:
        """Write a label map from :meth:`segment` with the scan's geometry."""
        from ..data.io import write_image

        note = f"trust_monai drs: {record['method']} certified labels, r={record['radius']:.3f}, " \
               f"abstain={record['abstain_label']}"
        return write_image(labels, _label_meta(meta), out_path, derivation=note)


def _label_meta(meta):
    """The scan's metadata with a uint8 stored type (a label map written with a float scan's header would be float;
    NRRD takes its type from ``meta.dtype``)."""
    import dataclasses

    header = meta.header
    if meta.format == "nifti":
        header = header.copy()
        header.set_data_dtype(np.uint8)
        header.set_slope_inter(1.0, 0.0)
    return dataclasses.replace(meta, header=header, dtype=np.dtype(np.uint8))


class SyntheticScanScorer:
    """Fake (synthetic or tampered) probability of a scan with the MoE-FFD detector trained by ``bundles/moe_ffd``.

    Args:
        model_dir: folder holding ``detector_<tag>.pt``.
        overrides: ids of ``bundles/moe_ffd/configs/inference.json`` to change (``tag``, network sizes such as
            ``img_size`` / ``embed_dim`` / ``depth`` / ``lora_ranks``, ``aggregate``, ``topk``, ``threshold``).
        bundles_dir: the bundles folder (default: the packaged one).
        device: torch device.
    """

    def __init__(self, model_dir, overrides: dict | None = None, bundles_dir=None, device: str = "cpu"):
        self.model_dir = Path(model_dir)
        ov = {"ckpt_dir": str(self.model_dir), "device": device, **(overrides or {})}
        self.parser = bundle_config("moe_ffd", ov, bundles_dir)
        p = self.parser.get_parsed_content
        self.aggregate, self.topk, self.threshold = p("aggregate"), int(p("topk")), float(p("threshold"))
        self.batch_size, self.device = int(p("batch_size")), device
        self._network = None

    @property
    def checkpoint(self) -> Path:
        return _checkpoint(self.parser, "moe_ffd", self.model_dir)

    def network(self):
        if self._network is None:
            from ..detect.engine import load_detector

            ckpt = self.checkpoint
            net = self.parser.get_parsed_content("network_def")
            load_detector(net, ckpt)
            self._network = net.to(self.device).eval()
        return self._network

    def score(self, image_path) -> dict:
        """``{"score": p(fake) in [0, 1], "pred": "fake" | "real", "slices": n, ...}`` for the scan at ``image_path``
        (read and scaled to [0, 1] as the bundle's :class:`~trust_monai.detect.data.ForgeryDataset` does)."""
        import torch

        from ..detect.data import ForgeryDataset
        from ..detect.engine import score_batch
        from ..detect.metrics import aggregate_scores

        net = self.network()
        image, _ = _read(image_path)
        t0 = time.perf_counter()
        img = ForgeryDataset._to_unit(np.asarray(image, np.float32), str(image_path))
        t = torch.from_numpy(np.ascontiguousarray(img))[None]  # (1, H, W) or (1, H, W, D)
        batch = t.permute(3, 0, 1, 2) if t.ndim == 4 else t[None]
        slice_scores = score_batch(net, batch, self.batch_size)
        score = float(aggregate_scores(slice_scores, self.aggregate, self.topk)) if len(slice_scores) > 1 \
            else float(slice_scores[0])
        return {"score": round(score, 6), "pred": "fake" if score >= self.threshold else "real",
                "slices": int(len(slice_scores)), "threshold": self.threshold,
                "aggregate": self.aggregate if len(slice_scores) > 1 else "none", "time": time.perf_counter() - t0}


class StudyProtector:
    """UMed-protected copies of scans with the generator trained by ``bundles/umed``.

    The protected copy of ``<studies>/<name>`` goes to ``<output_dir>/<name>`` in the scan's format and geometry;
    ``output_dir`` may not be (or lie inside) the studies folder, so the studies are never modified.
    ``output_dir/manifest.json`` records each case (input / output sha256, change metrics). UMed changes only the
    mask and its contour band, so every scan needs its label map (the study's final label in MONAI Label).

    Args:
        model_dir: folder holding ``generator_<spatial_dims>d.pt``.
        studies_dir: the studies folder (refused as, or as a parent of, ``output_dir``).
        output_dir: where the protected copies go.
        num_classes: label values must lie in ``[0, num_classes)``.
        overrides: ids of ``bundles/umed/configs/inference.json`` to change (``epsilon``, ``band_width`` ...).
        bundles_dir: the bundles folder (default: the packaged one).
        device: torch device.
    """

    def __init__(self, model_dir, studies_dir, output_dir, num_classes: int = len(DEFAULT_LABELS),
                 overrides: dict | None = None, bundles_dir=None, device: str = "cpu"):
        self.model_dir = Path(model_dir)
        self.studies_dir, self.output_dir = Path(studies_dir).resolve(), Path(output_dir).resolve()
        if self.output_dir == self.studies_dir or self.studies_dir in self.output_dir.parents:
            raise OutputExistsError(
                f"protect output folder {self.output_dir} is inside the studies folder {self.studies_dir}; "
                "set the app's 'protect_output' conf option to a folder outside it"
            )
        ov = {"ckpt_dir": str(self.model_dir), "num_classes": int(num_classes), "device": device,
              **(overrides or {})}
        self.parser = bundle_config("umed", ov, bundles_dir)
        self.derivation = self.parser.get_parsed_content("evaluator#derivation")
        self._protector = None

    @property
    def checkpoint(self) -> Path:
        return _checkpoint(self.parser, "umed", self.model_dir)

    def protector(self):
        if self._protector is None:
            self.checkpoint  # noqa: B018  (a missing checkpoint is reported before any study is read)
            self._protector = self.parser.get_parsed_content("protector")
        return self._protector

    def protect(self, image_path, label_path, modality: str = "MR", overwrite: bool = False) -> dict:
        """Protect one scan; returns its manifest record (``status`` ``done``, ``copied`` for an empty mask, or
        ``skipped`` when an up-to-date copy is already there)."""
        from ..data.io import write_image
        from ..engines.case_writer import read_case_label
        from ..engines.manifest import Manifest
        from ..utils.fileio import atomic_path

        image_path = Path(image_path).resolve()
        manifest = Manifest(self.output_dir, "umed", "monailabel", input_dir=self.studies_dir)
        if not overwrite and manifest.is_done(str(image_path)):
            return {**manifest.cases[manifest._index[str(image_path)]], "status": "skipped"}
        protector = self.protector()
        image, meta = _read(image_path)
        entry = {"image": str(image_path), "label": str(label_path) if label_path else None, "modality": modality}
        read_case_label(entry, image, meta, "UMed")  # a missing / mismatched mask fails before anything is written
        out, metrics = protector(image, meta, entry)
        dst = self.output_dir / image_path.name
        if out is None:  # empty mask: nothing to protect, the copy is the original
            import shutil

            with atomic_path(dst) as tmp:
                shutil.copyfile(image_path, tmp)
            status = "copied"
        else:
            write_image(out, meta, dst, derivation=self.derivation)
            status = "done"
        return manifest.record(str(image_path), dst, status=status, metrics=metrics)
