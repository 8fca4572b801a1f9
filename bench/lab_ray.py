"""Judged sweep throughput: cells per second in one process against Ray with 1 and 2 workers, Ray's overhead per
cell, and the full sweep's wall time on paper from the measured cost per model call.

    python bench/lab_ray.py [--cells 12] [--batch 24] [--steps 10]

Cells of the README run's size (`host/readme_tables.py` JUDGED_COMMAND: 24 pictures per cell) with Euler and
DPM++ 2M. Throughput is taken in steady state: from the first cell's arrival to the last one's, so the one-off
costs (a local cluster's start, each worker loading the model) are reported apart. Ray's overhead per cell is
(seconds per cell with 1 Ray worker - seconds per cell in one process) / seconds per cell in one process.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "harness"))  # diffusion_anatomy: the repo root as the pack, without ComfyUI
import diffusion_anatomy  # noqa: E402,F401

import torch  # noqa: E402

from diffusion_anatomy.embedded import WEIGHTS  # noqa: E402
from diffusion_anatomy.lab import judged_sweep  # noqa: E402


def timed_sweep(spec, runner) -> dict:
    out = Path(tempfile.mkdtemp(prefix="labbench"))
    arrivals = []
    t0 = time.perf_counter()

    def log(line):
        if line.lstrip().startswith("cell "):
            arrivals.append(time.perf_counter())

    try:
        judged_sweep.run_sweep(spec, out, runner, log=log)
        _, rows = __import__("diffusion_anatomy.lab.judged_report", fromlist=["read"]).read(out)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    steady = (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1)
    sampling = sum(float(r["seconds"]) for r in rows) / len(arrivals)  # per cell: the sampler's run and the VAE decode
    return {"cells": len(arrivals), "seconds_per_cell": steady, "first_cell_at": arrivals[0] - t0, "total": time.perf_counter() - t0,
            "sampling_per_cell": sampling}


def round_trip(rows: list[dict], n: int = 40) -> float:
    """Seconds Ray adds per cell, measured without the work: an actor method that returns a cell's rows unchanged,
    called n times one after another (key out, rows back, the driver's wait), on a local cluster of one worker."""
    from diffusion_anatomy.lab.ray_runner import connect

    ray = connect(None, 1)
    try:
        @ray.remote(num_cpus=1)
        class Echo:
            def run(self, key, payload):
                return payload

        actor = Echo.remote()
        ray.get(actor.run.remote(("warm", 0, 0, 0), rows))
        t0 = time.perf_counter()
        for k in range(n):
            ray.get(actor.run.remote(("euler", 10, k, 0), rows))
        return (time.perf_counter() - t0) / n
    finally:
        ray.shutdown()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=12, help="cells per run (even)")
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--round-trip-only", type=float, default=None, metavar="SECONDS_PER_CELL",
                    help="measure only Ray's round trip, against this measured seconds per cell in one process")
    args = ap.parse_args(argv)
    captions = args.batch * (args.cells // 2)
    spec = judged_sweep.make_spec(WEIGHTS, "euler,dpmpp_2m", str(args.steps), captions=captions, seeds=1, batch=args.batch)
    if args.round_trip_only:
        rows = judged_sweep.run_cell(judged_sweep.load(spec), spec.cells()[0])
        trip = round_trip(rows)
        print(f"Ray's round trip per cell ({len(rows)} rows back, nothing computed): {1000 * trip:.1f} ms = "
              f"{100 * trip / args.round_trip_only:.2f}% of {args.round_trip_only:g} s per cell", flush=True)
        return
    print(f"{len(spec.cells())} cells of {args.batch} pictures, {args.steps} steps (euler, dpmpp_2m), CFG {spec.cfg:g}; "
          f"torch threads per worker 1; {os.cpu_count()} CPUs", flush=True)
    one = timed_sweep(spec, lambda s, todo, on_rows: judged_sweep.run_local(s, todo, on_rows, 1))
    print(f"one process: {one['seconds_per_cell']:.3f} s/cell ({1 / one['seconds_per_cell']:.3f} cells/s), first cell after "
          f"{one['first_cell_at']:.1f} s (model load + one cell)", flush=True)
    from diffusion_anatomy.lab.ray_runner import run_on_ray

    results = {}
    for workers in (1, 2):
        r = timed_sweep(spec, run_on_ray(None, workers, threads=1, log=lambda line: print(line, flush=True)))
        results[workers] = r
        print(f"ray, {workers} worker(s): {r['seconds_per_cell']:.3f} s/cell ({1 / r['seconds_per_cell']:.3f} cells/s, "
              f"{one['seconds_per_cell'] / r['seconds_per_cell']:.2f}x one process), first cell after {r['first_cell_at']:.1f} s "
              f"(local cluster start + workers loading the model)", flush=True)
    overhead = (results[1]["seconds_per_cell"] - one["seconds_per_cell"]) / one["seconds_per_cell"]
    print(f"1 Ray worker against one process, seconds per cell: {100 * overhead:+.1f}% (on a shared machine this difference "
          "is mostly other load; the round trip below is Ray's own part)", flush=True)
    from diffusion_anatomy.lab import judged_sweep as js

    model = js.load(spec)
    rows = js.run_cell(model, spec.cells()[0])
    trip = round_trip(rows)
    print(f"Ray's round trip per cell (a cell's key out, its {len(rows)} rows back, nothing computed): {1000 * trip:.1f} ms = "
          f"{100 * trip / one['seconds_per_cell']:.2f}% of a cell's time in one process", flush=True)
    per_call = one["sampling_per_cell"] / args.steps  # euler and dpmpp_2m: one batched call (cond + uncond together) per step
    judging = one["seconds_per_cell"] - one["sampling_per_cell"]
    print(f"per cell: sampling + VAE decode {one['sampling_per_cell']:.2f} s ({1000 * per_call:.0f} ms per batched model call of "
          f"{args.batch} pictures = {2 * args.batch} U-Net rows with CFG, decode included), judging, sharpness and features "
          f"{judging:.2f} s ({1000 * judging / args.batch:.0f} ms per picture)", flush=True)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    torch.set_num_threads(1)
    main()
