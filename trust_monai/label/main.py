"""The trust_monai MONAI Label app: certified segmentation, synthetic-scan scoring and study protection.

Start (in the environment made by ``scripts/setup_monailabel.sh``)::

    monailabel start_server --app trust_monai/label --studies STUDIES --host 127.0.0.1 --port 8000 \\
        --conf zoo_source github --conf models MODEL_DIR

Conf options (``--conf KEY VALUE``):

- ``models``: one folder holding the three checkpoints (``base_models_2d.pt``, ``detector_all.pt``,
  ``generator_2d.pt``); default: each bundle's own ``models/`` folder, where its train.json writes.
- ``bundles``: the bundles folder whose inference configs define the networks (default: the packaged one).
- ``labels``: JSON list of class names of the segmentation models (default: the MNI152 tissue classes).
- ``certify_method``: ``rs`` (default) or ``drs``.
- ``drs_overrides`` / ``detect_overrides`` / ``protect_overrides``: JSON objects of bundle config ids
  (e.g. ``{"n": 100}``, network sizes of a smaller detector, ``{"epsilon": 0.0157}``).
- ``protect_output``: folder of the protected copies (default: ``<studies>_protected`` beside the studies folder;
  refused inside it).
- ``device``: ``auto`` (default: CUDA when present), ``cpu``, ``cuda``.
- ``zoo_source``: accepted and unused; this app never reaches the model zoo, so it starts offline.

The app only wires library code: the tasks are in :mod:`trust_monai.label.tasks`, the models in
:mod:`trust_monai.label.service`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from monailabel.interfaces.app import MONAILabelApp

from trust_monai.label.service import (
    DEFAULT_LABELS,
    CertifiedSegmenter,
    ModelNotTrained,
    StudyProtector,
    SyntheticScanScorer,
    parse_overrides,
)
from trust_monai.label.tasks import CertifiedSegmentationTask, ProtectBatchTask, SyntheticScanScoring

logger = logging.getLogger("trust_monai.label")


class TrustMonaiApp(MONAILabelApp):
    """MONAI Label app serving ``certified_segmentation`` (infer), ``synthetic_scan`` (scoring) and ``protect``
    (batch task)."""

    def __init__(self, app_dir, studies, conf):
        from trust_monai.bundle import bundles_dir, resolve_device

        conf = conf or {}
        self.bundles = Path(conf.get("bundles") or bundles_dir())
        models = conf.get("models")
        self.model_dirs = {b: Path(models) if models else self.bundles / b / "models" for b in ("drs", "moe_ffd", "umed")}
        labels = conf.get("labels")
        self.class_names = json.loads(labels) if labels else list(DEFAULT_LABELS)
        self.device = str(resolve_device(conf.get("device", "auto")))
        self.overrides = {k: parse_overrides(conf.get(f"{k}_overrides")) for k in ("drs", "detect", "protect")}
        studies_path = Path(studies).resolve()
        self.protect_output = Path(conf.get("protect_output") or studies_path.parent / f"{studies_path.name}_protected")
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="trust_monai",
                         description="trust_monai: certified segmentation, synthetic-scan detection, study protection",
                         version="0.1.0")

    def init_infers(self):
        seg = CertifiedSegmenter(self.model_dirs["drs"], self.class_names, self.conf.get("certify_method", "rs"),
                                 self.overrides["drs"], self.bundles, self.device)
        self._warn_missing("certified_segmentation", seg)
        return {"certified_segmentation": CertifiedSegmentationTask(seg)}

    def init_scoring_methods(self):
        scorer = SyntheticScanScorer(self.model_dirs["moe_ffd"], self.overrides["detect"], self.bundles, self.device)
        self._warn_missing("synthetic_scan", scorer)
        return {"synthetic_scan": SyntheticScanScoring(scorer)}

    def init_batch_infer(self):
        self._warn_missing("protect", self._protector())  # also refuses a protect_output inside the studies
        return ProtectBatchTask(self._protector)

    def _protector(self) -> StudyProtector:
        return StudyProtector(self.model_dirs["umed"], self.studies, self.protect_output, len(self.class_names),
                              self.overrides["protect"], self.bundles, self.device)

    def infer(self, request, datastore=None):
        """MONAI Label's infer, with an unknown study id answered 404 by name (0.8.5 passes an empty path on)."""
        import os

        from fastapi import HTTPException

        image = request.get("image")
        store = datastore or self.datastore()
        if isinstance(image, str) and not os.path.exists(image) and not store.get_image_uri(image):
            raise HTTPException(status_code=404, detail=f"study {image!r} is not in the datastore ({self.studies})")
        return super().infer(request, datastore)

    def info(self):
        meta = super().info()
        meta["batch_tasks"] = {ProtectBatchTask.NAME: {
            "description": "UMed-protected copies of the studies with a final label (POST /batch/infer/protect)",
            "output": str(self.protect_output)}}
        return meta

    @staticmethod
    def _warn_missing(name: str, model) -> None:
        try:
            model.checkpoint  # noqa: B018
        except ModelNotTrained as e:
            logger.warning(f"{name}: {e}")
