"""Benchmark: what the cross-attention capture (Cross-Attention Capture node) costs during sampling.

    python bench/anatomy_attention.py [--size 256] [--steps 4] [--runs 3]   (the host's Python)

SD1.5 at full width (the random SD1.5 checkpoint of the tests, `.cache/fixtures`, made on first use),
loaded by core's loader, sampled with core's Euler and CFG 5 (batch 2: positive and negative), once
with the plain MODEL and once with the MODEL from the capture node, alternating which goes first, in
one process. Prints time per sampling (median of the runs) and the ratio capture/plain, and the
memory: on CPU the peak resident memory during sampling (polled every 2 ms) in total and above what
the process held before sampling (the working memory); on CUDA (a host run without --cpu) torch's peak allocated memory.
The issue's bound: at most 15% more time and 10% more memory at 512x512 (here: the size given).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "harness"))  # diffusion_anatomy: the repo root as the pack, without ComfyUI


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class PeakRSS:
    """Peak resident memory while the block runs (a thread polls /proc/self/statm)."""

    def __enter__(self):
        self.base = self.peak = rss()
        self.running = True
        self.thread = threading.Thread(target=self.poll, daemon=True)
        self.thread.start()
        return self

    def poll(self):
        while self.running:
            self.peak = max(self.peak, rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, rss())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    import hostenv
    from support.inprocess import load_comfy

    comfy = load_comfy(hostenv.comfyui_dir())
    import comfy.sample as comfy_sample

    from diffusion_anatomy.nodes.anatomy_attention_nodes import CrossAttentionCapture
    from support.checkpoints import sd15_random_checkpoint

    path = sd15_random_checkpoint(comfy)
    model, clip, _vae, _ = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=False, output_clip=True)
    captured, maps = CrossAttentionCapture().capture(model)
    positive = clip.encode_from_tokens_scheduled(clip.tokenize("a photograph of an astronaut riding a horse"))
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
            t = time.perf_counter()
            comfy_sample.sample_custom(m, noise, 5.0, sampler, sigmas, positive, negative, latent, seed=0, disable_pbar=True)
            if cuda:
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - t
        peak = torch.cuda.max_memory_allocated() if cuda else mem.peak
        return elapsed, peak, mem.peak - mem.base

    run(model)  # warm-up: loads the weights, first-call costs
    run(captured)
    times = {"plain": [], "capture": []}
    peaks = {"plain": [], "capture": []}
    work = {"plain": [], "capture": []}
    for r in range(args.runs):
        order = (("plain", model), ("capture", captured)) if r % 2 == 0 else (("capture", captured), ("plain", model))
        for name, m in order:
            t, p, w = run(m)
            times[name].append(t)
            peaks[name].append(p)
            work[name].append(w)
    assert maps.calls == 16 * args.steps, maps.calls  # the capture did run: 16 cross-attention layers per step

    med = {k: statistics.median(v) for k, v in times.items()}
    peak = {k: max(v) for k, v in peaks.items()}
    wk = {k: max(v) for k, v in work.items()}
    gib = 2**30
    print(f"SD1.5 U-Net (random weights), {args.size}x{args.size}, Euler {args.steps} steps, CFG 5, device {comfy.model_management.get_torch_device()}, {args.runs} interleaved runs")
    print(f"time per sampling   plain {med['plain']:.2f} s   capture {med['capture']:.2f} s   ratio {med['capture'] / med['plain']:.3f}")
    kind = "CUDA peak allocated" if cuda else "peak RSS"
    print(f"{kind:18s}  plain {peak['plain'] / gib:.3f} GiB  capture {peak['capture'] / gib:.3f} GiB  ratio {peak['capture'] / peak['plain']:.3f}")
    if not cuda:
        print(f"working memory      plain {wk['plain'] / gib:.3f} GiB  capture {wk['capture'] / gib:.3f} GiB  "
              f"(peak RSS above the RSS before each sampling)")


if __name__ == "__main__":
    main()
