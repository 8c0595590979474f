"""Where prepared sample datasets live, and how a dataset folder is built so it appears whole or not at all.

A dataset folder ``<root>/<name>`` is complete when it holds the marker file ``.complete`` whose content equals the
builder's version string. The marker is written last, inside a temporary sibling folder that is then renamed into
place, so a killed or failed build never leaves a folder that looks complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Callable

from trust_monai.utils.fileio import atomic_write_text

__all__ = ["CACHE_ENV", "COMPLETE_MARKER", "cache_dir", "downloads_dir", "is_complete", "build_dataset_dir"]

CACHE_ENV = "TRUST_MONAI_DATA"
COMPLETE_MARKER = ".complete"
_TMP_TAG = ".tmp-"


def cache_dir() -> Path:
    """Root folder of the sample-data cache.

    Returns:
        ``$TRUST_MONAI_DATA`` when set and non-empty, else ``~/.cache/trust_monai`` (not created here).
    """
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "trust_monai"


def downloads_dir() -> Path:
    """Folder for downloaded source archives, shared by every dataset root (``cache_dir() / "downloads"``)."""
    return cache_dir() / "downloads"


def is_complete(folder: str | os.PathLike, version: str) -> bool:
    """Whether ``folder`` holds a finished build of exactly ``version``.

    Args:
        folder: a dataset folder.
        version: the builder's version string, compared with the marker's content.

    Returns:
        True when the marker exists and its stripped content equals ``version``.
    """
    marker = Path(folder) / COMPLETE_MARKER
    try:
        return marker.read_text(encoding="utf-8").strip() == version
    except (FileNotFoundError, NotADirectoryError):
        return False


def _tmp_prefix(name: str) -> str:
    # Host and pid in the name let a later prepare tell an abandoned build (its process is gone) from a live one.
    return f".{name}{_TMP_TAG}{socket.gethostname()}-"


def _remove_abandoned(parent: Path, name: str) -> None:
    """Delete temp build folders of ``name`` left by killed processes on this host; others are left alone."""
    prefix = _tmp_prefix(name)
    for tmp in parent.glob(f"{prefix}*"):
        pid_str = tmp.name[len(prefix) :].split("-", 1)[0]
        if not pid_str.isdigit():
            continue
        try:
            os.kill(int(pid_str), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:  # alive, owned by another user
            pass


def build_dataset_dir(
    target: str | os.PathLike, version: str, build: Callable[[Path], None], force: bool = False
) -> Path:
    """Build a dataset folder atomically.

    ``build`` fills a fresh temporary sibling of ``target``; then the marker is written and the folder is renamed
    onto ``target`` (an outdated or incomplete ``target`` is moved aside first and deleted). If another process
    finished the same version meanwhile, its folder wins and this build is discarded, unless ``force``.

    Args:
        target: the final dataset folder.
        version: content of the ``.complete`` marker.
        build: callable that writes the dataset into the folder it is given.
        force: replace ``target`` even when it is already complete.

    Returns:
        ``target`` as a Path.
    """
    target = Path(target)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(parent, target.name)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_tmp_prefix(target.name)}{os.getpid()}-", dir=parent))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only; a shared cache must stay readable like any other folder
    try:
        build(tmp)
        atomic_write_text(tmp / COMPLETE_MARKER, version + "\n")
        if not force and is_complete(target, version):
            shutil.rmtree(tmp)
            return target
        old = None
        if target.exists() or target.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f"{_tmp_prefix(target.name)}{os.getpid()}-old-", dir=parent))
            os.replace(target, old / "dataset")
        try:
            os.replace(tmp, target)
        except OSError:
            # A concurrent prepare renamed its copy into place between our two renames: keep it.
            if not is_complete(target, version):
                raise
            shutil.rmtree(tmp)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
        raise
    return target
