#!/usr/bin/env bash
# Fresh machine to first result: set up, prepare the offline MNI152 tissue data, and run the UMed bundle end to end
# (learn the protection generators, protect the dataset, train a victim on protected vs clean data).
# Sized to finish in minutes on 2 CPU cores; the full-size commands are in bundles/umed/docs/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${TRUST_MONAI_VENV:-$PWD/.venv}"
PY="$VENV/bin/python"
OUT="${1:-$PWD/outputs/quickstart}"
mkdir -p "$OUT"

echo "[quickstart] preparing offline sample data"
DATA="$("$PY" -m trust_monai data prepare mni152_tissue_2d | tail -n 1)"
echo "[quickstart] dataset: $DATA"

run() { "$PY" -m monai.bundle run --config_file "bundles/umed/configs/$1.json" --dataset_dir "$DATA" \
    --ckpt_dir "$OUT/models" "${@:2}"; }

echo "[quickstart] 1/3 learning UMed generators"
run train --epochs "${QUICKSTART_EPOCHS:-5}" --patch_size "[96,96]" --num_samples 2 --batch_size 8
echo "[quickstart] 2/3 protecting the dataset"
run inference --output_dir "$OUT/protected"
echo "[quickstart] 3/3 training a victim on protected and on clean data"
run evaluate --output_dir "$OUT/eval" --epochs "${QUICKSTART_VICTIM_EPOCHS:-10}" --victims "['unet']" \
    --patch_size "[96,96]" --batch_size 8

echo
echo "[quickstart] done"
echo "  protected dataset : $OUT/protected   (manifest: $OUT/protected/manifest.json)"
echo "  evaluation report : $OUT/eval/metrics.md, $OUT/eval/dice.png, $OUT/eval/examples.png"
cat "$OUT/eval/metrics.md"
