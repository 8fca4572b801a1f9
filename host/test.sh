#!/usr/bin/env bash
# The whole test suite: installs the host ComfyUI if needed, then runs pure, in-process host and
# server tests. Extra arguments go to pytest (e.g. host/test.sh tests/pure -k euler).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/install.sh"
py="$(cd "$here" && python3 -c 'import hostenv; print(hostenv.python())')"
cd "$(dirname "$here")"
exec "$py" -m pytest "${@:-tests}"
