#!/usr/bin/env bash
# The main job: a miner on the embedded defaults plus the local validator simulator against it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
venv="$(bash scripts/setup.sh | tail -n 1)"
export HF_HUB_OFFLINE=1 YOLO_OFFLINE=1 YOLO_AUTOINSTALL=False
exec "$venv/bin/roadminer" demo "$@"
