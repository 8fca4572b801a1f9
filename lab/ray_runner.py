"""The judged sweep's cells on a Ray cluster: one actor per worker, each loading the model once.

Optional (`pip install -r lab/requirements-ray.txt`); nothing else in the pack imports this module or Ray.
The driver (this process) is the only writer: it hands each actor up to `IN_FLIGHT` cells, takes results
as they finish (`ray.wait`) and appends them (`judged_sweep.ResultsFile`), so the file never holds a cell
twice. A worker process that dies is restarted by Ray (the actor's `max_restarts`) and the cells it held
are run again (`max_task_retries`): a cell arrives once whatever dies. Cells are computed by the same
`run_cell` as in one process, from their key alone, on one thread: their numbers are the same bits.

GPU-aware: where the cluster has GPUs each actor takes one (`num_gpus=1`) and runs the model there (the
bits then differ from a CPU run, as any GPU run does); otherwise one CPU each.

Only loopback is contacted for a local cluster: with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (Ray's single-machine
mode, the default on macOS and Windows) a node's address is 127.0.0.1 and every Ray server listens there;
without it Ray finds its address by routing towards 8.8.8.8 and listens on all interfaces. Start a local
cluster the same way: `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ray start --head --node-ip-address 127.0.0.1
--include-dashboard false --disable-usage-stats`. Usage statistics are off.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Callable

from .sweep import LabError

ROOT = Path(__file__).resolve().parents[1]  # the pack's folder: the workers import it from there (same path on every node)
IN_FLIGHT = 2  # cells queued per actor: the next one is ready when one finishes, so no worker waits for the driver
RESTARTS = 4  # a worker killed this many times in one sweep ends it with an error instead of looping


def parse_address(address: str) -> tuple[str, int] | None:
    """(host, port) of 'HOST:PORT' or 'ray://HOST:PORT'; None for 'auto' (Ray finds the local cluster)."""
    if address == "auto":
        return None
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise LabError(f"ray: {address!r} is not an address; give HOST:PORT (e.g. 127.0.0.1:6379), ray://HOST:PORT or auto")
    return host, int(port)


def check_reachable(address: str, timeout: float = 3.0) -> None:
    """Fail fast, naming the address, where nothing listens (Ray itself would retry for a minute)."""
    hp = parse_address(address)
    if hp is None:
        return
    try:
        socket.create_connection(hp, timeout=timeout).close()
    except OSError as error:
        raise LabError(f"ray: cannot reach a Ray cluster at {address} ({error.strerror or error}); start one with "
                       f"`ray start --head --node-ip-address 127.0.0.1` or give its address") from None


def _worker_class():
    """The actor class, defined here so that Ray ships it by value: a worker imports the pack from ROOT itself,
    then builds the model once."""

    class Worker:
        def __init__(self, root: str, spec: dict, device: str, threads: int, tokenizer_dir: str):
            import sys

            sys.path.insert(0, os.path.join(root, "harness"))
            import diffusion_anatomy  # noqa: F401  (the repo root as the pack, without ComfyUI)
            import torch

            from diffusion_anatomy.lab import judged_sweep

            torch.set_grad_enabled(False)
            self.judged_sweep, self.threads = judged_sweep, threads
            self.model = judged_sweep.load(judged_sweep.Spec.from_dict(spec), device, tokenizer_dir)

        def pid(self) -> int:
            return os.getpid()

        def run(self, key: tuple) -> list[dict]:
            return self.judged_sweep.run_cell(self.model, tuple(key), self.threads)

    return Worker


def connect(address: str | None, workers: int | None):
    """ray, connected to `address` (HOST:PORT, ray://..., auto) or to a new local cluster of `workers` CPUs."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    hp = parse_address(address) if address else None
    local = not address or hp is None or hp[0] in ("127.0.0.1", "localhost")
    if local:  # Ray's single-machine mode: its node address is loopback (else it routes towards 8.8.8.8 to find one); read at import
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if address and "RAY_AUTH_MODE" not in os.environ and (Path.home() / ".ray" / "auth_token").is_file():
        os.environ["RAY_AUTH_MODE"] = "token"  # `ray start` here made its cluster with this token (Ray's default): join with it; read at import
    try:
        import ray
    except ImportError:
        raise LabError("ray: Ray is not installed; `pip install -r lab/requirements-ray.txt` (an optional extra of the lab)") from None
    if address:
        check_reachable(address)
        kw = {"_node_ip_address": "127.0.0.1"} if local and not address.startswith("ray://") else {}
        try:
            ray.init(address=address, logging_level="WARNING", log_to_driver=False, **kw)
        except (ConnectionError, RuntimeError) as error:
            raise LabError(f"ray: could not join the Ray cluster at {address}: {error}") from None
    else:
        ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1",
                 logging_level="WARNING", log_to_driver=False)
    return ray


def run_on_ray(address: str | None, workers: int | None = None, threads: int = 1, pid_file: Path | None = None,
               log: Callable[[str], None] = print) -> Callable:
    """A runner for `judged_sweep.run_sweep`: the cells as Ray actor tasks (see the module docstring).
    `workers`: actors to start (default: the cluster's GPUs, or its CPUs); `pid_file`: each actor's process
    id is appended there as it starts (for tests and for watching a sweep)."""

    def runner(spec, todo, on_rows):
        todo = list(todo)
        if not todo:
            return
        ray = connect(address, workers)
        try:
            resources = ray.cluster_resources()
            gpus = int(resources.get("GPU", 0))
            n = workers or gpus or max(1, int(resources.get("CPU", 1)))
            n = min(n, len(todo))
            opts = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1}
            Worker = ray.remote(**opts, max_restarts=RESTARTS, max_task_retries=RESTARTS)(_worker_class())
            device = "cuda" if gpus else "cpu"
            from dataclasses import asdict

            from ..embedded.train import default_tokenizer_dir

            tokenizer = str(default_tokenizer_dir())
            actors = [Worker.remote(str(ROOT), asdict(spec), device, threads, tokenizer) for _ in range(n)]
            t0 = time.perf_counter()
            pids = ray.get([a.pid.remote() for a in actors])
            log(f"ray: {n} workers ({'GPU' if gpus else 'CPU'}) up in {time.perf_counter() - t0:.1f} s, pids {pids}")
            if pid_file is not None:
                with open(pid_file, "a") as f:
                    f.write("".join(f"{p}\n" for p in pids))
            queue = list(reversed(todo))
            pending: dict = {}

            def submit(actor):
                if queue:
                    key = queue.pop()
                    pending[actor.run.remote(key)] = (actor, key)

            for actor in actors:
                for _ in range(IN_FLIGHT):
                    submit(actor)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                actor, key = pending.pop(ready[0])
                try:
                    rows = ray.get(ready[0])
                except ray.exceptions.RayError as error:
                    raise LabError(f"ray: cell {key} failed: {error}") from None
                on_rows(key, rows)
                submit(actor)
        finally:
            ray.shutdown()

    return runner
