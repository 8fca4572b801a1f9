"""Noise sources for stochastic samplers.

A noise sampler is a callable `noise_sampler(sigma, sigma_next) -> Tensor` shaped like x.
"""
from __future__ import annotations

import torch


def default_noise_sampler(x: torch.Tensor, seed: int | None = None):
    """Seeded standard gaussian noise, drawn on x's device.

    Same stream as ComfyUI core's `default_noise_sampler` (a torch.Generator on x.device seeded with
    `seed`), so a stochastic sampler gives core's numbers for the same seed.
    """
    generator = None
    if seed is not None:
        generator = torch.Generator(device=x.device)
        generator.manual_seed(seed)

    def sample(sigma, sigma_next):
        return torch.randn(x.size(), dtype=x.dtype, layout=x.layout, device=x.device, generator=generator)

    return sample
