#!/usr/bin/env bash
# The test command: sets up the venv, makes sure redis-server exists, runs ruff, the import contracts
# (lint-imports, see [tool.importlinter] in pyproject.toml) and pytest.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
venv="$(bash scripts/setup.sh | tail -n 1)"
if ! command -v redis-server >/dev/null 2>&1; then
  echo "[test] installing redis-server" >&2
  (apt-get install -y -q redis-server >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null))
fi
if ! command -v chromium >/dev/null 2>&1; then
  echo "[test] installing chromium (dashboard browser test)" >&2
  (apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null)) || echo "[test] chromium not installed: its test will skip" >&2
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 YOLO_OFFLINE=1 YOLO_AUTOINSTALL=False
export YOLO_CONFIG_DIR="${YOLO_CONFIG_DIR:-$HOME/.cache/roadminer/yolo}"
mkdir -p "$YOLO_CONFIG_DIR"
"$venv/bin/ruff" check src tests neurons
"$venv/bin/lint-imports" --no-cache
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
