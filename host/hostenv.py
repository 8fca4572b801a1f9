"""Where the host ComfyUI and its Python live (stdlib only; used by the scripts and the tests).

- `COMFYUI_PATH`: a user's own ComfyUI checkout; then the current Python (or `DA_PYTHON`) runs it.
- otherwise the pinned ComfyUI that host/install.sh puts in `DA_HOST_DIR` (default: <repo>/.host).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def host_dir() -> Path:
    return Path(os.environ.get("DA_HOST_DIR", REPO / ".host")).resolve()


def comfyui_dir() -> Path:
    if os.environ.get("COMFYUI_PATH"):
        return Path(os.environ["COMFYUI_PATH"]).resolve()
    return host_dir() / "ComfyUI"


def python() -> str:
    if os.environ.get("DA_PYTHON"):
        return os.environ["DA_PYTHON"]
    if os.environ.get("COMFYUI_PATH"):
        return sys.executable
    return str(host_dir() / "venv" / "bin" / "python")


# The newest ComfyUI frontend the pack is tested on besides the pinned one (host/constraints.txt pins
# comfyui-frontend-package for the server; this one is served with --front-end-root).
NEWEST_FRONTEND = "1.58.1"


def frontends_dir() -> Path:
    """Where host/install_frontend.sh unpacks frontend packages: DA_FRONTENDS_DIR, else <host dir>/frontends."""
    return Path(os.environ.get("DA_FRONTENDS_DIR", host_dir() / "frontends")).resolve()


def frontend_root(version: str = NEWEST_FRONTEND) -> Path:
    """The static folder of comfyui-frontend-package==version, as --front-end-root wants it."""
    return frontends_dir() / version / "comfyui_frontend_package" / "static"

