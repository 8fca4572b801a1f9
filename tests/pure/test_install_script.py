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


def run_browser_install(path: str) -> subprocess.CompletedProcess:
    return subprocess.run(["/bin/bash", str(REPO / "host" / "install_browser.sh")], capture_output=True, text=True,
                          env={"PATH": path, "HOME": os.environ.get("HOME", "/root")}, timeout=60)


def test_browser_install_does_nothing_when_chromium_is_there(tmp_path):
    chromium = tmp_path / "chromium"
    chromium.write_text("#!/bin/sh\necho 'Chromium 1.2.3'\n")
    chromium.chmod(0o755)
    result = run_browser_install(f"{tmp_path}:/usr/bin:/bin")
    assert result.returncode == 0 and "Chromium 1.2.3" in result.stdout and "nothing to do" in result.stdout


def test_browser_install_without_chromium_or_apt_says_what_to_install(tmp_path):
    # a PATH with the shell's tools but neither a browser nor apt-get
    for tool in ("id", "mktemp", "head"):
        (tmp_path / tool).symlink_to(f"/usr/bin/{tool}")
    result = run_browser_install(str(tmp_path))
    assert result.returncode != 0 and "install Chromium (package 'chromium')" in result.stderr
