#!/usr/bin/env bash
# Create .venv and install the pinned requirements plus this project (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
if ! command -v uv >/dev/null; then "$PY" -m pip install --quiet "uv==0.13.8"; fi
[ -x .venv/bin/python ] || uv venv --quiet --python "$PY" .venv
uv pip install --quiet --python .venv/bin/python -r requirements.txt
uv pip install --quiet --python .venv/bin/python --no-deps -e .
echo "install: $(.venv/bin/python --version), $(grep -c '==' requirements.txt) pinned packages"
