#!/usr/bin/env bash
# The whole test suite: installs the host ComfyUI and Chromium if needed, runs ruff over the tree, then pure,
# in-process host, server and real-browser tests. Extra arguments go to pytest (e.g. host/test.sh tests/pure -k euler).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/install.sh"
"$here/install_browser.sh"  # headless Chromium for tests/browser/ (Debian package; no-op when present)
py="$(cd "$here/../harness" && python3 -c 'import hostenv; print(hostenv.python())')"
cd "$(dirname "$here")"
# static check first (pyflakes rules, config in pyproject.toml): seconds, and it names the line
"$py" -m ruff check --no-cache .
exec "$py" -m pytest "${@:-tests}"
