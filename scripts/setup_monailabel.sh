#!/usr/bin/env bash
# Set up the separate environment of the MONAI Label app (trust_monai/label/): MONAI Label 0.8.5 needs pydicom < 3,
# the main environment needs pydicom >= 3, so the app gets its own venv. Idempotent: a second run only checks.
#
#   TRUST_MONAI_LABEL_VENV   the venv folder (default .venv-monailabel in the repository root)
#   TRUST_MONAI_LABEL_BASE   a venv to layer on (default: the main one, ${TRUST_MONAI_VENV:-.venv}, when it has torch,
#                            monai, timm and itk), or "none" for a standalone venv.
#
# Layered (default; about 35 s and 0.4 GB): the new venv's own site-packages hold MONAI Label, pydicom 2.4.5 and the
# server's packages, and a .pth line puts the base venv's site-packages AFTER them, so torch / MONAI / itk / timm come
# from the base (nothing of it is changed) while pydicom 2 shadows the base's pydicom 3.
# Standalone (TRUST_MONAI_LABEL_BASE=none; about 2 min and 7.8 GB): torch 2.14.1 (the CUDA build: the CPU torch wheel
# here has no matching torchvision, and timm needs torchvision), MONAI 1.6.1, itk and the rest in the venv itself.
#
# MONAI Label 0.8.5 declares caps that no longer resolve together with current packages (pydicom-seg 0.4.1 wants
# pydicom < 3, numpy < 2 and jsonschema < 4; numpymaxflow wants numpy < 2; it also pulls sam2, mlflow and openslide,
# which this app never imports). So monailabel and pydicom-seg install with --no-deps (pip then reports those caps as
# conflicts and exits 0) and the packages the server imports install by name with the pins that work
# (pydicom 2.4.5, dicomweb-client 0.60.1, pynetdicom 2.1.1).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${TRUST_MONAI_LABEL_VENV:-$PWD/.venv-monailabel}"
PY="${PYTHON:-python3}"
HEAVY="import torch, torchvision, monai, timm, itk, matplotlib, skimage, nibabel, ignite"
BASE="${TRUST_MONAI_LABEL_BASE:-${TRUST_MONAI_VENV:-$PWD/.venv}}"
# found, not imported (import monai alone takes 8-12 s here); the full import check comes below
FIND="import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in '${HEAVY#import }'.split(', ')))"
if [ "$BASE" != none ] && ! "$BASE/bin/python" -c "$FIND" 2>/dev/null; then
    if [ -n "${TRUST_MONAI_LABEL_BASE:-}" ]; then
        echo "[setup_monailabel] error: TRUST_MONAI_LABEL_BASE=$BASE lacks torch/monai/timm/itk" >&2
        exit 1
    fi
    BASE=none  # no usable main venv: standalone
fi

# one build at a time (parallel test workers, two shells): the others wait, then find it up to date
mkdir -p "$VENV"
exec 9>"$VENV/.setup.lock"
flock 9
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup_monailabel] creating venv $VENV"
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.trust_monai_label_setup"
WANT="$( (sha256sum pyproject.toml scripts/setup_monailabel.sh; echo "$BASE") | sha256sum | cut -c1-16)"
CHECK="$HEAVY, monailabel, pydicom, trust_monai.label.service; assert pydicom.__version__.startswith('2.'), pydicom.__file__"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && "$VENV/bin/python" -c "$CHECK" 2>/dev/null; then
    echo "[setup_monailabel] environment up to date ($VENV, base: $BASE)"
    exit 0
fi
rm -f "$STAMP"
SITE="$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")"
PIP=("$VENV/bin/python" -m pip install -q)
"${PIP[@]}" --upgrade pip
if [ "$BASE" = none ]; then
    rm -f "$SITE/_trust_monai_label_base.pth"
    # These two torch versions lie on this machine's disk; pip takes them from there (others download gigabytes).
    HEAVY_PKGS=("torch==2.14.1" "torchvision==0.29.1" "monai[ignite,nibabel,itk,skimage,tqdm,psutil,pillow,fire]==1.6.1"
                "timm>=1.0" "matplotlib>=3.8" "scikit-image>=0.24" "tqdm>=4.66" "numpy>=1.26")
    echo "[setup_monailabel] standalone venv (torch, MONAI, itk installed here)"
    "${PIP[@]}" "${HEAVY_PKGS[@]}"
else
    "$BASE/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > "$SITE/_trust_monai_label_base.pth"
    HEAVY_PKGS=()
    echo "[setup_monailabel] layered on $BASE (torch, MONAI, itk from there)"
fi
# MONAI Label and pydicom-seg without their stale caps; then what their import chains and the server need.
"${PIP[@]}" --no-deps "monailabel==0.8.5" "pydicom-seg==0.4.1"
"${PIP[@]}" "${HEAVY_PKGS[@]}" \
    "pydicom==2.4.5" "dicomweb-client==0.60.1" "pynetdicom==2.1.1" "SimpleITK" "jsonschema>=4.20" \
    "uvicorn>=0.29.0" "pydantic>=2.7.0" "pydantic-settings>=2.2.1" "python-dotenv>=1.0.1" "fastapi>=0.110.2" \
    "python-multipart>=0.0.9" "httpx>=0.27.0" "schedule>=1.2.1" "timeloop>=1.0.2" "expiringdict>=1.2.2" \
    "expiring_dict>=1.1.0" "cachetools>=5.3.3" "watchdog>=4.0.0" "pynrrd>=1.0.0" "einops>=0.7.0" "pyyaml>=6.0.1" \
    "filelock>=3.11.0" "passlib>=1.7.4" "pyjwt>=2.8.0" "bcrypt>=4.1.2" "shapely>=2.0.4" "requests>=2.31.0" \
    "requests-toolbelt>=1.0.0" "urllib3>=2.2.1" "scikit-learn" "scipy" "google-auth>=2.29.0" "girder-client>=3.2.3"
# trust_monai itself (editable); --no-deps because its pydicom >= 3 pin is the one thing this venv must not have.
"${PIP[@]}" --no-deps -e .
"$VENV/bin/python" -c "$CHECK"
echo "$WANT" > "$STAMP"
echo "[setup_monailabel] ready: $VENV (base: $BASE)"
