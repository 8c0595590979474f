"""Protected victim Dice against the budget: UMed's evaluate.json once per epsilon, one picture and one table.

Runs ``bundles/umed/configs/evaluate.json`` with ``--train_on "['protected']"`` for every epsilon (same generator
checkpoint, same victims and seeds) and once with ``--train_on "['clean']"`` for the baseline, each into
``OUT/eps<N>`` / ``OUT/clean``, then writes ``OUT/epsilon_curve.{csv,md,png}``. Finished runs (a ``summary.csv``
present) are not run again, so a killed sweep resumes, and ``--collect`` only redraws from what is there.

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


def read_summary(folder: Path) -> list[dict]:
    with open(folder / "summary.csv") as f:
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
    rows = []
    runs = [("clean", "clean", None)] + [(f"eps{e:g}", "protected", e) for e in args.epsilons]
    for name, trained_on, eps in runs:
        if args.collect and not (out / name / "summary.csv").is_file():
            continue
        extra = ["--train_on", f"['{trained_on}']", *args.extra]
        if eps is not None:
            extra += ["--epsilon", f"${eps}/255"]
        folder = out / name if args.collect else run(args.dataset_dir, args.ckpt_dir, out, name, extra)
        for r in read_summary(folder):
            if r["trained_on"] != trained_on:  # a run made by hand may hold both
                continue
            rows.append({"epsilon_255": 0.0 if eps is None else eps, "victim": r["victim"], "trained_on": r["trained_on"],
                         "seeds": r["seeds"], "dice": float(r["dice"]), "dice_std": r["dice_std"],
                         "reliance": float(r["reliance"])})
    if not rows:
        sys.exit(f"no finished run under {out}")
    write(rows, out)


def write(rows: list[dict], out: Path) -> None:
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
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    for victim in sorted({r["victim"] for r in rows}):
        prot = sorted((r["epsilon_255"], r["dice"]) for r in rows if r["victim"] == victim and r["trained_on"] != "clean")
        clean = [r["dice"] for r in rows if r["victim"] == victim and r["trained_on"] == "clean"]
        line = ax.plot([e for e, _ in prot], [d for _, d in prot], "o-", label=f"{victim}, trained on protected")
        if clean:
            ax.axhline(clean[0], ls="--", color=line[0].get_color(), label=f"{victim}, trained on clean")
    ax.axhline(0.15, ls=":", color="grey", label="bar 0.15")
    ax.set_xscale("log", base=2)
    ticks = sorted({r["epsilon_255"] for r in rows if r["trained_on"] != "clean"})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xlabel("epsilon (/255 of the window)")
    ax.set_ylabel("Dice on clean held-out cases")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "epsilon_curve.png", dpi=120)
    print((out / "epsilon_curve.md").read_text())


if __name__ == "__main__":
    main()
