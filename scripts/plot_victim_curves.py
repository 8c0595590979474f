"""One figure of victim learning curves from several ``ue_natural`` / ``dvae_natural`` evaluation folders.

Each ``FOLDER[,FOLDER...]=TITLE`` is one panel: ``evaluate.json`` output folders (their ``eval/curves.csv``, merged)
and a title, e.g. the victim and seed; conditions (clean, each poison) get the same colour in every panel. Prints
the final and best clean test accuracy of every curve as a Markdown table, so the figure and the docs' table come
from one read.

    python scripts/plot_victim_curves.py --out curves.png /runs/eval_resnet_s0="ResNet, seed 0" /runs/eval_cnn_s0="CNN"
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path


def read_curves(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """``{condition: [(epoch, test accuracy), ...]}`` from ``folder/eval/curves.csv`` (or ``folder/curves.csv``)."""
    path = folder / "eval" / "curves.csv"
    path = path if path.is_file() else folder / "curves.csv"
    if not path.is_file():
        raise SystemExit(f"{folder}: no eval/curves.csv (run evaluate.json with --output_dir {folder} first)")
    curves: dict[str, list[tuple[int, float]]] = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            curves[row["condition"]].append((int(row["epoch"]), 100 * float(row["test_acc"])))
    return dict(curves)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="FOLDER[,FOLDER...]=TITLE, one panel each")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--title", default="clean test accuracy of victims trained on each copy")
    parser.add_argument("--cols", type=int, default=4, help="panels per row")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = []
    for run in args.runs:
        folders, _, title = run.partition("=")
        curves: dict[str, list[tuple[int, float]]] = {}
        for folder in folders.split(","):
            curves.update(read_curves(Path(folder)))
        data.append((title or Path(folders.split(",")[0]).name, curves))
    names = list(dict.fromkeys(c for _, curves in data for c in curves))
    colours = {c: plt.cm.tab10(i % 10) for i, c in enumerate(names)}
    cols = max(1, min(args.cols, len(data)))
    rows = -(-len(data) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.1 * rows + 0.6), squeeze=False, sharey=True)
    axes = axes.ravel()
    for ax in axes[len(data):]:
        ax.set_visible(False)
    print("| run | condition | accuracy per epoch (%) | final | best |\n|---|---|---|---|---|")
    for ax, (title, curves) in zip(axes, data):
        for name, points in curves.items():
            epochs, acc = zip(*points)
            ax.plot(epochs, acc, marker="o", ms=3, color=colours[name], label=name)
            print(f"| {title} | {name} | {', '.join(f'{a:.1f}' for a in acc)} | **{acc[-1]:.2f}** | {max(acc):.2f} |")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    for ax in axes[::cols]:
        ax.set_ylabel("clean test accuracy (%)")
    handles = [plt.Line2D([], [], color=colours[n], marker="o", ms=3) for n in names]
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 6), frameon=False)
    fig.suptitle(args.title, fontsize=11)
    fig.tight_layout(rect=(0, 0.6 / (3.1 * rows + 0.6), 1, 0.95))
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(out)  # atomic: a half-written PNG never replaces a good one
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
