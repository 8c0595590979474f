"""Write a changed copy of a dataset, case by case, in the input's own format (protect, purify, poison).

The shared engine of every verb that outputs data: it reads each case with :func:`trust_monai.data.read_image`,
hands it to a processor, writes the result with :func:`trust_monai.data.write_image` (same format, geometry and
headers kept), mirrors the input's relative paths, and records the case in ``manifest.json``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from monai.engines import Workflow
from ignite.engine import Events

from ..bundle import as_bool
from ..data.datalist import check_readable, load_datalist
from ..data.io import PICTURE_FORMATS, detect_format, read_image, write_image
from ..errors import CaseError, CasesFailed, InputFileError
from ..utils.fileio import atomic_path, atomic_write_json, remove_stale_temps, sha256_file
from .manifest import Manifest

__all__ = ["CaseWriter", "read_case_label", "in_monai_axes"]


def read_case_label(entry: dict, image, meta, method: str):
    """The label map of a datalist case, checked against its image (same shape, same affine); a missing or
    mismatched mask is a :class:`~trust_monai.errors.CaseError` naming the file. Returns ``(label, label_path)``."""
    import numpy as np

    label_path = entry.get("label")
    if not isinstance(label_path, str):
        raise CaseError(f"{entry.get('image')}: {method} needs a label mask for every case (datalist 'label')")
    label, lmeta = read_image(label_path)
    # a PNG's third axis is colour, never space: a colour photograph is fine, a colour mask is not
    spatial = image.shape[:-1] if meta.format in PICTURE_FORMATS and image.ndim == 3 else image.shape
    if lmeta.format in PICTURE_FORMATS and label.ndim == 3:
        raise CaseError(f"{label_path}: mask has {label.shape[-1]} colour channels (an RGB mask?); save one class "
                        "index per pixel as a grey image")
    if label.shape != spatial:
        raise CaseError(f"{label_path}: mask shape {label.shape} does not match image shape {image.shape}")
    if not np.allclose(np.asarray(lmeta.affine), np.asarray(meta.affine), atol=1e-3):
        raise CaseError(f"{label_path}: mask geometry (affine) does not match the image's")
    return label, label_path


def in_monai_axes(meta, fn, image, label, **kwargs):
    """``fn(image, label, **kwargs) -> (out or None, metrics)`` with the arrays in the axis order networks saw.

    PIL pictures (PNG / TIFF) read as (rows, cols); MONAI's loader, which every network here is trained through, gives
    (cols, rows). Pictures are swapped in and the result swapped back, so a learned pattern lands where it was learned.
    """
    if meta.format in PICTURE_FORMATS:
        out, metrics = fn(image.swapaxes(0, 1), label.swapaxes(0, 1), **kwargs)
        return (None if out is None else out.swapaxes(0, 1)), metrics
    return fn(image, label, **kwargs)


class CaseWriter(Workflow):
    """Ignite engine: one iteration = one case read, processed, written and recorded.

    Every listed file is checked readable before anything is written, so a corrupt input stops the run with one line
    naming it and no partial output. A :class:`~trust_monai.errors.CaseError` on one case (mask shape mismatch, NaN
    voxels ...) is recorded as that case's error and the rest of the dataset still completes; the run then ends with
    :class:`~trust_monai.errors.CasesFailed` (non-zero exit). Any other error (a checkpoint that does not fit) stops
    the run. A rerun skips the cases already in the manifest and retries the failed ones; temp files of a killed run
    are removed first. An ``output_dir`` holding files but no manifest, or a manifest written with other settings
    (derivation, seed, de-identification, weights), is refused unless ``overwrite`` (then those cases are redone).

    Args:
        dataset_dir: folder with ``dataset.json``.
        output_dir: where the copy goes (never inside ``dataset_dir``).
        processor: ``processor(image, meta, entry) -> (new_image, metrics)``; ``image`` is the array
            :func:`read_image` returns, ``entry`` the datalist entry with absolute paths.
        bundle / config: recorded in the manifest.
        process_sections: datalist sections whose images are processed.
        copy_sections: sections copied byte for byte (e.g. the clean test split kept for evaluation).
        image_key: the key that is processed; ``extra_keys`` (labels, field-of-view masks) are copied
            unchanged beside it.
        derivation: note stored in DICOM DerivationDescription.
        deidentify: DICOM outputs get :func:`~trust_monai.data.io.deidentify_header` (copied DICOM cases too, so no
            identified header leaves through the byte-copy path).
        progress: show a progress bar.
    """

    def __init__(
        self,
        dataset_dir,
        output_dir,
        processor: Callable[[Any, Any, dict], tuple[Any, dict]],
        bundle: str,
        config: str = "inference",
        process_sections: Sequence[str] = ("training",),
        copy_sections: Sequence[str] = ("test",),
        image_key: str = "image",
        extra_keys: Sequence[str] = ("label", "fov"),
        derivation: str = "",
        seed: int | None = None,
        overwrite: bool = False,
        progress: bool = True,
        deidentify: bool = False,
        device: str | torch.device = "cpu",
        handlers: Sequence | None = None,
    ) -> None:
        self.dataset_dir = Path(dataset_dir).resolve()
        self.output_dir = Path(output_dir).resolve()
        self.datalist = json.loads((self.dataset_dir / "dataset.json").read_text()) if (
            self.dataset_dir / "dataset.json"
        ).is_file() else {}
        keys = (image_key, *extra_keys)
        cases: list[dict] = []
        for section in (*process_sections, *copy_sections):
            if section not in self.datalist:
                continue
            for i, entry in enumerate(load_datalist(self.dataset_dir, section, keys=keys)):
                cases.append({"section": section, "index": i, "process": section in process_sections, "entry": entry})
        if not self.datalist:
            load_datalist(self.dataset_dir, process_sections[0], keys=keys)  # raises the readable error
        from ..utils.dist import init_from_env

        # under torchrun: rank r writes every w-th case and its own manifest.rank<r>.json; rank 0 merges at the end
        self.rank, self.world = init_from_env(device)
        self.all_cases = cases
        cases = cases[self.rank::self.world]
        self.cases, self.keys, self.image_key = cases, keys, image_key
        self.processor, self.derivation, self.progress = processor, derivation, as_bool(progress)
        self.deidentify = as_bool(deidentify)
        self.bundle, self.config, self.seed, self.overwrite = bundle, config, seed, as_bool(overwrite)
        self.manifest: Manifest | None = None
        super().__init__(
            device=device,
            max_epochs=1,
            data_loader=cases,
            epoch_length=len(cases),
            handlers=handlers,
            decollate=False,
        )
        self.add_event_handler(Events.STARTED, self._start)
        self.add_event_handler(Events.COMPLETED, self._finish)
        self._bar = None

    def _out(self, path: str) -> Path:
        return self.output_dir / Path(path).resolve().relative_to(self.dataset_dir)

    def _start(self, engine) -> None:
        from ..utils.dist import barrier

        # every rank checks every file, so a bad input stops all ranks alike instead of leaving one waiting
        check_readable([c["entry"] for c in self.all_cases], self.keys)
        settings = {"derivation": self.derivation, "seed": self.seed, "deidentify": self.deidentify,
                    "weights": _weights_fingerprint(self.processor)}
        self.manifest = Manifest(
            self.output_dir, self.bundle, self.config, input_dir=self.dataset_dir, seed=self.seed,
            overwrite=self.overwrite, settings=settings, refuse_foreign=True,
            shard=self.rank if self.world > 1 else None,
        )
        if self.world > 1:  # this rank's file holds only its own cases (see Manifest.restrict)
            self.manifest.restrict(c["entry"][self.image_key] for c in self.cases)
        if self.rank == 0:
            remove_stale_temps(self.output_dir)  # the folder is ours (checked above): leftovers of a killed run
        barrier()  # no rank writes before every rank has checked the folder and the temps are gone
        if self.progress and self.rank == 0:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=len(self.cases), desc=f"{self.bundle} {self.config}", unit="case")

    def _copy(self, src: str) -> Path:
        dst = self._out(src)
        _remove_stale(dst)
        if self.deidentify and detect_format(src) == "dicom":  # a byte copy would carry the identified header along
            image, meta = read_image(src)
            write_image(image, meta, dst, derivation="copy (de-identified)", deidentify=True)
        elif Path(src).is_dir():
            with atomic_path(dst, suffix="") as tmp:
                tmp.unlink()
                shutil.copytree(src, tmp)
        else:
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
        return dst

    def _iteration(self, engine, case: dict) -> dict:
        entry, manifest = case["entry"], self.manifest
        src = entry[self.image_key]
        status, metrics = "done", {}
        if not manifest.is_done(src):
            if not manifest.path.is_file():
                manifest.save()  # claim the folder before its first output, so a rerun after a kill knows it is ours
            try:
                if case["process"]:
                    image, meta = read_image(src)
                    out, metrics = self.processor(image, meta, entry)
                    if out is None:  # nothing to change (e.g. empty mask): a byte copy, flagged
                        dst, status = self._copy(src), "copied"
                    else:
                        dst = self._out(src)
                        _remove_stale(dst)
                        write_image(out, meta, dst, derivation=self.derivation, deidentify=self.deidentify)
                else:
                    dst, status = self._copy(src), "copied"
                # labels follow their image, so a case that fails leaves nothing of itself behind
                for k in self.keys[1:]:
                    if isinstance(entry.get(k), str):
                        self._copy(entry[k])
                manifest.record(src, dst, status=status, metrics={"section": case["section"], **metrics})
            except (CaseError, InputFileError) as e:
                if isinstance(e, InputFileError) and e.path not in {str(v) for v in entry.values()}:
                    raise  # not this case's file (a checkpoint, say): the whole run is wrong, stop it
                manifest.record(src, None, status="error", metrics={"section": case["section"]}, error=e)
                status = "error"
        if self._bar is not None:
            self._bar.update(1)
        engine.state.output = {"input": src, "status": status, "metrics": metrics}
        return engine.state.output

    def _finish(self, engine) -> None:
        if self._bar is not None:
            self._bar.close()
        from ..utils.dist import barrier

        # the copy is itself a dataset_dir: same datalist, same relative paths (left alone when already there)
        target = self.output_dir / "dataset.json"
        if self.rank == 0 and (not target.is_file() or json.loads(target.read_text()) != self.datalist):
            atomic_write_json(target, self.datalist)
        self.manifest.save()  # last: it vouches for every file above
        cases = self.manifest.cases
        if self.world > 1 or any(self.output_dir.glob("manifest.rank*.json")):
            barrier()  # every rank's manifest is on disk
            if self.rank == 0:
                Manifest.finish_shards(self.output_dir, [c["entry"][self.image_key] for c in self.all_cases],
                                       self.world)
            barrier()
            cases = json.loads((self.output_dir / "manifest.json").read_text())["cases"]
        errors = [c for c in cases if c["status"] == "error"]
        if errors:
            for c in errors:
                print(f"failed: {c.get('error', c['input'])}")
            raise CasesFailed(
                f"{len(errors)} of {len(cases)} case(s) failed (listed above and in "
                f"{self.output_dir / 'manifest.json'}); "
                "the other cases are written"
            )


def _weights_fingerprint(processor) -> str | None:
    """Short hash of the weights a processor uses (its ``fingerprint()``, or its ``checkpoint`` file), if it tells."""
    for obj in (processor, getattr(processor, "purifier", None), getattr(processor, "protector", None)):
        if obj is None:
            continue
        try:
            if callable(getattr(obj, "fingerprint", None)):
                return str(obj.fingerprint())
            ckpt = getattr(obj, "checkpoint", None)
            if isinstance(ckpt, (str, Path)) and Path(ckpt).is_file():
                return sha256_file(ckpt)[:16]
        except OSError:  # weights missing: the processor reports that itself, with the fix
            return None
    return None


def _remove_stale(dst: Path) -> None:
    """Remove an output left by a run killed after writing but before recording it (only ever inside output_dir)."""
    if dst.is_dir():
        shutil.rmtree(dst)
    elif dst.exists():
        dst.unlink()
