"""The bundle contract, checked for every folder in bundles/ (new bundles are covered without new tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.bundle_harness import (
    BUNDLES,
    BUNDLES_DIR,
    corrupt,
    files_under,
    last_line,
    resolve_id,
    run_bundle,
    smoke_overrides,
    tiny_copy,
)


def test_bundles_exist():
    assert BUNDLES, "no bundle with configs/metadata.json under bundles/"


@pytest.mark.parametrize("name", BUNDLES)
def test_contract(name, tmp_path):
    """Required files, metadata schema (MONAI's mandatory keys), contract ids, check_properties train + infer."""
    from trust_monai.bundle import check_bundle

    overrides = {c: {"ckpt_dir": str(tmp_path), **smoke_overrides(name, c)} for c in ("train", "inference")}
    assert check_bundle(BUNDLES_DIR / name, overrides=overrides) == []


@pytest.mark.parametrize("name", BUNDLES)
def test_bundle_root_resolves(name, monkeypatch):
    from trust_monai.bundle import bundle_root

    monkeypatch.chdir(BUNDLES_DIR.parent)
    from_root = bundle_root(name)
    monkeypatch.chdir(BUNDLES_DIR / name)
    assert bundle_root(name) == from_root == str((BUNDLES_DIR / name).resolve())


def _check(proc, what):
    assert proc.returncode == 0, f"{what} failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


@pytest.mark.parametrize("name", BUNDLES)
def test_train_infer_evaluate(name, tmp_path):
    """The design-card command from the repo root and from the bundle folder, then inference and evaluation."""
    pytest.importorskip("monai")
    ckpt = tmp_path / "models"
    common = {"ckpt_dir": str(ckpt)}
    out_root = tmp_path / "train_root"
    _check(run_bundle(name, "train", epochs=1, output_dir=str(out_root), **common), "train from repo root")
    _check(
        run_bundle(name, "train", from_bundle_dir=True, epochs=1, output_dir=str(tmp_path / "train_bundle"), **common),
        "train from bundle folder",
    )
    infer_out = tmp_path / "infer"
    _check(run_bundle(name, "inference", output_dir=str(infer_out), **common), "inference")
    manifest = infer_out / "manifest.json"
    if manifest.exists():
        cases = json.loads(manifest.read_text())["cases"]
        assert cases and all(c["status"] in ("done", "copied", "skipped") for c in cases)
        # a rerun resumes: nothing changes on disk
        before = {p: p.stat().st_mtime_ns for p in files_under(infer_out) if p.name != "manifest.json"}
        _check(run_bundle(name, "inference", output_dir=str(infer_out), **common), "inference rerun")
        after = {p: p.stat().st_mtime_ns for p in files_under(infer_out) if p.name != "manifest.json"}
        assert before == after
    eval_out = tmp_path / "eval"
    _check(run_bundle(name, "evaluate", epochs=1, output_dir=str(eval_out), **common), "evaluate")
    assert list(eval_out.rglob("*.csv")) and list(eval_out.rglob("*.png")), "evaluate writes a table and a picture"


@pytest.mark.parametrize("fault", ["corrupt", "missing"])
@pytest.mark.parametrize("name", BUNDLES)
def test_bad_input_file_is_one_line_error(name, fault, tmp_path):
    """A corrupt or missing file in the datalist: non-zero exit, one line naming the file, no output written."""
    dataset_dir = Path(str(resolve_id(name, "inference", "dataset_dir")))
    data = tiny_copy(dataset_dir, tmp_path / "data")
    datalist = json.loads((data / "dataset.json").read_text())
    firsts = [data / s[0]["image"] for s in (datalist.get("training"), datalist.get("test")) if s]
    if fault == "corrupt":
        broken = [corrupt(p) for p in firsts]
    else:
        broken = firsts[:1]
        broken[0].unlink()
    out = tmp_path / "out"
    proc = run_bundle(name, "inference", dataset_dir=str(data), output_dir=str(out), ckpt_dir=str(tmp_path / "m"))
    assert proc.returncode != 0
    line = last_line(proc.stderr)
    assert line.startswith("error:") and any(b.name in line for b in broken), proc.stderr[-3000:]
    assert files_under(out) == []


@pytest.mark.parametrize("name", BUNDLES)
def test_verify_net_in_out(name):
    """MONAI's own check: the inference network accepts and returns the shapes metadata.json declares."""
    import subprocess
    import sys

    from tests.integration.bundle_harness import ROOT, _arg

    cmd = [
        sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def",
        "--meta_file", f"bundles/{name}/configs/metadata.json",
        "--config_file", f"bundles/{name}/configs/inference.json", "--n", "3",
    ]
    for k, v in smoke_overrides(name, "inference").items():
        cmd += [f"--{k}", _arg(v)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "verified with no error" in proc.stdout + proc.stderr, proc.stderr[-3000:]
