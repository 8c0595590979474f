#!/usr/bin/env bash
# Fresh machine to first result: set up, prepare the offline lesion task (SYNTHETIC lesions in the real MNI152
# template), and run UMed end to end: learn the protection, protect the training split, then train a victim on the
# clean and on the protected copy and score both on clean held-out slices.
# Sized for about 10 minutes on 2 idle CPU cores; the full-size commands are in bundles/umed/docs/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${TRUST_MONAI_VENV:-$PWD/.venv}"
PY="$VENV/bin/python"
OUT="${1:-$PWD/outputs/quickstart}"
mkdir -p "$OUT"

echo "[quickstart] preparing the offline lesion task (synthetic lesions in the MNI152 template)"
DATA="$("$PY" -m trust_monai data prepare mni152_lesions_2d | tail -n 1)"
echo "[quickstart] dataset: $DATA"

run() { "$PY" -m monai.bundle run --config_file "bundles/umed/configs/$1.json" --dataset_dir "$DATA" \
    --ckpt_dir "$OUT/models" "${@:2}"; }

echo "[quickstart] 1/3 learning the protection (stops once fresh networks learn protected data far faster than clean)"
run train --epochs "${QUICKSTART_EPOCHS:-1}" --reinit_every 40 --patch_size "[64,64]" --num_samples 2 --batch_size 8 \
    --max_cases 500
echo "[quickstart] 2/3 protecting the training split"
run inference --output_dir "$OUT/protected"
echo "[quickstart] 3/3 training a victim on protected and on clean data"
run evaluate --output_dir "$OUT/eval" --epochs "${QUICKSTART_VICTIM_EPOCHS:-6}" --max_cases 500 --victims "['unet']" \
    --victim_seeds "[0]" --eval_every 2 --patch_size "[64,64]" --batch_size 8

echo
echo "[quickstart] done"
echo "  protected dataset : $OUT/protected   (manifest: $OUT/protected/manifest.json)"
echo "  evaluation report : $OUT/eval/summary.md, $OUT/eval/dice.png, $OUT/eval/curves.png, $OUT/eval/examples.png"
cat "$OUT/eval/summary.md"
