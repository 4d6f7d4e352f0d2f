#!/usr/bin/env bash
# The README's screenshots, produced by the end-to-end browser test: it runs a short lifecycle,
# starts `airflow standalone` on it, drives headless Chromium and saves its screenshots; the DAG
# grid after a run and the model page are copied to docs/img/.
# Needs the Debian packages chromium and chromium-driver, and selenium in the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
export MLOPS_UI_ARTIFACTS="${MLOPS_UI_ARTIFACTS:-$PWD/test-artifacts/ui}"
.venv/bin/python -m pytest -q -p no:cacheprovider tests/integration/test_ui_browser.py
mkdir -p docs/img
cp "$MLOPS_UI_ARTIFACTS/03-training-grid.png" docs/img/dag-grid.png
cp "$MLOPS_UI_ARTIFACTS/07-model-page.png" docs/img/model-page.png
echo "docs/img/dag-grid.png and docs/img/model-page.png updated from $MLOPS_UI_ARTIFACTS"
