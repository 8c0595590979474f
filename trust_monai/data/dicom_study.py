"""A DICOM input folder as hospitals keep it: image series plus the RTSTRUCT / SEG objects that refer to them.

The hospital verbs (:mod:`trust_monai.hospital`) use this module in three steps:

1. :func:`scan` reads the headers of every DICOM file in the series folders that :func:`~trust_monai.hospital.discover`
   found and sorts them into image series and segmentation objects (RTSTRUCT, SEG); a folder holding only
   segmentation objects is not a series.
2. :func:`link_objects` pairs each object with the series it refers to *by UID* (never by file name), and
   :func:`stage_labels` turns each pair into a label map (``<series>_label.nii.gz`` in the staged dataset, classes in
   the order of ``--roi``), which the bundles read like any other mask.
3. After the bundle ran, :func:`write_derived_objects` writes every object again, re-referenced to the protected /
   purified series (de-identified like it with ``--deidentify``), and :func:`write_certified_segs` writes certify's
   label maps as SEG objects that reference the input series.

Problems with one object (it refers to a series that is not there, two objects for one series, an empty contour, a
contour outside the image, a SEG off the series' grid, an unknown ``--roi`` name) are one line each naming the file;
the series concerned is left out and every other series is still processed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputFileError, TrustMonaiError
from .dicom_rt import (RTSTRUCT_SOP_CLASS, SEG_SOP_CLASS, SeriesGrid, rasterise_rtstruct, rereference_rtstruct,
                       rtstruct_contour_images, rtstruct_referenced_series, series_grid)

__all__ = ["DicomStudy", "scan", "link_objects", "parse_roi", "stage_labels", "write_derived_objects",
           "write_certified_segs", "OBJECTS_FILE"]

OBJECTS_FILE = "dicom_objects.json"  # in the staged dataset folder: which object gave which series its mask
_KINDS = {RTSTRUCT_SOP_CLASS: "rtstruct", SEG_SOP_CLASS: "seg"}


@dataclass
class DicomStudy:
    """What :func:`scan` found under ``root``.

    Attributes:
        root: the input folder.
        series: SeriesInstanceUID -> ``(file, header)`` of its image objects.
        series_dir: SeriesInstanceUID -> the folder holding it.
        objects: ``(file, header, kind)`` of each RTSTRUCT (``"rtstruct"``) and SEG (``"seg"``).
        image_folders: folders that hold image series (the rest held only segmentation objects).
    """

    root: Path
    series: dict[str, list[tuple[Path, Any]]] = field(default_factory=dict)
    series_dir: dict[str, Path] = field(default_factory=dict)
    objects: list[tuple[Path, Any, str]] = field(default_factory=list)
    image_folders: list[Path] = field(default_factory=list)

    @property
    def object_files(self) -> set[Path]:
        return {p for p, _, _ in self.objects}


def scan(root: str | Path, folders: Sequence[str | Path]) -> DicomStudy:
    """Header-only read of the DICOM files in ``folders`` (relative to ``root``); sub-folders are not searched.

    A file that cannot be read is left in its folder's series (reading the series reports it, as before); only
    files that read as RTSTRUCT or SEG are taken out.
    """
    from .io_dicom import _MEDIA_STORAGE_DIRECTORY, _dcmread

    root = Path(root)
    study = DicomStudy(root)
    for rel in folders:
        folder = root / rel
        holds_images = False
        for f in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
            try:
                ds = _dcmread(f, headers_only=True, required=False)
            except InputFileError:
                holds_images = True  # a corrupt slice: the series read reports it, naming the file
                continue
            if ds is None or str(ds.get("SOPClassUID", "")) == _MEDIA_STORAGE_DIRECTORY:
                continue
            kind = _KINDS.get(str(ds.get("SOPClassUID", "")))
            if kind:
                study.objects.append((f, ds, kind))
                continue
            holds_images = True
            uid = str(ds.get("SeriesInstanceUID", "") or "")
            if "Rows" in ds and uid:
                study.series.setdefault(uid, []).append((f, ds))
                study.series_dir.setdefault(uid, folder)
        if holds_images:
            study.image_folders.append(Path(rel))
    return study


def _referenced_series(ds, kind: str, study: DicomStudy) -> list[str]:
    if kind == "rtstruct":
        uids = rtstruct_referenced_series(ds)
        images = rtstruct_contour_images(ds)
    else:
        from .dicom_seg import seg_referenced_series, seg_source_instances

        uids = seg_referenced_series(ds)
        images = seg_source_instances(ds)
    if not uids and images:  # no series named: find the series that holds the referenced images
        uids = [s for s, items in study.series.items() if images & {str(h.SOPInstanceUID) for _, h in items}]
    return uids


def link_objects(study: DicomStudy) -> tuple[dict[str, tuple[Path, Any, str]], list[str], list[str]]:
    """Pair each segmentation object with the series it refers to (by SeriesInstanceUID / SOP Instance UIDs).

    Returns:
        ``(links, errors, failed)``: SeriesInstanceUID -> ``(object file, header, kind)`` for the series with exactly
        one object; one line per problem (an object naming no series of the input, several objects for one series);
        the SeriesInstanceUIDs left out because of a problem.
    """
    errors: list[str] = []
    failed: list[str] = []
    by_series: dict[str, list[tuple[Path, Any, str]]] = {}
    for path, ds, kind in study.objects:
        refs = _referenced_series(ds, kind, study)
        found = [u for u in refs if u in study.series]
        if not found:
            what = f"series {refs[0]}" if refs else "no series (no ReferencedSeriesSequence or image references)"
            errors.append(f"{path}: {'RTSTRUCT' if kind == 'rtstruct' else 'SEG'} refers to {what}, which is not "
                          f"in {study.root}; it is left out")
            continue
        for uid in found:
            by_series.setdefault(uid, []).append((path, ds, kind))
    links = {}
    for uid, objs in by_series.items():
        if len(objs) > 1:
            names = ", ".join(str(p) for p, _, _ in objs)
            errors.append(f"{objs[0][0]}: {len(objs)} structure sets / SEGs refer to series "
                          f"{study.series_dir[uid]} ({names}); keep one per series (the series is left out)")
            failed.append(uid)
            continue
        links[uid] = objs[0]
    return links, errors, failed


def parse_roi(roi: Any) -> list[str] | None:
    """``--roi`` as given on the command line (``"GTV-1"``, ``"GTV-1,Lung-Left"`` or a tuple from fire) -> names."""
    if roi is None or roi == "" or roi is True:
        return None
    items = roi if isinstance(roi, (list, tuple)) else str(roi).split(",")
    names = [str(n).strip() for n in items if str(n).strip()]
    if not names:
        return None
    return names


def _object_names(path: Path, ds, kind: str) -> list[str]:
    if kind == "rtstruct":
        from .dicom_rt import rtstruct_roi_names

        return rtstruct_roi_names(ds)
    from .dicom_seg import seg_segment_names

    return seg_segment_names(ds)


def _write_label(label: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """A uint8 NIfTI label map, written atomically; left alone when an equal one is already there."""
    import nibabel as nib

    from ..utils.fileio import atomic_path

    if path.is_file():
        try:
            old = nib.load(str(path))
            if np.allclose(old.affine, affine, atol=1e-4) and np.array_equal(np.asarray(old.dataobj), label):
                return
        except Exception:  # a damaged leftover of a killed run: write it anew
            pass
    img = nib.Nifti1Image(label.astype(np.uint8), np.asarray(affine, float))
    img.set_qform(np.asarray(affine, float), code=1)
    img.set_sform(np.asarray(affine, float), code=1)
    img.header["descrip"] = b"trust_monai: rasterised from DICOM RTSTRUCT / SEG"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        img.to_filename(str(tmp))


def stage_labels(study: DicomStudy, staged: Path, roi: Any = None) -> dict:
    """Rasterise every linked object into ``staged/<series>_label.nii.gz``; returns the record also written to
    ``staged/dicom_objects.json``: ``{"classes": [...], "links": [{series, object, kind, label, ...}], "errors":
    [...], "failed": [series left out]}``.

    Classes: the ``--roi`` names in the order given, else every structure / segment name in order of first
    appearance (objects sorted by path). A series whose object fails (unknown name, bad contour, SEG off the grid)
    gets no label and an error line; the other series are unaffected.
    """
    from ..utils.fileio import atomic_write_json

    links, errors, failed_uids = link_objects(study)
    failed = [study.series_dir[u].relative_to(study.root).as_posix() for u in failed_uids]
    wanted = parse_roi(roi)
    classes: list[str] = list(wanted or [])
    if not wanted:
        for path, ds, kind in sorted(links.values(), key=lambda o: str(o[0])):
            for n in _object_names(path, ds, kind):
                if n.lower() not in {c.lower() for c in classes}:
                    classes.append(n)
    records = []
    for uid, (path, ds, kind) in sorted(links.items(), key=lambda kv: str(study.series_dir[kv[0]])):
        series_rel = study.series_dir[uid].relative_to(study.root)
        try:
            grid = series_grid(study.series[uid], study.series_dir[uid])
            names_here = _object_names(path, ds, kind)
            # the classes this object holds, numbered by their place in the common class list
            if wanted:
                chosen = wanted
            else:
                chosen = [c for c in classes if c.lower() in {n.lower() for n in names_here}]
            if kind == "rtstruct":  # an RTSTRUCT has no pixel data: the header read by scan() is all of it
                label, got = rasterise_rtstruct(path, grid, chosen, ds=ds)
            else:
                from .dicom_seg import read_seg_labels

                label, got = read_seg_labels(path, grid, chosen)
            remap = np.zeros(256, np.uint8)
            lower = [c.lower() for c in classes]
            for i, name in enumerate(got, start=1):
                remap[i] = lower.index(name.lower()) + 1
            label = remap[label]
        except InputFileError as e:
            errors.append(f"{e} (series {series_rel} is left out)")
            failed.append(series_rel.as_posix())
            continue
        label_rel = Path(f"{series_rel.as_posix()}_label.nii.gz")
        _write_label(label, grid.affine, staged / label_rel)
        records.append({"series": series_rel.as_posix(), "series_uid": uid,
                        "object": path.relative_to(study.root).as_posix(), "kind": kind,
                        "label": label_rel.as_posix(), "classes": {str(i + 1): c for i, c in enumerate(got)}})
    spelled = {n.lower(): n for r in reversed(records) for n in r["classes"].values()}
    classes = [spelled.get(c.lower(), c) for c in classes]  # as the objects spell them, not as typed in --roi
    doc = {"classes": classes, "links": records, "errors": errors, "failed": failed}
    atomic_write_json(staged / OBJECTS_FILE, doc)
    return doc


def _grid_of(folder: Path) -> SeriesGrid:
    from .io_dicom import _series_headers

    return series_grid(_series_headers(folder), folder)


def _derived_object_path(out: Path, record: dict) -> Path:
    """Where the re-referenced object goes: its own relative path, unless that lies inside its series folder (a
    series folder holds images only, so the copy stays readable as a series): then beside it."""
    obj, series = Path(record["object"]), Path(record["series"])
    if obj.parent == series:
        return out / f"{series.as_posix()}_{record['kind']}.dcm"
    return out / obj


def write_derived_objects(record: dict, input_root: Path, staged: Path, out: Path, derivation: str,
                          deidentify: bool = False, done: set[str] | None = None) -> tuple[list[Path], list[str]]:
    """Write each linked RTSTRUCT / SEG again, referencing the series written into ``out``.

    Args:
        record: what :func:`stage_labels` returned (``staged/dicom_objects.json``).
        input_root: the folder the objects were read from.
        staged: the staged dataset folder (its series folders are the bundle's inputs).
        out: the bundle's output folder; the derived series is ``out/<series>``.
        derivation: the note to record (the verb and what it did).
        deidentify: the series were de-identified; the objects get the same pseudonym and UID remapping.
        done: staged series paths the bundle finished (manifest); None: every series whose output exists.

    Returns:
        ``(written, errors)``.
    """
    written, errors = [], []
    for rec in record.get("links", []):
        src_series, new_series = staged / rec["series"], out / rec["series"]
        if done is not None and str(src_series.resolve()) not in done:
            continue
        if not new_series.is_dir():
            continue
        obj = input_root / rec["object"]
        dst = _derived_object_path(out, rec)
        try:
            old, new = _grid_of(src_series), _grid_of(new_series)
            if rec["kind"] == "rtstruct":
                from .io_dicom import _dcmread, _save_dicom
                from ..utils.fileio import atomic_path

                ds = rereference_rtstruct(obj, old, new, derivation, deidentify=deidentify,
                                          ds=_dcmread(obj, headers_only=False))
                with atomic_path(dst) as tmp:
                    _save_dicom(ds, tmp)
            else:
                from .dicom_seg import rereference_seg

                rereference_seg(obj, old, new, dst, derivation)
        except (InputFileError, ValueError) as e:
            errors.append(f"{obj}: not re-written for {new_series}: {e}")
            continue
        written.append(dst)
    return written, errors


def write_certified_segs(staged: Path, out: Path, methods: Sequence[str], class_names: Sequence[str]
                         ) -> tuple[list[Path], list[str]]:
    """For every DICOM series certified into ``out/<method>/<series>.nii.gz``, write the same label map as a SEG,
    ``out/<method>/<series>_seg.dcm``, referencing the input series; classes ``1..C-1`` and abstain (value ``C``)
    are segments, background (0) is not.
    """
    import nibabel as nib

    written, errors = [], []
    doc = json.loads((staged / "dataset.json").read_text())
    for entry in doc.get("cases", []):
        series = staged / entry["image"]
        if not series.is_dir():
            continue
        for m in methods:
            nifti = out / m / f"{entry['image']}.nii.gz"
            if not nifti.is_file():
                continue
            try:
                grid = _grid_of(series)
                label = np.asarray(nib.load(str(nifti)).dataobj).astype(np.int64)
                top = len(class_names)  # abstain
                names = [*class_names[1:], "abstain"]
                if label.max(initial=0) > top:
                    raise ValueError(f"{nifti}: label {label.max()} above abstain ({top})")
                from .dicom_seg import write_seg

                dst = write_seg(label.astype(np.uint8), grid, names, out / m / f"{entry['image']}_seg.dcm",
                                description=f"trust_monai certify {m}: certified labels, abstain = segment {top}",
                                algorithm=f"trust_monai {m}", uid_seed=[m, str(nifti.stat().st_size)])
            except (InputFileError, ValueError, TrustMonaiError) as e:
                errors.append(f"{series}: certified SEG not written: {e}")
                continue
            written.append(dst)
    return written, errors
