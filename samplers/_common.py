"""Small helpers named after the maths, shared by the sampler functions.

Conventions of every sampler (k-diffusion's): `model(x, sigma * s_in, **extra_args)` returns the
denoised estimate x0; `sigmas` is descending and ends in 0; `callback` gets
{'x', 'i', 'sigma', 'sigma_hat', 'denoised'} once per step.
Samplers keep the loop free of host-device syncs: step-size decisions use `sigmas.tolist()` taken
once before the loop, never `.item()` or a Python comparison of device tensors inside it.
"""
from __future__ import annotations

import math

import torch


def to_d(x: torch.Tensor, sigma: torch.Tensor | float, denoised: torch.Tensor) -> torch.Tensor:
    """dx/dsigma of the probability-flow ODE, (x - D(x, sigma)) / sigma (Karras et al. 2206.00364, eq. 4)."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step sigma_from -> sigma_to into a deterministic part to sigma_down and fresh noise sigma_up.

    sigma_down^2 + sigma_up^2 = sigma_to^2, sigma_up = eta * sqrt(sigma_to^2 (sigma_from^2 - sigma_to^2) / sigma_from^2)
    (the DDPM posterior variance in sigma form). Python floats in, floats out.
    """
    if eta == 0 or sigma_to == 0:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
    sigma_down = math.sqrt(sigma_to**2 - sigma_up**2)
    return sigma_down, sigma_up


def s_in_like(x: torch.Tensor) -> torch.Tensor:
    """A ones vector of the batch size, so a scalar sigma becomes one sigma per sample."""
    return x.new_ones([x.shape[0]])


def t_of(sigma: float) -> float:
    """DPM-Solver's time variable t = -log(sigma) (half the log-SNR lambda for VE/EDM parametrisation).

    sigma = 0 gives t = +inf, as torch's -log(0) does in k-diffusion: an ancestral split with eta so
    large that sigma_down = 0 then has its target clipped to the end of the interval, as there."""
    return math.inf if sigma == 0 else -math.log(sigma)


def sigma_of(t: float) -> float:
    return math.exp(-t)
