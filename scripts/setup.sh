#!/usr/bin/env bash
# Creates (or reuses) the project virtualenv and prints its path on the last line.
# The venv is cached under ~/.cache/roadminer keyed by a hash of pyproject.toml, so repeated runs
# (CI included) skip the multi-GB torch install when nothing changed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${ROADMINER_EXTRAS:-dev,train,cpu,vlm}"
key=$(cat "$here/pyproject.toml" "$here/scripts/setup.sh" | sha256sum | cut -c1-16)
venv="${ROADMINER_VENV:-$HOME/.cache/roadminer/venv-$key-${extras//,/_}}"
if [ ! -x "$venv/bin/roadminer" ] || [ ! -f "$venv/.complete" ]; then
  echo "[setup] creating $venv (first run installs torch; this takes several minutes)" >&2
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >&2
  case "$(uname -m)" in
    aarch64|arm64) "$venv/bin/pip" install -q "torch==2.9.1" "torchvision==0.24.1" >&2 ;;
    *) "$venv/bin/pip" install -q "torch==2.14.1" "torchvision==0.29.1" >&2 ;;
  esac
  "$venv/bin/pip" install -q -e "$here[$extras]" >&2
  touch "$venv/.complete"
else
  # Editable install: only re-link if the checkout moved (CI clones to a new folder).
  if ! "$venv/bin/python" -c "import roadminer,sys; sys.exit(0 if roadminer.__file__.startswith('$here/') else 1)" 2>/dev/null; then
    "$venv/bin/pip" install -q --no-deps -e "$here" >&2
  fi
fi
echo "$venv"
