"""What every bundle shares: where it lives, the common defaults, run set-up, and the contract checks.

Bundles call these from their JSON (``"bundle_root": "$trust_monai.bundle.bundle_root('ue_natural')"``,
``"device": "$trust_monai.bundle.common('device')"``). Nothing here imports torch or monai at module level, so the
command line's ``list`` stays fast.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import BundleError

__all__ = [
    "repo_root",
    "bundles_dir",
    "bundle_root",
    "list_bundles",
    "common",
    "resolve_device",
    "as_bool",
    "setup_run",
    "check_bundle",
    "install_error_hook",
    "REQUIRED_FILES",
    "CONTRACT_IDS",
]

REQUIRED_FILES = (
    "configs/metadata.json",
    "configs/train.json",
    "configs/inference.json",
    "configs/evaluate.json",
    "configs/logging.conf",
    "docs/README.md",
    "LICENSE",
)
# ids every bundle's train.json must define so users override them by the same name everywhere
CONTRACT_IDS = ("bundle_root", "dataset_dir", "output_dir", "epochs", "device", "seed")


def repo_root() -> Path:
    """The repository checkout holding ``trust_monai/``, ``bundles/`` and ``configs/``."""
    return Path(__file__).resolve().parents[1]


def bundles_dir() -> Path:
    """Folder of the packaged bundles (``$TRUST_MONAI_BUNDLES`` overrides it)."""
    return Path(os.environ.get("TRUST_MONAI_BUNDLES", repo_root() / "bundles")).resolve()


def bundle_root(name: str) -> str:
    """Absolute path of bundle ``name``, whether the run starts in the repository root or in the bundle folder.

    MONAI resolves ``bundle_root`` from the config alone, and the config cannot see its own path, so the bundle passes
    its name: the current folder wins when it is that bundle (a copied bundle run in place), else ``./bundles/name``,
    else the packaged copy.
    """
    cwd = Path.cwd()
    if cwd.name == name and (cwd / "configs" / "metadata.json").is_file():
        return str(cwd)
    local = cwd / "bundles" / name
    if (local / "configs" / "metadata.json").is_file():
        return str(local.resolve())
    packaged = bundles_dir() / name
    if (packaged / "configs" / "metadata.json").is_file():
        return str(packaged)
    raise BundleError(f"bundle '{name}' not found in {cwd}, {local} or {packaged}; run from the repository root")


def list_bundles() -> list[dict[str, str]]:
    """Name, task and version of every packaged bundle (reads JSON only)."""
    out = []
    for d in sorted(p for p in bundles_dir().iterdir() if (p / "configs" / "metadata.json").is_file()):
        meta = json.loads((d / "configs" / "metadata.json").read_text())
        out.append({"name": d.name, "task": meta.get("task", ""), "version": meta.get("version", "")})
    return out


@lru_cache(maxsize=1)
def _common() -> dict[str, Any]:
    path = repo_root() / "configs" / "common.json"
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


def common(key: str) -> Any:
    """Default of a shared id from ``configs/common.json``; ``device`` comes back as a resolved ``torch.device``."""
    values = _common()
    if key not in values:
        raise BundleError(f"configs/common.json has no key '{key}' (keys: {', '.join(sorted(values))})")
    return resolve_device(values[key]) if key == "device" else values[key]


def as_bool(v) -> bool:
    """A boolean bundle id: from the command line it arrives as ``"false"`` / ``"true"`` text (fire keeps JSON literals
    as strings), which ``bool()`` would read as True."""
    if isinstance(v, str):
        if v.strip().lower() in ("false", "0", "no", "off", "none", ""):
            return False
        if v.strip().lower() in ("true", "1", "yes", "on"):
            return True
        raise ValueError(f"not a boolean: {v!r}")
    return bool(v)


def resolve_device(device: Any = "auto"):
    """``"auto"`` -> CUDA when present else CPU; strings and devices pass through ``torch.device``."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def setup_run(seed: int | None = 0, deterministic: bool = True, num_threads: int | None = None) -> None:
    """Seed python / numpy / torch (MONAI's ``set_determinism``) and cap CPU threads when asked."""
    import torch
    from monai.utils import set_determinism

    install_error_hook()
    quiet_expected_warnings()
    if num_threads:
        torch.set_num_threads(int(num_threads))
    if seed is not None:
        set_determinism(seed=int(seed), use_deterministic_algorithms=None)
    if deterministic:
        torch.backends.cudnn.benchmark = False


# MONAI warnings that every run on sparse labels raises by design; shown raw they read as faults to a user.
_EXPECTED_WARNINGS = (
    r"Num foregrounds 0, Num backgrounds",  # a patch drawn from a slice without foreground: sampled as background
    r"the (ground truth|prediction) of class .* is all 0",  # HD95 of an absent class: scored as missing, not as inf
    r"get_mask_edges:always_return_as_numpy",  # deprecation inside MONAI's own metric code
    r"NvImgCodecPydicomReader: nvImageCodec decoder plugin",  # optional GPU DICOM decoder; pydicom is used
)


def quiet_expected_warnings() -> None:
    """Silence the MONAI warnings listed in ``_EXPECTED_WARNINGS``; every other warning still shows."""
    import warnings

    for pattern in _EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=f".*{pattern}")


def _project_error(exc: BaseException | None):
    """The first TrustMonaiError in an exception chain (MONAI wraps errors raised while instantiating components)."""
    from .errors import TrustMonaiError

    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, TrustMonaiError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def install_error_hook() -> None:
    """Make an uncaught project error print one line (``error: FILE: reason``) and exit 1 instead of a traceback.

    Bundles run under ``python -m monai.bundle run``, whose top level the project does not own; the hook is how a bad
    input file reaches the user as one readable line. Other exceptions keep Python's full traceback.
    """
    import sys

    previous = sys.excepthook
    if getattr(previous, "_trust_monai", False):
        return

    def hook(exc_type, exc, tb):
        err = _project_error(exc)
        if err is None:
            return previous(exc_type, exc, tb)
        sys.stderr.write(f"error: {err}\n")
        sys.stderr.flush()

    hook._trust_monai = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def _load_schema(name: str) -> dict:
    return json.loads((repo_root() / "configs" / "schemas" / name).read_text())


def check_bundle(
    path: str | os.PathLike, workflows: tuple[str, ...] = ("train", "infer"), overrides: dict | None = None
) -> list[str]:
    """Check one bundle folder against the contract; returns the problems found (empty when clean).

    Checks the required files, metadata.json against MONAI's mandatory keys (``configs/schemas/metadata.schema.json``),
    the contract ids in train.json, and ``ConfigWorkflow(...).check_properties()`` for train and infer. MONAI
    resolves each property to check it, which builds the components: ``overrides`` (``{"train": {...},
    "inference": {...}}``, e.g. the bundle's smoke overrides) keep that on tiny data.
    """
    import jsonschema

    path = Path(path)
    problems = [f"missing {f}" for f in REQUIRED_FILES if not (path / f).is_file()]
    meta_file = path / "configs" / "metadata.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        for err in jsonschema.Draft202012Validator(_load_schema("metadata.schema.json")).iter_errors(meta):
            problems.append(f"metadata.json: {err.json_path}: {err.message}")
    train = path / "configs" / "train.json"
    if train.is_file():
        cfg = json.loads(train.read_text())
        problems += [f"train.json: missing contract id '{k}'" for k in CONTRACT_IDS if k not in cfg]
    if problems:
        return problems
    from monai.bundle import ConfigWorkflow

    files = {"train": "train", "infer": "inference"}
    overrides = overrides or {}
    for wf in workflows:
        cfg_file = path / "configs" / f"{files[wf]}.json"
        workflow = ConfigWorkflow(
            config_file=str(cfg_file),
            meta_file=str(meta_file),
            logging_file=False,
            workflow_type=wf,
            **overrides.get(files[wf], {}),
        )
        workflow.initialize()
        missing = workflow.check_properties()
        if missing:
            problems.append(f"{files[wf]}.json: check_properties reports {missing}")
    return problems
