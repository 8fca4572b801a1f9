"""Benchmark: what recording a run for the Anatomy Explorer costs, and how much data a run is.

    python bench/explorer.py [--size 256] [--steps 4] [--runs 3] [--levels-every 5]   (the host's Python)
    python bench/explorer.py --data-only                                                 (data per run only)

Time and memory: SD1.5 at full width (the tests' random SD1.5 checkpoint, core's loader), core's Euler,
CFG 5, sampled with the plain MODEL and with Anatomy Explorer Capture's MODEL (pictures = latent_preview:
ComfyUI's linear preview, no VAE; word maps per step and level; the U-Net levels every k-th step; the run
written to the store), alternating which goes first, in one process. Prints the median time per sampling
and the ratio capture/plain, and the peak resident memory during sampling (polled every 2 ms; on CUDA,
torch's peak allocated). The issue's bound at SD1.5 512x512, 20 steps: at most 15% more time and 10% more memory.

Data per run: the run writer itself (anatomy.explorer.write_run) on a recording with SD1.5's shapes at
512x512 (latent 4x64x64, the 24 levels, the prompt's 9 tokens) for 20 and 50 steps, filled with random
numbers: random pictures are the worst case for PNG, so real runs are smaller. Both picture modes: vae
tiles (128x128) and latent_preview tiles (64x64). The issue's bound: 15 MB for 20 steps at 512x512.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "harness"))  # diffusion_anatomy: the repo root as the pack, without ComfyUI
import diffusion_anatomy  # noqa: E402,F401

PROMPT = "a photograph of an astronaut riding a horse"


def data_per_run(steps: int, pictures: str, levels_every: int = 5) -> int:
    """Bytes the writer stores for a 512x512 SD1.5 run of `steps` steps, from random tensors of the real shapes."""
    from diffusion_anatomy.anatomy import explorer as ex
    from diffusion_anatomy.anatomy import levels as lv
    from diffusion_anatomy.unet import SD15

    g = torch.Generator().manual_seed(0)
    tokens = [ex.Token("<BOS>", "bos", (0,))] + [ex.Token(w, "word", (i + 1,)) for i, w in enumerate(PROMPT.split())] + [ex.Token("<EOS>", "eos", (8,))]
    rec = ex.Recording(tokens=tokens, levels_every=levels_every)
    rec.reset(torch.linspace(14.6, 0, steps + 1).tolist())
    for i in range(steps):
        rand = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
        rec.steps.append(ex.StepRecord(i, rec.sigmas[i], rand(4, 64, 64), rand(4, 64, 64), rand(4, 64, 64), rand(4, 64, 64), 5.0,
                                       torch.rand(3, len(tokens), 64, 64, generator=g)))
        if i % levels_every == 0 or i == steps - 1:
            rec.levels[i] = {level.name: ex.level_pictures(torch.randn(*level.shape, generator=g)) for level in lv.level_shapes(SD15, 64, 64)}
    info = ex.RunInfo(run_id="bench", label="", prompt=PROMPT, model="sd15", width=512, height=512, pictures=pictures)
    decode = (lambda z: torch.rand(len(z), 512, 512, 3, generator=g)) if pictures == "vae" else None
    preview = ex.preview_map(torch.randn(4, 3, generator=g) * 0.3)
    with tempfile.TemporaryDirectory() as folder:
        return ex.write_run(Path(folder), info, rec, decode, preview, "complete")["bytes"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--levels-every", type=int, default=5)
    ap.add_argument("--data-only", action="store_true")
    args = ap.parse_args()

    for steps in (20, 50):
        for pictures in ("vae", "latent_preview"):
            print(f"data per run, SD1.5 512x512, {steps} steps, pictures={pictures}, levels every 5: "
                  f"{data_per_run(steps, pictures) / 2**20:.2f} MiB (random tensors: PNG's worst case)")
    if args.data_only:
        return

    import hostenv
    from anatomy_attention import PeakRSS
    from support.inprocess import load_comfy

    comfy = load_comfy(hostenv.comfyui_dir())
    import comfy.sample as comfy_sample
    import folder_paths

    from diffusion_anatomy.nodes.explorer_nodes import ExplorerCapture, store
    from support.checkpoints import sd15_random_checkpoint

    folder_paths.set_temp_directory(tempfile.mkdtemp())
    path = sd15_random_checkpoint(comfy)
    model, clip, _vae, _ = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=False, output_clip=True)
    (captured,) = ExplorerCapture().capture(model, clip, PROMPT, "latent_preview", args.levels_every, 4, "bench")
    recording = captured.model_options["sampler_post_cfg_function"][-1].__self__
    positive = clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT))
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "karras", args.steps)
    latent = torch.zeros(1, 4, args.size // 8, args.size // 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    sampler = comfy.samplers.sampler_object("euler")
    cuda = comfy.model_management.get_torch_device().type == "cuda"

    def run(m):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        with PeakRSS() as mem:
            t = __import__("time").perf_counter()
            out = comfy_sample.sample_custom(m, noise, 5.0, sampler, sigmas, positive, negative, latent, seed=0, disable_pbar=True)
            if cuda:
                torch.cuda.synchronize()
            elapsed = __import__("time").perf_counter() - t
        return elapsed, (torch.cuda.max_memory_allocated() if cuda else mem.peak), out

    run(model)  # warm-up: loads the weights, first-call costs
    run(captured)
    times, peaks, outs = {"plain": [], "capture": []}, {"plain": [], "capture": []}, {}
    for r in range(args.runs):
        order = (("plain", model), ("capture", captured)) if r % 2 == 0 else (("capture", captured), ("plain", model))
        for name, m in order:
            t, p, outs[name] = run(m)
            times[name].append(t)
            peaks[name].append(p)
    assert len(recording.steps) == args.steps and recording.attention_calls == 16 * args.steps
    assert torch.equal(outs["plain"], outs["capture"]), "the capture changed the sampled latent"
    index = store().index(store().run_ids()[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    peak = {k: max(v) for k, v in peaks.items()}
    print(f"SD1.5 U-Net (random weights), {args.size}x{args.size}, Euler {args.steps} steps, CFG 5, levels every {args.levels_every}, "
          f"device {comfy.model_management.get_torch_device()}, {args.runs} interleaved runs; sampled latents bit-identical")
    print(f"time per sampling   plain {med['plain']:.2f} s   capture {med['capture']:.2f} s   ratio {med['capture'] / med['plain']:.3f}")
    kind = "CUDA peak allocated" if cuda else "peak RSS"
    print(f"{kind}   plain {peak['plain'] / 2**30:.3f} GiB   capture {peak['capture'] / 2**30:.3f} GiB   ratio {peak['capture'] / peak['plain']:.3f}")
    print(f"this run's data: {index['bytes'] / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
