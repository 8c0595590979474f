"""UMed's per-sample error-minimizing baseline, run as users run it: train.json / inference.json plus an override."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.integration.bundle_harness import ROOT


def _run(configs, **overrides):
    files = "[" + ",".join(f"'bundles/umed/configs/{c}.json'" for c in configs) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files]
    for k, v in overrides.items():
        cmd += [f"--{k}", str(v)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_samplewise_baseline_train_then_protect(tmp_path):
    from trust_monai.data import prepare

    data = str(prepare("synthetic_2d"))
    common = {"dataset_dir": data, "ckpt_dir": str(tmp_path / "m")}
    proc = _run(["train", "samplewise_train"], epochs=2, pgd_steps=3, train_steps=3, **common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "m" / "noise_samplewise_2d.pt").is_file()
    out = tmp_path / "out"
    proc = _run(["inference", "samplewise_inference"], output_dir=str(out), **common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = json.loads((out / "manifest.json").read_text())["cases"]
    done = [c for c in cases if c["status"] == "done"]
    assert len(done) == 8
    assert all(c["metrics"]["changed_outside_region"] == 0 for c in done)
    assert all(c["metrics"]["max_abs_change_norm"] <= 8 / 255 + 1e-9 for c in done)  # the default budget
