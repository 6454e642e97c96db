#!/usr/bin/env bash
# Creates (or reuses) the project virtualenv and prints its path on the last line.
# The venv lives under ~/.cache/roadminer. A stamp holds a hash of pyproject.toml: when it changes, pip
# brings the venv up to date incrementally (torch, the multi-GB part, is installed once), so repeated runs
# and CI skip the heavy install.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${ROADMINER_EXTRAS:-dev,train,cpu,vlm}"
venv="${ROADMINER_VENV:-$HOME/.cache/roadminer/venv-py3-${extras//,/_}}"
key=$(cat "$here/pyproject.toml" "$here/scripts/setup.sh" | sha256sum | cut -c1-16)
stamp="$venv/.roadminer-stamp"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "[setup] creating $venv (first run installs torch; this takes several minutes)" >&2
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >&2
  case "$(uname -m)" in
    aarch64|arm64) "$venv/bin/pip" install -q "torch==2.9.1" "torchvision==0.24.1" >&2 ;;
    *) "$venv/bin/pip" install -q "torch==2.14.1" "torchvision==0.29.1" >&2 ;;
  esac
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$key" ]; then
  echo "[setup] installing roadminer[$extras] into $venv" >&2
  "$venv/bin/pip" install -q -e "$here[$extras]" >&2
  echo "$key" > "$stamp"
elif ! "$venv/bin/python" -c "import roadminer,sys; sys.exit(0 if roadminer.__file__.startswith('$here/') else 1)" 2>/dev/null; then
  # Editable install points at another checkout (CI clones to a new folder): re-link only.
  "$venv/bin/pip" install -q --no-deps -e "$here" >&2
fi
echo "$venv"
