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
# Two pytest-xdist workers by default (DA_TEST_WORKERS=N for N, 0 for one process: -s, --pdb), scheduled by
# tests/conftest.py: a file's tests on one worker, so its module fixtures are built once; the browser tests by frontend;
# the longest files first; each worker has its own server and port and one torch thread. From a fresh clone on the
# 2-core machine: 11 min 38 s with two, 18 min 43 s in one process (tests/README.md). A ComfyUI of your own
# (COMFYUI_PATH) may lack xdist: then one process.
workers=()
n="${DA_TEST_WORKERS:-2}"
"$py" -c 'import xdist' 2>/dev/null && [ "$n" != 0 ] && workers=(-n "$n")
exec "$py" -m pytest "${workers[@]}" "${@:-tests}"
