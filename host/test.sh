#!/usr/bin/env bash
# The whole test suite: installs the host ComfyUI and Chromium if needed, then runs pure, in-process
# host, server and real-browser tests. Extra arguments go to pytest (e.g. host/test.sh tests/pure -k euler).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/install.sh"
"$here/install_browser.sh"  # headless Chromium for tests/browser/ (Debian package; no-op when present)
py="$(cd "$here" && python3 -c 'import hostenv; print(hostenv.python())')"
cd "$(dirname "$here")"
# Independent test files run on pytest-xdist workers (DA_TEST_WORKERS, default 2: this machine's cores; 0 runs
# in one process, for -s or --pdb). --dist loadfile keeps a file's tests on one worker, so its module fixtures
# (a model load, a lab reference) are built once; each worker has its own server and port (tests/conftest.py).
# A ComfyUI of your own (COMFYUI_PATH) runs with your python, which may lack pytest-xdist: then one process.
workers=()
"$py" -c 'import xdist' 2>/dev/null && workers=(-n "${DA_TEST_WORKERS:-2}" --dist loadfile)
exec "$py" -m pytest "${workers[@]}" "${@:-tests}"
