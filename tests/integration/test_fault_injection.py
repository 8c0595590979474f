"""Fault injection: SIGKILL a real bundle run midway, rerun the same command, and check nothing was lost or doubled.

The runs are the users' command (``python -m monai.bundle run --config_file bundles/<b>/configs/inference.json``) in
a subprocess. Each kill is triggered by what the run has written so far (its first output file, its manifest, its
partial certificate rows), not by a timer; a run that finishes before the trigger fires is redone on a dataset twice
as large, so the test does not depend on the machine's speed.
"""

from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

from tests.integration.bundle_harness import bundle_command, files_under, run_bundle

pytest.importorskip("monai")

KILL_RETRIES = 3  # dataset doubled each time a run finished before its kill trigger fired


def _check(proc, what):
    assert proc.returncode == 0, f"{what} failed (rc={proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"


def _run_until(name: str, config: str, trigger: Callable[[], bool], log: Path, timeout: float = 600,
               **overrides) -> bool:
    """Start the bundle, SIGKILL it as soon as ``trigger()`` is true; False if it exited before (no kill)."""
    cmd, cwd, env = bundle_command(name, config, **overrides)
    with open(log, "ab") as f:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=f, stderr=f)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                if trigger():
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    return True
                if time.monotonic() > deadline:
                    raise AssertionError(f"{name} {config} ran past {timeout}s; see {log}")
                time.sleep(0.005)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, f"{name} {config} failed before it could be killed (rc={proc.returncode}); see {log}"
    return False


def _kill_once_growing(name: str, size: int, grow: int, args_for: Callable[[int, Path], dict],
                       trigger_for: Callable[[Path], bool], log: Path) -> tuple[dict, Path, int]:
    """Run ``name`` inference with ``args_for(size, out)`` and SIGKILL it when ``trigger_for(out)``; when the run
    finished first, retry with ``size * grow``. Returns the overrides, the output folder and the size that was killed."""
    for attempt in range(KILL_RETRIES):
        out = log.parent / f"out{attempt}"
        common = args_for(size, out)
        if _run_until(name, "inference", lambda: trigger_for(out), log, **common):
            return common, out, size
        size *= grow
    pytest.fail(f"{name}: the run always finished before the kill, up to size {size // grow}")


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in files_under(folder)}


def _manifest_cases(out: Path) -> list[dict]:
    try:
        return json.loads((out / "manifest.json").read_text())["cases"]
    except (OSError, ValueError, KeyError):
        return []


def _assert_no_debris(out: Path):
    """No temp, hidden or partial file of a killed run is left in the final output."""
    leftovers = [p for p in files_under(out) if any(part.startswith(".") or ".tmp" in part or "partial" in part
                                                    for part in p.relative_to(out).parts)]
    assert not leftovers, f"debris of the killed runs left in {out}: {leftovers}"


def _assert_manifest_matches_disk(out: Path, n_cases: int):
    from trust_monai.utils.fileio import sha256_file

    cases = _manifest_cases(out)
    inputs = [c["input"] for c in cases]
    assert len(inputs) == len(set(inputs)) == n_cases, "manifest must hold every case exactly once"
    for c in cases:
        assert c["status"] in ("done", "copied"), c
        assert sha256_file(out / c["output"]) == c["output_sha256"], f"{c['output']}: sha256 differs from manifest"
        assert sha256_file(c["input"]) == c["input_sha256"], f"{c['input']}: input changed"


# --------------------------------------------------------------------------------------------------------------------
# protection (umed): CaseWriter + manifest
# --------------------------------------------------------------------------------------------------------------------


def _synthetic_dataset(dest: Path, n_train: int) -> Path:
    """``n_train`` training cases cycled from synthetic_2d (renamed, so every case is its own file) + its test split."""
    from trust_monai.data import prepare

    src = prepare("synthetic_2d")
    doc = json.loads((src / "dataset.json").read_text())
    base = doc["training"]
    training = []
    for i in range(n_train):
        e = base[i % len(base)]
        new = {"image": f"imagesTr/c{i:04d}.nii.gz", "label": f"labelsTr/c{i:04d}.nii.gz"}
        for k in ("image", "label"):
            (dest / new[k]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / e[k], dest / new[k])
        training.append(new)
    for e in doc["test"]:
        for k in ("image", "label"):
            (dest / e[k]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / e[k], dest / e[k])
    doc.update(training=training, numTraining=n_train)
    (dest / "dataset.json").write_text(json.dumps(doc, indent=1))
    return dest


def test_protect_survives_sigkill(trained, tmp_path):
    """Two SIGKILLs (at the first output file; after a few more cases of the rerun), then a rerun: the output equals an
    uninterrupted run byte for byte, every case once, no temp files, manifest sha256 = files on disk, input intact."""
    from trust_monai.utils.fileio import sha256_file

    n = 24
    for attempt in range(KILL_RETRIES):
        data = _synthetic_dataset(tmp_path / f"data{attempt}", n)
        out = tmp_path / f"out{attempt}"
        log = tmp_path / f"log{attempt}.txt"
        common = {"dataset_dir": str(data), "output_dir": str(out), "ckpt_dir": str(trained("umed")), "progress": False}
        # kill 1: as soon as anything (a temp file, usually) appears where the first protected scan goes
        killed = _run_until("umed", "inference", lambda: any((out / "imagesTr").glob("*")) if out.is_dir() else False,
                            log, **common)
        done_1 = len(_manifest_cases(out))
        # kill 2: the rerun resumes, and is killed again once it has recorded two more cases
        killed = killed and _run_until("umed", "inference", lambda: len(_manifest_cases(out)) >= done_1 + 2, log,
                                       **common)
        if killed:
            break
        n *= 2  # this machine was too fast for the triggers: same test, more cases
    else:
        pytest.fail(f"the run always finished before the kill, up to {n // 2} cases")
    assert 2 <= len(_manifest_cases(out)) < n + 4, "the second kill must land midway"
    input_hash = sha256_file(data)
    _check(run_bundle("umed", "inference", **common), "rerun after two kills")

    ref = tmp_path / "reference"
    _check(run_bundle("umed", "inference", **{**common, "output_dir": str(ref)}), "uninterrupted run")
    got, want = _tree(out), _tree(ref)
    assert sorted(got) == sorted(want), "different files than an uninterrupted run (duplicates or missing)"
    for rel in want:
        if rel != "manifest.json":  # holds its creation time
            assert got[rel] == want[rel], f"{rel} differs from the uninterrupted run's"
    _assert_no_debris(out)
    _assert_manifest_matches_disk(out, n + 4)
    key = lambda c: c["input"]  # noqa: E731
    assert sorted(_manifest_cases(out), key=key) == sorted(_manifest_cases(ref), key=key)
    assert sha256_file(data) == input_hash, "the input dataset was modified"


# --------------------------------------------------------------------------------------------------------------------
# certification: drs_natural (classification, resumes from certify rows) and drs (segmentation, manifest)
# --------------------------------------------------------------------------------------------------------------------

# columns that hold wall-clock time: the only ones allowed to differ between two runs
TIME_COLUMNS = {"time", "sec_per_image", "sec_per_case"}


def _csv_without_time(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIME_COLUMNS} for r in csv.DictReader(f)]


def _compare_certify_outputs(out: Path, ref: Path):
    got, want = _tree(out), _tree(ref)
    assert sorted(got) == sorted(want), "different files than an uninterrupted run"
    for rel in want:
        if rel.endswith(".csv"):
            assert _csv_without_time(out / rel) == _csv_without_time(ref / rel), f"{rel} differs (time columns aside)"
        elif rel.endswith(".md"):
            # a Markdown rendering of the summary CSV, whose time column differs run to run: compared via the CSV
            assert got[rel].count(b"\n") == want[rel].count(b"\n")
        elif rel != "manifest.json" and not rel.endswith(".png"):
            assert got[rel] == want[rel], f"{rel} differs from the uninterrupted run's"


@pytest.mark.slow  # ~2 min; the segmentation certifier below covers certification in the fast selection
def test_certify_classification_survives_sigkill(trained, tmp_path):
    """Kill once the first partial certificate rows are saved, rerun: rows equal an uninterrupted run's, no partials."""
    common, out, samples = _kill_once_growing(
        "drs_natural", 24, 2,
        lambda size, out: {"ckpt_dir": str(trained("drs_natural")), "output_dir": str(out), "max_samples": size,
                           "progress": False, "evaluator#flush_seconds": 0},
        lambda out: any(out.glob("certify.rank*.partial.csv")), tmp_path / "log.txt")
    assert not (out / "certify.csv").exists(), "the kill must land before the final tables"
    _check(run_bundle("drs_natural", "inference", **common), "rerun after kill")
    ref = tmp_path / "reference"
    _check(run_bundle("drs_natural", "inference", **{**common, "output_dir": str(ref)}), "uninterrupted run")
    _assert_no_debris(out)
    _compare_certify_outputs(out, ref)
    rows = _csv_without_time(out / "certify.csv")
    assert len(rows) == len({(r["method"], r["index"]) for r in rows}) == 2 * samples, "every image once per method"


def test_certify_segmentation_survives_sigkill(trained, tmp_path):
    """Kill once the manifest records a case, rerun: certified label maps equal an uninterrupted run's."""
    common, out, cases = _kill_once_growing(
        "drs", 6, 2,
        lambda size, out: {"ckpt_dir": str(trained("drs")), "output_dir": str(out), "max_cases": size,
                           "progress": False},
        lambda out: len(_manifest_cases(out)) >= 1, tmp_path / "log.txt")
    _check(run_bundle("drs", "inference", **common), "rerun after kill")
    ref = tmp_path / "reference"
    _check(run_bundle("drs", "inference", **{**common, "output_dir": str(ref)}), "uninterrupted run")
    _assert_no_debris(out)
    _compare_certify_outputs(out, ref)
    from trust_monai.utils.fileio import sha256_file

    recs = _manifest_cases(out)
    assert len(recs) == len({r["input"] for r in recs}) == cases
    for r in recs:
        for m, met in r["metrics"].items():
            if isinstance(met, dict) and "output_sha256" in met:
                assert sha256_file(out / met["output"]) == met["output_sha256"], f"{met['output']} ({m})"


# --------------------------------------------------------------------------------------------------------------------
# natural-image protection (ue_natural): PoisonWriter, manifest saved in large batches
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_natural_protection_survives_sigkill(trained, tmp_path):
    """Kill at the first written PNG, rerun: the poisoned copy equals an uninterrupted run's, no temp files."""
    # more test images (copied) make the run longer; the training rows must match the trained sample-wise noise
    common, out, _ = _kill_once_growing(
        "ue_natural", 64, 4,
        lambda size, out: {"ckpt_dir": str(trained("ue_natural")), "output_dir": str(out), "max_test": size,
                           "progress": False},
        lambda out: out.is_dir() and any(p.is_file() for p in out.rglob("*.png")), tmp_path / "log.txt")
    _check(run_bundle("ue_natural", "inference", **common), "rerun after kill")
    ref = tmp_path / "reference"
    _check(run_bundle("ue_natural", "inference", **{**common, "output_dir": str(ref)}), "uninterrupted run")
    _assert_no_debris(out)
    got, want = _tree(out), _tree(ref)
    assert sorted(got) == sorted(want)
    assert all(got[k] == want[k] for k in want if k != "manifest.json")
    cases = _manifest_cases(out)
    assert len(cases) == len({c["input"] for c in cases}) == len(want) - 2  # every image once (not the two JSONs)
