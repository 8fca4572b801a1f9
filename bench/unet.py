"""Benchmark: our U-Net forward against ComfyUI's `UNetModel`, same weights, both resident, interleaved rounds.

    python bench/unet.py [--rounds 7] [--per-round 3] [--skip-cpu] [--skip-cuda] [--sdxl] [--compile] [--profile]
                         [--json FILE]                                          (run with the host's Python)

Every model variant is built once and stays in memory; each round runs `--per-round` forwards of every
variant in turn (the order rotating from round to round), so machine load and clocks hit all alike.
Reported per variant: median seconds per forward over all rounds, and the spread (min-max of the
round medians); the ratio ours/core is the median of the per-round ratios (each round's pair ran
side by side). One warm-up forward per variant first (kernel selection, allocator).

CPU: float32, SD1.5, batch 2, 32x32 latent: ours as the bridge builds it (contiguous NCHW) and core, sharing
one copy of the weights; with --cpu-channels-last also ours in channels_last (a second copy; checks the
bridge's choice of contiguous on the CPU). CUDA (where torch sees a GPU): float16, batch 2 (one
CFG step), SD1.5 at 64x64 latent (512^2) and with --sdxl SDXL at 128x128 (1024^2): core, ours contiguous,
ours channels_last (what the bridge picks on CUDA), core channels_last, timed with CUDA events; with
--compile also ours under torch.compile(mode="reduce-overhead") (CUDA graphs; compile time reported).
Peak memory per variant is the activation peak above the resident weights (max_memory_allocated).
--profile counts the device kernels of one forward per variant (torch.profiler).

Both models hold the same random weights (ComfyUI's is built on the meta device and gets our tensors
assigned), so the numbers compare code, not weights. ComfyUI is imported from the host
(`harness/hostenv.py`: COMFYUI_PATH or DA_HOST_DIR).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "harness"))  # diffusion_anatomy: the repo root as the pack, without ComfyUI

from diffusion_anatomy.unet import SD15, SDXL, UNetModel  # noqa: E402


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


def random_pair(core_unet, config, device: str, dtype: torch.dtype):
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


def channels_last_copy(model):
    """A second module sharing nothing: the same weights, 4-D ones in channels_last."""
    import copy

    return copy.deepcopy(model).to(memory_format=torch.channels_last)


def inputs(config, batch: int, size: int, device: str, dtype: torch.dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, config.in_channels, size, size, generator=g).to(device, dtype)
    t = torch.linspace(999, 1, batch).to(device)
    context = torch.randn(batch, 77, config.context_dim, generator=g).to(device, dtype)
    y = torch.randn(batch, config.adm_in_channels, generator=g).to(device, dtype) if config.adm_in_channels else None
    return (x, t, context) if y is None else (x, t, context, y)


class Timer:
    """Seconds of one call: perf_counter on the CPU; CUDA events around the call on a GPU (the device's time
    between them, read after a sync that is not timed)."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def __call__(self, fn) -> float:
        if not self.cuda:
            start = time.perf_counter()
            fn()
            return time.perf_counter() - start
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1000


def interleaved(variants: dict, args_: tuple, rounds: int, per_round: int, cuda: bool) -> dict:
    """{name: [round medians]}, all variants run in every round, the order rotated each round."""
    timer = Timer(cuda)
    names = list(variants)
    for name in names:  # warm-up
        variants[name](*args_)
    if cuda:
        torch.cuda.synchronize()
    medians = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            medians[name].append(statistics.median(timer(lambda: variants[name](*args_)) for _ in range(per_round)))
    return medians


def report(title: str, medians: dict, reference: str, extra: dict | None = None) -> dict:
    print(title)
    result = {}
    for name, ms in medians.items():
        row = {"median_s": statistics.median(ms), "min_s": min(ms), "max_s": max(ms)}
        if name != reference:
            row["ratio_to_" + reference] = statistics.median(a / b for a, b in zip(ms, medians[reference]))
        row.update((extra or {}).get(name, {}))
        result[name] = row
        ratio = f"   {name}/{reference} {row['ratio_to_' + reference]:.3f}" if name != reference else ""
        more = "".join(f"   {k} {v}" for k, v in (extra or {}).get(name, {}).items())
        print(f"  {name:<22} {1e3 * row['median_s']:9.2f} ms  (rounds {1e3 * row['min_s']:.2f}-{1e3 * row['max_s']:.2f}){ratio}{more}")
    return result


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def kernel_count(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(e.count for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA)


@torch.no_grad()
def bench_cpu(core_unet, rounds: int, per_round: int, channels_last: bool, size: int = 32) -> dict:
    ours, core = random_pair(core_unet, SD15, "cpu", torch.float32)
    variants = {"core": core, "ours": ours}
    if channels_last:  # a second copy of the weights (3.4 GB): opt-in on small machines
        variants["ours_channels_last"] = channels_last_copy(ours)
    args_ = inputs(SD15, 2, size, "cpu", torch.float32)
    ref = core(*args_)
    diffs = {name: {"max_rel_diff": f"{max_rel_diff(m(*args_), ref):.1e}"} for name, m in variants.items() if name != "core"}
    medians = interleaved(variants, args_, rounds, per_round, cuda=False)
    title = (f"CPU float32, SD1.5, batch 2, {size}x{size} latent, {torch.get_num_threads()} threads, "
             f"{rounds} interleaved rounds x {per_round}:")
    return report(title, medians, "core", diffs)


@torch.no_grad()
def bench_cuda(core_unet, config, name: str, size: int, rounds: int, per_round: int, compile_: bool, profile_: bool) -> dict:
    dtype = torch.float16
    ours, core = random_pair(core_unet, config, "cuda", dtype)
    variants = {"core": core, "ours": ours, "ours_channels_last": channels_last_copy(ours),
                "core_channels_last": channels_last_copy(core)}
    args_ = inputs(config, 2, size, "cuda", dtype)
    extra = {}
    if compile_:
        compiled = torch.compile(variants["ours_channels_last"], mode="reduce-overhead")
        start = time.perf_counter()
        for _ in range(3):  # compile, then CUDA graph warm-up and record
            compiled(*args_)
        torch.cuda.synchronize()
        variants["ours_compiled"] = compiled
        extra["ours_compiled"] = {"compile_s": f"{time.perf_counter() - start:.1f}"}
    ref = core(*args_)
    for vname, model in variants.items():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = model(*args_).clone()  # compiled CUDA-graph outputs are overwritten by the next replay
        torch.cuda.synchronize()
        row = extra.setdefault(vname, {})
        row["peak_GiB"] = f"{(torch.cuda.max_memory_allocated() - base) / 2**30:.2f}"
        if vname != "core":
            row["max_rel_diff"] = f"{max_rel_diff(out, ref):.1e}"
        if profile_ and vname != "ours_compiled":
            row["kernels"] = kernel_count(lambda: model(*args_))
    medians = interleaved(variants, args_, rounds, per_round, cuda=True)
    title = (f"CUDA float16 ({torch.cuda.get_device_name()}), {name}, batch 2, {size}x{size} latent, "
             f"{rounds} interleaved rounds x {per_round}, CUDA events:")
    result = report(title, medians, "core", extra)
    del variants, ours, core
    torch.cuda.empty_cache()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=3)
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--skip-cuda", action="store_true")
    parser.add_argument("--sdxl", action="store_true", help="also SDXL at 1024^2 on CUDA")
    parser.add_argument("--compile", action="store_true", help="also torch.compile(reduce-overhead) on CUDA")
    parser.add_argument("--profile", action="store_true", help="count CUDA kernels per forward")
    parser.add_argument("--cpu-size", type=int, default=32, help="latent side on the CPU (32: 256^2 images)")
    parser.add_argument("--cpu-channels-last", action="store_true", help="also ours in channels_last on the CPU")
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()
    if args.rounds < 5:
        parser.error("--rounds must be at least 5: fewer cannot show a spread")
    cuda = torch.cuda.is_available() and not args.skip_cuda
    core_unet = load_comfy(cpu=not cuda)
    results = {}
    if not args.skip_cpu:
        results["cpu_sd15"] = bench_cpu(core_unet, args.rounds, args.per_round, args.cpu_channels_last, args.cpu_size)
    if cuda:
        per_round = max(args.per_round, 10)
        results["cuda_sd15_512"] = bench_cuda(core_unet, SD15, "SD1.5", 64, args.rounds, per_round, args.compile, args.profile)
        if args.sdxl:
            results["cuda_sdxl_1024"] = bench_cuda(core_unet, SDXL, "SDXL", 128, args.rounds, max(args.per_round, 5),
                                                   False, args.profile)
    else:
        print("CUDA: not available here, skipped")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
