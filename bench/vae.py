"""VAE benchmarks (CPU): decode speed ours vs ComfyUI's, and peak memory of tiled vs untiled decode.

  python bench/vae.py speed  [--latent 32] [--runs 5]       SD shapes, 32x32 latent -> 256x256, median
  python bench/vae.py memory [--size 2048] [--ch 128] [--tile 512]
      one subprocess per mode (untiled, tiled level, tiled block); each reports getrusage maxrss
      after building the model (baseline: interpreter, torch, weights, the latent) and after the decode.
      The difference is the decode's own peak. --ch scales every width (128 = SD).

Run with the host venv from the repo root (DA_HOST_DIR=/work/main/.host for the speed part, which
imports ComfyUI in-process as the tests do).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "harness"))  # diffusion_anatomy: the repo root as the pack, without ComfyUI

from diffusion_anatomy.vae import config as vc  # noqa: E402
from diffusion_anatomy.vae.model import AutoencoderKL  # noqa: E402
from diffusion_anatomy.vae.tiled import decode_tiled  # noqa: E402


def median_seconds(fns: dict, runs: int) -> dict:
    """Median wall time of each callable; runs interleaved so that load changes hit all alike."""
    for fn in fns.values():
        fn()  # warm-up (allocator, oneDNN primitives)
    times = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def speed(latent: int, runs: int):
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "harness")]
    import hostenv
    from support.inprocess import load_comfy

    comfy = load_comfy(hostenv.comfyui_dir())
    torch.manual_seed(0)
    ours = AutoencoderKL(vc.SD).eval()
    theirs = comfy.sd.VAE(sd=ours.state_dict(), dtype=torch.float32).first_stage_model.eval()
    z = torch.randn(1, 4, latent, latent)
    with torch.no_grad():
        ref = theirs.decode(z)
        err = ((ours.decode(z) - ref).abs().max() / ref.abs().max()).item()
        t = median_seconds({"ours": lambda: ours.decode(z), "theirs": lambda: theirs.decode(z)}, runs)
    t_ours, t_theirs = t["ours"], t["theirs"]
    print(f"decode {latent}x{latent} latent -> {8 * latent}x{8 * latent}, SD shapes, fp32, CPU, "
          f"{torch.get_num_threads()} threads, median of {runs} interleaved")
    print(f"  ours    {t_ours:8.3f} s")
    print(f"  ComfyUI {t_theirs:8.3f} s   (its VAE attention: "
          f"{theirs.decoder.mid.attn_1.optimized_attention.__name__})")
    print(f"  ratio ours/ComfyUI {t_ours / t_theirs:.3f}   max rel diff {err:.2e}")


def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure_one(mode: str, size: int, ch: int, tile: int):
    """Child process: build, decode once in `mode`, print one JSON line."""
    torch.manual_seed(0)
    vae = AutoencoderKL(replace(vc.SD, ch=ch)).eval()
    z = torch.randn(1, 4, size // 8, size // 8)
    base = maxrss_mib()
    t = time.perf_counter()
    with torch.no_grad():
        if mode == "untiled":
            out = vae.decode(z)
        else:
            out = decode_tiled(vae, z, tile=tile, granularity=mode.split("-")[1])
    print(json.dumps({"mode": mode, "baseline_mib": round(base), "peak_mib": round(maxrss_mib()),
                      "decode_mib": round(maxrss_mib() - base), "seconds": round(time.perf_counter() - t, 1),
                      "out": list(out.shape)}))


def memory(size: int, ch: int, tile: int, modes: list[str]):
    print(f"peak RSS, decode to {size}x{size}, ch={ch} (SD: 128), tile={tile}, fp32, CPU, one process per mode")
    for mode in modes:
        cmd = [sys.executable, __file__, "_measure", mode, "--size", str(size), "--ch", str(ch), "--tile", str(tile)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        line = res.stdout.strip().splitlines()[-1] if res.returncode == 0 else f"{mode} failed, exit {res.returncode}: {res.stderr[-500:]}"
        print(" ", line, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("part", choices=["speed", "memory", "_measure"])
    ap.add_argument("mode", nargs="?", default=None)
    ap.add_argument("--latent", type=int, default=32)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--ch", type=int, default=128)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--modes", default="untiled,tiled-level,tiled-block")
    a = ap.parse_args()
    if a.part == "speed":
        speed(a.latent, a.runs)
    elif a.part == "memory":
        memory(a.size, a.ch, a.tile, a.modes.split(","))
    else:
        measure_one(a.mode, a.size, a.ch, a.tile)


if __name__ == "__main__":
    main()
