"""The hospital workflow behind ``trust-monai protect | purify | certify | detect --input PATH --output DIR``.

Each verb runs the inference config of its packaged bundle on the user's own files and then writes ``report.html``
(pictures, metrics table, manifest summary) into the output folder. ``PATH`` may be

- a Decathlon datalist (``dataset.json``, or a folder holding one): used as it is;
- a folder of NIfTI / NRRD / PNG files or of DICOM series (one series per folder, any depth): the scans are found and
  paired with their masks by name (``labels/`` or ``labelsTr/`` beside ``images/`` / ``imagesTr/``, or a ``_label``,
  ``_seg``, ``_mask`` suffix, or ``_image`` -> ``_label``) or, for a DICOM series, by the UIDs an RTSTRUCT or SEG of
  the folder refers to (:mod:`trust_monai.data.dicom_study`), and a datalist with one section ``cases`` is written;
- a datalist file with another name.

For the last two the input is *staged*: ``DIR/.trust_monai/input`` mirrors the input's relative paths with hard
links (copies across file systems) plus the datalist, so every bundle sees an ordinary dataset folder, its outputs
keep the input's relative paths, and the input folder is never written to.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import DatalistError, InputFileError, TrustMonaiError

__all__ = ["VERBS", "Verb", "discover", "stage_input", "run_verb"]

_SCAN_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".png", ".tif", ".tiff")
_MASK_SUFFIXES = ("_label", "_labels", "_seg", "_segmentation", "_mask")
_DIR_PAIRS = (("imagesTr", "labelsTr"), ("imagesTs", "labelsTs"), ("images", "labels"), ("images", "masks"),
              ("images", "segmentations"))
STAGE = Path(".trust_monai") / "input"


@dataclass(frozen=True)
class Verb:
    """What a verb runs: its bundle, the override that names the datalist sections to read, whether masks are
    needed, and the bundle's default sample dataset (whose class count the packaged models were trained with)."""

    bundle: str
    sections_id: str
    sections_as_list: bool
    needs_masks: bool
    default_dataset: str | None
    changes_images: bool
    what: str
    done: str = ""  # caption of the changed copy in the before / after picture


VERBS = {
    "protect": Verb("umed", "sections", True, True, "mni152_tissue_2d", True,
                    "UMed unlearnable perturbation inside each mask and its contour band", "protected"),
    "purify": Verb("dvae", "sections", True, True, "mni152_tissue_2d", True,
                   "D-VAE purification of unlearnable perturbations", "purified"),
    "certify": Verb("drs", "section", False, False, "mni152_tissue_2d", False,
                    "certified segmentation by randomized smoothing (RS) and dual randomized smoothing (DRS)"),
    "detect": Verb("moe_ffd", "sections", True, False, None, False,
                   "MoE-FFD synthetic / tampered scan detection"),
}


def _is_scan(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(_SCAN_SUFFIXES)


def _stem(p: Path) -> tuple[str, str]:
    name = p.name
    for suf in _SCAN_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)], name[-len(suf):]
    return p.stem, p.suffix


def _is_dicom_file(p: Path) -> bool:
    if p.suffix.lower() in (".dcm", ".dicom", ".ima"):
        return True
    if p.suffix:
        return False
    try:
        with open(p, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _mask_candidates(rel: Path) -> list[Path]:
    stem, suf = _stem(rel)
    out = [rel.parent / f"{stem}{m}{suf}" for m in _MASK_SUFFIXES]
    if stem.endswith("_image"):
        out += [rel.parent / f"{stem[:-6]}{m}{suf}" for m in _MASK_SUFFIXES]
    parts = list(rel.parent.parts)
    for image_dir, mask_dir in _DIR_PAIRS:
        out += [Path(*parts[:i], mask_dir, *parts[i + 1:], rel.name) for i, part in enumerate(parts)
                if part.lower() == image_dir.lower()]
    return out


def _is_mask_path(rel: Path) -> bool:
    stem, _ = _stem(rel)
    if stem.lower().endswith(_MASK_SUFFIXES):
        return True
    return any(x.lower() in {m.lower() for _, m in _DIR_PAIRS} for x in rel.parent.parts)


def discover(folder: str | os.PathLike, with_masks: bool = True) -> dict:
    """Datalist of a folder of scans (see :func:`_discover`)."""
    return _discover(folder, with_masks)[0]


def _discover(folder: str | os.PathLike, with_masks: bool = True):
    """Datalist of a folder of scans: ``{"cases": [{"image": rel, "label": rel?}, ...], "labels"?: {...}}``.

    NIfTI / NRRD files are scans unless their name or folder marks them as masks; every folder holding DICOM image
    files is one series (its sub-folders are not searched further); DICOM RTSTRUCT and SEG files are not images: a
    folder holding only those is no series, and they give masks to the series they refer to (see
    :mod:`trust_monai.data.dicom_study`; the ``label`` of such a series is added when the input is staged). Paths
    are relative to ``folder`` and sorted. With ``with_masks=False`` masks are still recognised (and left out) but
    not listed.

    Returns:
        ``(doc, study)``: the datalist and the :class:`~trust_monai.data.dicom_study.DicomStudy` of the DICOM
        folders (None when there are none).

    Raises:
        DatalistError: no scan found, or ``folder`` is itself a DICOM series.
    """
    root = Path(folder).resolve()
    scans, series = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
        files = sorted(d / f for f in filenames if not f.startswith("."))
        if any(_is_dicom_file(f) for f in files):
            series.append(d.relative_to(root))
            dirnames[:] = []
            continue
        scans += [f.relative_to(root) for f in files if _is_scan(f)]
    study = None
    if series:
        from .data.dicom_study import scan

        study = scan(root, series)
        series = [s for s in series if s in study.image_folders]
    if Path() in series:
        raise DatalistError(f"{root}: is itself a DICOM series; give the folder that holds the series folder(s)")
    masks = {p for p in scans if _is_mask_path(p)}
    cases = []
    for rel in (p for p in scans if p not in masks):
        entry = {"image": rel.as_posix()}
        mask = next((c for c in _mask_candidates(rel) if c in masks), None) if with_masks else None
        if mask is not None:
            entry["label"] = mask.as_posix()
        cases.append(entry)
    linked = {d.resolve() for d in _linked_series(study)} if study is not None and with_masks else set()
    for s in series:
        entry = {"image": s.as_posix()}
        if (root / s).resolve() in linked:  # its mask comes from the RTSTRUCT / SEG that refers to it (staging)
            cases.append(entry)
            continue
        # a series' mask lies beside its folder: <series>_label.nii.gz (or _seg / _mask, NIfTI or NRRD)
        found = [root / s.parent / f"{s.name}{m}{suf}" for m in _MASK_SUFFIXES for suf in _SCAN_SUFFIXES]
        found = [f for f in found if f.is_file()] if with_masks else []
        if found:
            entry["label"] = found[0].relative_to(root).as_posix()
        cases.append(entry)
    if not cases:
        raise DatalistError(f"{root}: no scan found (looked for .nii/.nii.gz/.nrrd/.nhdr/.png/.tif files and DICOM series "
                            "folders); give a folder of scans or a dataset.json")
    doc: dict = {"name": root.name, "description": f"scans found in {root} by trust-monai", "cases": cases}
    return doc, study


def _linked_series(study) -> list[Path]:
    """Folders of the series that some RTSTRUCT / SEG of the study refers to (by UID)."""
    from .data.dicom_study import link_objects

    links, _, failed = link_objects(study)
    return [study.series_dir[u] for u in (*links, *failed)]


def _declare_labels(doc: dict, root: Path) -> None:
    """Add a ``labels`` dict sized by the largest mask value, so the bundles know the class count."""
    import numpy as np

    from .data.io import read_image

    top = 0
    for c in doc["cases"]:
        if "label" in c and (root / c["label"]).exists():  # masks rasterised from RTSTRUCT / SEG are named later
            arr, _ = read_image(root / c["label"])
            top = max(top, int(np.nanmax(arr)) if arr.size else 0)
    if top > 0:
        doc["labels"] = {"0": "background", **{str(i): f"class {i}" for i in range(1, top + 1)}}


def _link_tree(src: Path, dst: Path, skip: frozenset = frozenset()) -> None:
    """Hard-link ``src`` (file or folder) at ``dst``; copy where linking is impossible. Never writes into ``src``.
    Files in ``skip`` (RTSTRUCT / SEG objects inside a series folder) are left out."""
    if src.is_dir():
        dst.mkdir(parents=True, exist_ok=True)
        for child in sorted(src.iterdir()):
            if not child.name.startswith(".") and child not in skip:
                _link_tree(child, dst / child.name, skip)
        for stale in sorted(dst.iterdir()):  # a left-out object linked by an earlier run
            if (src / stale.name) in skip and stale.is_file():
                stale.unlink()
        return
    if dst.exists():
        if dst.samefile(src) or (dst.stat().st_size == src.stat().st_size and
                                 dst.stat().st_mtime_ns >= src.stat().st_mtime_ns):
            return
        dst.unlink()
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def stage_input(path: str | os.PathLike, output_dir: str | os.PathLike, with_masks: bool = True,
                roi=None) -> tuple[Path, bool]:
    """The dataset folder a bundle should read for ``path``; returns ``(dataset_dir, generated)``.

    ``generated`` is True when the datalist was written by :func:`discover` (section ``cases``). DICOM series that an
    RTSTRUCT or SEG refers to get their mask rasterised from it (``roi``: the structures / segments to use, as
    classes in that order; default all); what was linked, and any object that could not be used (its series is
    left out, the others go on), is recorded in ``dataset_dir/dicom_objects.json``.

    Raises:
        InputFileError: ``path`` does not exist, or the output folder is inside it.
        DatalistError: nothing to read.
    """
    from .data.datalist import load_datalist
    from .utils.fileio import atomic_write_json

    src = Path(path).expanduser()
    if not src.exists():
        raise InputFileError(src, "does not exist; give a dataset.json, a folder of NIfTI / NRRD scans or of DICOM "
                                  "series")
    src = src.resolve()
    out = Path(output_dir).expanduser().resolve()
    base = src.parent if src.is_file() else src
    if out == base or base in out.parents:
        raise InputFileError(src, f"the output folder {out} is inside the input; choose a folder outside it, the "
                                  "input is never written to")
    if src.is_dir() and (src / "dataset.json").is_file():
        return src, False
    if src.is_file() and src.name == "dataset.json":
        return src.parent, False
    staged = out / STAGE
    if src.is_file():
        if not src.name.lower().endswith(".json"):
            raise InputFileError(src, "is a single file; give a dataset.json or a folder of scans")
        try:
            doc = json.loads(src.read_text())
        except ValueError as e:
            raise DatalistError(f"{src}: not valid JSON ({e})") from None
        sections = [k for k, v in doc.items() if isinstance(v, list) and v and isinstance(v[0], (dict, str))]
        paths: set[str] = set()
        for s in sections:
            for e in load_datalist(src, s, keys=("image", "label")):  # refuses paths outside the dataset folder
                paths.update(v for k, v in e.items() if k in ("image", "label") and isinstance(v, str))
        rels = sorted(Path(p).resolve().relative_to(base) for p in paths)
        generated = False
    else:
        doc, study = _discover(src, with_masks)
        _declare_labels(doc, src)
        skip: frozenset = frozenset()
        made: set = set()
        if study is not None and study.objects:
            from .data.dicom_study import stage_labels

            skip = frozenset(study.object_files)
            record = stage_labels(study, staged, roi) if with_masks else None
            if record is not None:
                made = _apply_objects(doc, record, src)
        elif roi not in (None, ""):
            raise TrustMonaiError(f"--roi chooses structures of DICOM RTSTRUCT / SEG objects; {src} holds none")
        rels = sorted({Path(v) for c in doc["cases"] for k, v in c.items() if k in ("image", "label")
                       and v not in made})
        generated = True
    for rel in rels:
        _link_tree(base / rel, staged / rel, skip if generated else frozenset())
    target = staged / "dataset.json"
    if not target.is_file() or json.loads(target.read_text()) != doc:
        atomic_write_json(target, doc)
    return staged, generated


def _apply_objects(doc: dict, record: dict, src: Path) -> set:
    """Give each linked series its rasterised label, drop the series whose object failed, name the classes;
    returns the relative paths of the labels written into the staged folder."""
    from .data.dicom_study import OBJECTS_FILE

    labels = {r["series"]: r["label"] for r in record["links"]}
    failed = set(record["failed"])
    for line in record["errors"]:
        print(f"trust-monai: error: {line}", file=sys.stderr)
    doc["cases"] = [c for c in doc["cases"] if c["image"] not in failed]
    for c in doc["cases"]:
        if c["image"] in labels:
            c["label"] = labels[c["image"]]
    if not doc["cases"]:
        raise DatalistError(f"{src}: no series left to process ({len(record['errors'])} error(s) above; details in "
                            f"{OBJECTS_FILE} of the staged input)")
    if labels and record["classes"]:
        top = max(len(doc.get("labels", {})) - 1, len(record["classes"]))
        names = {"0": "background", **{str(i): f"class {i}" for i in range(1, top + 1)}}
        names.update({str(i): n for i, n in enumerate(record["classes"], start=1)})
        doc["labels"] = names
    return set(labels.values())


def _present(dataset_dir: Path, sections: list[str]) -> list[str]:
    """The sections of ``sections`` that the datalist holds."""
    path = dataset_dir / "dataset.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DatalistError(f"{path}: cannot read datalist ({e})") from None
    return [s for s in sections if isinstance(doc.get(s), list)]


def _spatial_dims(dataset_dir: Path, sections: list[str]) -> int:
    from .data.datalist import load_datalist
    from .data.io import PICTURE_FORMATS, probe_image

    for s in _present(dataset_dir, sections):
        entries = load_datalist(dataset_dir, s, keys=("image", "label"))
        if entries:
            probe = probe_image(entries[0]["image"])
            if probe["format"] in PICTURE_FORMATS:  # a photograph: 2D, whatever its colour channels
                return 2
            return 3 if sum(int(n) > 1 for n in probe["shape"]) >= 3 else 2
    raise DatalistError(f"{dataset_dir / 'dataset.json'}: no entries in {sections}")


def _check_masks(dataset_dir: Path, sections: list[str], verb: str, shown_root: str) -> None:
    from .data.datalist import load_datalist

    missing = []
    for s in _present(dataset_dir, sections):
        missing += [Path(e["image"]).relative_to(dataset_dir).as_posix()
                    for e in load_datalist(dataset_dir, s, keys=("image", "label")) if "label" not in e]
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DatalistError(
            f"{verb} needs a segmentation mask for every scan (it works inside the region of interest); none found for "
            f"{shown} (in {shown_root}). Put the mask next to the scan as <name>_label.nii.gz (or in a labels/ folder beside images/), "
            "or give a dataset.json with 'label' entries")


def _bundle_command(bundle: str, config: str, args: dict) -> list[str]:
    from .bundle import bundle_root

    cfg = Path(bundle_root(bundle)) / "configs" / f"{config}.json"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(cfg)]
    for k, val in args.items():
        cmd += [f"--{k}", val if isinstance(val, str) else json.dumps(val)]
    return cmd


def run_verb(verb: str, input: str, output: str, ckpt_dir: str | None = None, spatial_dims: int | None = None,
             overwrite: bool = False, deidentify: bool = False, report: bool = True, roi=None, **overrides) -> int:
    """Run ``verb`` on ``input`` into ``output`` and write ``output/report.html``; returns the bundle's exit code.

    ``protect`` is one command: without a generator in ``ckpt_dir`` (default ``output/.trust_monai/models``) it first
    runs the bundle's ``train.json`` on the same cases, then ``inference.json``; a rerun reuses the learned generator.

    DICOM studies: ``roi`` chooses the RTSTRUCT structures / SEG segments that form the mask (see
    :func:`stage_input`). After protect / purify every such object is written again beside the new series,
    referencing it (:func:`~trust_monai.data.dicom_study.write_derived_objects`); certify writes its label maps of
    DICOM series also as SEG (:func:`~trust_monai.data.dicom_study.write_certified_segs`). A problem with one
    object is one line on stderr and makes the exit code non-zero; the other series are still written.
    """

    if verb not in VERBS:
        raise TrustMonaiError(f"unknown verb {verb!r}; use one of {sorted(VERBS)}")
    v = VERBS[verb]
    out = Path(output).expanduser().resolve()
    dataset_dir, generated = stage_input(input, out, with_masks=v.bundle != "moe_ffd", roi=roi)
    sections = ["cases"] if generated else None
    args: dict = {"dataset_dir": str(dataset_dir), "output_dir": str(out)}
    if sections:
        args[v.sections_id] = sections if v.sections_as_list else sections[0]
    read_sections = sections or (["training"] if v.changes_images else ["test", "training"])
    if v.needs_masks:
        _check_masks(dataset_dir, read_sections, verb, str(Path(input).expanduser()))
    if v.bundle != "moe_ffd":
        args["spatial_dims"] = int(spatial_dims or _spatial_dims(dataset_dir, read_sections))
        doc = json.loads((dataset_dir / "dataset.json").read_text())
        if not (doc.get("labels") or doc.get("classes")) and "num_classes" not in overrides and v.default_dataset:
            from .data import num_classes, prepare

            args["num_classes"] = num_classes(prepare(v.default_dataset))
    if ckpt_dir:
        args["ckpt_dir"] = str(Path(ckpt_dir).expanduser().resolve())
    elif verb == "protect":  # the generators are learned on the user's own data and kept for reruns
        args["ckpt_dir"] = str(out / ".trust_monai" / "models")
    if overwrite and v.changes_images:
        args["overwrite"] = True
    if deidentify:
        if not v.changes_images:
            raise TrustMonaiError(f"--deidentify applies to the verbs that write scans (protect, purify), not {verb}")
        args["deidentify"] = True
    args.update(overrides)
    started = time.time()
    if verb == "protect":
        generator = Path(args["ckpt_dir"]) / f"generator_{args['spatial_dims']}d.pt"
        if generator.is_file():
            print(f"[protect] using the generators in {generator.parent} (delete them to learn anew)")
        else:
            print(f"[protect] 1/2 learning the protection on {input} (saved to {generator.parent})")
            train = {k: val for k, val in args.items() if k not in ("output_dir", "overwrite", "deidentify")}
            rc = subprocess.call(_bundle_command(v.bundle, "train", train))
            if rc != 0:
                return rc
            print("[protect] 2/2 writing the protected copy")
    cmd = _bundle_command(v.bundle, "inference", args)
    rc = subprocess.call(cmd)
    object_errors = _dicom_objects_after(verb, v, dataset_dir, Path(input).expanduser().resolve(), out, args,
                                         deidentify) if generated else []
    if report and (rc == 0 or (out / "manifest.json").is_file()):  # a failed run with written cases is reported too
        from .engines.report import verb_report

        path = verb_report(verb, v, dataset_dir, out, read_sections, command=shlex.join(cmd), rc=rc,
                           seconds=time.time() - started, input_path=str(Path(input).expanduser().resolve()))
        print(f"report: {path}")
    if object_errors and rc == 0:
        print(f"trust-monai: error: {len(object_errors)} DICOM RTSTRUCT / SEG problem(s), listed above; the other "
              "series are written", file=sys.stderr)
        return 1
    return rc


def _dicom_objects_after(verb: str, v: Verb, dataset_dir: Path, input_root: Path, out: Path, args: dict,
                         deidentify: bool) -> list[str]:
    """The DICOM objects of a run: RTSTRUCT / SEG re-referenced to the new series (protect, purify), certified label
    maps as SEG (certify). Returns every problem line (staging's too), each already printed."""
    from .data.dicom_study import OBJECTS_FILE, write_certified_segs, write_derived_objects

    path = dataset_dir / OBJECTS_FILE
    record = json.loads(path.read_text()) if path.is_file() else {}
    errors = list(record.get("errors", []))
    new_errors: list[str] = []
    if v.changes_images and record.get("links"):
        done = None
        manifest = out / "manifest.json"
        if manifest.is_file():
            cases = json.loads(manifest.read_text()).get("cases", [])
            done = {str(Path(c["input"]).resolve()) for c in cases if c.get("status") in ("done", "copied")}
        written, new_errors = write_derived_objects(record, input_root, dataset_dir, out,
                                                    derivation=f"trust_monai {verb}: {v.what}",
                                                    deidentify=deidentify, done=done)
        for p in written:
            print(f"[{verb}] {p.relative_to(out)}: re-referenced to the {v.done} series")
    elif verb == "certify":
        doc = json.loads((dataset_dir / "dataset.json").read_text())
        labels = doc.get("labels") or {}
        n = int(args.get("num_classes") or len(labels) or 0)
        names = [labels.get(str(i), f"class {i}") for i in range(n)]
        methods = [m for m in ("rs", "drs") if (out / m).is_dir()]
        written, new_errors = write_certified_segs(dataset_dir, out, methods, names)
        for p in written:
            print(f"[certify] {p.relative_to(out)}: certified label map as DICOM SEG")
    for line in new_errors:
        print(f"trust-monai: error: {line}", file=sys.stderr)
    return errors + new_errors
