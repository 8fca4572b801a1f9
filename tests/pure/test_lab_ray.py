"""Judged sweeps on Ray (lab/ray_runner.py) against the same sweep in one process; resume; a killed worker; bad input.

One local cluster for the module: a head node started by `ray start --head --block` on loopback only
(Ray's single-machine mode, dashboard off, no usage statistics), joined by the command line
`bench/sampler_lab.py --ray ADDRESS` with two worker processes (actors). Kept small for a 2-core machine:
4 captions in batches of 2, two samplers, two step counts (8 cells).
"""
from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

import ray  # noqa: E402,F401  (the lab's Ray extra, lab/requirements-ray.txt: host/test.sh installs it; missing, these tests fail)

from diffusion_anatomy.embedded import WEIGHTS  # noqa: E402
from diffusion_anatomy.lab import judged_sweep  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, str(ROOT / "bench" / "sampler_lab.py"), "--judged"]
SWEEP = ["--captions", "4", "--batch", "2", "--samplers", "euler,euler_ancestral", "--steps", "3,6"]
LOOPBACK = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(pids: set[int]) -> list[str]:
    """Local addresses the given processes listen on (TCP), from /proc."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            continue
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # LISTEN
                out.append(f[1])
    return out


def descendants(pid: int) -> set[int]:
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        out.add(p)
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        todo += [int(c) for c in children]
    return out


def start_head() -> tuple[subprocess.Popen | None, int, str]:
    """`ray start --head --block` on loopback; (process, port, its output), process None when it did not come up."""
    port = free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    head = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                             "--port", str(port), "--include-dashboard", "false", "--disable-usage-stats", "--num-cpus", "2",
                             "--temp-dir", temp], env={**os.environ, **LOOPBACK}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(head.stdout), daemon=True).start()  # keep the pipe drained
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and head.poll() is None and not any("Ray runtime started" in line for line in lines):
        time.sleep(0.5)
    if head.poll() is None and any("Ray runtime started" in line for line in lines):
        return head, port, "".join(lines)
    head.kill()
    head.wait()
    return None, port, "".join(lines)


@pytest.fixture(scope="module")
def cluster():
    # Ray gives its raylet a fixed 30 s to register (ray/_private/node.py); on a loaded 2-core machine that can
    # pass, and the head then stops itself: try up to three times
    for _ in range(3):
        head, port, output = start_head()
        if head is not None:
            break
    else:
        pytest.fail("the Ray head did not start three times: " + output[-3000:])
    yield f"127.0.0.1:{port}", head
    head.send_signal(signal.SIGTERM)  # --block: the head stops its processes on SIGTERM
    head.wait(timeout=60)


def cli(*args, env=None, timeout=600):
    return subprocess.run([*CLI, *args], env={**os.environ, **LOOPBACK, **(env or {})}, capture_output=True, text=True, timeout=timeout)


def cli_here(capsys, *args) -> tuple[int, str]:
    """The command line in this process (no interpreter start-up): its exit status and standard error."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sampler_lab_cli", ROOT / "bench" / "sampler_lab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_:
        module.run(["--judged", *args])
    return exit_.value.code, capsys.readouterr().err


def rows(out: Path) -> dict:
    """(cell, caption) -> the row without its seconds (a timing, not a result)."""
    with open(out / judged_sweep.RESULTS, newline="") as f:
        return {(*judged_sweep.cell_key(r), r["caption"]): {k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The sweep in this process (the default runner): what Ray must reproduce bit for bit."""
    out = tmp_path_factory.mktemp("single")
    spec = judged_sweep.make_spec(WEIGHTS, "euler,euler_ancestral", "3,6", captions=4, seeds=1, batch=2)
    counts = judged_sweep.run_sweep(spec, out, log=lambda _: None)
    assert counts == {**counts, "planned": 8, "computed": 8, "skipped": 0}
    return rows(out)


def test_ray_sweep_is_bit_identical_to_one_process_and_resumes(cluster, single, tmp_path):
    address, head = cluster
    assert all(a.startswith(("0100007F:", "0000000000000000FFFF00000100007F:")) for a in listening(descendants(head.pid))), \
        "a Ray server listens beyond 127.0.0.1"
    run = cli(*SWEEP, "--out", str(tmp_path), "--ray", address)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 workers (CPU)" in run.stdout and "8 cells computed" in run.stdout
    assert rows(tmp_path) == single  # every column of every picture, latent digest included
    before = (tmp_path / judged_sweep.RESULTS).read_bytes()
    again = cli(*SWEEP, "--out", str(tmp_path), "--ray", address)
    assert again.returncode == 0 and "0 cells computed, 8 already there" in again.stdout, again.stdout + again.stderr
    assert "workers" not in again.stdout  # nothing to run: no worker was started
    assert (tmp_path / judged_sweep.RESULTS).read_bytes() == before


def test_a_killed_worker_loses_and_duplicates_no_cell(cluster, single, tmp_path):
    address, _ = cluster
    proc = subprocess.Popen([*CLI, *SWEEP, "--out", str(tmp_path), "--ray", address, "--workers", "2"],
                            env={**os.environ, **LOOPBACK}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    results, pids = tmp_path / judged_sweep.RESULTS, tmp_path / "ray_workers.txt"
    deadline, killed, done_at_kill = time.monotonic() + 300, None, None
    while time.monotonic() < deadline and proc.poll() is None:
        if pids.exists() and results.exists():
            n = len(results.read_text().splitlines()) - 1
            if n >= 2:  # at least one cell in; most still to come
                killed = int(pids.read_text().split()[0])
                os.kill(killed, signal.SIGKILL)
                done_at_kill = n // 2
                break
        time.sleep(0.05)
    out, _ = proc.communicate(timeout=600)
    assert killed is not None, f"no worker was killed: {out[-3000:]}"
    assert proc.returncode == 0, out[-3000:]
    assert done_at_kill < 8, "the sweep had finished before the kill"
    got = rows(tmp_path)
    assert len(results.read_text().splitlines()) - 1 == len(got) == 16  # 8 cells x 2 pictures, none twice
    assert got == single


def test_unreachable_address_names_it_and_writes_nothing(tmp_path, capsys):
    port = free_port()  # nothing listens there
    code, err = cli_here(capsys, *SWEEP, "--out", str(tmp_path / "out"), "--ray", f"127.0.0.1:{port}")
    assert code == 2 and f"cannot reach a Ray cluster at 127.0.0.1:{port}" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--samplers", "euler,no_such"], "unknown sampler 'no_such'"),
    (["--captions", "0"], "captions: 0 is not allowed"),
])
def test_bad_sweeps_name_the_cause_and_write_nothing(tmp_path, capsys, args, message):
    code, err = cli_here(capsys, *SWEEP, *args, "--out", str(tmp_path / "out"), "--ray", "127.0.0.1:1")
    assert code == 2 and message in err, err
    assert not (tmp_path / "out").exists()


def test_another_sweeps_results_are_refused_untouched(single, tmp_path, capsys):
    spec = judged_sweep.make_spec(WEIGHTS, "euler", "3", captions=2, seeds=1, batch=2, cfg=3.0)
    judged_sweep.run_sweep(spec, tmp_path, log=lambda _: None)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    code, err = cli_here(capsys, *SWEEP, "--out", str(tmp_path))  # CFG 5 and 4 captions: another sweep
    assert code == 2 and "holds another sweep's results" in err and "cfg 3.0 there, 5.0 here" in err, err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
