"""Drive bundles the way users do: ``python -m monai.bundle run --config_file ...`` as a subprocess.

Every folder under ``bundles/`` with ``configs/metadata.json`` is picked up; its metadata key
``trust_monai.smoke_overrides.{train,inference,evaluate}`` makes each config finish on tiny data.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUNDLES_DIR = ROOT / "bundles"
BUNDLES = sorted(p.name for p in BUNDLES_DIR.iterdir() if (p / "configs" / "metadata.json").is_file())


def metadata(name: str) -> dict:
    return json.loads((BUNDLES_DIR / name / "configs" / "metadata.json").read_text())


def smoke_overrides(name: str, config: str) -> dict:
    return dict(metadata(name).get("trust_monai", {}).get("smoke_overrides", {}).get(config, {}))


def _arg(v) -> str:
    # MONAI's CLI (fire) reads values as Python literals: booleans must be True / False, not JSON's true / false
    if isinstance(v, bool):
        return str(v)
    return v if isinstance(v, str) else json.dumps(v)


def bundle_command(name: str, config: str, *, from_bundle_dir: bool = False, extra_configs: tuple[str, ...] = (),
                   **overrides) -> tuple[list[str], Path, dict]:
    """``(argv, cwd, env)`` of the ``python -m monai.bundle run`` command :func:`run_bundle` runs (for Popen)."""
    cwd = BUNDLES_DIR / name if from_bundle_dir else ROOT
    files = [f"configs/{c}.json" if from_bundle_dir else f"bundles/{name}/configs/{c}.json"
             for c in (config, *extra_configs)]
    cfg = files[0] if len(files) == 1 else "[" + ",".join(f"'{f}'" for f in files) + "]"
    args = {**smoke_overrides(name, config), **overrides}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", cfg]
    for k, v in args.items():
        cmd += [f"--{k}", _arg(v)]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return cmd, cwd, env


def run_bundle(name: str, config: str, *, from_bundle_dir: bool = False, timeout: int = 600,
               extra_configs: tuple[str, ...] = (), **overrides):
    """Run one config of one bundle (merged with the bundle's ``extra_configs`` fragments, in order) with its smoke
    overrides plus ``overrides``; returns CompletedProcess."""
    cmd, cwd, env = bundle_command(name, config, from_bundle_dir=from_bundle_dir, extra_configs=extra_configs,
                                   **overrides)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def resolve_id(name: str, config: str, key: str, **overrides):
    """Value of config id ``key`` as the bundle would compute it (with smoke overrides applied)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLES_DIR / name / "configs" / f"{config}.json"))
    parser.update({**smoke_overrides(name, config), **overrides})
    return parser.get_parsed_content(key)


def tiny_copy(dataset_dir: Path, dest: Path, per_section: int = 3) -> Path:
    """Copy the first ``per_section`` entries of every datalist section (and their files) into ``dest``."""
    datalist = json.loads((dataset_dir / "dataset.json").read_text())
    out = {}
    for key, value in datalist.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            out[key] = value[:per_section]
            for entry in out[key]:
                for v in entry.values():
                    if isinstance(v, str) and (dataset_dir / v).exists():
                        src, dst = dataset_dir / v, dest / v
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
        else:
            out[key] = value
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "dataset.json").write_text(json.dumps(out, indent=1))
    return dest


def corrupt(path: Path) -> Path:
    """Make one image unreadable the way real files break: truncated to a few bytes of garbage."""
    if path.is_dir():  # a DICOM series: break its first file
        path = sorted(p for p in path.rglob("*") if p.is_file())[0]
    path.write_bytes(b"\x00corrupt" + path.read_bytes()[:16])
    return path


def last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []
