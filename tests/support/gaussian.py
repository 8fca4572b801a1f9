"""Gaussian data N(mu, s^2): a denoiser and a probability-flow ODE that are exact.

For x = y + sigma * n with y ~ N(mu, s^2) the ideal denoiser is
    D(x, sigma) = mu + (x - mu) * s^2 / (s^2 + sigma^2),
so the PF-ODE dx/dsigma = (x - D) / sigma = (x - mu) * sigma / (s^2 + sigma^2) has the solution
    x(sigma_b) = mu + (x(sigma_a) - mu) * sqrt((s^2 + sigma_b^2) / (s^2 + sigma_a^2)).
Errors against it, as steps double, give a solver's order of convergence.
"""
from __future__ import annotations

import math

import torch


class GaussianDenoiser:
    """`model(x, sigma, **extra_args) -> x0` for data N(mu, s^2); counts its calls."""

    def __init__(self, mu: float | torch.Tensor = 0.3, s: float = 0.5):
        self.mu, self.s = mu, s
        self.calls = 0

    def __call__(self, x, sigma, **extra_args):
        self.calls += 1
        sigma = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        return self.mu + (x - self.mu) * self.s**2 / (self.s**2 + sigma**2)

    def ode_solution(self, x_a: torch.Tensor, sigma_a: float, sigma_b: float) -> torch.Tensor:
        return self.mu + (x_a - self.mu) * math.sqrt((self.s**2 + sigma_b**2) / (self.s**2 + sigma_a**2))


def fitted_order(steps: list[int], errors: list[float]) -> float:
    """Least-squares slope of -log(error) against log(steps): the observed order of convergence."""
    lx = torch.tensor([math.log(n) for n in steps], dtype=torch.float64)
    ly = torch.tensor([math.log(e) for e in errors], dtype=torch.float64)
    lx, ly = lx - lx.mean(), ly - ly.mean()
    return float(-(lx * ly).sum() / (lx * lx).sum())


def exact_law(fn, sigmas: torch.Tensor, mu: float, s: float, max_draws: int = 400, at_step: int | None = None, **options):
    """(mean, variance, noise draws) of a sampler's output for x_T ~ N(mu, s^2 + sigma_0^2), the exact marginal, with
    the denoiser of N(mu, s^2); with `at_step`, of its x at the start of that step (the callback's x) instead.

    The sampler is then affine in (x_T, noise draws): x = a x_T + c + sum_k b_k n_k elementwise. Batch element 0
    (x_T = 0, no noise) gives c, element 1 (x_T = 1) gives a + c, and noise draw k is the basis vector of element
    2 + k, giving c + b_k; so mean = a mu + c and variance = a^2 (s^2 + sigma_0^2) + sum_k b_k^2.
    """
    draws, seen = 0, {}
    batch = 2 + max_draws

    def basis_noise(sigma, sigma_next):
        nonlocal draws
        e = torch.zeros(batch, 1, 1, 1, dtype=torch.float64)
        e[2 + draws] = 1
        draws += 1
        return e

    def callback(payload):
        if payload["i"] == at_step:
            seen["x"] = payload["x"].clone()

    x = torch.zeros(batch, 1, 1, 1, dtype=torch.float64)
    x[1] = 1
    out = fn(GaussianDenoiser(mu, s), x, sigmas, noise_sampler=basis_noise, callback=callback, **options)
    out = (seen["x"] if at_step is not None else out).flatten()
    assert draws <= max_draws
    c, a, b = out[0], out[1] - out[0], out[2:2 + draws] - out[0]
    return (a * mu + c).item(), (a * a * (s**2 + sigmas[0].item() ** 2) + (b * b).sum()).item(), draws
