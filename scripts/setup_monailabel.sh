#!/usr/bin/env bash
# Set up the separate environment of the MONAI Label app (trust_monai/label/): MONAI Label 0.8.5 needs pydicom < 3,
# the main environment needs pydicom >= 3, so the app gets its own venv. Idempotent: a second run only checks.
# Venv folder: TRUST_MONAI_LABEL_VENV (default .venv-monailabel in the repository root).
#
# MONAI Label 0.8.5 declares caps that no longer resolve together with current packages (pydicom-seg 0.4.1 wants
# pydicom < 3, numpy < 2 and jsonschema < 4; numpymaxflow wants numpy < 2; it also pulls sam2, mlflow and openslide,
# which this app never imports). So monailabel and pydicom-seg install with --no-deps and the packages the server
# imports install by name with the pins that work (pydicom 2.4.5, dicomweb-client 0.60.1, pynetdicom 2.1.1).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TRUST_MONAI_LABEL_VENV:-$PWD/.venv-monailabel}"
PY="${PYTHON:-python3}"

# one build at a time (parallel test workers, two shells): the others wait, then find it up to date
mkdir -p "$VENV"
exec 9>"$VENV/.setup.lock"
flock 9
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup_monailabel] creating venv $VENV"
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.trust_monai_label_setup"
WANT="$(sha256sum pyproject.toml scripts/setup_monailabel.sh | sha256sum | cut -c1-16)"
CHECK="import monailabel, pydicom, monai, torch, timm, itk, trust_monai.label.service; assert pydicom.__version__.startswith('2.')"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && "$VENV/bin/python" -c "$CHECK" 2>/dev/null; then
    echo "[setup_monailabel] environment up to date ($VENV)"
    exit 0
fi
PIP=("$VENV/bin/python" -m pip install -q)
"${PIP[@]}" --upgrade pip
# These two torch versions lie on this machine's disk; pip takes them from there (others download gigabytes). It is
# the CUDA build (with its nvidia-* wheels, most of the venv's ~8 GB): the CPU torch wheel here has no matching
# torchvision (the PyPI torchvision links libtorch_cuda), and timm needs torchvision.
TORCH=("torch==2.14.1" "torchvision==0.29.1")
"${PIP[@]}" "${TORCH[@]}"
# MONAI Label and pydicom-seg without their stale caps; then what their import chains and the server need.
"${PIP[@]}" --no-deps "monailabel==0.8.5" "pydicom-seg==0.4.1"
"${PIP[@]}" \
    "${TORCH[@]}" \
    "monai[ignite,nibabel,itk,skimage,tqdm,psutil,pillow,fire]==1.6.1" \
    "pydicom==2.4.5" "dicomweb-client==0.60.1" "pynetdicom==2.1.1" "SimpleITK" "jsonschema>=4.20" \
    "uvicorn>=0.29.0" "pydantic>=2.7.0" "pydantic-settings>=2.2.1" "python-dotenv>=1.0.1" "fastapi>=0.110.2" \
    "python-multipart>=0.0.9" "httpx>=0.27.0" "schedule>=1.2.1" "timeloop>=1.0.2" "expiringdict>=1.2.2" \
    "expiring_dict>=1.1.0" "cachetools>=5.3.3" "watchdog>=4.0.0" "pynrrd>=1.0.0" "einops>=0.7.0" "pyyaml>=6.0.1" \
    "filelock>=3.11.0" "passlib>=1.7.4" "pyjwt>=2.8.0" "bcrypt>=4.1.2" "shapely>=2.0.4" "requests>=2.31.0" \
    "requests-toolbelt>=1.0.0" "urllib3>=2.2.1" "scikit-learn" "scipy" "google-auth>=2.29.0" "girder-client>=3.2.3" \
    "timm>=1.0" "matplotlib>=3.8" "scikit-image>=0.24" "tqdm>=4.66" "numpy>=1.26"
# trust_monai itself (editable); --no-deps because its pydicom >= 3 pin is the one thing this venv must not have.
"${PIP[@]}" --no-deps -e .
"$VENV/bin/python" -c "$CHECK"
echo "$WANT" > "$STAMP"
echo "[setup_monailabel] ready: $VENV"
