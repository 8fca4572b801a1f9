"""Faults of the host scripts: a port in use is reported at once; a server that dies shows its log."""
from __future__ import annotations

import time

import pytest

from comfy_server import ComfyServer

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
