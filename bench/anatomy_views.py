"""Benchmark: what the Denoising Steps view costs sampling, and that sampling without a view costs nothing extra.

    python bench/anatomy_views.py [--runs 9] [--steps 20]     (run with the host's Python)

Text-to-image with the embedded model through U-Net Denoise (CPU, 64x64, cfg 5), median of `--runs`
interleaved runs of three set-ups: the plain sampler twice (A and A', the noise floor of this machine)
and the sampler wrapped by the Denoising Steps Recorder (live preview off). Without a view nothing is
installed: the sampler is the one the user picked, and the model's patches and wrappers stay as they were.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "harness"))  # diffusion_anatomy: the repo root as the pack, without ComfyUI


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)

    import hostenv
    from support.inprocess import load_comfy

    load_comfy(hostenv.comfyui_dir())
    import comfy.samplers
    import comfy.utils

    comfy.utils.PROGRESS_BAR_ENABLED = False  # no tqdm output in the table

    from diffusion_anatomy.embedded import LOADER_NAME
    from diffusion_anatomy.nodes import anatomy_nodes, denoise_nodes, model_nodes
    from diffusion_anatomy.nodes.schedule_nodes import model_schedule

    model, clip, _ = model_nodes.CheckpointLoader().load(LOADER_NAME, "auto")
    (pos,) = model_nodes.CLIPTextEncode().encode(clip, "a large red circle at the top left on a blue background")
    (neg,) = model_nodes.CLIPTextEncode().encode(clip, "")
    (latent,) = model_nodes.EmptyLatent().generate(model, 64, 64, 1)
    sigmas = model_schedule(model, "karras", args.steps, 1.0)
    before = (dict(model.model_options.get("transformer_options", {})), len(model.object_patches))

    def run(sampler) -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        out, _ = denoise_nodes.UNetDenoise().denoise(model, pos, neg, latent, sampler, sigmas, 5.0, 1, True)
        return time.perf_counter() - start, out["samples"]

    plain = comfy.samplers.sampler_object("dpmpp_2m")
    recorded, recording = anatomy_nodes.DenoisingStepsRecorder().wrap(comfy.samplers.sampler_object("dpmpp_2m"), 1, False)
    times = {"plain A": [], "plain A'": [], "with view": []}
    reference = run(plain)[1]  # warm-up; the plain run before each view run replaces it
    for _ in range(args.runs):
        for name, sampler in (("plain A", plain), ("with view", recorded), ("plain A'", plain)):
            seconds, out = run(sampler)
            times[name].append(seconds)
            if name == "with view":
                assert torch.equal(out, reference)
            else:
                reference = out
    assert (dict(model.model_options.get("transformer_options", {})), len(model.object_patches)) == before, "a view left something installed"
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"embedded model, {args.steps} steps dpmpp_2m, median of {args.runs} interleaved runs (CPU, 1 thread)")
    print(f"{'set-up':<12} {'median s':>9} {'ratio to plain A':>17}")
    for k, v in med.items():
        print(f"{k:<12} {v:9.3f} {v / med['plain A']:17.3f}")
    print(f"steps recorded per run: {len(recording.steps)}; latents bit-identical with and without the view: yes")


if __name__ == "__main__":
    main()
