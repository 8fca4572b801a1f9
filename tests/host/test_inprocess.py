"""The in-process layer: ComfyUI's own modules are importable and callable from tests."""
from __future__ import annotations

import pytest
import torch

from support.gaussian import GaussianDenoiser

pytestmark = pytest.mark.host


def test_core_euler_runs_and_is_one_euler_step_per_sigma(comfy):
    model = GaussianDenoiser(mu=0.3, s=0.5)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 10
    sigmas = torch.tensor([10.0, 2.0], dtype=torch.float64)
    out = comfy.k_sampling.sample_euler(model, x, sigmas, disable=True)
    sigma = sigmas[0].expand(2)
    expected = x + (x - model(x, sigma)) / 10.0 * (2.0 - 10.0)
    assert torch.allclose(out, expected, rtol=1e-12, atol=0)


def test_host_runs_on_cpu(comfy):
    assert comfy.model_management.get_torch_device().type == "cpu"
