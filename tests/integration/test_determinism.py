"""Same seed, same outputs: every verb's inference run twice, into two folders, writes byte-identical files.

The only values allowed to differ are wall-clock ones (a manifest's creation time, ``time`` / ``sec_per_*`` columns
of the certification tables); those files are compared with exactly those fields removed, everything else byte for
byte. The natural-image bundles (CIFAR / Fashion-MNIST / faces) repeat the check for the same engines and are
marked slow, as is umed's own pair of runs (its fast check is the fault-injection test, see MEDICAL).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from tests.integration.bundle_harness import files_under, run_bundle

pytest.importorskip("monai")

# purify, certify, detect; protection (umed) is checked in the fast selection by
# test_fault_injection.py::test_protect_survives_sigkill (killed + resumed run vs an uninterrupted run, byte for byte)
MEDICAL = ["dvae", "drs", "moe_ffd"]
SLOW = ["umed", "ue_natural", "dvae_natural", "drs_natural", "moe_ffd_faces"]
WALL_CLOCK = {"created", "time", "seconds", "sec_per_image", "sec_per_case"}


def _no_clock(obj):
    if isinstance(obj, dict):
        return {k: _no_clock(v) for k, v in obj.items() if k not in WALL_CLOCK}
    if isinstance(obj, list):
        return [_no_clock(v) for v in obj]
    return obj


def _table(text: str, rel: str) -> list[dict]:
    """Rows of a CSV or Markdown table with the wall-clock columns dropped (which must exist: or why differ?)."""
    if rel.endswith(".md"):
        lines = [ln.strip().strip("|") for ln in text.splitlines() if ln.strip().startswith("|")]
        lines = [ln for ln in lines if set(ln.replace("|", "").strip()) - set("-: ")]
        text = "\n".join(",".join(c.strip() for c in ln.split("|")) for ln in lines)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows and set(rows[0]) & WALL_CLOCK, f"{rel} differs between runs and has no wall-clock column"
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in rows]


def assert_same_outputs(a: Path, b: Path):
    files_a = [p.relative_to(a).as_posix() for p in files_under(a)]
    files_b = [p.relative_to(b).as_posix() for p in files_under(b)]
    assert files_a == files_b, "the two runs wrote different files"
    assert files_a, "the runs wrote nothing"
    for rel in files_a:
        x, y = (a / rel).read_bytes(), (b / rel).read_bytes()
        if x == y:
            continue
        if rel.endswith(".json"):
            assert _no_clock(json.loads(x)) == _no_clock(json.loads(y)), f"{rel} differs beyond wall-clock fields"
        elif rel.endswith((".csv", ".md")):
            assert _table(x.decode(), rel) == _table(y.decode(), rel), f"{rel} differs beyond wall-clock columns"
        else:
            raise AssertionError(f"{rel} is not byte-identical between two runs with the same seed")


def _check(proc, what):
    assert proc.returncode == 0, f"{what} failed (rc={proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"


def _twice(name: str, trained, tmp_path: Path):
    ckpt = trained(name)
    for out in ("run1", "run2"):
        _check(run_bundle(name, "inference", ckpt_dir=str(ckpt), output_dir=str(tmp_path / out), seed=7,
                          progress=False), f"{name} inference ({out})")
    assert_same_outputs(tmp_path / "run1", tmp_path / "run2")


@pytest.mark.parametrize("name", MEDICAL)
def test_inference_deterministic(name, trained, tmp_path):
    _twice(name, trained, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_inference_deterministic_slow(name, trained, tmp_path):
    _twice(name, trained, tmp_path)


def test_comparison_can_fail(tmp_path):
    """The comparison itself: a changed voxel, a changed certificate, an extra file are all caught."""
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "x.nii.gz").write_bytes(b"same")
        (d / "t.csv").write_text("index,radius,time\n0,0.5,0.1\n")
        (d / "manifest.json").write_text(json.dumps({"created": "t1", "cases": [{"metrics": {"time": 1, "r": 2}}]}))
    (b / "t.csv").write_text("index,radius,time\n0,0.5,0.3\n")
    (b / "manifest.json").write_text(json.dumps({"created": "t2", "cases": [{"metrics": {"time": 3, "r": 2}}]}))
    assert_same_outputs(a, b)  # wall clock only
    (b / "t.csv").write_text("index,radius,time\n0,0.6,0.3\n")
    with pytest.raises(AssertionError, match="t.csv"):
        assert_same_outputs(a, b)
    (b / "t.csv").write_text("index,radius,time\n0,0.5,0.3\n")
    (b / "x.nii.gz").write_bytes(b"diff")
    with pytest.raises(AssertionError, match="x.nii.gz"):
        assert_same_outputs(a, b)
    (b / "x.nii.gz").write_bytes(b"same")
    (b / "extra.png").write_bytes(b"")
    with pytest.raises(AssertionError, match="different files"):
        assert_same_outputs(a, b)
