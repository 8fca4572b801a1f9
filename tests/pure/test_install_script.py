"""host/install.sh: stops with a message naming the package pip could not install; honours COMFYUI_PATH."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_install(env_extra: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("COMFYUI_PATH", "DA_HOST_DIR")}
    return subprocess.run(["bash", str(REPO / "host" / "install.sh")], capture_output=True, text=True,
                          env={**env, **env_extra}, timeout=60)


def test_a_package_pip_cannot_install_is_named(tmp_path):
    # a stand-in venv whose pip fails the way pip does when a registry lacks a release
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\necho 'ERROR: Could not find a version that satisfies the requirement torchsde==99 (from versions: none)'\n"
                      "echo 'ERROR: No matching distribution found for torchsde==99'\nexit 1\n")
    python.chmod(0o755)
    result = run_install({"DA_HOST_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert "pip could not install torchsde==99" in result.stderr
    assert not (tmp_path / ".installed").exists()  # no stamp: the next run tries again


def test_comfyui_path_is_used_instead_of_installing(tmp_path):
    (tmp_path / "main.py").write_text("")
    result = run_install({"COMFYUI_PATH": str(tmp_path), "DA_HOST_DIR": str(tmp_path / "host")})
    assert result.returncode == 0 and "using your ComfyUI" in result.stdout
    assert not (tmp_path / "host").exists()


def test_comfyui_path_without_comfyui_is_refused(tmp_path):
    result = run_install({"COMFYUI_PATH": str(tmp_path)})
    assert result.returncode != 0 and "has no main.py" in result.stderr
