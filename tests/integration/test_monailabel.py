"""The trust_monai MONAI Label app (trust_monai/label) served by the real MONAI Label 0.8.5 server.

The server runs from its own environment (``scripts/setup_monailabel.sh``, built here on first use: MONAI Label needs
pydicom < 3, this environment has pydicom 3) on 127.0.0.1 with a free port, offline (``--conf zoo_source github``),
on three MNI152 tissue slices with their final labels. The served models: the DRS base U-Nets and the UMed generator
trained for one epoch by their bundles' train.json, and a MoE-FFD detector at the bundle's smoke sizes with its
initial weights (this test checks the serving, not detection accuracy, which bundles/moe_ffd measures).
"""

from __future__ import annotations

import email.parser
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("TRUST_MONAI_LABEL_VENV", REPO / ".venv-monailabel"))
STUDIES = ("mni152_z060", "mni152_z065", "mni152_z070")
BROKEN = "broken_scan"  # a truncated file, with a final label: each task must name it and go on with the others
# the detector at bundles/moe_ffd's smoke sizes (metadata.json trust_monai.smoke_overrides)
DETECT = {"img_size": 32, "patch_size": 8, "pretrained": None, "embed_dim": 32, "depth": 2, "num_heads": 2, "lora_ranks": [2, 4]}


def _registry_reachable() -> bool:
    """Whether pip's configured index answers (the only reason to skip rather than fail)."""
    r = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "monailabel"], capture_output=True,
                       text=True, timeout=120)
    return r.returncode == 0 and "0.8.5" in r.stdout


@pytest.fixture(scope="session")
def label_python() -> Path:
    """The MONAI Label environment's python, built (or checked) by the one setup script."""
    t0 = time.perf_counter()
    r = subprocess.run(["bash", str(REPO / "scripts" / "setup_monailabel.sh")], capture_output=True, text=True,
                       timeout=1800, env={**os.environ, "TRUST_MONAI_LABEL_VENV": str(VENV)})
    if r.returncode != 0:
        if not _registry_reachable():
            pytest.skip("package registry unreachable: scripts/setup_monailabel.sh cannot install MONAI Label 0.8.5")
        pytest.fail(f"scripts/setup_monailabel.sh failed (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    print(f"[monailabel env] {r.stdout.strip().splitlines()[-1]} in {time.perf_counter() - t0:.1f} s")
    return VENV / "bin" / "python"


def _run_bundle(config: str, *args: str) -> None:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, *args]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Studies (images + final labels), a model folder with the three checkpoints, and the protect output folder."""
    from trust_monai.data import prepare
    from trust_monai.label.service import bundle_config
    from trust_monai.utils.checkpoint import save_state_dict

    root = tmp_path_factory.mktemp("monailabel")
    src = prepare("mni152_tissue_2d")
    studies, models = root / "studies", root / "models"
    (studies / "labels" / "final").mkdir(parents=True)
    for s in STUDIES:
        shutil.copy(src / "imagesTs" / f"{s}.nii.gz", studies / f"{s}.nii.gz")
        shutil.copy(src / "labelsTs" / f"{s}.nii.gz", studies / "labels" / "final" / f"{s}.nii.gz")
    data = (studies / f"{STUDIES[0]}.nii.gz").read_bytes()
    (studies / f"{BROKEN}.nii.gz").write_bytes(data[: len(data) // 2])
    shutil.copy(studies / "labels" / "final" / f"{STUDIES[0]}.nii.gz", studies / "labels" / "final" / f"{BROKEN}.nii.gz")
    _run_bundle("bundles/drs/configs/train.json", "--epochs", "1", "--max_cases", "3", "--patch_size", "[32, 32]",
                "--num_samples", "2", "--batch_size", "4", "--ckpt_dir", str(models), "--output_dir", str(root / "drs"))
    _run_bundle("bundles/umed/configs/train.json", "--epochs", "1", "--max_cases", "4", "--patch_size", "[64, 64]",
                "--batch_size", "8", "--ckpt_dir", str(models), "--output_dir", str(root / "umed"))
    import torch

    torch.manual_seed(0)
    net = bundle_config("moe_ffd", DETECT).get_parsed_content("network_def")
    save_state_dict(net.state_dict(), models / "detector_all.pt")
    return {"root": root, "studies": studies, "models": models, "protected": root / "protected"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, method: str = "GET", body: dict | None = None, timeout: float = 300):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server by its PID: Ctrl-C first (uvicorn's graceful shutdown), SIGKILL if it does not exit."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


@pytest.fixture(scope="module")
def server(label_python, workspace):
    port = _free_port()
    cmd = [str(label_python), "-m", "monailabel.main", "start_server", "--app", str(REPO / "trust_monai" / "label"),
           "--studies", str(workspace["studies"]), "--host", "127.0.0.1", "--port", str(port),
           "--conf", "zoo_source", "github", "--conf", "models", str(workspace["models"]),
           "--conf", "detect_overrides", json.dumps(DETECT), "--conf", "protect_output", str(workspace["protected"]),
           "--conf", "device", "cpu"]
    log_path = workspace["root"] / "server.log"
    log = open(log_path, "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workspace["root"],
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            assert proc.poll() is None, f"server exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}"
            assert time.perf_counter() - t0 < 180, f"server not up after 180 s:\n{log_path.read_text()[-4000:]}"
            try:
                if _request(f"{url}/info/", timeout=5)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, socket.timeout):
                pass
            time.sleep(0.5)
        print(f"[monailabel] server up in {time.perf_counter() - t0:.1f} s (pid {proc.pid}, port {port})")
        yield {"url": url, "proc": proc, "log": log_path, **workspace}
    finally:
        _stop(proc)
        log.close()
    assert proc.returncode is not None


def _timed(label: str, fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    print(f"[monailabel] {label}: {time.perf_counter() - t0:.2f} s")
    return out


def _multipart(content_type: str, body: bytes) -> dict[str, bytes]:
    msg = email.parser.BytesParser().parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
            for part in msg.get_payload()}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_info(server):
    status, _, body = _request(f"{server['url']}/info/")
    info = json.loads(body)
    assert status == 200
    seg = info["models"]["certified_segmentation"]
    assert seg["labels"] == {"background": 0, "other_brain": 1, "grey_matter": 2, "white_matter": 3, "abstain": 4}
    assert seg["type"] == "segmentation" and seg["dimension"] == 2
    assert "synthetic_scan" in info["scoring"]
    assert info["batch_tasks"]["protect"]["output"] == str(server["protected"])
    n = len(STUDIES) + 1
    assert info["datastore"]["total"] == n and info["datastore"]["label_tags"] == {"final": n}


def _check_certified_segmentation(server):
    """The label file has the study's grid and geometry; values are classes or the abstain class; the JSON beside it
    gives the certified fraction (the share of non-abstain pixels) and the RS radius sigma * PhiInv(tau)."""
    import nibabel as nib
    from scipy.stats import norm

    study = STUDIES[1]
    status, ctype, body = _timed("POST /infer/certified_segmentation", _request,
                                 f"{server['url']}/infer/certified_segmentation?image={study}", "POST", {})
    assert status == 200, body[:500]
    parts = _multipart(ctype, body)
    params = json.loads(parts["params"])
    with tempfile.NamedTemporaryFile(suffix=".nii.gz") as f:
        f.write(parts["image"])
        f.flush()
        seg = nib.load(f.name)
        labels = np.asarray(seg.dataobj)
        affine = seg.affine
    ref = nib.load(server["studies"] / f"{study}.nii.gz")
    assert labels.shape == ref.shape and np.allclose(affine, ref.affine)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2, 3, 4}
    assert params["abstain_label"] == 4 and params["method"] == "rs"
    assert params["certified_fraction"] == pytest.approx(float(np.mean(labels != 4)), abs=1e-9)
    assert params["radius"] == pytest.approx(0.25 * norm.ppf(0.75), rel=1e-6)
    assert (params["n0"], params["n"]) == (10, 200)


def _check_unknown_study(server):
    status, _, body = _request(f"{server['url']}/infer/certified_segmentation?image=no_such_study", "POST", {})
    assert status == 404 and "no_such_study" in json.loads(body)["detail"]
    status, _, body = _request(f"{server['url']}/infer/certified_segmentation?image={BROKEN}", "POST", {})
    assert status == 400 and f"{BROKEN}.nii.gz" in json.loads(body)["detail"]


def _check_synthetic_scan_scoring(server):
    """The start-up scoring (a subprocess MONAI Label runs) and a synchronous rescoring both store a score in [0, 1]
    per study in the datastore."""
    url = server["url"]

    def stored():
        objects = json.loads(_request(f"{url}/datastore/?output=all")[2])["objects"]
        return {k: v["image"]["info"].get("synthetic_score") for k, v in objects.items()}

    deadline = time.perf_counter() + 120
    # start-up scoring: wait until its subprocess has ended (a second run is refused while one runs)
    while _request(f"{url}/scoring/?check_if_running=true")[0] == 200 or any(stored()[s] is None for s in STUDIES):
        assert time.perf_counter() < deadline, f"start-up scoring stored nothing:\n{server['log'].read_text()[-3000:]}"
        time.sleep(1)
    status, _, body = _timed("POST /scoring/synthetic_scan", _request,
                             f"{url}/scoring/synthetic_scan?run_sync=true", "POST", {"force": True})
    assert status == 200, body[:500]
    result = json.loads(body)
    assert sorted(result) == sorted([*STUDIES, BROKEN])
    assert f"{BROKEN}.nii.gz" in result[BROKEN]["error"]
    scores = stored()
    assert scores[BROKEN] is None
    for s in STUDIES:
        assert isinstance(scores[s], float) and 0.0 <= scores[s] <= 1.0
        assert result[s]["score"] == scores[s] and result[s]["pred"] in ("real", "fake")
    # same checkpoint, not forced: nothing is rescored
    again = json.loads(_request(f"{url}/scoring/synthetic_scan?run_sync=true", "POST", {})[2])
    assert all(again[s].get("skipped") for s in STUDIES) and "error" in again[BROKEN]


def _check_protect(server):
    """Protected copies land in the protect folder (outside the studies), differ from the study only inside the mask
    and its contour band and by at most epsilon; the studies are untouched. Without the generator: HTTP 503 naming
    the train command."""
    import torch

    from trust_monai.data.io import read_image
    from trust_monai.transforms.roi import contour_band

    studies, out = server["studies"], server["protected"]
    before = {p: _sha(p) for p in studies.rglob("*.nii.gz")}
    status, _, body = _timed("POST /batch/infer/protect", _request,
                             f"{server['url']}/batch/infer/protect?run_sync=true", "POST", {})
    assert status == 200, body[:500]
    result = json.loads(body)
    assert sorted(result) == sorted([*STUDIES, BROKEN])
    assert result[BROKEN]["status"] == "error" and f"{BROKEN}.nii.gz" in result[BROKEN]["error"]
    assert not (out / f"{BROKEN}.nii.gz").exists()
    from trust_monai.label.service import bundle_config

    eps = bundle_config("umed").get_parsed_content("epsilon")  # the bundle's default budget
    for s in STUDIES:
        rec = result[s]
        dst = Path(rec["output"])
        assert rec["status"] == "done" and dst == out / f"{s}.nii.gz" and dst.is_file()
        assert studies.resolve() not in dst.resolve().parents
        img, meta = read_image(studies / f"{s}.nii.gz")
        prot, pmeta = read_image(dst)
        lab, _ = read_image(studies / "labels" / "final" / f"{s}.nii.gz")
        region = contour_band(torch.as_tensor(np.asarray(lab))[None, None], 2)[1][0, 0].numpy() > 0
        diff = np.abs(prot.astype(np.float64) - img.astype(np.float64))
        assert np.allclose(pmeta.affine, meta.affine) and prot.shape == img.shape
        assert diff[~region].max() == 0 and diff[region].max() > 0
        lo, hi = rec["metrics"]["window"]
        assert diff.max() <= eps * (hi - lo) + 1e-6
        assert rec["output_sha256"] == _sha(dst)
    assert json.loads((out / "manifest.json").read_text())["bundle"] == "umed"
    assert {p: _sha(p) for p in studies.rglob("*.nii.gz")} == before
    # a missing generator: one clear error, nothing written
    ckpt = server["models"] / "generator_2d.pt"
    ckpt.rename(ckpt.with_suffix(".bak"))
    try:
        status, _, body = _request(f"{server['url']}/batch/infer/protect?run_sync=true", "POST", {"overwrite": True})
    finally:
        ckpt.with_suffix(".bak").rename(ckpt)
    detail = json.loads(body)["detail"]
    assert status == 503 and "generator_2d.pt" in detail and "bundles/umed/configs/train.json" in detail


def test_monailabel_server(server):
    """One test, the steps in order on one server: pytest-xdist's ``--dist loadgroup`` does not keep a group on one
    worker here (xdist 3.8 with pytest 9), and separate tests could land on two workers, each building a server."""
    _check_info(server)
    _check_certified_segmentation(server)
    _check_unknown_study(server)
    _check_synthetic_scan_scoring(server)
    _check_protect(server)
    # the server stops by its PID (the fixture does it again in its finally, a no-op then)
    proc = server["proc"]
    _timed("stop (SIGINT)", _stop, proc)
    assert proc.returncode is not None
