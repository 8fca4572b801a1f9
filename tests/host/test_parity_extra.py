"""Extra-Samplers samplers at settings where they reduce to a core sampler give core's numbers.

- LCM Custom Noise with gaussian noise is core's LCM (same seeded stream);
- DPM++ 3M SDE Dynamic ETA with eta_max = eta_min = eta is core's DPM++ 3M SDE at that eta
  (same seeded Brownian tree).
float64, relative error <= 1e-12 (operation order only).
"""
from __future__ import annotations

import pytest
import torch

from diffusion_anatomy.samplers.runner import run_sampler
from support.toy import core_model, toy_denoiser

pytestmark = pytest.mark.host
RTOL = 1e-12


def start(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    sigmas = torch.tensor([14.6, 7.0, 3.1, 1.2, 0.5, 0.1, 0.0], dtype=torch.float64)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * sigmas[0]
    return x, sigmas


def rel_err(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_lcm_custom_noise_gaussian_is_core_lcm(comfy):
    x, sigmas = start(1)
    ours = run_sampler("lcm_custom_noise", toy_denoiser, x, sigmas, extra_args={"seed": 5}, noise_type="gaussian")
    core = comfy.k_sampling.sample_lcm(core_model(comfy), x, sigmas, extra_args={"seed": 5}, disable=True)
    assert rel_err(ours, core) <= RTOL


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_dynamic_eta_with_constant_eta_is_core_3m_sde(comfy, eta):
    x, sigmas = start(2)
    ours = run_sampler("dpmpp_3m_sde_dynamic_eta", toy_denoiser, x, sigmas, extra_args={"seed": 9},
                       eta_max=eta, eta_min=eta, s_noise=1.0)
    core = comfy.k_sampling.sample_dpmpp_3m_sde(core_model(comfy), x, sigmas, extra_args={"seed": 9}, disable=True, eta=eta)
    assert rel_err(ours, core) <= RTOL
