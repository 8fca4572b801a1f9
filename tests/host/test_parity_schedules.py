"""Parity of the schedules with ComfyUI core, on an SD1.5-like `ModelSamplingDiscrete`
(scaled-linear betas 0.00085..0.012, 1000 timesteps; core's defaults).

Tolerances: schedules that pick entries of the model's table (simple, ddim_uniform, beta, sd_turbo)
must be equal. The others core computes in float32 (linspace, powers, log-interpolation at
timesteps ~999 whose float32 fraction is good to ~6e-5), the pack in float64 rounded to float32:
relative 1e-5 (karras: rho = 7 powers multiply the float32 rounding by ~7; normal: the timestep
fraction error times the log-sigma slope). Measured on steps 2..100: karras 1.0e-6, kl_optimal
7.6e-7, normal 3.5e-7, exponential 3.0e-7, sgm_uniform 2.9e-7, linear_quadratic 1.1e-7.
"""
from __future__ import annotations

import pytest
import torch

from diffusion_anatomy.samplers import schedules
from diffusion_anatomy.samplers.schedules import SCHEDULES, calculate_sigmas

STEPS = [1, 2, 3, 7, 10, 20, 30, 33, 50, 100]
EXACT = {"simple", "ddim_uniform", "beta"}
RTOL = 1e-5


@pytest.fixture(scope="module")
def model_sampling(comfy):
    return comfy.model_sampling.ModelSamplingDiscrete()


def assert_same_sigmas(ours, core, exact):
    assert ours.dtype == torch.float32
    assert ours.shape == core.shape
    if exact:
        assert torch.equal(ours, core.float())
    else:
        torch.testing.assert_close(ours.double(), core.double(), rtol=RTOL, atol=0)


def test_core_scheduler_names_are_covered(comfy):
    assert set(comfy.samplers.SCHEDULER_NAMES) <= set(SCHEDULES)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("name", ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta",
                                  "normal", "linear_quadratic", "kl_optimal"])
def test_core_scheduler(comfy, model_sampling, name, steps):
    core = comfy.samplers.calculate_sigmas(model_sampling, name, steps)
    ours = calculate_sigmas(name, steps, model_sigmas=model_sampling.sigmas)
    if name == "kl_optimal" and steps == 1:  # core divides by steps - 1: NaN (documented departure)
        assert torch.isnan(core[0])
        assert ours.tolist() == [float(model_sampling.sigmas[-1]), 0.0]
        return
    assert_same_sigmas(ours, core, name in EXACT)


@pytest.mark.parametrize("alpha,beta", [(0.6, 0.6), (0.5, 2.0), (3.0, 0.7)])
@pytest.mark.parametrize("steps", [5, 20, 60])
def test_beta_options(comfy, model_sampling, alpha, beta, steps):
    core = comfy.samplers.beta_scheduler(model_sampling, steps, alpha=alpha, beta=beta)
    assert_same_sigmas(schedules.beta(steps, model_sampling.sigmas, alpha=alpha, beta=beta), core, exact=True)


@pytest.mark.parametrize("steps,linear_steps,threshold", [(10, 3, 0.025), (20, None, 0.1), (7, 6, 0.05)])
def test_linear_quadratic_options(comfy, model_sampling, steps, linear_steps, threshold):
    core = comfy.samplers.linear_quadratic_schedule(model_sampling, steps, threshold_noise=threshold, linear_steps=linear_steps)
    ours = schedules.linear_quadratic(steps, model_sampling.sigmas, threshold_noise=threshold, linear_steps=linear_steps)
    assert_same_sigmas(ours, core, exact=False)


@pytest.mark.parametrize("steps", [1, 4, 20])
def test_range_schedules_with_options(comfy, steps):
    k = comfy.k_sampling
    lo, hi = 0.0291675, 14.614642  # the core nodes' defaults
    assert_same_sigmas(schedules.karras(steps, lo, hi, rho=3.5), k.get_sigmas_karras(steps, lo, hi, rho=3.5), False)
    assert_same_sigmas(schedules.polyexponential(steps, lo, hi, rho=2.0), k.get_sigmas_polyexponential(steps, lo, hi, rho=2.0), False)
    assert_same_sigmas(schedules.polyexponential(steps, lo, hi), k.get_sigmas_polyexponential(steps, lo, hi), False)
    assert_same_sigmas(schedules.vp(steps), k.get_sigmas_vp(steps), False)
    assert_same_sigmas(schedules.vp(steps, beta_d=10.0, beta_min=0.2, eps_s=0.01),
                       k.get_sigmas_vp(steps, beta_d=10.0, beta_min=0.2, eps_s=0.01), False)


@pytest.mark.parametrize("steps", [2, 5, 20])
@pytest.mark.parametrize("mu,beta", [(0.0, 0.5), (0.5, 1.0)])
def test_laplace(comfy, steps, mu, beta):
    """Core's laplace has no trailing 0 (documented departure): compare all but our appended 0."""
    lo, hi = 0.0291675, 14.614642
    ours = schedules.laplace(steps, lo, hi, mu=mu, beta=beta)
    core = comfy.k_sampling.get_sigmas_laplace(steps, lo, hi, mu=mu, beta=beta)
    assert ours[-1] == 0
    assert_same_sigmas(ours[:-1], core, exact=False)


class _ModelWithSampling:
    def __init__(self, model_sampling):
        self.model_sampling = model_sampling

    def get_model_object(self, name):
        assert name == "model_sampling"
        return self.model_sampling


@pytest.mark.parametrize("steps,denoise", [(1, 1.0), (4, 1.0), (10, 1.0), (2, 0.5), (3, 0.25)])
def test_sd_turbo(comfy, model_sampling, steps, denoise):
    """Core's SDTurboScheduler node reads sigma(t) at integer t = exp(float32 log sigma): ~1 ulp off the table."""
    from comfy_extras.nodes_custom_sampler import SDTurboScheduler

    core = SDTurboScheduler.execute(_ModelWithSampling(model_sampling), steps, denoise).result[0]
    assert_same_sigmas(schedules.sd_turbo(steps, model_sampling.sigmas, denoise=denoise), core, exact=False)


def test_beta_quantile_matches_scipy():
    """The scipy-free Beta quantile against scipy (the host has scipy; the pure room does not need it)."""
    import numpy as np
    import scipy.stats

    q = np.linspace(0, 1, 257)
    for a, b in [(0.6, 0.6), (0.5, 2.0), (3.0, 0.7), (50.0, 50.0), (0.05, 0.05)]:
        np.testing.assert_allclose(schedules.beta_ppf(q, a, b), scipy.stats.beta.ppf(q, a, b), rtol=0, atol=1e-12)
