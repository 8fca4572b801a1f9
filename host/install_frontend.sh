#!/usr/bin/env bash
# Fetches the newest ComfyUI frontend the browser tests also run on (hostenv.NEWEST_FRONTEND,
# comfyui-frontend-package on PyPI) and unpacks its static folder under <host dir>/frontends/<version>/
# (or $DA_FRONTENDS_DIR), for ComfyUI's --front-end-root. Idempotent: instant when already unpacked.
# The pinned frontend (host/constraints.txt) stays the one the host installs and serves by default.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
say() { printf '[frontend] %s\n' "$*"; }
die() { printf '[frontend] ERROR: %s\n' "$*" >&2; exit 1; }
version="${1:-$(cd "$here" && python3 -c 'import hostenv; print(hostenv.NEWEST_FRONTEND)')}"
root="$(cd "$here" && python3 -c "import hostenv; print(hostenv.frontend_root('$version'))")"
if [ -f "$root/index.html" ]; then
  say "comfyui-frontend-package $version present at $root; nothing to do"
  exit 0
fi
py="$(cd "$here" && python3 -c 'import hostenv; print(hostenv.python())')"
dest="$(dirname "$(dirname "$root")")"
dl="$(mktemp -d -t da-frontend.XXXXXX)"
trap 'rm -rf "$dl"' EXIT
say "downloading comfyui-frontend-package==$version (pip download, no dependencies)"
"$py" -m pip download --disable-pip-version-check --no-deps -q -d "$dl" "comfyui-frontend-package==$version" \
  || die "pip could not download comfyui-frontend-package==$version"
"$py" - "$dl"/comfyui_frontend_package-*.whl "$dl/unpacked" <<'PY'
import sys, zipfile
from pathlib import Path
wheel, dest = sys.argv[1], Path(sys.argv[2])
prefix = "comfyui_frontend_package/static/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            out = dest / name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(z.read(name))
PY
[ -f "$dl/unpacked/comfyui_frontend_package/static/index.html" ] || die "the wheel has no comfyui_frontend_package/static/index.html"
mkdir -p "$(dirname "$dest")"
rm -rf "$dest" && mv "$dl/unpacked" "$dest"  # whole or not at all: a second run finds it complete
say "unpacked comfyui-frontend-package $version at $root"
