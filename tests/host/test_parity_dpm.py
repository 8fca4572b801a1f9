"""Parity with ComfyUI core: Brownian-tree noise, DPM-Solver++ and DPM-Solver samplers.

Same model function, sigmas, seed and float64 -> relative error <= 1e-12 (the only differences are the order
of floating-point operations: we compute step coefficients in Python doubles, core in 0-dim tensors; a few
ulps per step). Brownian noise: bit-equal in float64.
The model is a nonlinear toy denoiser so that every evaluation point matters.
"""
from __future__ import annotations

import contextlib
import math

import pytest
import torch

from diffusion_anatomy.samplers import dpm_solver, dpm_solver_pp, noise  # noqa: F401  (registers)
from diffusion_anatomy.samplers.registry import REGISTRY
from support.toy import core_model, toy_denoiser

RTOL = 1e-12  # observed <= 6e-15


@contextlib.contextmanager
def default_dtype(dtype):
    """Core's DPM-Solver builds its time grid and tolerances with torch.linspace / torch.tensor in the default
    dtype; float64 there makes core's arithmetic double like ours (float32 would differ at ~1e-7)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def karras(n=10, sigma_min=0.0292, sigma_max=14.6146, rho=7.0):
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    sigmas = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def noise_input(shape=(2, 3, 4, 4), seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 14.6146


def assert_parity(ours, core, rtol=RTOL):
    err = float((ours - core).abs().max() / core.abs().max())
    assert err <= rtol, f"relative error {err:.3g}"


# --- noise --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cpu", [True, False])
@pytest.mark.parametrize("seed", [42, [7, 8]])
def test_brownian_tree_noise_matches_core(comfy, dtype, cpu, seed):
    """Same seed, x, sigma_min, sigma_max and cpu flag -> core's BrownianTreeNoiseSampler numbers (bit-equal
    in float64; float32: core computes the 1/sqrt(dt) scale from float32 sigmas, we from doubles)."""
    x = torch.zeros(2, 3, 8, 8, dtype=dtype)
    sigmas = karras().to(dtype)
    lo, hi = sigmas[-2], sigmas[0]
    core = comfy.k_sampling.BrownianTreeNoiseSampler(x, lo, hi, seed=seed, cpu=cpu)
    ours = noise.brownian_tree_noise_sampler(x, float(lo), float(hi), seed=seed, cpu=cpu)
    for a, b in zip(sigmas[:-2], sigmas[1:-1]):
        expected = core(a, b)
        got = ours(float(a), float(b))
        assert got.dtype == expected.dtype and got.shape == expected.shape
        if dtype == torch.float64:
            assert torch.equal(got, expected)
        else:
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_default_noise_matches_core(comfy):
    x = torch.zeros(2, 4, 8, 8)
    core, ours = comfy.k_sampling.default_noise_sampler(x, seed=3), noise.default_noise_sampler(x, seed=3)
    for _ in range(3):
        assert torch.equal(ours(1.0, 0.5), core(torch.tensor(1.0), torch.tensor(0.5)))


# --- samplers -----------------------------------------------------------------------------------------

CASES = [  # (our id, core function, options, seed); a list of seeds: one Brownian tree per sample
    ("dpmpp_2m", "sample_dpmpp_2m", {}, 5),
    ("dpmpp_2m_sde", "sample_dpmpp_2m_sde", {}, 5),
    ("dpmpp_2m_sde", "sample_dpmpp_2m_sde", {"eta": 0.6, "s_noise": 0.9}, [5, 6]),
    ("dpmpp_2m_sde_heun", "sample_dpmpp_2m_sde_heun", {}, 5),
    ("dpmpp_2m_sde_heun", "sample_dpmpp_2m_sde_heun", {"eta": 0.3}, [1, 2]),
    ("dpmpp_3m_sde", "sample_dpmpp_3m_sde", {}, 5),
    ("dpmpp_3m_sde", "sample_dpmpp_3m_sde", {"eta": 0.0}, 5),
    ("dpmpp_3m_sde", "sample_dpmpp_3m_sde", {"s_noise": 1.2}, [3, 4]),
    ("dpmpp_3m_sde_gpu", "sample_dpmpp_3m_sde_gpu", {"eta": 0.7}, 5),
    ("dpmpp_2s_ancestral", "sample_dpmpp_2s_ancestral", {}, 5),
    ("dpmpp_2s_ancestral", "sample_dpmpp_2s_ancestral", {"eta": 0.5, "s_noise": 1.1}, 6),
]


@pytest.mark.parametrize("sampler_id,core_fn,options,seed", CASES)
def test_sampler_matches_core(comfy, sampler_id, core_fn, options, seed):
    """Same model, sigmas and seed (the SDE samplers draw their default Brownian tree, 2S ancestral its
    default gaussian stream) -> core's result; the callbacks see the same sigma and denoised."""
    info = REGISTRY[sampler_id]
    sigmas, x = karras(), noise_input()
    core_steps, our_steps = [], []
    core = getattr(comfy.k_sampling, core_fn)(core_model(comfy), x.clone(), sigmas, extra_args={"seed": seed},
                                              callback=core_steps.append, disable=True, **options)
    ours = info.fn(toy_denoiser, x.clone(), sigmas, extra_args={"seed": seed}, callback=our_steps.append,
                   **{**info.fixed_options, **options})
    assert_parity(ours, core)
    assert [s["i"] for s in our_steps] == [s["i"] for s in core_steps]
    for a, b in zip(our_steps, core_steps):
        assert_parity(a["denoised"], b["denoised"])
        assert float(a["sigma"]) == float(b["sigma"])


@pytest.mark.parametrize("sampler_id,options", [
    ("dpm_fast", {}),
    ("dpm_adaptive", {}), ("dpm_adaptive", {"order": 2, "rtol": 0.01, "pcoeff": 0.1, "dcoeff": 0.05}),
    ("dpm_adaptive", {"eta": 0.4}),
])
@pytest.mark.parametrize("n", [1, 3, 10, 14])
def test_dpm_solver_matches_cores_ksampler_wrapper(comfy, sampler_id, options, n):
    """Through core's own `ksampler(id, options).sampler_function` (which derives sigma_min / sigma_max / n from
    the sigmas): same result. DPM-Adaptive's callback fires once per accepted step (core's on every attempt)."""
    sigmas, x = karras(n), noise_input()
    core_steps, our_steps = [], []
    ours = REGISTRY[sampler_id].fn(toy_denoiser, x.clone(), sigmas, extra_args={"seed": 9}, callback=our_steps.append, **options)
    with default_dtype(torch.float64):
        core_fn = comfy.samplers.ksampler(sampler_id, options).sampler_function
        if n == 1 and options.get("eta"):  # sigma_min = sigma_max: core raises, we integrate nothing
            with pytest.raises(ValueError):
                core_fn(core_model(comfy), x.clone(), sigmas, extra_args={"seed": 9}, callback=None, disable=True, **options)
            assert torch.equal(ours, x)
            return
        core = core_fn(core_model(comfy), x.clone(), sigmas, extra_args={"seed": 9}, callback=core_steps.append,
                       disable=True, **(options if sampler_id == "dpm_adaptive" else {}))
    assert_parity(ours, core)
    if sampler_id == "dpm_fast":
        assert len(our_steps) == len(core_steps)
    else:
        assert len(our_steps) == (core_steps[-1]["n_accept"] if core_steps else 0)


@pytest.mark.parametrize("eta", [0.5, 100.0])  # 100: the widget maximum, sigma_down = 0 (t_down clipped as in core)
@pytest.mark.parametrize("n", [3, 10])
def test_dpm_fast_options_match_core(comfy, n, eta):
    """Core's ksampler('dpm_fast') wrapper ignores extra options; compare eta/s_noise with sample_dpm_fast itself."""
    sigmas, x = karras(n), noise_input()
    with default_dtype(torch.float64):
        core = comfy.k_sampling.sample_dpm_fast(core_model(comfy), x.clone(), sigmas[-2], sigmas[0], n,
                                                extra_args={"seed": 9}, disable=True, eta=eta, s_noise=1.1)
    ours = REGISTRY["dpm_fast"].fn(toy_denoiser, x.clone(), sigmas, extra_args={"seed": 9}, eta=eta, s_noise=1.1)
    assert_parity(ours, core)


def test_sigmas_not_ending_in_zero(comfy):
    """A partial schedule (no final 0): every step is an SDE step, as in core."""
    sigmas, x = karras()[:-3], noise_input()
    core = comfy.k_sampling.sample_dpmpp_3m_sde(core_model(comfy), x.clone(), sigmas, extra_args={"seed": 1}, disable=True)
    ours = REGISTRY["dpmpp_3m_sde"].fn(toy_denoiser, x.clone(), sigmas, extra_args={"seed": 1})
    assert_parity(ours, core)
    assert math.isfinite(float(ours.abs().max()))
