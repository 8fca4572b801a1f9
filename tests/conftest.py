"""Test harness, three layers (see tests/README.md):

- pure: the torch-only rooms, imported as the package `diffusion_anatomy` without ComfyUI;
- host: ComfyUI's own modules imported in-process once per run (fixture `comfy`), for parity;
- server: one real ComfyUI server per run with the pack linked in (fixture `server`).
"""
from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACK = "diffusion_anatomy"
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "host"))

# The repo root is the pack (ComfyUI imports it as a package named after its folder). Tests import
# it as `diffusion_anatomy` without running its __init__, so the pure rooms load with torch alone.
if PACK not in sys.modules:
    _pack = types.ModuleType(PACK)
    _pack.__path__ = [str(ROOT)]
    _pack.__file__ = str(ROOT / "__init__.py")
    sys.modules[PACK] = _pack

import hostenv  # noqa: E402  (host/hostenv.py: where the host ComfyUI lives)


@pytest.fixture(scope="session")
def comfy():
    """ComfyUI's modules, imported in-process once per test run (CPU)."""
    from support.inprocess import load_comfy

    return load_comfy(hostenv.comfyui_dir())


@pytest.fixture(scope="session")
def sd15(comfy) -> str:
    """File name of the seeded random SD1.5 checkpoint (full shapes, LDM layout), generated once."""
    from support.checkpoints import sd15_random_checkpoint

    return sd15_random_checkpoint(comfy).name


def start_server(work: Path, **options):
    """A real ComfyUI server with the pack loaded and the suite's generated models listed
    (`options` go to ComfyServer.start, e.g. front_end_root)."""
    from comfy_server import ComfyServer

    from support.checkpoints import FIXTURES

    for kind in ("loras", "controlnet"):  # generated models land here; the server lists them
        (FIXTURES / kind).mkdir(parents=True, exist_ok=True)
    return ComfyServer.start(work=work, checkpoints=[FIXTURES], loras=[FIXTURES / "loras"],
                             controlnet=[FIXTURES / "controlnet"], **options)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One real ComfyUI server with the pack loaded, for the whole run."""
    srv = start_server(tmp_path_factory.mktemp("comfy"))
    yield srv
    srv.stop()


def pytest_sessionfinish(session, exitstatus):
    """A skipped test is not a pass: under CI any skip fails the run."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if os.environ.get("CI") and skipped and session.exitstatus == 0:
        reporter.write_line(f"CI: {skipped} test(s) skipped; host and server tests must run, not skip", red=True)
        session.exitstatus = 1
