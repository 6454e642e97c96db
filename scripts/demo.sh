#!/usr/bin/env bash
# The main job: a miner on the embedded defaults plus the local validator simulator against it.
# With no arguments it uses the real photos in ../shared/data/roadwork-v1 when that folder exists
# (read in place, never copied; the shipped model was trained on them, so the numbers are optimistic),
# and the project's drawn scenes otherwise (cartoons: out of domain for a photo model, so MCC is low).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
venv="$(bash scripts/setup.sh | tail -n 1)"
export HF_HUB_OFFLINE=1 YOLO_OFFLINE=1 YOLO_AUTOINSTALL=False
shared="${ROADMINER_SHARED_DATA:-$here/../shared/data/roadwork-v1}/images"
if [ $# -eq 0 ] && [ -d "$shared/roadwork" ] && [ -d "$shared/no_roadwork" ]; then
  echo "[demo] challenges from real photos in $shared (pass --images DIR or any flag to choose)" >&2
  set -- --images "$shared"
fi
exec "$venv/bin/roadminer" demo "$@"
