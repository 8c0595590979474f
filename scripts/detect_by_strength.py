"""Does the detector miss only faint tampering? AUC of the fakes binned by how much they alter their real source.

Reads an evaluation's ``report.json`` (``bundles/moe_ffd/configs/evaluate.json``) and the data set it scored. Every
fake whose datalist entry names its ``source`` real image gets a strength, the mean ``|fake - source|`` over the image
(values in [0, 1]). The fakes are split into ``--bins`` equal groups by strength, and each group is scored against
all reals (``trust_monai.detect.metrics.auc_by_strength``). Generated fakes have no source and are left out. Prints a
Markdown table. The numbers in bundles/moe_ffd/docs/README.md came from:

    python scripts/detect_by_strength.py --report bundles/moe_ffd/outputs/evaluate_all_d6/report.json
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path


def main(argv=None) -> list[dict]:
    import numpy as np

    from trust_monai.data.io import read_image
    from trust_monai.detect.data import ForgeryDataset
    from trust_monai.detect.metrics import auc_by_strength
    from trust_monai.errors import InputFileError

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", required=True, help="report.json of an evaluation run")
    ap.add_argument("--dataset_dir", default=None,
                    help="folder with the scored dataset.json (default: the bundle's 2D scan_forgery set)")
    ap.add_argument("--section", default="test")
    ap.add_argument("--bins", type=int, default=4)
    args = ap.parse_args(argv)

    if args.dataset_dir is None:
        from trust_monai.detect.data import prepare_scan_forgery

        args.dataset_dir = prepare_scan_forgery()
    root = Path(args.dataset_dir)
    doc = json.loads((root / "dataset.json").read_text())
    sources = {e["image"]: e.get("source") for e in doc.get(args.section, [])}
    report = Path(args.report)
    images = json.loads(report.read_text()).get("images", [])
    missing = [r["image"] for r in images if r.get("image") not in sources]
    if missing:
        raise InputFileError(report, f"{len(missing)} scored images are not in {root / 'dataset.json'} "
                                     f"[{args.section}] (first: {missing[0]}); pass the --dataset_dir it scored")

    @functools.lru_cache(maxsize=None)  # a real source is the source of one fake per kind: read it once
    def load(rel):
        return ForgeryDataset._to_unit(np.asarray(read_image(str(root / rel))[0], np.float32), str(root / rel))

    labels, scores, strengths = [], [], []
    for r in images:
        if "label" not in r:
            continue
        src = sources[r["image"]]
        if int(r["label"]) == 1 and not src:
            continue  # a generated fake: nothing to compare with
        labels.append(int(r["label"]))
        scores.append(float(r["score"]))
        strengths.append(float(np.abs(load(r["image"]) - load(src)).mean()) if int(r["label"]) == 1 else float("nan"))
    rows = auc_by_strength(labels, scores, strengths, bins=args.bins)
    print(f"{report}: {labels.count(0)} reals, {labels.count(1)} fakes with a source\n")
    print("| bin | mean abs change (low - high) | fakes | AUC against all reals |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['bin']} | {r['low']:.4f} - {r['high']:.4f} | {r['n_fake']} | {r['auc']:.3f} |")
    return rows


if __name__ == "__main__":
    main()
