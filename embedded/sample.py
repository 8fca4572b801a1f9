"""Draw with a trained embedded model: load the file, Euler with classifier-free guidance, decode.

A minimal, self-contained sampler for checking a training run (the nodes use the pack's samplers):
Euler's method on the probability-flow ODE in sigma space (Karras et al. 2022, arXiv:2206.00364,
Algorithm 1 with no churn; k-diffusion's `sample_euler`), on SD1's discrete schedule: sigma_t =
sqrt((1 - abar_t) / abar_t) at `steps` evenly spaced timesteps from 999 down to 0, then 0. The
network sees x / sqrt(1 + sigma^2) and the timestep t itself (no interpolation needed: every sigma
is one of the training sigmas). CFG: eps = eps_uncond + cfg * (eps_cond - eps_uncond) (Ho & Salimans 2022).

    python embedded/sample.py tiny.safetensors "a large red circle in the centre on a blue background" out.png
"""
from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__" and not __package__:  # run as a script: import the repo root as the pack
    _root = Path(__file__).resolve().parents[1]
    if "diffusion_anatomy" not in sys.modules:
        _pack = types.ModuleType("diffusion_anatomy")
        _pack.__path__ = [str(_root)]
        sys.modules["diffusion_anatomy"] = _pack
    __package__ = "diffusion_anatomy.embedded"

import torch

from ..checkpoint.reader import load_checkpoint
from ..clip.encoder import TextEncoder
from ..clip.tokenizer import BPETokenizer
from ..unet.model import UNetModel
from ..vae.model import AutoencoderKL
from .config import TinyConfig, from_metadata
from .train import Prompts, default_tokenizer_dir, sd1_alphas_cumprod


@dataclass
class TinyModel:
    config: TinyConfig
    unet: UNetModel
    vae: AutoencoderKL
    text_encoder: TextEncoder


def load(path: str | Path) -> TinyModel:
    """The three networks of an embedded-model file, float32, eval mode."""
    ck = load_checkpoint(path, dtype=torch.float32)
    config = from_metadata(ck.metadata)
    vae = AutoencoderKL(config.vae)
    vae.load_state_dict(dict(ck.vae.items()))
    text_encoder = TextEncoder(config.text_encoder)
    text_encoder.load_checkpoint(dict(ck.tensors("", torch.float32).items()))
    return TinyModel(config, ck.unet.float().eval(), vae.eval(), text_encoder.eval())


@torch.no_grad()
def sample(model: TinyModel, prompts: list[str], bpe: BPETokenizer, steps: int = 20, cfg: float = 5.0,
           seed: int = 0) -> torch.Tensor:
    """[n, 3, 64, 64] images in about [-1, 1], one per prompt."""
    n = len(prompts)
    encoder = Prompts(bpe, model.text_encoder)
    context = encoder.encode(model.text_encoder, list(prompts) + [""] * n)
    abar = sd1_alphas_cumprod()
    timesteps = torch.linspace(len(abar) - 1, 0, steps).round().long().tolist()
    sigmas = [((1 - abar[t]) / abar[t]).sqrt().item() for t in timesteps] + [0.0]
    side = 64 // model.config.vae.downscale
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, model.config.unet.in_channels, side, side, generator=g, dtype=torch.float64) * sigmas[0]
    for t, sigma, sigma_next in zip(timesteps, sigmas, sigmas[1:]):
        scaled = (x / (1 + sigma**2) ** 0.5).float().repeat(2, 1, 1, 1)
        eps_cond, eps_uncond = model.unet(scaled, torch.full((2 * n,), float(t)), context).double().chunk(2)
        eps = eps_uncond + cfg * (eps_cond - eps_uncond)
        x = x + (sigma_next - sigma) * eps  # dx/dsigma = eps on the PF-ODE
    return model.vae.decode(model.vae.from_latent(x.float()))


def main(argv=None) -> None:
    args = sys.argv[1:] if argv is None else argv
    path, prompt, out = args[0], args[1], Path(args[2])
    image = sample(load(path), [prompt], BPETokenizer.from_dir(default_tokenizer_dir()))[0]
    from PIL import Image  # only the command line needs PIL (ComfyUI's venv has it)

    pixels = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(pixels).save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
