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
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if "diffusion_anatomy" not in sys.modules:
    _pack = types.ModuleType("diffusion_anatomy")
    _pack.__path__ = [str(ROOT)]
    sys.modules["diffusion_anatomy"] = _pack

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
    finally:
        shutil.rmtree(out, ignore_errors=True)
    steady = (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1)
    return {"cells": len(arrivals), "seconds_per_cell": steady, "first_cell_at": arrivals[0] - t0, "total": time.perf_counter() - t0}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", type=int, default=12, help="cells per run (even)")
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args(argv)
    captions = args.batch * (args.cells // 2)
    spec = judged_sweep.make_spec(WEIGHTS, "euler,dpmpp_2m", str(args.steps), captions=captions, seeds=1, batch=args.batch)
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
    print(f"Ray's overhead per cell (1 worker vs one process): {100 * overhead:+.1f}% of a cell's time", flush=True)
    calls = 2 * args.steps  # euler and dpmpp_2m: one call per step each
    per_call = one["seconds_per_cell"] / (calls / 2)  # a cell of one sampler makes `steps` batched calls (cond + uncond together)
    print(f"cost per batched model call (with the cell's decode and judge shared out): {1000 * per_call:.1f} ms "
          f"for {args.batch} pictures ({2 * args.batch} U-Net rows with CFG)", flush=True)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    torch.set_num_threads(1)
    main()
