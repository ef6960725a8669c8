#!/usr/bin/env bash
# The GPU check on a bare CUDA machine: install the wheels carried in .whl/ (built on the dev machine
# with `.venv/bin/python benchmarks/gpu/wheels.py`), then run check.py, which writes OUT.json after
# every phase. The whole run is capped below the device tool's 10-minute limit per command.
#
#   bash benchmarks/gpu/run.sh OUT.json [check.py options]
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: bash benchmarks/gpu/run.sh OUT.json [check.py options]}
shift
PY=${PYTHON:-python3}
"$PY" benchmarks/gpu/wheels.py --verify
site=${SPECTRA_SITE:-/tmp/spectra-site}
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
exec timeout --signal=TERM --kill-after=20 "${SPECTRA_CHECK_TIMEOUT:-560}" "$PY" benchmarks/gpu/check.py "$out" "$@"
