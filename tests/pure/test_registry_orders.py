"""Every deterministic sampler in REGISTRY reaches its registered order on the exact Gaussian PF-ODE.

Data N(mu, s^2) has an exact denoiser and a closed-form probability-flow ODE solution
(tests/support/gaussian.py). Each sampler integrates it from sigma_max = 14.6 to sigma_min = 0.03
(the SD range) on geometric sigmas without the trailing 0 (a step to 0 is a denoising jump, not an
ODE step), float64; the slope of log(error) against log(steps) over 16..128 steps must lie within
+-0.3 of `order`. The test iterates over whatever is registered.

Excluded, with the reason:
- dpm_adaptive: step-size control; its error is set by rtol/atol, not by the schedule's steps.
- lms: registered with the multistep's nominal order 4, but k-diffusion's Euler start-up step
  limits its global order (asymptotically 2; 3.5 at 16..128 steps); tests/pure/test_samplers_classic.py
  tests both effects.
"""
from __future__ import annotations

import math

import pytest
import torch

from diffusion_anatomy.samplers import REGISTRY
from diffusion_anatomy.samplers.runner import run_sampler
from support.gaussian import GaussianDenoiser, fitted_order

EXCLUDED = {
    "dpm_adaptive": "adaptive step size: error set by rtol/atol, not by the number of steps",
    "lms": "nominal order 4, global order limited by its Euler start-up (tested in test_samplers_classic.py)",
}
DETERMINISTIC = sorted(i for i, info in REGISTRY.items() if not info.stochastic and i not in EXCLUDED)
STEPS = (16, 32, 64, 128)
SIGMA_MAX, SIGMA_MIN = 14.6, 0.03


def geometric(n: int) -> torch.Tensor:
    return torch.exp(torch.linspace(math.log(SIGMA_MAX), math.log(SIGMA_MIN), n + 1, dtype=torch.float64))


def observed_order(sampler_id: str) -> tuple[float, list[float]]:
    model = GaussianDenoiser(mu=0.3, s=0.5)
    x = 0.3 + SIGMA_MAX * torch.randn(1, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = model.ode_solution(x, SIGMA_MAX, SIGMA_MIN)
    errors = []
    for n in STEPS:
        out = run_sampler(sampler_id, model, x, geometric(n), extra_args={"seed": 0}, disable=True)
        errors.append(float((out - exact).abs().max()))
    return fitted_order(list(STEPS), errors), errors


@pytest.mark.parametrize("sampler_id", DETERMINISTIC)
def test_registered_order_on_exact_ode(sampler_id):
    order, errors = observed_order(sampler_id)
    registered = REGISTRY[sampler_id].order
    assert abs(order - registered) <= 0.3, f"fitted order {order:.2f}, registered {registered}; errors {errors}"
