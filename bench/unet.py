"""Benchmark: our U-Net forward against ComfyUI's `UNetModel` at SD1.5 shapes, same weights.

    python bench/unet.py [--runs 5] [--skip-cpu] [--skip-cuda]     (run with the host's Python)

CPU (always): float32, batch 2, the embedded tiny model at its 8x8 latent (median of 4 x `--runs`)
and SD1.5 at a 32x32 latent (256x256 image, median of `--runs`), after one warm-up each; prints ours/core. CUDA (only where torch sees a GPU): float16, batch 2, 64x64
latent (512x512), steps/s (one step = one forward of the batch) and peak memory of each.

Both models hold the same random weights (one copy: ComfyUI's is built on the meta device and
gets our tensors assigned), so the numbers compare code, not weights. ComfyUI is imported from
the host (`host/hostenv.py`: COMFYUI_PATH or DA_HOST_DIR).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "host"))
sys.path.insert(0, str(ROOT / "tests"))
if "diffusion_anatomy" not in sys.modules:  # the repo root is the pack; import it without its __init__
    pack = types.ModuleType("diffusion_anatomy")
    pack.__path__ = [str(ROOT)]
    sys.modules["diffusion_anatomy"] = pack

from diffusion_anatomy.unet import SD15, UNetModel  # noqa: E402


def load_comfy(cpu: bool):
    import hostenv

    comfy_dir = hostenv.comfyui_dir()
    sys.path.insert(0, str(comfy_dir))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    import comfy.model_management  # noqa: F401  (reads args.cpu)
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel as CoreUNet

    from support.checkpoints import comfy_unet_kwargs

    return lambda config: CoreUNet(**comfy_unet_kwargs(config), device="meta")


def random_pair(core_unet, device: str, dtype: torch.dtype, config=SD15):
    """Ours with seeded random weights on `device`, and ComfyUI's holding the very same tensors."""
    with torch.device("meta"):
        ours = UNetModel(config)
    gen = torch.Generator(device="cpu").manual_seed(0)
    state = {}
    for name, p in ours.state_dict().items():
        bound = math.sqrt(3 / math.prod(p.shape[1:])) if p.ndim >= 2 else 0.1
        t = torch.empty(p.shape).uniform_(-bound, bound, generator=gen)
        state[name] = (t + 1 if p.ndim == 1 and name.endswith("weight") else t).to(device, dtype)
    ours.load_state_dict(state, strict=True, assign=True)
    del state
    with torch.device("meta"):
        core = core_unet(config)
    core.load_state_dict(ours.state_dict(), strict=True, assign=True)
    return ours.eval().requires_grad_(False), core.eval().requires_grad_(False)


def inputs(batch: int, size: int, device: str, dtype: torch.dtype, context_dim: int = 768):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, size, size, generator=g).to(device, dtype)
    t = torch.linspace(999, 1, batch).to(device)
    context = torch.randn(batch, 77, context_dim, generator=g).to(device, dtype)
    return x, t, context


def timed(fn, runs: int, sync=lambda: None) -> list[float]:
    fn()
    sync()  # warm-up: kernel selection, allocator
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


@torch.no_grad()
def bench_cpu(core_unet, runs: int, name: str = "SD1.5", config=SD15, size: int = 32):
    ours, core = random_pair(core_unet, "cpu", torch.float32, config)
    x, t, context = inputs(2, size, "cpu", torch.float32, config.context_dim)
    err = ((ours(x, t, context) - core(x, t, context)).abs().max() / core(x, t, context).abs().max()).item()
    # interleave so that both see the same machine load
    t_ours, t_core = [], []
    for _ in range(runs):
        t_ours += timed(lambda: ours(x, t, context), 1)
        t_core += timed(lambda: core(x, t, context), 1)
    m_ours, m_core = statistics.median(t_ours), statistics.median(t_core)
    print(f"CPU float32, {name}, batch 2, {size}x{size} latent, {torch.get_num_threads()} threads, median of {runs}:")
    print(f"  ours {m_ours:.3f} s   core {m_core:.3f} s   ours/core {m_ours / m_core:.3f}   (max rel. diff {err:.1e})")


@torch.no_grad()
def bench_cuda(core_unet, runs: int):
    results = {}
    for name in ("ours", "core"):  # one model at a time on the GPU, so each peak is its own
        ours, core = random_pair(core_unet, "cuda", torch.float16)
        model = ours if name == "ours" else core
        del ours, core
        x, t, context = inputs(2, 64, "cuda", torch.float16)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        weights = torch.cuda.memory_allocated()
        times = timed(lambda: model(x, t, context), runs, torch.cuda.synchronize)
        peak = torch.cuda.max_memory_allocated()
        results[name] = (1 / statistics.median(times), weights, peak)
        del model
        torch.cuda.empty_cache()
    print(f"CUDA float16 ({torch.cuda.get_device_name()}), SD1.5, batch 2, 64x64 latent, median of {runs}:")
    for name, (steps, weights, peak) in results.items():
        print(f"  {name}: {steps:.2f} steps/s   peak {peak / 2**30:.2f} GiB (weights {weights / 2**30:.2f} GiB)")
    print(f"  ours/core steps/s {results['ours'][0] / results['core'][0]:.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--skip-cuda", action="store_true")
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and not args.skip_cuda
    core_unet = load_comfy(cpu=not cuda)
    if not args.skip_cpu:
        from diffusion_anatomy.embedded.config import UNET as EMBEDDED

        bench_cpu(core_unet, args.runs * 4, "embedded tiny model", EMBEDDED, 8)  # a fast forward: more runs
        bench_cpu(core_unet, args.runs)
    if cuda:
        bench_cuda(core_unet, max(args.runs, 20))
    else:
        print("CUDA: not available here, skipped")


if __name__ == "__main__":
    main()
