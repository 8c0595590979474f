"""Benchmark: protecting a dataset with a trained UMed generator versus learning per-sample error-minimizing noise.

Issue bar: the generator is >= 20x faster than per-sample EM noise (at equal protection). Both protect the same cases
(the training split of a medical sample dataset) under the same budget in one run:

- generator: ``UMedProtector.protect`` per case (read, window, forward, map back, round, metrics), weights loaded;
  a fresh generator is timed unless ``--checkpoint`` is given (weights do not change the cost);
- per-sample EM: the bundle's own baseline (``train.json`` + ``samplewise_train.json``, instantiated by MONAI's
  ConfigParser): ``--rounds`` min-min rounds of ``pgd_steps`` PGD steps over every case plus ``train_steps`` surrogate
  steps, timed per round. The documented baseline run needed 10 rounds and had not reached its 99 % stop.

    python scripts/bench_protect_vs_em.py --rounds 2 --threads 2
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mni152_tissue_2d")
    ap.add_argument("--spatial_dims", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="EM rounds to time")
    ap.add_argument("--reference_rounds", type=int, default=10, help="rounds of the documented baseline run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoint", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from ignite.engine import Events
    from monai.bundle import ConfigParser

    from trust_monai.data import load_datalist, num_classes, prepare
    from trust_monai.data.io import read_image
    from trust_monai.engines.case_writer import read_case_label
    from trust_monai.networks.umed_generator import UMedGenerator
    from trust_monai.protect.umed import UMedProtector

    root = str(prepare(args.dataset))
    cases = load_datalist(root, "training")
    k = num_classes(root)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()},"
          f" {args.dataset}: {len(cases)} training cases, {k} classes")

    # generator: protect every case once (the cost a user pays per dataset once the generator is trained)
    prot = UMedProtector(UMedGenerator(args.spatial_dims, num_classes=k), checkpoint=args.checkpoint, num_classes=k)
    t0 = time.perf_counter()
    for entry in cases:
        image, meta = read_image(entry["image"])
        label, _ = read_case_label(entry, image, meta, "bench")
        prot.protect(image, label, entry.get("modality") or "MR", step=meta.value_step)
    t_gen = time.perf_counter() - t0

    # per-sample EM: the bundle's baseline trainer, timed round by round
    parser = ConfigParser()
    parser.read_config(["bundles/umed/configs/train.json", "bundles/umed/configs/samplewise_train.json"])
    parser.update({"dataset_name": args.dataset, "spatial_dims": args.spatial_dims, "epochs": args.rounds,
                   "stop_accuracy": 1.1, "progress": False})
    trainer = parser.get_parsed_content("train#trainer")
    starts, rounds = [], []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: starts.append(time.perf_counter()))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: rounds.append(time.perf_counter() - starts[-1]))
    trainer.run()
    per_round = statistics.median(rounds)
    t_em = per_round * args.reference_rounds
    print(f"generator: {t_gen:.2f} s for {len(cases)} cases ({t_gen / len(cases) * 1000:.0f} ms per case)")
    print(f"per-sample EM: {per_round:.1f} s per round (rounds timed: {', '.join(f'{r:.1f}' for r in rounds)});"
          f" {args.reference_rounds} rounds = {t_em:.0f} s")
    print(f"ratio (EM {args.reference_rounds} rounds / generator): {t_em / t_gen:.0f}x;"
          f" one EM round alone / generator: {per_round / t_gen:.1f}x")


if __name__ == "__main__":
    main()
