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
