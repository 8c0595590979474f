"""``output_dir/manifest.json``: one record per case, written atomically, so reruns resume and skip finished cases."""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import OutputExistsError
from ..utils.fileio import atomic_write_json, is_atomic_temp, sha256_file

__all__ = ["Manifest"]


class Manifest:
    """Per-case record of what a bundle wrote: input / output paths, sha256 of both, status and metrics.

    A case counts as finished only when its record is in the manifest AND its output still hashes to the recorded
    sha256, so a file damaged or removed after a crash is redone on the next run. The manifest itself is rewritten
    atomically after every case (temp + rename), which keeps it consistent with the files on disk at any kill point.

    Args:
        output_dir: folder the bundle writes into (must not be, or be inside, ``input_dir``).
        bundle: bundle name recorded in the manifest.
        config: config name (``inference``, ``evaluate`` ...).
        input_dir: the dataset folder; writing into it is refused so inputs are never modified.
        seed: seed of the run, recorded for reproducibility.
        overwrite: replace a manifest written by another bundle / config instead of refusing.
        save_every: rewrite the file every N records (1 = every case). Large datasets (70k PNGs) use more, since each
            rewrite is the whole file; a kill then only loses unsaved records, whose cases are redone on rerun.
        settings: what the outputs depend on (derivation, seed, weights fingerprint ...), plain JSON values. A rerun
            whose settings differ from the recorded ones (keys set in both) would mix outputs of two runs, so it is
            refused; with ``overwrite`` every case is redone instead.
        refuse_foreign: refuse (unless ``overwrite``) an ``output_dir`` that holds files but no manifest: it is not
            the output of an earlier run, and writing into it could replace someone's data. The project's own staging
            folder (``.trust_monai``) and temp files of a killed run do not count.
        shard: rank of a sharded (``torchrun``) run: records go to ``manifest.rank<r>.json``; :meth:`merge_shards`
            makes the one ``manifest.json`` at the end. In every run, sharded or not, the records of rank files left
            by an earlier, killed sharded run count as finished.
    """

    def __init__(
        self,
        output_dir,
        bundle: str,
        config: str,
        input_dir=None,
        seed: int | None = None,
        overwrite: bool = False,
        save_every: int = 1,
        settings: dict | None = None,
        refuse_foreign: bool = False,
        shard: int | None = None,
    ):
        self.output_dir = Path(output_dir).resolve()
        if input_dir is not None:
            inp = Path(input_dir).resolve()
            if self.output_dir == inp or inp in self.output_dir.parents:
                raise OutputExistsError(
                    f"output_dir {self.output_dir} is inside the input folder {inp}; choose another --output_dir"
                )
        self.path = self.output_dir / "manifest.json"
        self.data: dict[str, Any] = {
            "bundle": bundle,
            "config": config,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "trust_monai_version": __version__,
            "seed": seed,
            "cases": [],
        }
        if settings is not None:
            # through JSON once, so the comparison with a loaded manifest sees the same types (tuples -> lists)
            self.data["settings"] = json.loads(json.dumps({k: _plain(v) for k, v in settings.items()}))
        if self.path.is_file():
            try:
                old = json.loads(self.path.read_text())
            except ValueError as e:  # written atomically, so only a hand edit or a foreign file gets here
                raise OutputExistsError(
                    f"{self.path}: not a readable manifest ({e}); choose another --output_dir") from None
            if old.get("bundle") == bundle and old.get("config") == config:
                changed = _changed_settings(old.get("settings"), self.data.get("settings"))
                if not changed:
                    self.data["cases"] = old.get("cases", [])
                elif not overwrite:
                    raise OutputExistsError(
                        f"{self.path}: its outputs were written with other settings ({'; '.join(changed)}); "
                        "choose another --output_dir or pass --overwrite true to redo every case"
                    )
            elif not overwrite:
                raise OutputExistsError(
                    f"{self.path} belongs to {old.get('bundle')}/{old.get('config')}; "
                    "choose another --output_dir or pass --overwrite true"
                )
        elif refuse_foreign and not overwrite and self.output_dir.is_dir() and not any(
                self.output_dir.glob("manifest.rank*.json")):  # rank manifests: a killed sharded run of ours
            foreign = sorted(p.name for p in self.output_dir.iterdir()
                             if p.name not in ("manifest.json", ".trust_monai") and _holds_data(p)
                             and not (p.name.startswith("manifest.rank") and p.suffix == ".json"))
            if foreign:
                shown = ", ".join(foreign[:3]) + (f" (+{len(foreign) - 3} more)" if len(foreign) > 3 else "")
                raise OutputExistsError(
                    f"{self.output_dir} already holds files ({shown}) and no manifest.json of an earlier run; "
                    "choose an empty or new --output_dir, or pass --overwrite true to write over same-named files"
                )
        # what the ranks of a killed sharded run finished counts too (also when the rerun is one process)
        if self.output_dir.is_dir():
            for part in sorted(self.output_dir.glob("manifest.rank*.json")):
                old = _read_part(part)
                if (old and old.get("bundle") == bundle and old.get("config") == config
                        and not _changed_settings(old.get("settings"), self.data.get("settings"))):
                    known = {c["input"]: i for i, c in enumerate(self.data["cases"])}
                    for c in old.get("cases", []):
                        if c["input"] in known:
                            self.data["cases"][known[c["input"]]] = c
                        else:
                            self.data["cases"].append(c)
        if shard is not None:
            self.path = self.output_dir / f"manifest.rank{int(shard)}.json"
        self._index = {c["input"]: i for i, c in enumerate(self.data["cases"])}
        self.save_every, self._pending = max(1, int(save_every)), 0

    @staticmethod
    def merge_shards(output_dir, order: list[str] | None = None) -> Path:
        """Merge ``manifest.rank*.json`` into ``manifest.json`` (records in ``order`` of inputs, others after), then
        remove the rank files. Returns the manifest path."""
        out = Path(output_dir).resolve()
        parts = sorted(out.glob("manifest.rank*.json"))
        main = out / "manifest.json"
        data = json.loads(main.read_text()) if main.is_file() else None
        cases: dict[str, dict] = {c["input"]: c for c in (data or {}).get("cases", [])}
        for part in parts:
            doc = _read_part(part)
            if doc is None:
                continue
            if data is None:
                data = {k: v for k, v in doc.items() if k != "cases"}
            cases.update({c["input"]: c for c in doc.get("cases", [])})
        if data is None:
            raise OutputExistsError(f"{out}: no manifest to merge")
        rank = {k: i for i, k in enumerate(order or [])}
        data["cases"] = sorted(cases.values(), key=lambda c: (rank.get(c["input"], len(rank)), c["input"]))
        atomic_write_json(main, data)
        for part in parts:
            part.unlink()
        return main

    @staticmethod
    def finish_shards(output_dir, order: list[str] | None, world: int) -> bool:
        """Rank 0, once every rank saved its records: make ``manifest.json`` the run's one record, in ``order``.

        Sharded (``world > 1``): merge the rank files. One process after a killed sharded run: its manifest took in
        the rank files' records when it opened, and its own newer records replaced them, so the rank files are
        dropped, not merged over it (a stale record there would win). Returns whether anything was done.
        """
        parts = sorted(Path(output_dir).resolve().glob("manifest.rank*.json"))
        if world == 1:
            if not parts:
                return False
            for part in parts:
                part.unlink()
        Manifest.merge_shards(output_dir, order)
        return True

    def restrict(self, inputs) -> None:
        """Keep only the records of ``inputs`` (a rank's shard). A rank's file then never carries a record of another
        rank's case, which :meth:`merge_shards` could let win over that rank's newer one."""
        keep = {str(i) for i in inputs}
        self.data["cases"] = [c for c in self.data["cases"] if c["input"] in keep]
        self._index = {c["input"]: i for i, c in enumerate(self.data["cases"])}

    def relpath(self, path) -> str:
        """Path relative to ``output_dir`` when inside it, else absolute (what the manifest stores for outputs)."""
        p = Path(path).resolve()
        try:
            return p.relative_to(self.output_dir).as_posix()
        except ValueError:
            return str(p)

    def is_done(self, input_path) -> bool:
        """True when ``input_path`` has a finished record whose output is on disk with the recorded hash."""
        i = self._index.get(str(input_path))
        if i is None:
            return False
        rec = self.data["cases"][i]
        if rec["status"] == "error":
            return False
        if rec["output"] is None:
            return True
        out = self.output_dir / rec["output"]
        return out.exists() and sha256_file(out) == rec["output_sha256"]

    def record(self, input_path, output_path=None, status: str = "done", metrics: dict | None = None, error=None):
        """Add or replace the record of one case and rewrite the manifest atomically."""
        rec = {
            "input": str(input_path),
            "output": None if output_path is None else self.relpath(output_path),
            "input_sha256": sha256_file(input_path),
            "output_sha256": None if output_path is None else sha256_file(output_path),
            "status": status,
            "metrics": {k: _plain(v) for k, v in (metrics or {}).items()},
        }
        if error is not None:
            rec["error"] = str(error)
        key = str(input_path)
        if key in self._index:
            self.data["cases"][self._index[key]] = rec
        else:
            self._index[key] = len(self.data["cases"])
            self.data["cases"].append(rec)
        self._pending += 1
        if self._pending >= self.save_every:
            self.save()
        return rec

    def save(self) -> Path:
        """Rewrite ``manifest.json`` atomically with every record so far."""
        self._pending = 0
        self.output_dir.mkdir(parents=True, exist_ok=True)
        return atomic_write_json(self.path, self.data)

    @property
    def cases(self) -> list[dict]:
        return self.data["cases"]


def _read_part(path: Path) -> dict | None:
    """A rank's manifest file, or None when it cannot be read (it is written atomically, so only a foreign file)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _holds_data(path: Path) -> bool:
    """A file, or a folder with a file somewhere, that is not a temp file of a killed run (empty folders hold none)."""
    if is_atomic_temp(path.name):
        return False
    if not path.is_dir() or path.is_symlink():
        return True
    return any(_holds_data(p) for p in path.iterdir())


def _changed_settings(old: dict | None, new: dict | None) -> list[str]:
    """``key: old -> new`` for each setting recorded in both manifests with different values."""
    if not old or not new:
        return []  # a manifest from before settings were recorded, or a caller that records none
    return [f"{k}: {old[k]!r} -> {new[k]!r}" for k in sorted(set(old) & set(new))
            if old[k] is not None and new[k] is not None and old[k] != new[k]]


def _plain(v):
    """Metrics as strict JSON values (tensors and numpy scalars included; NaN / Inf, e.g. the PSNR of an unchanged
    image, become null, since JSON has no such numbers and strict parsers reject Python's ``Infinity``)."""
    if hasattr(v, "item") and getattr(v, "ndim", 0) == 0:
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v if isinstance(v, (int, float, str, bool, type(None))) else str(v)
