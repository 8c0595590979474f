"""Protected victim Dice against the budget: UMed's evaluate.json once per epsilon, one picture and one table.

Runs ``bundles/umed/configs/evaluate.json`` with ``--train_on "['protected']"`` for every epsilon (same generator
checkpoint, same victims and seeds) and once with ``--train_on "['clean']"`` for the baseline, each into
``OUT/eps<N>`` / ``OUT/clean``, then writes ``OUT/epsilon_curve.{csv,md,png}``: one row and one dot per victim and
seed (the line is their mean), and beside it every victim's held-out Dice over its training epochs, so a reader sees
both the budget curve and that the victims had converged. Finished runs (a ``summary.csv`` present) are not run again,
so a killed sweep resumes, and ``--collect`` only redraws from what is there.

    python scripts/umed_epsilon_sweep.py --dataset_dir DIR --ckpt_dir CK --out OUT --epsilons 2 4 8 16 \
        -- --victims "['unet']" --victim_seeds "[0]" --epochs 60
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(dataset_dir: str, ckpt_dir: str, out: Path, name: str, extra: list[str]) -> Path:
    target = out / name
    if (target / "summary.csv").is_file():
        return target
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(ROOT / "bundles/umed/configs/evaluate.json"),
           "--dataset_dir", dataset_dir, "--ckpt_dir", ckpt_dir, "--output_dir", str(target), *extra]
    print("[sweep]", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return target


def read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset_dir", required=True)
    p.add_argument("--ckpt_dir", required=True, help="holds generator_<N>d.pt")
    p.add_argument("--out", required=True)
    p.add_argument("--epsilons", type=float, nargs="+", default=[2, 4, 8, 16], help="in 1/255 of the window")
    p.add_argument("--collect", action="store_true", help="only draw from finished runs")
    p.add_argument("extra", nargs="*", help="after --: more evaluate.json overrides")
    args = p.parse_args()
    out = Path(args.out)
    rows, curves = [], []
    runs = [("clean", "clean", None)] + [(f"eps{e:g}", "protected", e) for e in args.epsilons]
    for name, trained_on, eps in runs:
        if args.collect and not (out / name / "summary.csv").is_file():
            continue
        extra = ["--train_on", f"['{trained_on}']", *args.extra]
        if eps is not None:
            extra += ["--epsilon", f"${eps}/255"]
        folder = out / name if args.collect else run(args.dataset_dir, args.ckpt_dir, out, name, extra)
        e = 0.0 if eps is None else eps
        for r in read_csv(folder / "metrics.csv"):  # one row per victim and seed
            if r["trained_on"] != trained_on:  # a run made by hand may hold both
                continue
            rows.append({"epsilon_255": e, "victim": r["victim"], "seed": int(r["seed"]), "trained_on": r["trained_on"],
                         "dice": float(r["dice"]), "hd95": float(r["hd95"]), "reliance": float(r["reliance"])})
        curves += [{**c, "epsilon_255": e} for c in read_csv(folder / "curves.csv") if c["trained_on"] == trained_on]
    if not rows:
        sys.exit(f"no finished run under {out}")
    write(rows, curves, out)


def write(rows: list[dict], curves: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    cols = list(rows[0])
    with open(out / "epsilon_curve.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |" for r in rows]
    (out / "epsilon_curve.md").write_text("\n".join(md) + "\n")
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9.6, 3.6))
    colours = {}
    for victim in sorted({r["victim"] for r in rows}):
        prot = [r for r in rows if r["victim"] == victim and r["trained_on"] != "clean"]
        eps = sorted({r["epsilon_255"] for r in prot})
        mean = [sum(r["dice"] for r in prot if r["epsilon_255"] == e) / sum(r["epsilon_255"] == e for r in prot)
                for e in eps]
        line = ax.plot(eps, mean, "-", label=f"{victim}, trained on protected (mean)")
        colours[victim] = line[0].get_color()
        ax.plot([r["epsilon_255"] for r in prot], [r["dice"] for r in prot], "o", color=colours[victim], ms=4,
                label=f"{victim}, one seed")
        clean = [r["dice"] for r in rows if r["victim"] == victim and r["trained_on"] == "clean"]
        if clean:
            ax.axhline(sum(clean) / len(clean), ls="--", color=colours[victim], label=f"{victim}, trained on clean")
    ax.axhline(0.15, ls=":", color="grey", label="bar 0.15")
    ax.set_xscale("log", base=2)
    ticks = sorted({r["epsilon_255"] for r in rows if r["trained_on"] != "clean"})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xlabel("epsilon (/255 of the window)")
    ax.set_ylabel("Dice on clean held-out cases")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=6)
    # right: colour = budget (clean first), line style = seed, marker = victim
    levels = sorted({c["epsilon_255"] for c in curves})
    markers = {v: m for v, m in zip(sorted({c["victim"] for c in curves}), "o^sv")}
    for key in dict.fromkeys((c["victim"], c["seed"], c["trained_on"], c["epsilon_255"]) for c in curves):
        pts = [c for c in curves if (c["victim"], c["seed"], c["trained_on"], c["epsilon_255"]) == key]
        label = f"{key[0]} seed {key[1]}, " + ("clean" if key[2] == "clean" else f"eps {key[3]:g}")
        ax2.plot([int(c["epoch"]) for c in pts], [float(c["test_dice"]) for c in pts], ["-", "--", "-.", ":"][int(key[1]) % 4],
                 marker=markers[key[0]], ms=3, color=f"C{levels.index(key[3])}", label=label)
    ax2.set_xlabel("victim training epoch")
    ax2.set_ylabel("held-out Dice")
    ax2.set_ylim(0, 1)
    if curves:
        ax2.legend(fontsize=5, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "epsilon_curve.png", dpi=120)
    print((out / "epsilon_curve.md").read_text())


if __name__ == "__main__":
    main()
