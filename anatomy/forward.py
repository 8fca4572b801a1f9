"""Forward diffusion: noise added to a clean latent x0, step by step, as the schedule says.

The source document writes the forward process in the variance-preserving (VP) form of DDPM
(Ho et al. 2020, arXiv 2006.11239, eq. 4):

    x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * eps,      eps ~ N(0, I)

ComfyUI (like k-diffusion, Karras et al. 2022, arXiv 2206.00364) samples in the variance-exploding
form x_sigma = x0 + sigma * eps. The two are the same point up to a scale:

    sigma_t = sqrt((1 - abar_t) / abar_t)   <=>   sqrt(abar_t) = 1 / sqrt(1 + sigma_t^2),
    x_t = x_sigma / sqrt(1 + sigma_t^2).

The views show x_t (the document's picture); the LATENT handed on is x_sigma, what ComfyUI's
samplers start from.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from PIL import Image

from . import draw


def sqrt_alpha_bar(sigma: float) -> float:
    """sqrt(abar_t) for the noise level sigma_t: the clean latent's share in x_t."""
    return 1.0 / math.sqrt(1.0 + sigma * sigma)


def sqrt_one_minus_alpha_bar(sigma: float) -> float:
    """sqrt(1 - abar_t): the noise's share in x_t."""
    return sigma / math.sqrt(1.0 + sigma * sigma)


def vp_from_ve(x_sigma: torch.Tensor, sigma: float) -> torch.Tensor:
    """x_t (the document's form) from x_sigma (ComfyUI's form)."""
    return x_sigma * sqrt_alpha_bar(sigma)


def parse_timesteps(text: str, count: int, last: int) -> list[int]:
    """The timesteps to show: the comma-separated list `text` if given, else `count` evenly spaced in 0..last.

    Raises ValueError naming the input for a value that is not an integer in 0..last."""
    text = text.strip()
    if not text:
        if count < 1:
            raise ValueError(f"Forward Diffusion: count must be at least 1 when timesteps is empty, got {count}")
        if count == 1:
            return [last]
        return sorted({round(k * last / (count - 1)) for k in range(count)})
    steps = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            t = int(part)
        except ValueError:
            raise ValueError(f"Forward Diffusion: timesteps must be whole numbers separated by commas; {part!r} is not") from None
        if not 0 <= t <= last:
            raise ValueError(f"Forward Diffusion: timestep {t} is out of range; this model's timesteps run from 0 to {last}")
        steps.append(t)
    if not steps:
        raise ValueError(f"Forward Diffusion: timesteps {text!r} holds no number")
    return steps


@dataclass(frozen=True)
class NoisedFrame:
    t: int
    sigma: float
    picture: Image.Image  # decoded x_t


def forward_strip(clean: Image.Image, frames: Sequence[NoisedFrame], min_side: int = 128) -> Image.Image:
    """The clean picture x0 followed by x_t for each t, each labelled with t, sigma and sqrt(abar_t)."""
    pictures = [draw.upscale(clean, min_side)] + [draw.upscale(f.picture, min_side) for f in frames]
    captions = ["x0 (clean)\nt = 0"] + [
        f"t = {f.t}\nsigma = {f.sigma:.3g}\nsqrt(abar) = {sqrt_alpha_bar(f.sigma):.3f}" for f in frames]
    title = "Forward diffusion: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps   (noise added step by step, a Markov chain)"
    return draw.strip(pictures, captions, title=title)
