"""Outputs never land in the input, never replace someone's files, and a resume never mixes two runs' outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from parameterized import parameterized

from trust_monai.engines.case_writer import CaseWriter
from trust_monai.engines.manifest import Manifest
from trust_monai.errors import OutputExistsError
from trust_monai.utils.fileio import atomic_path, is_atomic_temp, remove_stale_temps, sha256_file


def _dataset(root: Path, n: int = 3) -> Path:
    rng = np.random.default_rng(0)
    training = []
    for i in range(n):
        for kind in ("images", "labels"):
            (root / kind).mkdir(parents=True, exist_ok=True)
        img = rng.random((8, 8, 2)).astype(np.float32)
        nib.save(nib.Nifti1Image(img, np.diag([1.5, 1.5, 3.0, 1.0])), root / "images" / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image((img > 0.5).astype(np.uint8), np.diag([1.5, 1.5, 3.0, 1.0])),
                 root / "labels" / f"c{i}.nii.gz")
        training.append({"image": f"images/c{i}.nii.gz", "label": f"labels/c{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "bg", "1": "fg"}, "training": training}))
    return root


class _Add:
    """A processor that adds ``value``; ``checkpoint`` plays the weights file the settings fingerprint."""

    def __init__(self, value: float = 1.0, checkpoint=None):
        self.value, self.checkpoint = value, checkpoint

    def __call__(self, image, meta, entry):
        return image + self.value, {"added": self.value}


def _writer(data, out, processor=None, **kw):
    return CaseWriter(data, out, processor or _Add(), bundle="test", progress=False, **kw)


def _tree_hash(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _image(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


@parameterized.expand([("same_folder", "."), ("inside", "protected"), ("deep_inside", "a/b/c")])
def test_output_in_input_folder_refused(_name, sub, tmp_path=None):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        data = _dataset(Path(tmp) / "data")
        before = _tree_hash(data)
        with pytest.raises(OutputExistsError, match="inside the input folder"):
            _writer(data, data / sub).run()
        assert _tree_hash(data) == before


def test_foreign_folder_refused_unless_overwrite(tmp_path):
    data = _dataset(tmp_path / "data")
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "images" / "c0.nii.gz").write_bytes(b"someone else's scan")  # same name as an output
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="no manifest.json"):
        _writer(data, out).run()
    assert (out / "images" / "c0.nii.gz").read_bytes() == b"someone else's scan"
    assert not (out / "manifest.json").exists()
    _writer(data, out, overwrite=True).run()  # asked for: same-named files replaced, others left alone
    np.testing.assert_allclose(_image(out / "images" / "c0.nii.gz"), _image(data / "images" / "c0.nii.gz") + 1)
    assert (out / "notes.txt").read_text() == "keep me"


def test_staging_and_killed_run_leftovers_are_not_foreign(tmp_path):
    data = _dataset(tmp_path / "data")
    out = tmp_path / "out"
    (out / ".trust_monai" / "input").mkdir(parents=True)  # the hospital workflow's staging folder
    stale = out / "images" / ".c1.nii.gz.k3j4h5g6.tmp.nii.gz"
    stale.parent.mkdir()
    stale.write_bytes(b"half")
    _writer(data, out).run()
    assert not stale.exists()
    assert (out / ".trust_monai" / "input").is_dir()


def test_rerun_cleans_every_state_a_kill_leaves(tmp_path):
    """Kill states, as SIGKILL leaves them: a half-written temp file and temp series folder of a case, the manifest's
    own temp file, and a case written but not yet recorded. The rerun removes the temps, redoes the unrecorded case,
    and ends byte-identical to the uninterrupted run. (tests/integration/test_fault_injection.py kills real runs.)"""
    data, out = _dataset(tmp_path / "data", 4), tmp_path / "out"
    _writer(data, out, derivation="d", seed=0).run()
    ref = _tree_hash(out)
    (out / "images" / ".c3.nii.gz.ab12cd_3.tmp.nii.gz").write_bytes(b"\x1f\x8b half")
    (out / "images" / ".series.zz9yx8w7.tmp").mkdir()
    (out / "images" / ".series.zz9yx8w7.tmp" / "IM0001.dcm").write_bytes(b"half")
    (out / ".manifest.json.q1w2e3r4.tmp.json").write_text("{")
    doc = json.loads((out / "manifest.json").read_text())
    last = doc["cases"].pop()
    (out / last["output"]).write_bytes(b"stale bytes of an unrecorded write")
    (out / "manifest.json").write_text(json.dumps(doc))
    _writer(data, out, derivation="d", seed=0).run()
    got = _tree_hash(out)
    assert sorted(got) == sorted(ref), "temp files left, or files missing"
    assert {k: v for k, v in got.items() if k != "manifest.json"} == {
        k: v for k, v in ref.items() if k != "manifest.json"}
    for c in json.loads((out / "manifest.json").read_text())["cases"]:
        assert sha256_file(out / c["output"]) == c["output_sha256"]


def test_other_bundles_manifest_refused(tmp_path):
    data = _dataset(tmp_path / "data")
    out = tmp_path / "out"
    Manifest(out, "dvae", "inference").save()
    with pytest.raises(OutputExistsError, match="belongs to dvae/inference"):
        _writer(data, out).run()
    _writer(data, out, overwrite=True).run()
    assert json.loads((out / "manifest.json").read_text())["bundle"] == "test"


@parameterized.expand([
    ("derivation", {"derivation": "other method"}),
    ("seed", {"seed": 7}),
    ("deidentify", {"deidentify": True}),
])
def test_resume_with_other_settings_refused(_name, changed):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, out = _dataset(tmp / "data"), tmp / "out"
        _writer(data, out, derivation="first", seed=0).run()
        first = _tree_hash(out)
        kwargs = {"derivation": "first", "seed": 0, **changed}
        with pytest.raises(OutputExistsError, match="other settings"):
            _writer(data, out, **kwargs).run()
        assert _tree_hash(out) == first


def test_resume_with_other_weights_refused_then_redone_on_overwrite(tmp_path):
    data, out = _dataset(tmp_path / "data"), tmp_path / "out"
    ckpt = tmp_path / "weights.pt"
    ckpt.write_bytes(b"weights v1")
    _writer(data, out, _Add(1.0, ckpt)).run()
    ckpt.write_bytes(b"weights v2")  # retrained
    with pytest.raises(OutputExistsError, match="weights"):
        _writer(data, out, _Add(2.0, ckpt)).run()
    _writer(data, out, _Add(2.0, ckpt), overwrite=True).run()
    for i in range(3):  # every case redone with the new weights, none kept from the first run
        name = f"images/c{i}.nii.gz"
        np.testing.assert_allclose(_image(out / name), _image(data / name) + 2)
    cases = json.loads((out / "manifest.json").read_text())["cases"]
    assert [c["metrics"]["added"] for c in cases] == [2.0, 2.0, 2.0]


def test_same_settings_resume_changes_nothing(tmp_path):
    data, out = _dataset(tmp_path / "data"), tmp_path / "out"
    _writer(data, out, derivation="d", seed=1).run()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"}
    _writer(data, out, derivation="d", seed=1).run()
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"}


def test_manifest_written_before_first_output(tmp_path):
    """A kill right after the first output must leave a folder a rerun recognises as its own."""
    data, out = _dataset(tmp_path / "data"), tmp_path / "out"
    seen = []

    class _Spy(_Add):
        def __call__(self, image, meta, entry):
            seen.append((out / "manifest.json").is_file())
            return super().__call__(image, meta, entry)

    _writer(data, out, _Spy()).run()
    assert seen == [True, True, True]


def test_unreadable_manifest_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text("{ not json")
    with pytest.raises(OutputExistsError, match="not a readable manifest"):
        Manifest(out, "umed", "inference")


@parameterized.expand([
    (".c0.nii.gz.ab3d5f7h.tmp.nii.gz", True),
    (".manifest.json.q1w2e3r4.tmp.json", True),
    (".series.zz9yx8w_.tmp", True),
    (".DS_Store", False),
    (".hidden.tmp", False),
    ("c0.nii.gz", False),
    ("notes.ab3d5f7h.tmp", False),  # not hidden: not ours
    (".trust_monai", False),
])
def test_temp_name_pattern(name, ours):
    assert is_atomic_temp(name) is ours


def test_atomic_path_names_are_recognised_and_removed(tmp_path):
    """The names atomic_path really makes are what remove_stale_temps removes; user files stay."""
    target = tmp_path / "sub" / "case.nii.gz"

    class Kill(BaseException):
        pass

    leftover = []

    def fake_kill(tmp):
        leftover.append(tmp)
        raise Kill  # atomic_path cleans up after exceptions; a SIGKILL would not: restore the file below

    with pytest.raises(Kill), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        fake_kill(tmp)
    leftover[0].write_bytes(b"half")  # what SIGKILL leaves
    assert is_atomic_temp(leftover[0].name)
    (tmp_path / "sub" / ".keep").write_text("user file")
    (tmp_path / "sub" / "case.nii.gz").write_bytes(b"finished output")
    removed = remove_stale_temps(tmp_path)
    assert removed == [leftover[0]]
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == [".keep", "case.nii.gz"]
    assert remove_stale_temps(tmp_path / "missing") == []


def test_atomic_write_leaves_no_partial_file_on_error(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"new but half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["out.bin"]
