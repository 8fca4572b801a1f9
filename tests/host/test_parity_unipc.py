"""Parity with ComfyUI core: UniPC (bh1, bh2) against comfy/extra_samplers/uni_pc.py as core calls it,
and PLMS against core's iPNDM where the two methods coincide.

Tolerance for UniPC: relative 1e-9 in float64. Core runs the same maths in VP variables (x / sqrt(1 +
sigma^2)) with lambda = log(alpha) - log(std) computed from sigma; the only differences are rounding
(measured ~1e-13). Core builds its order-2 predictor and order-1 corrector coefficients with
`torch.tensor([0.5])` in the default dtype, which fails against float64 tensors, so core runs
under `torch.set_default_dtype(torch.float64)` here.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import torch

from diffusion_anatomy.samplers import REGISTRY

TOL = 1e-9


def toy_denoiser(x, sigma, **kwargs):
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    return 0.3 + (x - 0.3) * 0.25 / (0.25 + s**2) + 0.1 * torch.tanh(x) / (1 + s)


def geometric(n: int, zero: bool) -> torch.Tensor:
    sig = torch.exp(torch.linspace(math.log(14.6), math.log(0.03), n + (0 if zero else 1), dtype=torch.float64))
    return torch.cat([sig, sig.new_zeros(1)]) if zero else sig


def noise(seed=1) -> torch.Tensor:
    return 14.6 * torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@contextmanager
def float64_default():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def core_unipc(comfy, sampler_id):
    """The function core's KSAMPLER wraps for this sampler name (comfy.samplers.sampler_object)."""
    return comfy.samplers.sampler_object(sampler_id).sampler_function


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("sampler_id", ["uni_pc", "uni_pc_bh2"])
@pytest.mark.parametrize("n_steps", [2, 3, 4, 5, 10])
@pytest.mark.parametrize("ends_in_zero", [True, False], ids=["to0", "to_sigma_min"])
def test_unipc_matches_core(comfy, sampler_id, n_steps, ends_in_zero):
    sigmas, x = geometric(n_steps, ends_in_zero), noise()
    core_steps, our_steps = [], []
    with float64_default():
        ref = core_unipc(comfy, sampler_id)(toy_denoiser, x.clone(), sigmas.clone(), extra_args={}, callback=core_steps.append, disable=True)
    ours = REGISTRY[sampler_id].fn(toy_denoiser, x.clone(), sigmas, callback=our_steps.append, disable=True,
                                   **REGISTRY[sampler_id].fixed_options)
    assert rel(ours, ref) <= TOL
    # callbacks: same step indices and denoised; core reports x in VP variables, x_vp = x / sqrt(1 + sigma^2)
    # (at its last step it reports the final x instead of x at sigmas[-2], so that one is not compared)
    assert [c["i"] for c in core_steps] == [c["i"] for c in our_steps] == list(range(n_steps))
    for i, (c, o) in enumerate(zip(core_steps, our_steps)):
        assert rel(o["denoised"], c["denoised"]) <= TOL
        if i < n_steps - 1:
            assert rel(o["x"] / math.sqrt(1 + float(sigmas[i]) ** 2), c["x"]) <= TOL


def test_unipc_through_run_sampler_matches_core(comfy):
    from diffusion_anatomy.samplers.runner import run_sampler

    sigmas, x = geometric(6, True), noise(2)
    with float64_default():
        ref = core_unipc(comfy, "uni_pc_bh2")(toy_denoiser, x.clone(), sigmas.clone(), extra_args={}, disable=True)
    assert rel(run_sampler("uni_pc_bh2", toy_denoiser, x, sigmas, extra_args={}), ref) <= TOL


def test_core_unipc_defects_we_do_not_copy(comfy):
    """Core writes 0.001 into the caller's sigmas, and with a single step it returns the input noise
    (rescaled VP -> VE: x * sqrt(1 + 0.001^2) / sqrt(1 + sigma0^2)) without a step. We take the step."""
    sigmas, x = torch.tensor([14.6, 0.0], dtype=torch.float64), noise()
    passed = sigmas.clone()
    with float64_default():
        ref = core_unipc(comfy, "uni_pc")(toy_denoiser, x.clone(), passed, extra_args={}, disable=True)
    assert passed[-1].item() == 0.001
    torch.testing.assert_close(ref, x * math.sqrt(1 + 0.001**2) / math.sqrt(1 + 14.6**2), rtol=1e-12, atol=0)
    ours = REGISTRY["uni_pc"].fn(toy_denoiser, x, sigmas, disable=True)
    assert sigmas.tolist() == [14.6, 0.0]
    assert (ours - toy_denoiser(x, torch.full([2], 14.6, dtype=torch.float64))).abs().max() < 0.01 * x.abs().max()


def test_plms_after_warmup_is_core_ipndm(comfy):
    """After its first step PLMS is core's iPNDM (equal-step Adams-Bashforth 2/3/4 on eps = dx/dsigma,
    history holding each step's first eps); the two differ in the first step only (pseudo improved
    Euler vs Euler). With D(x, sigma) = x - sigma * c(sigma), eps = c(sigma) does not depend on x, so
    both see identical eps histories and their results differ by exactly the first steps' difference:
    (sigma1 - sigma0) * (c(sigma1) - c(sigma0)) / 2. (No trailing 0: iPNDM ends a step to 0 with D.)"""
    base = torch.linspace(-1, 1, 2 * 3 * 4 * 4, dtype=torch.float64).reshape(2, 3, 4, 4)

    def c(sigma: float | torch.Tensor):
        return base * torch.sin(torch.as_tensor(sigma, dtype=torch.float64)) + 0.2 * base**2 * sigma**2

    def model(x, sigma, **kwargs):
        s = sigma.reshape(-1, 1, 1, 1)
        return x - s * c(s)

    sigmas, x = geometric(9, zero=False), noise()
    ipndm = comfy.k_sampling.sample_ipndm(model, x, sigmas, disable=True)
    plms = REGISTRY["plms"].fn(model, x, sigmas, disable=True)
    s0, s1 = float(sigmas[0]), float(sigmas[1])
    torch.testing.assert_close(plms - ipndm, (s1 - s0) * (c(s1) - c(s0)) / 2, rtol=1e-10, atol=1e-10)


def test_unipc_float32_is_closer_to_core_float64_than_core_float32_is(comfy):
    """ComfyUI runs float32 sigmas. Core then computes lambda = log(alpha) - 0.5 log(1 - alpha^2) in
    float32, which at its end sigma 0.001 cancels to a few percent (1 - alpha^2 ~ 1e-6 against float32's
    1.2e-7 resolution): measured 5e-5 to 1.2e-4 relative from its own float64 result. Our coefficients
    are host float64 from lambda = -log(sigma): float32 rounding of x only (measured 1e-7 to 4e-7)."""
    sigmas = torch.cat([torch.exp(torch.linspace(math.log(14.6), math.log(0.03), 10)), torch.zeros(1)])
    x = noise().float()
    core32 = core_unipc(comfy, "uni_pc")(toy_denoiser, x.clone(), sigmas.clone(), extra_args={}, disable=True)
    with float64_default():
        core64 = core_unipc(comfy, "uni_pc")(toy_denoiser, x.double(), sigmas.double(), extra_args={}, disable=True)
    ours32 = REGISTRY["uni_pc"].fn(toy_denoiser, x, sigmas, disable=True)
    assert ours32.dtype == torch.float32
    assert rel(ours32.double(), core64) <= 2e-6
    assert rel(core32.double(), core64) > 10 * rel(ours32.double(), core64)
    assert rel(ours32.double(), core32.double()) <= 1e-3
