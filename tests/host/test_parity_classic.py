"""Parity of the classic samplers with ComfyUI core's k-diffusion functions.

Same model function, sigmas, start x and noise, float64 throughout: relative error
max|ours - core| / max|core| <= 1e-6 (the two evaluate the same formulas in float64, sometimes in
another association order, so the real differences are ~1e-14; 1e-6 is the pack's parity bound).
Noise: for ancestral samplers both draw from a generator seeded with extra_args["seed"]; for churn
core draws from the global generator, which `torch.manual_seed(seed)` puts on the same CPU stream
as the pack's seeded generator.
"""
from __future__ import annotations

import types

import pytest
import torch

from diffusion_anatomy.samplers import REGISTRY
from support.gaussian import GaussianDenoiser

RTOL = 1e-6
SEED = 1234


class ToyDenoiser:
    """A nonlinear x0 predictor, so parity does not rest on the Gaussian denoiser's linearity."""

    def __call__(self, x, sigma, **extra_args):
        sigma = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        c = 0.25 / (0.25 + sigma**2)
        return 0.3 + torch.tanh(x - 0.3) * c + 0.1 * torch.sin(3 * x) * c * (1 - c)


MODELS = {"gaussian": GaussianDenoiser(mu=0.3, s=0.5), "toy": ToyDenoiser()}


def core_model(comfy, fn):
    """Core's samplers reach `model.inner_model.inner_model.model_sampling` (EPS branch vs flow);
    give them an SD1.5-like discrete EPS model sampling around the plain callable."""

    class EpsDiscrete(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
        pass

    class Wrapped:
        inner_model = types.SimpleNamespace(inner_model=types.SimpleNamespace(model_sampling=EpsDiscrete()))

        def __call__(self, x, sigma, **extra_args):
            return fn(x, sigma, **extra_args)

    return Wrapped()


def karras_sigmas(comfy, n=8):
    return comfy.k_sampling.get_sigmas_karras(n, 0.0292, 14.6).double()


def start_x(sigma0: float):
    g = torch.Generator().manual_seed(7)
    return torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64) * sigma0


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


def run_both(comfy, our_id, core_fn, sigmas, model, options=None, core_options=None, churn=False):
    options = options or {}
    core_options = options if core_options is None else core_options
    x = start_x(float(sigmas[0]))
    ours_log, core_log = [], []
    ours = REGISTRY[our_id].fn(model, x.clone(), sigmas, extra_args={"seed": SEED}, callback=ours_log.append, **options)
    if churn:
        torch.manual_seed(SEED)
    core = core_fn(core_model(comfy, model), x.clone(), sigmas, extra_args={"seed": SEED},
                   callback=core_log.append, disable=True, **core_options)
    return ours, core, ours_log, core_log


def assert_callbacks_match(ours_log, core_log):
    assert [c["i"] for c in ours_log] == [c["i"] for c in core_log]
    for a, b in zip(ours_log, core_log):
        assert float(a["sigma"]) == pytest.approx(float(b["sigma"]), rel=1e-12)
        assert float(a["sigma_hat"]) == pytest.approx(float(b["sigma_hat"]), rel=1e-12)
        assert rel_err(a["x"], b["x"]) <= RTOL
        assert rel_err(a["denoised"], b["denoised"]) <= RTOL


CASES = [
    # (our id, core function, options)
    ("euler", "sample_euler", {}),
    ("heun", "sample_heun", {}),
    ("heunpp2", "sample_heunpp2", {}),
    ("dpm_2", "sample_dpm_2", {}),
    ("lms", "sample_lms", {}),
    ("lms", "sample_lms", {"order": 1}),
    ("lms", "sample_lms", {"order": 2}),
    ("lms", "sample_lms", {"order": 3}),
    ("euler_ancestral", "sample_euler_ancestral", {}),
    ("euler_ancestral", "sample_euler_ancestral", {"eta": 0.5, "s_noise": 0.8}),
    ("euler_ancestral", "sample_euler_ancestral", {"eta": 0.0}),
    ("dpm_2_ancestral", "sample_dpm_2_ancestral", {}),
    ("dpm_2_ancestral", "sample_dpm_2_ancestral", {"eta": 0.6, "s_noise": 1.1}),
    ("lcm", "sample_lcm", {}),
]


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("our_id,core_name,options", CASES)
def test_matches_core(comfy, our_id, core_name, options, model_name):
    sigmas = karras_sigmas(comfy)
    ours, core, ours_log, core_log = run_both(comfy, our_id, getattr(comfy.k_sampling, core_name), sigmas,
                                              MODELS[model_name], options)
    assert rel_err(ours, core) <= RTOL
    assert len(ours_log) == len(sigmas) - 1
    assert_callbacks_match(ours_log, core_log)


@pytest.mark.parametrize("our_id,core_name", [("euler", "sample_euler"), ("heun", "sample_heun"),
                                              ("dpm_2", "sample_dpm_2"), ("heunpp2", "sample_heunpp2")])
def test_churn_matches_core(comfy, our_id, core_name):
    """Churn on every step (s_tmin = 0, all sigmas below s_tmax): both draw one noise per step."""
    sigmas = karras_sigmas(comfy)
    options = {"s_churn": 2.0, "s_noise": 1.003}
    ours, core, ours_log, core_log = run_both(comfy, our_id, getattr(comfy.k_sampling, core_name), sigmas,
                                              MODELS["toy"], options, churn=True)
    assert rel_err(ours, core) <= RTOL
    assert_callbacks_match(ours_log, core_log)
    assert float(ours_log[0]["sigma_hat"]) > float(sigmas[0])  # churn did raise sigma


@pytest.mark.parametrize("our_id,core_name,options", [
    ("euler", "sample_euler", {}), ("heun", "sample_heun", {}), ("heunpp2", "sample_heunpp2", {}),
    ("dpm_2", "sample_dpm_2", {}), ("lms", "sample_lms", {}), ("euler_ancestral", "sample_euler_ancestral", {}),
    ("dpm_2_ancestral", "sample_dpm_2_ancestral", {}), ("lcm", "sample_lcm", {}),
])
def test_partial_schedule_matches_core(comfy, our_id, core_name, options):
    """Sigmas that stop above 0 (a split schedule): every step is a full step, none a final denoise."""
    sigmas = karras_sigmas(comfy, n=9)[:-3]
    ours, core, _, _ = run_both(comfy, our_id, getattr(comfy.k_sampling, core_name), sigmas, MODELS["toy"], options)
    assert rel_err(ours, core) <= RTOL


def test_ddim_eta0_is_core_ddim(comfy):
    """Core's "ddim" sampler is `ksampler("euler")`: our DDIM at eta = 0 must give core Euler's numbers,
    here on core's ddim_uniform schedule of an SD1.5-like model."""
    ms = core_model(comfy, None).inner_model.inner_model.model_sampling
    sigmas = comfy.samplers.calculate_sigmas(ms, "ddim_uniform", 10).double()
    ours, core, ours_log, core_log = run_both(comfy, "ddim", comfy.k_sampling.sample_euler, sigmas, MODELS["toy"],
                                              {"eta": 0.0}, core_options={})
    assert rel_err(ours, core) <= RTOL
    assert_callbacks_match(ours_log, core_log)


@pytest.mark.parametrize("eta", [0.3, 1.0])
def test_ddim_eta_is_core_euler_ancestral(comfy, eta):
    """DDIM eq. 12 with eta, in sigma space, is k-diffusion's ancestral step: same numbers as core's
    euler_ancestral with that eta and seed (different formulas, so this checks the derivation)."""
    sigmas = karras_sigmas(comfy)
    ours, core, _, _ = run_both(comfy, "ddim", comfy.k_sampling.sample_euler_ancestral, sigmas, MODELS["toy"],
                                {"eta": eta})
    assert rel_err(ours, core) <= RTOL


def test_core_lists_the_same_discard_penultimate_samplers(comfy):
    ours = {i for i, info in REGISTRY.items() if info.discard_penultimate_sigma and info.core_id}
    core = comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS
    for sampler_id in ("dpm_2", "dpm_2_ancestral", "euler", "heun", "lms", "lcm", "euler_ancestral", "heunpp2", "ddim"):
        assert (sampler_id in ours) == (sampler_id in core)


def test_ids_are_core_ids(comfy):
    for sampler_id in ("euler", "euler_ancestral", "heun", "heunpp2", "lms", "dpm_2", "dpm_2_ancestral", "ddim", "lcm"):
        assert REGISTRY[sampler_id].core_id in comfy.samplers.SAMPLER_NAMES
