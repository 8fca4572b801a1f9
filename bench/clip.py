"""Benchmark: SD1 prompt -> conditioning, ours against ComfyUI's (`SD1Tokenizer` + `SD1ClipModel`).

    python bench/clip.py [--runs 7] [--device cpu|cuda] [--threads N]     (run with the host's Python)

Full ViT-L/14 text tower (123M parameters), float32, the same seeded random weights in both (one
copy: both models are built on the meta device and get the same tensors assigned), so the numbers
compare code, not weights. For a few prompts (plain, weighted, two chunks) it times tokenization and
encoding separately: median of `--runs` after one warm-up, and prints ours/core.
ComfyUI is imported from the host (`harness/hostenv.py`: COMFYUI_PATH or DA_HOST_DIR).
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

from diffusion_anatomy.clip.encoder import SD1, TextEncoder  # noqa: E402
from diffusion_anatomy.clip.tokenizer import BPETokenizer, find_tokenizer_dir  # noqa: E402

PROMPTS = {
    "plain": "a photo of an astronaut riding a horse on mars, highly detailed",
    "weighted": "(masterpiece:1.2), best quality, (detailed eyes), ((sharp focus)), (bad hands:0.5)",
    "2 chunks": ", ".join(f"{a} {n}" for a in ("red", "shiny", "ancient", "tiny", "glowing", "wet", "broken")
                          for n in ("castle", "forest", "robot", "river", "lantern")),
}


def load_comfy(device: str):
    import hostenv

    comfy_dir = hostenv.comfyui_dir()
    sys.path.insert(0, str(comfy_dir))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = device == "cpu"
    import comfy.model_management  # noqa: F401  (reads args.cpu)
    import comfy.sd1_clip

    return comfy_dir, comfy.sd1_clip


def random_weights(shapes: dict[str, torch.Size], device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for k, shape in sorted(shapes.items()):
        scale, base = (0.05, 1.0 if k.endswith("weight") else 0.0) if "norm" in k else (0.02, 0.0)
        out[k] = (base + scale * torch.randn(shape, generator=g)).to(device)
    return out


def median_seconds(fns, runs: int, device: str) -> list[float]:
    """Median time of each callable; runs interleaved (a, b, a, b, ...) so that load from other
    processes hits both alike. The first round warms up."""
    times = [[] for _ in fns]
    for r in range(runs + 1):
        for fn, ts in zip(fns, times):
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            if r:
                ts.append(time.perf_counter() - t)
    return [statistics.median(ts) for ts in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    comfy_dir, sd1_clip = load_comfy(args.device)
    ours = TextEncoder(SD1, device="meta")
    weights = random_weights({k: v.shape for k, v in ours.state_dict().items()}, args.device)
    ours.load_state_dict(weights, assign=True)
    theirs = sd1_clip.SD1ClipModel(device="meta", dtype=torch.float32)
    extra = {k: torch.zeros(v.shape, device=args.device) for k, v in theirs.state_dict().items() if k not in weights}
    theirs.load_state_dict({**weights, **extra}, assign=True)
    ours.eval(), theirs.eval()

    bpe = BPETokenizer.from_dir(find_tokenizer_dir(comfy_dir))
    tokenizer = sd1_clip.SD1Tokenizer()
    print(f"SD1 CLIP ViT-L/14, float32, {args.device}, threads={torch.get_num_threads()}, median of {args.runs}")
    print(f"{'prompt':<10} {'stage':<9} {'ours ms':>9} {'core ms':>9} {'ours/core':>9}")
    for name, prompt in PROMPTS.items():
        # both tokenizers cache BPE per word; after the warm-up run both are timed warm
        t_ours, t_core = median_seconds([lambda: ours.tokenize(prompt, bpe),
                                         lambda: tokenizer.tokenize_with_weights(prompt)], args.runs, "cpu")
        print(f"{name:<10} {'tokenize':<9} {t_ours * 1e3:9.2f} {t_core * 1e3:9.2f} {t_ours / t_core:9.2f}")
        our_tokens, core_tokens = ours.tokenize(prompt, bpe), tokenizer.tokenize_with_weights(prompt)
        with torch.inference_mode():
            e_ours, e_core = median_seconds([lambda: ours.encode(our_tokens),
                                             lambda: theirs.encode_token_weights(core_tokens)], args.runs, args.device)
        print(f"{name:<10} {'encode':<9} {e_ours * 1e3:9.2f} {e_core * 1e3:9.2f} {e_ours / e_core:9.2f}")


if __name__ == "__main__":
    main()
