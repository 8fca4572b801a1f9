#!/usr/bin/env bash
# The main job: installs the host ComfyUI if needed, starts it with the pack, queues the bundled
# workflow over HTTP and prints the image's path and the UI's URL. See `host/run.sh --help`.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/install.sh"
py="$(cd "$here/../harness" && python3 -c 'import hostenv; print(hostenv.python())')"
exec "$py" "$here/run.py" "$@"
