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


# Noise types of the ComfyUI-Extra-Samplers pack, offered by samplers that take `noise_type`.
NOISE_TYPES = ("gaussian", "uniform", "brownian", "pyramid", "highres-pyramid", "perlin", "laplacian")


def make_noise_sampler(kind: str, x: torch.Tensor, seed: int | None, sigma_min: float, sigma_max: float, cpu: bool = True):
    """The noise sampler of type `kind` for x, seeded; `sigma_min/max` bound a Brownian tree.

    `cpu=True` keeps a Brownian tree on the CPU (core's default); False draws it on x's device.
    """
    if kind == "gaussian":
        return default_noise_sampler(x, seed)
    raise NotImplementedError(f"noise type {kind!r}")
