#!/usr/bin/env bash
# The whole test suite: installs the host ComfyUI and Chromium if needed, runs ruff over the tree, then pure,
# in-process host, server and real-browser tests. Extra arguments go to pytest (e.g. host/test.sh tests/pure -k euler).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/install.sh"
"$here/install_browser.sh"  # headless Chromium for tests/browser/ (Debian package; no-op when present)
"$here/install_frontend.sh"  # the newest ComfyUI frontend, the browser tests' second frontend (cached)
py="$(cd "$here/../harness" && python3 -c 'import hostenv; print(hostenv.python())')"
cd "$(dirname "$here")"
# static check first (pyflakes rules, config in pyproject.toml): seconds, and it names the line
"$py" -m ruff check --no-cache .
# DA_TEST_WORKERS=N runs test files on N pytest-xdist workers (scheduled by tests/conftest.py: a
# file's tests on one worker, so its module fixtures are built once; the browser tests together; each worker has its
# own server and port). Default 0: one process, the order the suite was proven in
# (parallel runs were not yet measured faster on 2 cores). A ComfyUI of your own (COMFYUI_PATH) may lack xdist.
workers=()
"$py" -c 'import xdist' 2>/dev/null && [ "${DA_TEST_WORKERS:-0}" != 0 ] && workers=(-n "$DA_TEST_WORKERS")
exec "$py" -m pytest "${workers[@]}" "${@:-tests}"
