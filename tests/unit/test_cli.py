"""The command line starts fast (no torch) and answers list / data list / run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "trust_monai", *args], cwd=ROOT, capture_output=True, text=True, **kw)


@pytest.mark.parametrize("args", [("list",), ("data", "list")])
def test_light_verbs_import_no_torch(args):
    code = (
        "import sys; from trust_monai.cli import main; "
        f"main({list(args)!r}); "
        "heavy = [m for m in ('torch', 'monai', 'nibabel', 'pydicom') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_list_names_every_bundle():
    from tests.integration.bundle_harness import BUNDLES

    proc = _cli("list")
    assert proc.returncode == 0, proc.stderr
    for name in BUNDLES:
        assert name in proc.stdout


def test_data_list_names_every_dataset():
    from trust_monai.data.sources import DATASETS

    proc = _cli("data", "list")
    assert proc.returncode == 0, proc.stderr
    for name in DATASETS:
        assert name in proc.stdout


def test_unknown_dataset_is_one_line_error():
    proc = _cli("data", "prepare", "no_such_dataset")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("trust-monai: error:")
    assert "fashion_mnist" in proc.stderr  # the message lists the valid names


def test_run_unknown_config_is_one_line_error():
    from tests.integration.bundle_harness import BUNDLES

    proc = _cli("run", BUNDLES[0], "no_such_config")
    assert proc.returncode == 1
    assert "no_such_config" in proc.stderr and "train" in proc.stderr


HELP_CASES = [("protect",), ("purify",), ("certify",), ("detect",), ("run",), ("run", "umed"), ("list",),
              ("data",), ("data", "list"), ("data", "prepare"), ("protect", "in", "out"), ()]


@pytest.mark.parametrize("args", HELP_CASES)
def test_every_verb_help_exits_zero(args):
    """``VERB --help`` prints the verb's help and exits 0 (fire alone exits 2 for verbs with ``**overrides``);
    arguments before ``--help`` are not run."""
    for flag in ("--help", "-h"):
        proc = _cli(*args, flag, timeout=60)
        assert proc.returncode == 0, (args, flag, proc.stdout[-300:], proc.stderr[-300:])
        text = proc.stdout + proc.stderr  # fire prints its help on stderr
        assert "NAME" in text and "Showing help" not in text
        if args:
            assert f"trust-monai {' '.join(args[:2] if args[0] == 'data' else args[:1])}" in text
