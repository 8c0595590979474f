"""MONAI Label tasks around :mod:`trust_monai.label.service` (imported only inside the MONAI Label environment).

- :class:`CertifiedSegmentationTask` (infer): the certified label map (abstain = ``num_classes``) as a file beside JSON
  holding the certified fraction and radius.
- :class:`SyntheticScanScoring` (scoring method): the MoE-FFD fake probability of every study, stored per study with
  ``datastore.update_image_info`` (``synthetic_score`` and friends, shown by ``GET /datastore/``).
- :class:`ProtectBatchTask` (batch task, ``POST /batch/infer/protect``): UMed-protected copies of the studies that
  have a final label, written into the protect output folder (never the studies folder); every other model name goes
  to MONAI Label's own batch inference.

Errors of our own become HTTP errors with a one-line ``detail``: 503 when a model is not trained (with the command
that trains it), 400 for a bad study (infer) or a checkpoint that does not fit. In the scoring and protect tasks a bad
study (unreadable file, mask that does not match its scan) is reported in its own entry and the others still run.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Any, Callable

from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.batch_infer import BatchInferImageType, BatchInferTask
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.interfaces.tasks.scoring import ScoringMethod

from ..errors import CaseError, InputFileError, TrustMonaiError
from .service import CertifiedSegmenter, ModelNotTrained, StudyProtector, SyntheticScanScorer

__all__ = ["CertifiedSegmentationTask", "SyntheticScanScoring", "ProtectBatchTask", "http_errors"]

logger = logging.getLogger("trust_monai.label")

SCORE_KEY = "synthetic_score"


@contextlib.contextmanager
def http_errors():
    """Our errors as HTTP errors the client can read (MONAI Label 0.8.5 has no handler of its own: a bare 500)."""
    from fastapi import HTTPException

    try:
        yield
    except ModelNotTrained as e:
        logger.error(str(e))
        raise HTTPException(status_code=503, detail=str(e)) from e
    except TrustMonaiError as e:
        logger.error(str(e))
        raise HTTPException(status_code=400, detail=str(e)) from e


def _study_error(e: Exception, *paths) -> bool:
    """Whether ``e`` is about this study (its files or its content), so the other studies still run; an error about
    anything else (a checkpoint that does not fit) stops the whole task."""
    if isinstance(e, InputFileError):
        return not isinstance(e, ModelNotTrained) and e.path in {str(p) for p in paths if p}
    return isinstance(e, CaseError)


def _suffix(path: str) -> str:
    name = Path(path).name.lower()
    for s in (".nii.gz", ".nii", ".nrrd", ".nhdr"):
        if name.endswith(s):
            return ".nrrd" if s == ".nhdr" else s
    raise TrustMonaiError(f"{path}: certified segmentation serves NIfTI and NRRD studies")


class CertifiedSegmentationTask(InferTask):
    """Certified segmentation: every pixel keeps its label for every L2 change of the scan below the returned radius
    (probability >= 1 - alpha), or gets the abstain label ``num_classes``."""

    def __init__(self, segmenter: CertifiedSegmenter):
        labels = {name: i for i, name in enumerate(segmenter.labels)}
        labels["abstain"] = segmenter.num_classes
        super().__init__(
            type=InferType.SEGMENTATION, labels=labels, dimension=segmenter.spatial_dims,
            description=f"Certified segmentation ({segmenter.method.upper()}, trust_monai DRS bundle); label "
                        f"{segmenter.num_classes} = abstain (not certified)",
            config={"seed": 0},
        )
        self.segmenter = segmenter

    def is_valid(self) -> bool:
        return True  # listed even before training, so a request gets the message saying how to train

    def get_path(self, validate=True):
        path = self.segmenter.parser.get_parsed_content("checkpoint")
        return path if not validate or Path(path).is_file() else None

    def __call__(self, request) -> tuple[str, dict]:
        with http_errors():
            labels, meta, record = self.segmenter.segment(request["image"], seed=int(request.get("seed", 0)))
            out = tempfile.NamedTemporaryFile(suffix=_suffix(request["image"]), delete=False).name
            self.segmenter.write(labels, meta, out, record)
        logger.info(f"certified {request['image']}: fraction {record['certified_fraction']:.3f}, "
                    f"radius {record['radius']:.3f}, {record['time']:.1f} s")
        return out, record


class SyntheticScanScoring(ScoringMethod):
    """Store every study's MoE-FFD fake probability in its datastore info (``synthetic_score``, ``synthetic_pred``).

    A study already scored by the same checkpoint is skipped unless the request says ``"force": true``; the request
    may list ``"images"`` (ids) to score only those."""

    def __init__(self, scorer: SyntheticScanScorer):
        super().__init__("Synthetic / tampered scan detection (MoE-FFD, trust_monai moe_ffd bundle): stores "
                         f"'{SCORE_KEY}' = p(fake) in [0, 1] per study")
        self.scorer = scorer

    def __call__(self, request, datastore: Datastore) -> dict[str, Any]:
        from ..utils.fileio import sha256_file

        with http_errors():
            ckpt = sha256_file(self.scorer.checkpoint)[:16]
            images = request.get("images") or datastore.list_images()
            result = {}
            for image_id in sorted(images):
                info = datastore.get_image_info(image_id)
                if not request.get("force") and info.get("synthetic_detector") == ckpt and SCORE_KEY in info:
                    result[image_id] = {"score": info[SCORE_KEY], "pred": info.get("synthetic_pred"), "skipped": True}
                    continue
                uri = datastore.get_image_uri(image_id)
                try:
                    r = self.scorer.score(uri)
                except TrustMonaiError as e:
                    if not _study_error(e, uri):
                        raise
                    logger.error(f"synthetic_scan: {image_id}: {e}")
                    result[image_id] = {"error": str(e)}
                    continue
                datastore.update_image_info(
                    image_id, {SCORE_KEY: r["score"], "synthetic_pred": r["pred"], "synthetic_detector": ckpt})
                result[image_id] = r
        logger.info(f"synthetic-scan scores: { {k: v.get('score', 'error') for k, v in result.items()} }")
        return result


class ProtectBatchTask:
    """MONAI Label's batch inference, plus the ``protect`` batch task.

    ``POST /batch/infer/protect`` (``images``: all / labeled / unlabeled or a list of ids) protects each study that
    has a ``final`` label; the result maps study id to its record (output path, sha256, change metrics, status).
    """

    NAME = "protect"

    def __init__(self, make_protector: Callable[[], StudyProtector]):
        self.make_protector = make_protector
        self.default = BatchInferTask()

    def __call__(self, request, datastore: Datastore, infer: Callable):
        if request.get("model") != self.NAME:
            return self.default(request, datastore, infer)
        images = request.get("images", BatchInferImageType.IMAGES_ALL)
        if isinstance(images, str):
            images = self.default.get_images({"images": images, "label_tag": DefaultLabelTag.FINAL}, datastore)
        result = {}
        with http_errors():
            protector = self.make_protector()
            protector.checkpoint  # noqa: B018  (a missing model is reported before any study)
            for image_id in sorted(images):
                label = datastore.get_label_uri(image_id, DefaultLabelTag.FINAL)
                if not label:
                    result[image_id] = {"status": "no_label", "reason": "no final label (UMed perturbs the mask region)"}
                    continue
                uri = datastore.get_image_uri(image_id)
                try:
                    rec = protector.protect(uri, label, overwrite=bool(request.get("overwrite", False)))
                except TrustMonaiError as e:
                    if not _study_error(e, uri, label):
                        raise
                    logger.error(f"protect: {image_id}: {e}")
                    result[image_id] = {"status": "error", "error": str(e)}
                    continue
                result[image_id] = {**rec, "output": str(protector.output_dir / rec["output"])
                                    if rec.get("output") else None}
        logger.info(f"protected {sum(r.get('status') in ('done', 'copied', 'skipped') for r in result.values())} "
                    f"of {len(result)} studies into {protector.output_dir}")
        return result
