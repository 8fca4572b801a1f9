"""Benchmark: the shipped embedded model's sampling speed against another file of its world, in one run (issue 20).

    python bench/embedded.py [--baseline-rev 9379ac9 | --baseline OLD.safetensors] [--runs 9] [--batch 8] [--run-sh]
                                                                              (run with the host's Python)

Text to image in pure torch (`embedded.sample.sample`: Euler, 20 steps, CFG 5, `--batch` held-out prompts, one
thread), the two files interleaved, median of `--runs` after one warm-up each: seconds per step and the ratio
shipped / baseline. With `--run-sh`, also `host/run.sh` from start to written image with each file (`--checkpoint`,
a fresh ComfyUI each time, interleaved, median of 3) and its ratio. The baseline defaults to the file the pack
shipped before issue 20's retraining (git revision 9379ac9).
"""
from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "harness"))  # diffusion_anatomy (the repo root as the pack, without ComfyUI), comfy_server


def sampling_seconds(model, bpe, prompts: list[str], steps: int) -> float:
    from diffusion_anatomy.embedded.sample import sample

    t0 = time.perf_counter()
    sample(model, prompts, bpe, steps=steps, cfg=5.0, seed=list(range(len(prompts))), sampler="euler")
    return time.perf_counter() - t0


def run_sh_seconds(checkpoint: Path, work: Path) -> float:
    from comfy_server import free_port

    t0 = time.perf_counter()
    done = subprocess.run(["bash", str(ROOT / "host" / "run.sh"), "--port", str(free_port()), "--work", str(work),
                           "--checkpoint", str(checkpoint)], capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - t0
    if done.returncode != 0 or not re.search(r"\[run\] image written: ", done.stdout):
        raise SystemExit(f"host/run.sh failed with {checkpoint}:\n{done.stdout}\n{done.stderr}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", type=Path, help="the other model file")
    ap.add_argument("--baseline-rev", default="9379ac9", help="else: embedded/tiny_shapes_sd1.safetensors at this git revision")
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--run-sh", action="store_true", help="also time host/run.sh start to image with each file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)

    from diffusion_anatomy.clip.tokenizer import BPETokenizer
    from diffusion_anatomy.embedded import WEIGHTS
    from diffusion_anatomy.embedded.data import eval_captions
    from diffusion_anatomy.embedded.sample import load
    from diffusion_anatomy.embedded.train import default_tokenizer_dir

    tmp = Path(tempfile.mkdtemp(prefix="da-bench-embedded-"))
    try:
        baseline = args.baseline
        if baseline is None:
            baseline = tmp / "baseline" / "baseline.safetensors"
            baseline.parent.mkdir()
            baseline.write_bytes(subprocess.run(["git", "show", f"{args.baseline_rev}:embedded/tiny_shapes_sd1.safetensors"],
                                                cwd=ROOT, capture_output=True, check=True).stdout)
        files = {"shipped": WEIGHTS, "baseline": baseline}
        models = {name: load(path) for name, path in files.items()}
        bpe = BPETokenizer.from_dir(default_tokenizer_dir())
        prompts = [c.text for c in eval_captions(args.batch, torch.Generator().manual_seed(0))]
        times: dict[str, list[float]] = {name: [] for name in files}
        for name, model in models.items():
            sampling_seconds(model, bpe, prompts, args.steps)  # warm-up
        for _ in range(args.runs):
            for name, model in models.items():
                times[name].append(sampling_seconds(model, bpe, prompts, args.steps))
        per_step = {name: statistics.median(t) / args.steps for name, t in times.items()}
        print(f"sampling, Euler {args.steps} steps, CFG 5, batch {args.batch}, 1 thread, median of {args.runs}:")
        for name in files:
            print(f"  {name:9s} {1000 * per_step[name]:.2f} ms per step  ({files[name].name})")
        print(f"  ratio shipped / baseline: {per_step['shipped'] / per_step['baseline']:.3f}")
        if args.run_sh:
            shipped_copy = tmp / "shipped" / "shipped.safetensors"  # both through --checkpoint: the same path in run.sh
            shipped_copy.parent.mkdir()
            shutil.copy(WEIGHTS, shipped_copy)
            ckpts = {"shipped": shipped_copy, "baseline": baseline}
            runs: dict[str, list[float]] = {name: [] for name in ckpts}
            for i in range(3):
                for name, path in ckpts.items():
                    runs[name].append(run_sh_seconds(path, tmp / f"work_{name}_{i}"))
            med = {name: statistics.median(r) for name, r in runs.items()}
            print("host/run.sh start to image (--checkpoint, fresh ComfyUI), median of 3: "
                  + ", ".join(f"{name} {med[name]:.1f} s" for name in ckpts)
                  + f"; ratio shipped / baseline {med['shipped'] / med['baseline']:.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
