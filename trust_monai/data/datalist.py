"""Load a Decathlon-style ``dataset.json`` safely: schema-checked, paths kept inside the dataset folder.

A datalist shared by another site is untrusted input: an absolute path or a ``../`` escape (also through a
symlink) could make a bundle read, and later write next to, files outside the dataset. Both are refused unless
the caller opts in with ``allow_outside=True``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from trust_monai.errors import DatalistError, InputFileError

__all__ = ["DATALIST_FILENAME", "DATALIST_SCHEMA_PATH", "check_readable", "load_datalist", "num_classes"]

DATALIST_FILENAME = "dataset.json"
DATALIST_SCHEMA_PATH = Path(__file__).resolve().parents[2] / "configs" / "schemas" / "datalist.schema.json"


def load_datalist(
    dataset_dir: str | os.PathLike,
    section: str = "training",
    keys: Sequence[str] = ("image", "label"),
    allow_outside: bool = False,
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """Read one section of ``dataset_dir/dataset.json`` with its paths made absolute.

    Args:
        dataset_dir: the dataset folder holding ``dataset.json`` (a path to the JSON file itself is accepted too;
            paths are then relative to its folder).
        section: which list to return, e.g. ``"training"``, ``"validation"``, ``"test"``.
        keys: entry keys whose string values are paths; other values (an integer class label) are left as they are.
            A bare string entry (Decathlon ``"test": ["imagesTs/a.nii.gz"]``) becomes ``{"image": ...}``.
        allow_outside: accept absolute paths and paths that leave the dataset folder (after resolving symlinks).
        check_files: require every listed path to exist.

    Returns:
        A list of new dicts (the JSON is not modified) with path values as absolute, normalised strings; symlinks
        inside the dataset are kept as named, so output names derived from them stay stable.

    Raises:
        DatalistError: ``dataset.json`` is missing, not JSON, violates the schema, lacks ``section``, or an entry
            has an absolute or escaping path (message names the entry index and the path).
        InputFileError: a listed file does not exist (``check_files``).
    """
    json_path = Path(dataset_dir)
    if json_path.is_dir() or not json_path.name.lower().endswith(".json"):
        json_path = json_path / DATALIST_FILENAME
    root = json_path.parent
    if not json_path.is_file():
        raise DatalistError(f"{json_path}: datalist not found (expected {DATALIST_FILENAME} in the dataset folder)")
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatalistError(f"{json_path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatalistError(f"{json_path}: cannot read: {e}") from None
    _validate(data, json_path)

    if section not in data:
        present = sorted(k for k, v in data.items() if isinstance(v, list))
        raise DatalistError(
            f"{json_path}: no section {section!r}; sections present: {', '.join(present) if present else 'none'}"
        )
    entries = data[section]
    if not isinstance(entries, list):
        raise DatalistError(f"{json_path}: section {section!r} must be a list of entries")

    root_resolved = root.resolve()
    out: list[dict[str, Any]] = []
    for idx, raw in enumerate(entries):
        entry = {"image": raw} if isinstance(raw, str) else dict(raw)
        for key in keys:
            value = entry.get(key)
            if not isinstance(value, str):
                continue  # absent, or a class label
            where = f"{json_path}: {section}[{idx}].{key}"
            entry[key] = _resolve_entry_path(value, root, root_resolved, allow_outside, where)
            if check_files and not os.path.exists(entry[key]):
                raise InputFileError(entry[key], f"does not exist (listed in {section}[{idx}].{key} of {json_path})")
        out.append(entry)
    return out


def check_readable(entries: Iterable[dict[str, Any]], keys: Sequence[str] = ("image", "label")) -> int:
    """Open the header of every image listed in ``entries`` so a corrupt file fails before any output is written.

    Only headers are read (nibabel/pynrrd header, pydicom ``stop_before_pixels``, PIL verify) plus a size check
    that catches truncated files, see :func:`trust_monai.data.io.probe_image`.

    Args:
        entries: entries from :func:`load_datalist` (absolute paths).
        keys: which entry keys hold image paths; non-string values are skipped.

    Returns:
        The number of files checked.

    Raises:
        InputFileError: the first missing, unsupported or corrupt file, named in the message.
    """
    from trust_monai.data.io import probe_image

    checked = 0
    for entry in entries:
        for key in keys:
            value = entry.get(key)
            if isinstance(value, str):
                probe_image(value)
                checked += 1
    return checked


def _entries_well_formed(data: Any) -> bool:
    """Cheap structural check of every section entry (what the schema asks of entries); False sends to jsonschema."""
    if not isinstance(data, dict):
        return False
    for key in ("training", "validation", "test"):
        entries = data.get(key, [])
        if not isinstance(entries, list):
            return False
        for e in entries:
            if isinstance(e, str) and e:
                continue
            if not isinstance(e, dict) or not isinstance(e.get("image"), str) or not e["image"]:
                return False
            if "label" in e:
                label = e["label"]
                if isinstance(label, bool) or not (isinstance(label, int) or (isinstance(label, str) and label)):
                    return False
    return True


def _validate(data: Any, json_path: Path) -> None:
    """Check ``data`` against the datalist JSON Schema; one DatalistError naming the offending entry."""
    import jsonschema  # lazy: only needed when a datalist is loaded

    try:
        with open(DATALIST_SCHEMA_PATH, encoding="utf-8") as f:
            schema = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DatalistError(f"{DATALIST_SCHEMA_PATH}: datalist schema unreadable: {e}") from None
    validator = jsonschema.Draft202012Validator(schema)
    if _entries_well_formed(data):
        # jsonschema walks 70k entries in ~10 s; entries already checked by hand, so validate the rest on a sample
        data = {k: (v[:2] if isinstance(v, list) else v) for k, v in data.items()}
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is None:
        return
    # best_match on a oneOf (object entry or bare string) reports the branch closest to the data, e.g. the
    # missing "image" of an object entry, which is the useful message.
    parts = error.absolute_path
    where = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(parts))
    raise DatalistError(f"{json_path}: {where or 'top level'}: {error.message}")


def _resolve_entry_path(value: str, root: Path, root_resolved: Path, allow_outside: bool, where: str) -> str:
    """Absolute path of one datalist value, refusing absolute paths and escapes unless ``allow_outside``."""
    if "\x00" in value:
        raise DatalistError(f"{where}: path {value!r} holds a NUL byte; refused")
    try:
        return _resolve_checked(value, root, root_resolved, allow_outside, where)
    except (OSError, RuntimeError) as e:  # a symlink loop, a name too long for the filesystem
        reason = getattr(e, "strerror", None) or e
        raise DatalistError(f"{where}: path {value!r} cannot be resolved ({reason})") from None


def _resolve_checked(value: str, root: Path, root_resolved: Path, allow_outside: bool, where: str) -> str:
    candidate = Path(value)
    if candidate.is_absolute():
        if not allow_outside:
            raise DatalistError(
                f"{where}: absolute path {value!r} refused; list paths relative to {root} (or allow_outside=True)"
            )
        return os.path.normpath(candidate)
    joined = root / candidate
    # resolve() follows symlinks, so a link inside the dataset that points elsewhere is caught too
    resolved = joined.resolve()
    if not allow_outside and not resolved.is_relative_to(root_resolved):
        raise DatalistError(
            f"{where}: path {value!r} leads outside the dataset folder {root} (to {resolved}); "
            "refused unless allow_outside=True"
        )
    if ".." in candidate.parts:
        # a lexical normpath of "link/../x" can name a different file than the filesystem does: use the real one
        return str(resolved)
    return os.path.abspath(joined)


def num_classes(dataset_dir) -> int:
    """Number of classes a dataset declares: its ``labels`` dict (segmentation) or ``classes`` list (classification)."""
    path = Path(dataset_dir) / DATALIST_FILENAME
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DatalistError(f"{path}: cannot read datalist ({e})") from e
    for key in ("labels", "classes"):
        if meta.get(key):
            return len(meta[key])
    raise DatalistError(f"{path}: declares neither 'labels' nor 'classes'; add one so the class count is known")
