"""Faults of the host scripts: a port in use is reported at once; a server that dies shows its log.
Under load: 60 prompts in a row keep the server's memory flat; 4 clients at once all get their pictures."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from comfy_server import ComfyServer
from diffusion_anatomy.embedded import LOADER_NAME as TINY
from support.graphs import image, pack_graph

pytestmark = pytest.mark.server


def test_port_in_use_is_reported_not_hung_on(server, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=f"port {server.port} .* already in use"):
        ComfyServer.start(tmp_path, port=server.port)
    assert time.monotonic() - t0 < 5


def test_server_that_fails_to_start_reports_its_log(tmp_path, monkeypatch):
    # a Python that exits at once with a message stands in for a broken ComfyUI install
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'ImportError: no module named torch (simulated)'\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("DA_PYTHON", str(fake))
    with pytest.raises(RuntimeError, match=r"(?s)exited with code 3.*simulated"):
        ComfyServer.start(tmp_path / "work")


def resident_bytes(pid: int) -> int:
    """VmRSS of a process, from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def tiny_prompt(seed: int) -> dict:
    return pack_graph(TINY, "euler", "karras", steps=2, seed=seed)


def test_soak_of_60_prompts_keeps_memory_flat(server):
    """Resident memory of the server grows by at most 5% between prompt 10 (caches warm) and prompt 60."""
    rss = {}
    for i in range(1, 61):
        assert image(server, tiny_prompt(seed=10_000 + i)).shape == (64, 64, 3)
        if i in (10, 60):
            rss[i] = resident_bytes(server.process.pid)
    growth = rss[60] / rss[10] - 1
    print(f"server RSS after prompt 10: {rss[10] / 2**20:.1f} MiB, after 60: {rss[60] / 2**20:.1f} MiB, growth {growth:+.2%}")
    assert growth <= 0.05, rss


def test_four_clients_five_prompts_each_all_complete_with_distinct_pictures(server):
    def client(k: int) -> list:
        return [image(server, tiny_prompt(seed=20_000 + 10 * k + j)) for j in range(5)]

    with ThreadPoolExecutor(4) as pool:
        pictures = [p for per_client in pool.map(client, range(4)) for p in per_client]
    assert len(pictures) == 20 and all(p.shape == (64, 64, 3) for p in pictures)
    assert len({p.tobytes() for p in pictures}) == 20  # 20 seeds, 20 different pictures: no answer went to the wrong client
