#!/usr/bin/env python
"""Attack x defence matrix for natural images: victim clean test accuracy after each defence against each poison.

For every attack (a poisoned copy of the training split, made by ``bundles/ue_natural`` or given as a folder) and
every defence (``none``, ISS squeezes, plain low-rate VAE, D-VAE stage 1, two-stage D-VAE from ``bundles/dvae_natural``)
the defended training set is written with the bundles' own configs, a fresh victim ResNet is trained on it, and its
accuracy on the clean test split is recorded. Cells already in ``WORK/matrix.csv`` are skipped, so a rerun resumes.
``--victim_seeds 0 1 2`` trains one victim per seed on each defended set (the defended data are written once), so
the table can tell a difference between defences from a victim's run-to-run spread; a rerun with more seeds adds
only the missing victims.

Writes ``WORK/matrix.csv`` (one row per cell and victim seed), ``WORK/matrix.md`` (mean, and the sample standard
deviation over seeds where there are several) and ``WORK/matrix.png`` (heatmap of the means); for a budget sweep
(``configs/grids/purify_sweep.json``: attacks labelled with ``family`` and ``strength``) also ``WORK/sweep.png``,
accuracy against poison strength per attack family, a line per defence. An attack's other keys (``epsilon``,
``patch_size``, ...) override ``ue_natural`` ``train.json``; a defence ``{"defence": "dvae", "overrides": {...}}``
is a variant of a bundle defence with its own purifier checkpoints. ``--validation N`` copies N clean training
images that no victim sees (those after ``max_train``) to ``WORK/validation``; an override value ``"@validation"``
names that folder (the D-VAE's ``validation_dir``: clean images a defender holds to choose among purifiers).

    python scripts/purify_matrix.py --work /tmp/purify_matrix [--grid configs/grids/purify_matrix.json] \
        [--attack_dir lsp=/path/to/lsp_poisoned ...] [--only_attacks lsp,ar] [--only_defences none,dvae] \
        [--max_train 20000] [--victim_epochs 5] [--victim_seeds 0 1 2] [--validation 2000]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ["attack", "defence", "clean_test_acc", "n_train", "victim_epochs", "train_dir", "seconds", "victim_seed"]


def _bundle(name: str, config: str, **overrides) -> None:
    """Run one bundle config as a user would (``python -m monai.bundle run``)."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(ROOT / "bundles" / name / "configs" / f"{config}.json")]
    for k, v in overrides.items():
        cmd += [f"--{k}", json.dumps(v) if not isinstance(v, str) else v]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def _validation_set(clean: Path, work: Path, start: int, count: int) -> Path:
    """``work/validation``: clean training images ``start .. start + count - 1`` copied with their own datalist."""
    import shutil

    from trust_monai.utils.fileio import atomic_write_text

    out = work / "validation"
    datalist = json.loads((clean / "dataset.json").read_text())
    entries = datalist["training"][start : start + count]
    if len(entries) < count:
        raise SystemExit(f"--validation {count}: {clean} has only {len(datalist['training']) - start} training images "
                         f"after the first {start} the victims use")
    for e in entries:
        dst = out / e["image"]
        if not dst.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(clean / e["image"], dst)
    datalist.update(training=entries, test=[], numTraining=len(entries), numTest=0,
                    description=f"clean validation images: training images {start}-{start + count - 1} of {clean}")
    atomic_write_text(out / "dataset.json", json.dumps(datalist, indent=1) + "\n")
    return out


def _read(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open())) if path.is_file() else []


def _seed(row: dict, grid: dict) -> int:
    """A row's victim seed (rows written before seeds were recorded used the grid's seed)."""
    return int(row.get("victim_seed") or grid.get("seed", 0))


def _cells(rows: list[dict]) -> dict[tuple[str, str], tuple[float, float, int]]:
    """(attack, defence) -> (mean accuracy %, sample std % or nan for one seed, number of seeds)."""
    import statistics

    acc: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        acc.setdefault((r["attack"], r["defence"]), []).append(float(r["clean_test_acc"]) * 100)
    return {k: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else float("nan"), len(v)) for k, v in acc.items()}


def _record(new: list[dict], work: Path, grid: dict) -> list[dict]:
    """Add this run's rows to ``WORK/matrix.csv`` and rewrite the tables; returns every row on record.

    Several runs may share one work folder (different attacks side by side): under an exclusive lock the CSV is read
    again and merged, so a run never drops the rows another one wrote since it started."""
    import fcntl

    with open(work / ".matrix.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = _read(work / "matrix.csv")
        have = {(r["attack"], r["defence"], _seed(r, grid)) for r in rows}
        rows += [r for r in new if (r["attack"], r["defence"], _seed(r, grid)) not in have]
        _write(rows, work, grid)
    return rows


def _write(rows: list[dict], work: Path, grid: dict) -> None:
    """Table and heatmap of every cell measured so far (in the grid's order), not only this run's subset."""
    from trust_monai.utils.fileio import atomic_path, atomic_write_text

    attacks = [a for a in grid["attacks"] if any(r["attack"] == a for r in rows)]
    defences = [d for d in grid["defences"] if any(r["defence"] == d for r in rows)]

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows([{**r, "victim_seed": _seed(r, grid)} for r in rows])
    atomic_write_text(work / "matrix.csv", buf.getvalue())
    cells = _cells(rows)
    acc = {k: v[0] for k, v in cells.items()}

    def fmt(cell):
        mean, std, n = cell
        return f"{mean:.2f}" if n == 1 else f"{mean:.2f} ± {std:.2f} (n={n})"

    md = ["| attack \\ defence | " + " | ".join(defences) + " |", "|---" * (len(defences) + 1) + "|"]
    for a in attacks:
        md.append(f"| {a} | " + " | ".join(fmt(cells[(a, d)]) if (a, d) in cells else "-" for d in defences) + " |")
    several = any(n > 1 for _, _, n in cells.values())
    note = "Victim clean test accuracy (%)" + (
        ": mean ± sample standard deviation over victim seeds (n)." if several else ".")
    atomic_write_text(work / "matrix.md", "\n".join(md) + "\n\n" + note + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    heat = np.full((len(attacks), len(defences)), np.nan)
    for i, a in enumerate(attacks):
        for j, d in enumerate(defences):
            heat[i, j] = acc.get((a, d), np.nan)
    fig, ax = plt.subplots(figsize=(1.4 * len(defences) + 2, 0.8 * len(attacks) + 1.5))
    im = ax.imshow(heat, cmap="viridis", vmin=0, vmax=100)
    ax.set_xticks(range(len(defences)), defences, rotation=30, ha="right")
    ax.set_yticks(range(len(attacks)), attacks)
    for i in range(len(attacks)):
        for j in range(len(defences)):
            if not np.isnan(heat[i, j]):
                ax.text(j, i, f"{heat[i, j]:.1f}", ha="center", va="center", color="w" if heat[i, j] < 60 else "k")
    ax.set_xlabel("defence")
    ax.set_ylabel("attack")
    fig.colorbar(im, ax=ax, label="victim clean test accuracy (%)")
    ax.set_title("attack x defence" + (" (mean over victim seeds)" if several else ""))
    fig.tight_layout()
    with atomic_path(work / "matrix.png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    _plot_sweep(acc, attacks, defences, grid, work)


def _plot_sweep(acc: dict, attacks: list, defences: list, grid: dict, work: Path) -> None:
    """``sweep.png``: for a grid whose attacks carry ``family`` and ``strength``, one panel per attack family with
    victim accuracy against strength, a line per defence, and the clean victim as a dashed line."""
    import matplotlib.pyplot as plt

    from trust_monai.utils.fileio import atomic_path

    families: dict[str, list[str]] = {}
    for a in attacks:
        fam = grid["attacks"][a].get("family")
        if fam:
            families.setdefault(fam, []).append(a)
    if not families:
        return
    fig, axes = plt.subplots(1, len(families), figsize=(3.6 * len(families), 3.4), squeeze=False)
    for ax, (fam, rows) in zip(axes[0], families.items()):
        labels = [grid["attacks"][a]["strength"] for a in rows]
        for d in defences:
            ys = [acc.get((a, d), float("nan")) for a in rows]
            ax.plot(range(len(rows)), ys, marker="o", label=d)
        if ("none", "none") in acc:
            ax.axhline(acc[("none", "none")], color="k", ls="--", lw=0.8, label="clean victim")
        ax.set_xticks(range(len(rows)), labels)
        ax.set_ylim(0, 100)
        ax.set_title(fam)
        ax.set_xlabel("poison strength")
    axes[0][0].set_ylabel("victim clean test accuracy (%)")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    with atomic_path(work / "sweep.png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _subset(text: str, names: dict, flag: str, what: str) -> list[str]:
    """The comma-separated names of ``text`` in that order (all of ``names`` when empty); a name the grid lacks stops
    the run: a typo would otherwise measure nothing and say nothing."""
    if not text:
        return list(names)
    wanted = [n for n in text.split(",") if n]
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise SystemExit(f"{flag}: {', '.join(unknown)} not in the grid's {what}: {', '.join(names)}")
    return wanted


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="folder for poisoned / defended datasets, checkpoints and results")
    p.add_argument("--grid", default=str(ROOT / "configs" / "grids" / "purify_matrix.json"))
    p.add_argument("--attack_dir", action="append", default=[], help="NAME=FOLDER: use an existing poisoned dataset")
    p.add_argument("--only_attacks", default="", help="comma-separated subset of the grid's attacks")
    p.add_argument("--only_defences", default="", help="comma-separated subset of the grid's defences")
    p.add_argument("--max_train", type=int, default=None, help="override the grid's max_train (victims and writers)")
    p.add_argument("--victim_epochs", type=int, default=None, help="override the grid's victim_epochs")
    p.add_argument("--victim_seeds", type=int, nargs="+", default=None,
                   help="one victim per seed on every defended set (default: the grid's seed)")
    p.add_argument("--validation", type=int, default=0,
                   help="copy this many clean training images no victim sees to WORK/validation "
                        "(override value '@validation')")
    args = p.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("ignite").setLevel(logging.WARNING)

    grid = json.loads(Path(args.grid).read_text())
    for key in ("max_train", "victim_epochs"):
        if getattr(args, key) is not None:
            grid[key] = getattr(args, key)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    given = dict(s.split("=", 1) for s in args.attack_dir)
    for name in given:  # a given folder is its own recipe: it needs no entry in the grid
        grid["attacks"].setdefault(name, {})
    # a subset given on the command line also sets the order cells run in (the most wanted first)
    attacks = _subset(args.only_attacks, grid["attacks"], "--only_attacks", "attacks (or give one with --attack_dir)")
    defences = _subset(args.only_defences, grid["defences"], "--only_defences", "defences")
    n_train, epochs, seed = int(grid["max_train"]), int(grid["victim_epochs"]), int(grid.get("seed", 0))

    import torch

    import trust_monai.data as data
    from trust_monai.engines.victim import VictimEvaluation
    from trust_monai.networks import SmallResNet

    clean = data.prepare(grid.get("clean_dataset", "fashion_mnist"))
    validation = _validation_set(Path(clean), work, n_train, args.validation) if args.validation else None
    rows, new = _read(work / "matrix.csv"), []
    seeds = args.victim_seeds if args.victim_seeds else [seed]
    done = {(r["attack"], r["defence"], _seed(r, grid)) for r in rows}
    for attack in attacks:
        spec = grid["attacks"][attack]
        if attack == "none":
            src = Path(clean)
        elif attack in given:
            src = Path(given[attack])
        else:  # make the poisoned copy with the protect bundle
            src = work / "attacks" / attack
            if not (src / "dataset.json").is_file():
                models = work / "attacks" / f"{attack}_models"
                # any other key of the attack (epsilon, patch_size, ...) overrides train.json; the noise file it
                # writes carries them to inference
                knobs = {k: v for k, v in spec.items() if k not in ("bundle", "poison", "family", "strength")}
                extra = grid.get("em_train_overrides", {}) if spec["poison"].startswith("em") else {}
                _bundle(spec.get("bundle", "ue_natural"), "train", poison=spec["poison"], ckpt_dir=str(models),
                        seed=seed, **{**extra, **knobs})
                _bundle(spec.get("bundle", "ue_natural"), "inference", poison=spec["poison"], ckpt_dir=str(models),
                        output_dir=str(src), max_train=n_train, seed=seed)
        models = work / "purifiers" / attack
        for defence in defences:
            todo = [s for s in seeds if (attack, defence, s) not in done]
            if not todo:
                continue
            t0 = time.time()
            if defence == "none":
                train_dir = src
            else:
                train_dir = work / "defended" / attack / defence
                # a grid defence may be a variant of a bundle defence: {"defence": "dvae", "overrides": {...}}
                dspec = grid["defences"][defence]
                base, knobs = dspec.get("defence", defence), dict(dspec.get("overrides", {}))
                for k, v in knobs.items():
                    if v == "@validation":
                        if validation is None:
                            raise SystemExit(f"defence {defence} uses '@validation': pass --validation N")
                        knobs[k] = str(validation)
                ckpt = models if not knobs else models / defence
                # for a cell whose data an earlier seed's victim used, both bundles find their work done and skip it
                if base in ("vae", "dvae_stage1", "dvae"):
                    _bundle("dvae_natural", "train", defence="dvae" if base != "vae" else "vae",
                            dataset_dir=str(src), ckpt_dir=str(ckpt),
                            max_train=int(grid.get("purifier_max_train", n_train)),
                            epochs=int(grid["purifier_epochs"]), seed=seed, **knobs)
                _bundle("dvae_natural", "inference", defence=base, dataset_dir=str(src), ckpt_dir=str(ckpt),
                        output_dir=str(train_dir), max_train=n_train, seed=seed, **knobs)
            for victim_seed in todo:
                out = work / "victims" / attack / (defence if victim_seed == seed else f"{defence}_seed{victim_seed}")
                ev = VictimEvaluation(
                    dataset_dir=clean, poisoned_dirs={f"{attack}/{defence}": train_dir}, output_dir=out,
                    network_factory=lambda: SmallResNet(2, 1, 10, widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1)),
                    epochs=epochs, max_train=n_train, max_test=int(grid.get("max_test", 0)) or None, train_clean=False,
                    device="cuda" if torch.cuda.is_available() else "cpu", seed=victim_seed,
                )
                acc = ev.run()[f"{attack}/{defence}"]
                new.append({"attack": attack, "defence": defence, "clean_test_acc": f"{acc:.4f}", "n_train": n_train,
                             "victim_epochs": epochs, "train_dir": str(train_dir), "seconds": f"{time.time() - t0:.0f}",
                             "victim_seed": victim_seed})
                _record(new, work, grid)
                print(f"[matrix] {attack} x {defence} (victim seed {victim_seed}): clean test accuracy {acc * 100:.2f}%",
                      flush=True)
                t0 = time.time()
    if rows or new:
        _record(new, work, grid)
        print((work / "matrix.md").read_text())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
