"""``trust-monai`` / ``python -m trust_monai``: list bundles, prepare sample data, run bundles.

Built with fire. Only the verbs that need torch import it, so ``--help`` and ``list`` answer at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .errors import TrustMonaiError

__all__ = ["main", "Data", "CLI"]


class Data:
    """Offline sample datasets: ``data list``, ``data prepare NAME``."""

    def list(self):
        """Print every sample dataset, its kind, and whether it is prepared in the cache."""
        from .data.cache import cache_dir
        from .data.sources import DATASETS

        root = cache_dir()
        for name, info in DATASETS.items():
            ready = (root / name / ".complete").is_file()
            print(f"{name:24s} {info.kind:15s} {'ready' if ready else '-':6s} {info.description}")
        print(f"cache: {root} (set TRUST_MONAI_DATA to move it)")

    def prepare(self, name: str, root: str | None = None, force: bool = False, source: str | None = None):
        """Prepare sample dataset NAME (offline) and print its folder, usable as a bundle's --dataset_dir.

        --root: parent folder of the result (default the cache). --source PATH: your own copy of the raw data, for
        datasets that cannot ship with a package (drive: the DRIVE folder holding training/ and test/).
        """
        from .data.sources import prepare

        path = prepare(name, root=root, force=force, source=None if source is None else str(source))
        print(path)


class CLI:
    """trust_monai: protect, purify, certify and screen medical imaging data and models."""

    def __init__(self):
        self.data = Data()

    def list(self):
        """List the packaged bundles and what each does."""
        from .bundle import list_bundles

        rows = list_bundles()
        if not rows:
            print("no bundles found")
        for r in rows:
            print(f"{r['name']:16s} {r['version']:8s} {r['task']}")

    def run(self, bundle: str, config: str = "train", **overrides):
        """Run CONFIG (train | inference | evaluate) of BUNDLE: a thin wrapper over ``python -m monai.bundle run``.

        Extra ``--key value`` pairs are passed on as bundle overrides (``--epochs 1 --device cpu``).
        """
        from .bundle import bundle_root

        root = bundle_root(bundle)
        cfg = config if config.endswith((".json", ".yaml")) else f"{config}.json"
        cfg_path = os.path.join(root, "configs", cfg)
        if not os.path.isfile(cfg_path):
            raise TrustMonaiError(f"{cfg_path} does not exist; configs of {bundle}: {_configs(root)}")
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", cfg_path]
        for k, v in overrides.items():
            cmd += [f"--{k}", v if isinstance(v, str) else json.dumps(v)]
        return subprocess.call(cmd)


    def protect(self, input: str, output: str, ckpt_dir: str | None = None, spatial_dims: int | None = None,
                overwrite: bool = False, deidentify: bool = False, roi: str | None = None, **overrides):
        """Write a protected (unlearnable) copy of the scans in INPUT into OUTPUT with the UMed bundle.

        INPUT: a dataset.json, a folder of NIfTI / NRRD scans with masks (<name>_label.nii.gz or labels/), or of
        DICOM series with the RTSTRUCT or SEG that refers to each. Output keeps each scan's format, geometry and
        headers (a series' RTSTRUCT / SEG is written again, referencing the protected series); report.html shows
        before / after. --roi NAME[,NAME...]: the structures / segments that form the mask, as classes in that order
        (default all). --deidentify pseudonymises DICOM headers (RTSTRUCT / SEG too); other --key value pairs go to
        the bundle (e.g. --device cuda).
        """
        return self._verb("protect", input, output, ckpt_dir, spatial_dims, overwrite, deidentify, overrides, roi)

    def purify(self, input: str, output: str, ckpt_dir: str | None = None, spatial_dims: int | None = None,
               overwrite: bool = False, deidentify: bool = False, roi: str | None = None, **overrides):
        """Write a purified copy of INPUT (D-VAE removes unlearnable perturbations) into OUTPUT; as ``protect``."""
        return self._verb("purify", input, output, ckpt_dir, spatial_dims, overwrite, deidentify, overrides, roi)

    def certify(self, input: str, output: str, ckpt_dir: str | None = None, spatial_dims: int | None = None,
                roi: str | None = None, bundle: str | None = None, **overrides):
        """Certified segmentation (RS and DRS) of the scans in INPUT: label maps with an abstain label, per-case
        certified fraction and radius, report.html. A DICOM series' label maps are also written as DICOM SEG
        (<series>_seg.dcm, abstain its own segment) referencing the input series; --roi as for ``protect``.

        --bundle DIR: certify with YOUR model instead, a MONAI bundle in model-zoo layout (configs/inference.json
        with network_def and preprocessing, models/model.pt), as the base classifier of randomized smoothing.
        Options: --sigma (0.25) --mode fixed|decide|adaptive --radius R (decide) --tolerance (adaptive, 0.05)
        --n0 --n --alpha --batch_size --tau (segmentation) --noise_finetune_epochs E --train DATASET_JSON
        --device --seed --max_images. INPUT: a folder of images, one image, or a dataset.json (test section).
        A model not trained with noise gives small radii: see trust_monai.engines.certify_bundle.
        """
        if bundle is not None:
            import inspect

            from .engines.certify_bundle import certify_bundle

            allowed = set(inspect.signature(certify_bundle).parameters) - {"bundle", "input", "output"}
            unknown = sorted(set(overrides) - allowed)
            if unknown or ckpt_dir or spatial_dims or roi:
                raise TrustMonaiError(f"certify --bundle takes {', '.join('--' + a for a in sorted(allowed))}; "
                                      f"not {', '.join('--' + u for u in unknown) or '--ckpt_dir/--spatial_dims/--roi'}")
            certify_bundle(str(bundle), str(input), str(output), **overrides)
            return 0
        return self._verb("certify", input, output, ckpt_dir, spatial_dims, False, False, overrides, roi)

    def detect(self, input: str, output: str, ckpt_dir: str | None = None, **overrides):
        """Score every scan in INPUT for synthesis / tampering (MoE-FFD): report.json, heatmaps, report.html."""
        return self._verb("detect", input, output, ckpt_dir, None, False, False, overrides)

    @staticmethod
    def _verb(verb, input, output, ckpt_dir, spatial_dims, overwrite, deidentify, overrides, roi=None):
        from .hospital import run_verb

        return run_verb(verb, str(input), str(output), ckpt_dir=ckpt_dir, spatial_dims=spatial_dims,
                        overwrite=bool(overwrite), deidentify=bool(deidentify), roi=roi, **overrides)


def _configs(root: str) -> str:
    names = sorted(f[:-5] for f in os.listdir(os.path.join(root, "configs")) if f.endswith(".json"))
    return ", ".join(n for n in names if n != "metadata")


def _help_flag(argv: list[str]) -> list[str]:
    """``VERB --help`` / ``VERB -h`` -> ``VERB -- --help``.

    A verb that takes ``**overrides`` would receive ``--help`` as an override: fire then prints the help but treats
    the call as failed (missing INPUT) and exits 2. Behind ``--`` it is fire's own help flag, which exits 0.
    """
    if "--" in argv or not any(a in ("--help", "-h") for a in argv):
        return argv
    # keep only the command path (``protect``, ``data prepare``): the help is the verb's, and nothing may run
    path = []
    group: type = CLI
    for a in argv:
        member = getattr(group, a, None) if not a.startswith(("-", "_")) else None
        if a == "data" and group is CLI:
            path.append(a)
            group = Data
        elif callable(member):
            path.append(a)
            break
        else:
            break
    return path + ["--", "--help"]


def main(argv: list[str] | None = None) -> None:
    """Entry point: project errors print one line and exit 1 instead of a traceback."""
    import fire

    argv = _help_flag(list(sys.argv[1:] if argv is None else argv))
    try:
        result = fire.Fire(CLI(), command=argv, name="trust-monai")
    except TrustMonaiError as e:
        print(f"trust-monai: error: {e}", file=sys.stderr)
        sys.exit(1)
    if isinstance(result, int) and result:
        sys.exit(result)
