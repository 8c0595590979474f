#!/usr/bin/env bash
# Run the test suite: sets the environment up first, then pytest on 2 workers.
# Default: the fast selection (every bundle still runs end to end on tiny data). TRUST_MONAI_SLOW=1 adds slow tests.
# Extra arguments go to pytest (e.g. bash scripts/test.sh tests/data -x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${TRUST_MONAI_VENV:-$PWD/.venv}"
MARK=(-m "not slow")
if [ "${TRUST_MONAI_SLOW:-0}" = 1 ]; then MARK=(); fi
WORKERS="${TRUST_MONAI_TEST_WORKERS:-2}"
# Each worker gets one intra-op thread so two workers share two cores without oversubscription.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
set +e
"$VENV/bin/python" -m pytest -n "$WORKERS" --dist loadgroup "${MARK[@]}" --durations=15 "$@"
rc=$?
set -e
if [ "$rc" = 5 ]; then echo "no tests collected" >&2; exit 1; fi
exit "$rc"
