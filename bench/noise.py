"""Benchmark: cost per sampler step of each Brownian noise source against a plain Gaussian draw.

    python bench/noise.py [--size 64] [--steps 20] [--rounds 7] [--device cpu|cuda]

One step of an SDE sampler asks its noise sampler for (sigma_i, sigma_i+1) once. Timed per step, over a
20-step karras-like schedule (a fresh noise sampler each run, so its set-up counts), for a 1x4xSxS latent:
  gaussian       torch.randn on the latent's device (the floor: what any noise costs)
  brownian       the pack's = core's BrownianTreeNoiseSampler: torchsde's tree on the CPU (core's default)
  brownian-gpu   the same tree on the latent's device (core's *_gpu samplers)
  brownian-fast  the pack's dyadic tree of bridges on the device (samplers/noise.py DyadicBrownian)
Median over `--rounds` interleaved rounds, spread min-max; ratios to gaussian. On CUDA each run ends with a
synchronize, so the device's work is counted.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "harness"))  # diffusion_anatomy: the repo root as the pack, without ComfyUI

from diffusion_anatomy.samplers.noise import (  # noqa: E402
    brownian_tree_noise_sampler,
    default_noise_sampler,
    fast_brownian_noise_sampler,
)


def schedule(steps: int, lo=0.0292, hi=14.6146, rho=7.0) -> list[float]:
    ramp = [i / (steps - 1) for i in range(steps)]
    return [(hi ** (1 / rho) + r * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho for r in ramp]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="latent side (64: 512^2 images, 128: 1024^2)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    x = torch.zeros(1, 4, args.size, args.size, device=device)
    sig = schedule(args.steps)
    lo, hi = sig[-1], sig[0]
    sources = {
        "gaussian": lambda: default_noise_sampler(x, seed=0),
        "brownian": lambda: brownian_tree_noise_sampler(x, lo, hi, seed=0, cpu=True),
        "brownian-gpu": lambda: brownian_tree_noise_sampler(x, lo, hi, seed=0, cpu=False),
        "brownian-fast": lambda: fast_brownian_noise_sampler(x, lo, hi, seed=0),
    }
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(make) -> float:
        sync()
        start = time.perf_counter()
        sample = make()
        for a, b in zip(sig[:-1], sig[1:]):
            sample(a, b)
        sync()
        return (time.perf_counter() - start) / (len(sig) - 1)

    import warnings

    warnings.filterwarnings("ignore", module="torchsde")
    for make in sources.values():
        run(make)  # warm-up
    per_step = {name: [] for name in sources}
    for _ in range(args.rounds):
        for name, make in sources.items():
            per_step[name].append(run(make))
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"noise per step, 1x4x{args.size}x{args.size} latent, {args.steps} steps, {args.rounds} interleaved rounds, {where}:")
    floor = per_step["gaussian"]
    for name, ts in per_step.items():
        ratio = statistics.median(t / g for t, g in zip(ts, floor))
        print(f"  {name:<14} {1e3 * statistics.median(ts):8.3f} ms/step  (rounds {1e3 * min(ts):.3f}-{1e3 * max(ts):.3f})"
              f"   /gaussian {ratio:7.1f}")


if __name__ == "__main__":
    main()
