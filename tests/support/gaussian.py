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
