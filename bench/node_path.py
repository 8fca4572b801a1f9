"""Benchmark: core's graph against the pack's, through ComfyUI's own sampling and model management, in-process.

    python bench/node_path.py [--rounds 3] [--steps 20] [--size 128|512] [--samplers euler,dpmpp_2m,dpmpp_2m_sde,uni_pc]
                              [--free-model] [--noise-type brownian-fast] [--resident|--no-resident] [--json FILE]

The same random SD1.5 checkpoint (tests/support/checkpoints.py, generated once into .cache/fixtures) through
  core: CheckpointLoaderSimple, CLIPTextEncode, EmptyLatentImage, KSamplerSelect, SamplerCustom, VAEDecode
  pack: Load Checkpoint, CLIP Text Encode, Empty Latent, the pack's sampler node, U-Net Denoise, VAE Decode
(Diffusion Anatomy), both with core's karras sigmas, CFG 7, seed 0, batch 1. Each graph first runs one untimed
2-step warm-up (first calls, allocator); then each round runs every sampler
through both graphs, the order of the graphs alternating from round to round. Reported per sampler and
graph: seconds of sampling (median over rounds, min-max), peak memory while sampling and while decoding,
what stays allocated after ComfyUI unloads the models, and the ratios pack/core (median of per-round ratios).

Memory: on CUDA torch.cuda.max_memory_allocated above what was allocated before the stage (reset per
stage), and memory_allocated after `unload_all_models` + `soft_empty_cache`; on the CPU the peak resident
set size (RSS, /proc/self/statm sampled every 2 ms by a thread) above the RSS before the stage.

`--free-model` replaces the U-Net of both graphs by a free one (eps = 0, through ComfyUI's unet wrapper, so
CFG and model management still run): the per-step cost of everything but the network, in ms/step.

Defaults: 512^2 on CUDA with both graphs resident (ComfyUI's model management moves them); 128^2 on the
CPU, where two fp32 SD1.5 graphs do not fit beside each other in a small machine's memory, so each graph is
built, run and released in its turn (`--no-resident`; loading is not timed).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import threading
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "harness"))  # diffusion_anatomy: the repo root as the pack, without ComfyUI

SAMPLERS = ("euler", "dpmpp_2m", "dpmpp_2m_sde", "uni_pc")
PROMPT, NEGATIVE = "a photograph of a red fox in a snowy forest", "blurry"


def load_comfy(cpu: bool):
    import hostenv

    comfy_dir = hostenv.comfyui_dir()
    sys.path.insert(0, str(comfy_dir))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    import comfy.model_management  # noqa: F401
    import utils.extra_config  # noqa: F401  must precede `nodes`
    import comfy.utils
    import nodes  # noqa: F401

    comfy.utils.PROGRESS_BAR_ENABLED = False  # no tqdm bars in the timed loops (both graphs read this flag)

    return hostenv.comfyui_dir()


class Memory:
    """Peak memory of a stage above its start: CUDA allocator stats, or sampled RSS on the CPU."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def now(self) -> int:
        return torch.cuda.memory_allocated() if self.cuda else self.rss()

    def peak_of(self, fn):
        """(fn's result, peak bytes above the start)."""
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            out = fn()
            torch.cuda.synchronize()
            return out, torch.cuda.max_memory_allocated() - base
        base, peak, done = self.rss(), [0], threading.Event()

        def watch():
            while not done.is_set():
                peak[0] = max(peak[0], self.rss())
                time.sleep(0.002)

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        try:
            out = fn()
        finally:
            done.set()
            thread.join()
        return out, max(peak[0], self.rss()) - base


def sync(cuda: bool):
    if cuda:
        torch.cuda.synchronize()


class CoreGraph:
    name = "core"

    def __init__(self, ckpt: str, size: int):
        import nodes

        self.model, self.clip, self.vae = nodes.CheckpointLoaderSimple().load_checkpoint(ckpt)[:3]
        self.positive = nodes.CLIPTextEncode().encode(self.clip, PROMPT)[0]
        self.negative = nodes.CLIPTextEncode().encode(self.clip, NEGATIVE)[0]
        self.latent = nodes.EmptyLatentImage().generate(size, size, 1)[0]

    def sampler(self, sampler_id: str, noise_type: str | None):
        import comfy.samplers

        return comfy.samplers.sampler_object(sampler_id)

    def sample(self, model, sampler, sigmas):
        from comfy_extras.nodes_custom_sampler import SamplerCustom

        return SamplerCustom.execute(model, True, 0, 7.0, self.positive, self.negative, sampler, sigmas, self.latent)[0]

    def decode(self, latent):
        import nodes

        return nodes.VAEDecode().decode(self.vae, latent)[0]


class PackGraph(CoreGraph):
    name = "pack"

    def __init__(self, ckpt: str, size: int):
        from diffusion_anatomy.nodes import model_nodes

        self.model, self.clip, self.vae = model_nodes.CheckpointLoader().load(ckpt, "auto")
        self.positive = model_nodes.CLIPTextEncode().encode(self.clip, PROMPT)[0]
        self.negative = model_nodes.CLIPTextEncode().encode(self.clip, NEGATIVE)[0]
        self.latent = model_nodes.EmptyLatent().generate(self.model, size, size, 1)[0]

    def sampler(self, sampler_id: str, noise_type: str | None):
        from diffusion_anatomy.nodes.sampler_nodes import make_ksampler
        from diffusion_anatomy.samplers import REGISTRY

        info = REGISTRY[sampler_id]
        options = {o.name: o.default for o in info.options if o.name not in info.fixed_options}
        if noise_type and "noise_type" in options:
            options["noise_type"] = noise_type
        return make_ksampler(info, options)

    def sample(self, model, sampler, sigmas):
        from diffusion_anatomy.nodes.denoise_nodes import UNetDenoise

        return UNetDenoise().denoise(model, self.positive, self.negative, self.latent, sampler, sigmas, 7.0, 0, True)[0]

    def decode(self, latent):
        from diffusion_anatomy.nodes import model_nodes

        return model_nodes.VAEDecode().decode(latent, self.vae, False, 512)[0]


def free(model):
    """A clone whose U-Net is free: eps = 0 through ComfyUI's unet wrapper (CFG, model management still run)."""
    clone = model.clone()
    clone.set_model_unet_function_wrapper(lambda apply, args: torch.zeros_like(args["input"]))
    return clone


def run_graph(graph, samplers, steps, noise_type, free_model, memory, cuda, rows, decode: bool):
    import comfy.model_management as mm
    import comfy.samplers

    model = free(graph.model) if free_model else graph.model
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "karras", steps).cpu()
    mm.load_models_gpu([model])
    graph.sample(model, graph.sampler(samplers[0], noise_type), sigmas[-3:])  # warm-up, untimed: first calls, allocator
    sync(cuda)
    latent = None
    for sampler_id in samplers:
        sampler = graph.sampler(sampler_id, noise_type)
        mm.load_models_gpu([model])  # loading is not what is timed
        sync(cuda)
        start = time.perf_counter()
        latent, peak = memory.peak_of(lambda: graph.sample(model, sampler, sigmas))
        sync(cuda)
        row = rows.setdefault((sampler_id, graph.name), {"seconds": [], "peak": []})
        row["seconds"].append(time.perf_counter() - start)
        row["peak"].append(peak)
    if decode and latent is not None:
        _, peak = memory.peak_of(lambda: graph.decode(latent))
        rows.setdefault(("decode", graph.name), {"seconds": [], "peak": []})["peak"].append(peak)


def release(graph, memory, rows):
    import comfy.model_management as mm

    mm.unload_all_models()
    mm.soft_empty_cache(True)
    gc.collect()
    rows.setdefault(("after_unload", graph.name), {"seconds": [], "peak": []})["peak"].append(memory.now())


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default 512 on CUDA, 128 on the CPU)")
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--noise-type", default=None, help="the pack's SDE samplers' noise type (default: theirs, brownian)")
    parser.add_argument("--free-model", action="store_true", help="a free U-Net: sampler and node overhead per step")
    parser.add_argument("--resident", action=argparse.BooleanOptionalAction, default=None,
                        help="build both graphs once and keep them (default on CUDA)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even where CUDA is available")
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()

    cuda = torch.cuda.is_available() and not args.cpu
    comfy_dir = load_comfy(cpu=not cuda)
    import folder_paths

    from support.checkpoints import FIXTURES, sd15_random_checkpoint

    ckpt = sd15_random_checkpoint(types.SimpleNamespace(dir=comfy_dir)).name
    folder_paths.add_model_folder_path("checkpoints", str(FIXTURES))
    size = args.size or (512 if cuda else 128)
    resident = cuda if args.resident is None else args.resident
    samplers = [s for s in args.samplers.split(",") if s]
    memory = Memory(cuda)
    rows: dict = {}
    device = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"node path: SD1.5 (random weights) at {size}x{size}, batch 1, CFG 7, {args.steps} steps karras, "
          f"{args.rounds} interleaved rounds, {'both graphs resident' if resident else 'one graph at a time'}, "
          f"{'free U-Net' if args.free_model else 'real U-Net'}, {device}", flush=True)

    kept = {cls.name: cls(ckpt, size) for cls in (CoreGraph, PackGraph)} if resident else {}
    for r in range(args.rounds):
        order = (CoreGraph, PackGraph) if r % 2 == 0 else (PackGraph, CoreGraph)
        for cls in order:
            graph = kept.get(cls.name) or cls(ckpt, size)
            run_graph(graph, samplers, args.steps, args.noise_type, args.free_model, memory, cuda, rows,
                      decode=not args.free_model)
            if not resident:
                release(graph, memory, rows)
                del graph
                gc.collect()
        print(f"  round {r + 1}/{args.rounds} done", flush=True)
    if resident:
        for graph in kept.values():
            release(graph, memory, rows)

    results = {}
    print(f"{'stage':<14} {'core s':>8} {'pack s':>8} {'pack/core':>9}   {'core peak':>10} {'pack peak':>10} {'pack/core':>9}"
          + ("   ms/step core, pack" if args.free_model else ""))
    for stage in [*samplers, "decode", "after_unload"]:
        core, ours = rows.get((stage, "core")), rows.get((stage, "pack"))
        if not core or not ours:
            continue
        res = {"core_peak_bytes": max(core["peak"]), "pack_peak_bytes": max(ours["peak"])}
        line = f"{stage:<14} "
        if core["seconds"]:
            res["core_s"], res["pack_s"] = statistics.median(core["seconds"]), statistics.median(ours["seconds"])
            res["core_s_range"] = [min(core["seconds"]), max(core["seconds"])]
            res["pack_s_range"] = [min(ours["seconds"]), max(ours["seconds"])]
            res["time_ratio"] = statistics.median(p / c for p, c in zip(ours["seconds"], core["seconds"]))
            line += f"{res['core_s']:8.3f} {res['pack_s']:8.3f} {res['time_ratio']:9.3f}   "
        else:
            line += f"{'':8} {'':8} {'':9}   "
        ratio = res["pack_peak_bytes"] / res["core_peak_bytes"] if res["core_peak_bytes"] > 0 else float("nan")
        res["memory_ratio"] = ratio
        line += f"{gib(res['core_peak_bytes']):>10} {gib(res['pack_peak_bytes']):>10} {ratio:9.3f}"
        if args.free_model and core["seconds"]:
            res["core_ms_per_step"] = 1e3 * res["core_s"] / args.steps
            res["pack_ms_per_step"] = 1e3 * res["pack_s"] / args.steps
            line += f"   {res['core_ms_per_step']:.2f}, {res['pack_ms_per_step']:.2f}"
        print(line)
        results[stage] = res
    print("(after_unload: memory still allocated after unload_all_models; on the CPU the process RSS, weights freed "
          "by Python may stay mapped)" if not cuda else "(after_unload: CUDA memory still allocated)")
    if args.json:
        Path(args.json).write_text(json.dumps({"size": size, "steps": args.steps, "free_model": args.free_model,
                                               "device": device, "results": results}, indent=1))


if __name__ == "__main__":
    main()
