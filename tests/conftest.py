"""Test harness, three layers (see tests/README.md):

- pure: the torch-only rooms, imported as the package `diffusion_anatomy` without ComfyUI;
- host: ComfyUI's own modules imported in-process once per run (fixture `comfy`), for parity;
- server: one real ComfyUI server per run with the pack linked in (fixture `server`).
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# tests/ (support: what only tests need), generate/ (the generators whose output tests check), harness/: the pack
# imported as `diffusion_anatomy` without running its __init__ (so the pure rooms load with torch alone; ComfyUI
# imports the repo root as a package named after its folder), hostenv, comfy_server, browser
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "generate"), str(ROOT / "harness")]

import hostenv  # noqa: E402  (harness/hostenv.py: where the host ComfyUI lives)


def pytest_configure(config):
    """Under pytest-xdist (`-n N`) each worker runs its own session: its own `comfy` import, its own server on a
    free port with its own work folder (tmp_path_factory is per worker), its own Chromium. The cores are shared
    out so that N workers and their servers do not oversubscribe them (torch's default is one thread per core,
    and on a 2-core machine two workers at two threads each spend their time spinning on each other)."""
    if not hasattr(config, "workerinput"):  # the run's own (an xdist worker inherits its controller's): servers of
        # this run share the Sampler Lab's references (nodes/lab_nodes.py reference_store), no run sees another's
        os.environ["DA_LAB_REFERENCES"] = tempfile.mkdtemp(prefix="da-lab-references-")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        os.environ.setdefault("OMP_NUM_THREADS", threads)  # read by torch here and by the servers this worker starts
        os.environ.setdefault("MKL_NUM_THREADS", threads)


# Under xdist the longest units go out first (longest-processing-time-first: a long unit started last would
# leave one worker running alone at the end), in the order of the time each took in a two-worker run from a fresh
# clone (one torch thread per worker, tests/README.md). Only the order changes, never the tests.
LONGEST_FIRST = ("tests/browser 1.58", "tests/browser 1.32", "tests/pure/test_embedded_draws.py", "tests/pure/test_lab.py",
                 "tests/server/test_model_patches.py", "tests/host/test_anatomy_attention.py",
                 "tests/server/test_sampler_lab.py", "tests/host/test_anatomy_attention_embedded.py")


def unit_of(nodeid: str) -> str:
    """The unit a test is scheduled in under xdist: its file, or for the browser tests their frontend (1.32; 1.58
    with and without the Vue renderer, which share a server): one worker starts only the servers it uses."""
    path = nodeid.split("::", 1)[0]
    if not path.startswith("tests/browser/"):
        return path
    return "tests/browser 1.32" if nodeid.rpartition("[")[2].startswith("1.32") else "tests/browser 1.58"


def pytest_collection_modifyitems(config, items):
    if not hasattr(config, "workerinput"):  # one process: the order the files were collected in
        return
    rank = {unit: k for k, unit in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(unit_of(item.nodeid), len(rank)))  # stable: the rest keep their order


def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist (host/test.sh, two workers by default) each file's tests run on one worker, its module
    fixtures built once, and the browser tests of one frontend on one worker: they share its server and one
    Chromium, stopped after the last of them (tests/browser/conftest.py). The units go out in the order of the
    workers' collection: the longest first (pytest_collection_modifyitems), then the rest as collected. (xdist's own `--dist loadgroup` names each
    test `<id>@<group>` through `item._nodeid`, which pytest 9 no longer reads: every test was a group of its own
    and a file's module fixtures were built on each worker.)"""
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid)

    config.option.loadscopereorder = False
    return FileScheduling(config, log)


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


@pytest.fixture(scope="session")
def sd15_small(comfy) -> str:
    """File name of a small seeded random SD1.5-layout checkpoint (SD1.5's widths, VAE and CLIP; a U-Net of two
    levels, support/checkpoints.py `sd15_small_config`) that core's and the pack's loaders both read as SD1.5: for
    tests of the pipeline, the nodes and their errors, where the U-Net's full depth is not what is tested."""
    from support.checkpoints import sd15_small_checkpoint

    return sd15_small_checkpoint(comfy).name


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
