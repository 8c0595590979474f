"""Atomic writes and hashing: outputs appear whole or not at all, inputs are never touched."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "is_atomic_temp",
    "remove_stale_temps",
    "sha256_file",
]

# ".<target name>.<8 random chars from mkstemp/mkdtemp>.tmp<target suffixes>": the only names atomic_path (and the
# DICOM / NRRD folder writers in data.io) create, so a leftover one is known to be ours
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\..*)?$")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is renamed onto ``target``, on error removed.

    The temporary file keeps the target's suffixes (``.nii.gz``, ``.png``) so writers that pick a format from the
    name still work. The rename is atomic on one filesystem, which is why the temp file lives in the same folder.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes) if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; outputs get the usual mode for new files (0666 less the umask), as open() would give
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            if tmp_path.is_dir():
                shutil.rmtree(tmp_path)
            else:
                tmp_path.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically (fsync before rename)."""
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(target)


def atomic_write_text(target: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``target`` atomically."""
    return atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``target`` atomically."""
    return atomic_write_text(target, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def is_atomic_temp(name: str) -> bool:
    """True for the name of a temporary file or folder made by :func:`atomic_path` (left behind by a killed run)."""
    return bool(_TEMP_NAME.match(name))


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files / folders a killed run left under ``folder`` (only names :func:`is_atomic_temp`).

    A SIGKILL between creating the temp file and the rename leaves it behind; the finished output was never there,
    so removing it loses nothing. Call it only on a folder this run owns (an output folder), before writing.

    Returns:
        The paths removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.rglob(".*") if is_atomic_temp(p.name)]
    removed = []
    for p in sorted(stale, key=lambda q: len(q.parts)):  # parents first; a temp folder's content goes with it
        if any(r in p.parents for r in removed):
            continue
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            removed.append(p)
    return removed


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, or of every file under a folder (sorted relative paths and contents) for DICOM series."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        if path.is_dir():
            h.update(p.relative_to(path).as_posix().encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(chunk), b""):
                h.update(block)
    return h.hexdigest()
