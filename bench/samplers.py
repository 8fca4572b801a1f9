"""Per-step overhead of the pack's samplers against ComfyUI core's, and host-device syncs per step.

With a denoiser that costs almost nothing (x * 0.9 on a 1x4x64x64 latent), the time per step is the
sampler's own overhead: its arithmetic, Python, noise. For every registered sampler with a core_id
this times ours (bare function, and through `run_sampler` with its NaN watch) and core's function
as `comfy.samplers.sampler_object(core_id)` gives it, median of repeated runs, and prints a table
of ratios ours/core. Samplers without a core counterpart are timed alone.

Syncs per step: extra host-device syncs when the schedule grows by n steps, divided by n. On CUDA
counted with torch.cuda.set_sync_debug_mode("warn"); on CPU with a tensor subclass that counts the
calls that would sync on a GPU (__bool__, item, tolist, float, ...). Ours should read 0.

Run (from the repo root, with the host's python):
    python bench/samplers.py [--steps 30] [--repeats 15] [--device cpu|cuda] [--only euler,uni_pc]
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "harness")]
sys.path.insert(0, str(ROOT / "harness"))  # diffusion_anatomy: the repo root as the pack, without ComfyUI

import hostenv  # noqa: E402
from diffusion_anatomy.samplers import REGISTRY  # noqa: E402
from diffusion_anatomy.samplers.runner import run_sampler, sampler_kwargs  # noqa: E402

SYNCING = {"__bool__", "item", "tolist", "__float__", "__int__", "__index__", "nonzero", "cpu", "numpy"}


def cheap_denoiser(x, sigma, **kwargs):
    return x * 0.9


def core_model(comfy):
    """What core's sampler functions expect from ComfyUI's model wrapper (they reach into it for the
    model_sampling object): the cheap denoiser plus an SD-style discrete EPS model_sampling."""

    class EpsDiscrete(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
        pass

    ms = EpsDiscrete()

    class CoreModel:
        def __init__(self):
            patcher = SimpleNamespace(get_model_object=lambda name: ms)
            self.inner_model = SimpleNamespace(inner_model=SimpleNamespace(model_sampling=ms), model_sampling=ms, model_patcher=patcher)

        def __call__(self, x, sigma, **kwargs):
            return cheap_denoiser(x, sigma)

    return CoreModel()


def schedule(n: int, device) -> torch.Tensor:
    sig = torch.exp(torch.linspace(math.log(14.6), math.log(0.03), n, dtype=torch.float32))
    return torch.cat([sig, sig.new_zeros(1)]).to(device)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_step(calls: dict, x, sigmas, repeats: int) -> dict:
    """Median seconds per step of each call; runs interleaved so a noisy machine affects all alike."""
    times = {name: [] for name in calls}
    for r in range(repeats + 1):  # the first round warms up
        for name, call in calls.items():
            s = sigmas.clone()  # core's UniPC writes into its sigmas
            synchronize(x.device)
            start = time.perf_counter()
            call(x, s)
            synchronize(x.device)
            if r:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) / (len(sigmas) - 1) for name, t in times.items()}


class SyncCounting(torch.Tensor):
    calls = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in SYNCING:
            cls.calls += 1
        return super().__torch_function__(func, types, args, kwargs or {})


def syncs(call, x, sigmas) -> int:
    if x.device.type == "cuda":
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                call(x, sigmas.clone())
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)
    SyncCounting.calls = 0
    call(x.as_subclass(SyncCounting), sigmas.clone().as_subclass(SyncCounting))
    return SyncCounting.calls


def syncs_per_step(call, x, n: int) -> float:
    device = x.device
    return (syncs(call, x, schedule(2 * n, device)) - syncs(call, x, schedule(n, device))) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", default="", help="comma-separated sampler ids")
    args = parser.parse_args()

    from support.inprocess import load_comfy

    comfy = load_comfy(hostenv.comfyui_dir())
    device = torch.device(args.device)
    x = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0)).to(device) * 14.6
    sigmas = schedule(args.steps, device)
    wrapped = core_model(comfy)
    extra = {"seed": 0}
    ids = [i for i in sorted(REGISTRY) if not args.only or i in args.only.split(",")]

    print(f"device {device}, latent {tuple(x.shape)}, {args.steps} steps, median of {args.repeats} runs; us = microseconds per step")
    print("| sampler | core us | ours us | ours via run_sampler us | ratio ours/core | run_sampler/core | syncs/step ours | syncs/step core |")
    print("|---|---|---|---|---|---|---|---|")
    for sampler_id in ids:
        info = REGISTRY[sampler_id]
        kwargs = sampler_kwargs(info, {})

        def ours_bare(x, s, info=info, kwargs=kwargs):
            return info.fn(cheap_denoiser, x, s, extra_args=dict(extra), callback=None, disable=True, **kwargs)

        def ours_runner(x, s, info=info):
            return run_sampler(info, cheap_denoiser, x, s, extra_args=dict(extra), disable=True)

        row = [sampler_id]
        calls = {"bare": ours_bare, "runner": ours_runner}
        if info.core_id is not None:
            sampler = comfy.samplers.sampler_object(info.core_id)

            def core_call(x, s, fn=sampler.sampler_function, options=sampler.extra_options):
                return fn(wrapped, x, s, extra_args=dict(extra), callback=None, disable=True, **options)

            calls["core"] = core_call
        core_syncs = None
        try:
            timing = seconds_per_step(calls, x, sigmas, args.repeats)
            if "core" in calls:
                core_syncs = syncs_per_step(calls["core"], x, 8)
        except Exception as error:  # core fails (e.g. reaches for a model attribute): time ours alone
            calls.pop("core", None)
            timing = {"core": f"error: {type(error).__name__}"}
        try:
            timing = {**seconds_per_step(calls, x, sigmas, args.repeats), **timing} if "bare" not in timing else timing
            our_syncs = syncs_per_step(ours_runner, x, 8)
        except Exception as error:  # one broken sampler must not hide the others' numbers
            print(f"| {sampler_id} | error: {type(error).__name__}: {error} |", flush=True)
            continue
        bare, runner, core = timing["bare"], timing["runner"], timing.get("core")
        fmt = lambda v: f"{v * 1e6:.0f}" if isinstance(v, float) else (v or "-")  # noqa: E731
        ratio = lambda v: f"{v / core:.2f}" if isinstance(core, float) else "-"  # noqa: E731
        row += [fmt(core), fmt(bare), fmt(runner), ratio(bare), ratio(runner), f"{our_syncs:g}",
                "-" if core_syncs is None else f"{core_syncs:g}"]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
