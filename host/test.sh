#!/usr/bin/env bash
# The whole test suite: installs the host ComfyUI and Chromium if needed, then runs pure, in-process
# host, server and real-browser tests. Extra arguments go to pytest (e.g. host/test.sh tests/pure -k euler).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/install.sh"
"$here/install_browser.sh"  # headless Chromium for tests/browser/ (Debian package; no-op when present)
"$here/install_frontend.sh"  # the newest ComfyUI frontend, the browser tests' second frontend (cached)
py="$(cd "$here" && python3 -c 'import hostenv; print(hostenv.python())')"
cd "$(dirname "$here")"
exec "$py" -m pytest "${@:-tests}"
