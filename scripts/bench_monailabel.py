"""Time the trust_monai MONAI Label app on a studies folder: server start, certified segmentation of every study,
synthetic-scan scoring, protection; prints one JSON summary. Certified segmentation runs on the studies that have a
final label; scoring on all.

    python scripts/bench_monailabel.py --studies DIR --models DIR [--conf KEY VALUE ...] [--out FILE]

Runs the real server from the MONAI Label venv (scripts/setup_monailabel.sh) on 127.0.0.1 with a free port and stops
it by its PID at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def request(url: str, method: str = "GET", body: dict | None = None, timeout: float = 1800):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--protect_output", default=None)
    ap.add_argument("--conf", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"))
    ap.add_argument("--venv", default=os.environ.get("TRUST_MONAI_LABEL_VENV", str(REPO / ".venv-monailabel")))
    ap.add_argument("--out", default=None, help="also write the summary JSON here")
    args = ap.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    studies = Path(args.studies).resolve()
    protect_out = Path(args.protect_output or studies.parent / f"{studies.name}_protected").resolve()
    cmd = [str(Path(args.venv) / "bin" / "python"), "-m", "monailabel.main", "start_server", "--app",
           str(REPO / "trust_monai" / "label"), "--studies", str(studies), "--host", "127.0.0.1", "--port", str(port),
           "--conf", "zoo_source", "github", "--conf", "models", str(Path(args.models).resolve()),
           "--conf", "protect_output", str(protect_out)]
    for k, v in args.conf:
        cmd += ["--conf", k, v]
    log = open(studies.parent / "bench_monailabel_server.log", "w")
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    summary: dict = {}
    try:
        while True:
            if proc.poll() is not None:
                sys.exit(f"error: server exited with {proc.returncode}; see {log.name}")
            try:
                if request(f"{url}/info/", timeout=5)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, socket.timeout):
                pass
            time.sleep(0.2)
        summary["server_start_s"] = round(time.perf_counter() - t0, 2)
        objects = json.loads(request(f"{url}/datastore/?output=all")[1])["objects"]
        summary["studies"] = len(objects)
        # certified segmentation of the studies that have a final label (the segmentation data); scoring of all
        ids = sorted(k for k, v in objects.items() if "final" in v.get("labels", {}))
        # start-up scoring runs in a subprocess: wait for it, and time it
        t1 = time.perf_counter()
        while request(f"{url}/scoring/?check_if_running=true")[0] == 200:
            time.sleep(0.5)
        summary["startup_scoring_wait_s"] = round(time.perf_counter() - t1, 2)
        times, fractions = [], []
        for i in ids:
            t = time.perf_counter()
            status, body = request(f"{url}/infer/certified_segmentation?image={i}&output=json", "POST", {})
            if status != 200:
                summary.setdefault("infer_errors", {})[i] = body.decode()[:300]
                continue
            times.append(time.perf_counter() - t)
            rec = json.loads(body)
            fractions.append(rec["certified_fraction"])
            summary["radius"] = rec["radius"]
        if times:
            summary.update(infer_first_s=round(times[0], 3), infer_median_s=round(statistics.median(times), 3),
                           infer_n=len(times), certified_fraction_mean=round(statistics.mean(fractions), 4))
        t = time.perf_counter()
        status, body = request(f"{url}/scoring/synthetic_scan?run_sync=true", "POST", {"force": True})
        summary["scoring_sync_s"] = round(time.perf_counter() - t, 3)
        summary["scores"] = {k: v["score"] for k, v in json.loads(body).items()} if status == 200 else body.decode()
        t = time.perf_counter()
        status, body = request(f"{url}/batch/infer/protect?run_sync=true", "POST", {"overwrite": True})
        summary["protect_s"] = round(time.perf_counter() - t, 3)
        summary["protect_status"] = ({k: v.get("status") for k, v in json.loads(body).items()} if status == 200
                                     else f"HTTP {status}: {body.decode()[:300]}")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)
            t = time.perf_counter()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
            summary["stop_s"] = round(time.perf_counter() - t, 2)
        log.close()
    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
