#!/usr/bin/env bash
# Audit the pinned lock for known vulnerabilities: pip-audit --strict on requirements.txt.
#
# --strict: a package that cannot be audited is a failure, not a silent skip (without it,
#   pip-audit prints "No known vulnerabilities found" and exits 0 even when it audited nothing).
# --no-deps --disable-pip: the lock is complete and pinned (uv pip compile), so pip-audit audits
#   exactly those versions instead of resolving them again in a throw-away pip environment.
# pip-audit lives in its own venv under the state folder so it never touches .venv or the lock.
# Extra arguments go to pip-audit (e.g. `-s osv`, `--format json -o audit.json`).
set -euo pipefail
cd "$(dirname "$0")/.."
PIP_AUDIT_VERSION=2.10.1
TOOLS="${MLOPS_STATE_URI:-$PWD/.state}/tools/pip-audit"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
if ! "$TOOLS/bin/pip-audit" --version 2>/dev/null | grep -qF "$PIP_AUDIT_VERSION"; then
  rm -rf "$TOOLS"
  "$PY" -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check "pip-audit==$PIP_AUDIT_VERSION"
fi
exec "$TOOLS/bin/pip-audit" --strict --no-deps --disable-pip --progress-spinner off \
  -r requirements.txt "$@"
